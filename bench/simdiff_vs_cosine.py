"""The SimDiff bar: automatic SimDiff is never worse than cosine-only, and far better where cosine picks badly.

    python bench/simdiff_vs_cosine.py                       # both embedded models, rewrites the README table
    python bench/simdiff_vs_cosine.py --models default --no-readme

For each model and ratio: the one-shot plan of cosine-only (ShortGPT BI), SimDiff at the default
alpha = 0.5, and SimDiff with alpha (and beta) chosen automatically by calibration perplexity
(``alpha.auto_alpha`` over alpha in 0..1 x beta in {0, 0.5, 1}); every plan is then measured on held-out
WikiText-2 test windows. Protocol (modest, for 2 CPU cores): scores and auto-alpha on the first
8 x 128 tokens of the WikiText-2 validation split; ppl on 8 x 256 test tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
START, END = "<!-- simdiff-vs-cosine:start -->", "<!-- simdiff-vs-cosine:end -->"


def run(spec: str, ratio: float) -> list[dict]:
    from simdiff_core import eval_windows, load_model, make_plan, make_windows, perplexity, pruned_model, score_model
    from simdiff_core.methods.alpha import AUTO_BETAS, auto_alpha, trials_best

    lm = load_model(spec, device="cpu", dtype="float32")
    calib = make_windows(lm.tokenizer, "wikitext2", n=8, seq_len=128)
    ev = eval_windows(lm.tokenizer, seq_len=256, windows=8)
    scores = score_model(lm, calib)
    dense = perplexity(lm.model, ev)["ppl"]
    _, trials = auto_alpha(lm, scores, calib, ratio=ratio, betas=AUTO_BETAS)
    best = trials_best(trials)
    plans = {
        "cosine only (ShortGPT BI)": make_plan(scores, "cosine", ratio=ratio),
        "SimDiff, alpha 0.5": make_plan(scores, "simdiff", ratio=ratio, alpha=0.5),
        f"SimDiff auto (alpha {best['alpha']:.1f}, beta {best['beta']:.1f})":
            make_plan(scores, "simdiff", ratio=ratio, alpha=best["alpha"], beta=best["beta"]),
    }
    rows = []
    for name, plan in plans.items():
        ppl = perplexity(pruned_model(lm, plan.kept_layers), ev)["ppl"]
        rows.append({"model": lm.name, "blocks": f"{plan.num_removed}/{lm.num_layers}", "criterion": name,
                     "removed": plan.removed_layers, "ppl": ppl, "dense": dense})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,gemma3-270m")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = [r for m in args.models.split(",") for r in run(m, args.ratio)]
    lines = ["| model | removed | criterion | removed blocks | pruned ppl | dense ppl |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['blocks']} | {r['criterion']} | {r['removed']} | {r['ppl']:.1f} | {r['dense']:.1f} |")
    caption = (f"*Scores and auto-α: WikiText-2 (word-level v1, `<unk>` markers) validation, 8 x 128 tokens. "
               f"ppl: WikiText-2 test, first 8 non-overlapping windows x 256 tokens, BOS-prefixed where the tokenizer "
               f"adds BOS. CPU float32; run took {(time.perf_counter() - t0) / 60:.0f} min. "
               "Regenerate with `python bench/simdiff_vs_cosine.py`.*")
    table = "\n".join(lines) + "\n\n" + caption
    print(table)
    out = ROOT / "bench" / "simdiff_vs_cosine.md"
    out.write_text(table + "\n")
    if not args.no_readme:
        from simdiff_core.common.fileio import write_marked

        write_marked(ROOT / "README.md", START, END, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
