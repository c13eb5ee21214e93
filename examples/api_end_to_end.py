"""The Python API end to end: load -> score -> plan -> export -> reload in plain transformers.

    python examples/api_end_to_end.py                       # embedded SmolLM2-135M, small settings
    python examples/api_end_to_end.py --model ./my-model --ratio 0.25 --out exports/my-model-pruned

Runs offline on CPU in well under a minute with the defaults (2 calibration windows x 64 tokens).
The test suite runs this file (tests/structure/test_packaging.py), so it stays in step with the API.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    import simdiff_core  # noqa: F401  (installed with `pip install .`)
except ImportError:  # running from a checkout: use the repository's copy
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simdiff_core import eval_windows, export_pruned, load_model, make_plan, make_windows, perplexity, score_model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="model spec (see load_model)")
    p.add_argument("--ratio", type=float, default=0.2, help="fraction of blocks to remove")
    p.add_argument("--samples", type=int, default=2, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per calibration window")
    p.add_argument("--out", default=None, help="export folder (default: a temporary one)")
    args = p.parse_args(argv)

    # 1. load (GGUF is dequantised once and cached) and 2. score every block on calibration text
    lm = load_model(args.model, device="cpu", dtype="float32")
    calib = make_windows(lm.tokenizer, "wikitext2", n=args.samples, seq_len=args.seq_len)
    scores = score_model(lm, calib, calibration={"source": "wikitext2"})
    print(scores.table()[["cosine", "mssd_rel", "masd_rel", "simdiff"]].round(3).to_string())

    # 3. plan: remove the lowest-importance blocks by the SimDiff score
    plan = make_plan(scores, "simdiff", ratio=args.ratio, alpha=0.5)
    print(f"removing blocks {plan.removed_layers} of {plan.num_layers}")

    # 4. export with a perplexity check in the report (and so in the model card)
    ids = eval_windows(lm.tokenizer, "wikitext2", seq_len=args.seq_len, windows=2)
    from simdiff_core.pruning.build import build_pruned

    report = {"evaluation": {"ppl_dense": perplexity(lm.model, ids)["ppl"],
                             "ppl_pruned": perplexity(build_pruned(lm, plan), ids)["ppl"],
                             "protocol": f"WikiText-2 test, 2 windows x {args.seq_len} tokens"}}
    out = Path(args.out or tempfile.mkdtemp(prefix="simdiff-example-")) / "pruned"
    export_pruned(lm, plan, out, force=True, report=report, dtype=torch.bfloat16)

    # 5. reload with plain transformers: nothing of simdiff_core is needed to use the result
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    reloaded = perplexity(model, ids)["ppl"]
    print(f"exported to {out}: {model.config.num_hidden_layers} blocks, ppl {report['evaluation']['ppl_dense']:.2f} "
          f"-> {report['evaluation']['ppl_pruned']:.2f} (reloaded bf16: {reloaded:.2f}); tokenizer vocab {len(tok)}")
    return {"out": str(out), "num_layers": model.config.num_hidden_layers, "removed": plan.removed_layers,
            **report["evaluation"], "ppl_reloaded": reloaded}


if __name__ == "__main__":
    main()
