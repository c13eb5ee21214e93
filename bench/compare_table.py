"""Regenerate the README's shoot-out table: every method on the embedded model at 25% (8 of 30 blocks).

    python bench/compare_table.py                  # ~10-20 min on 2 CPU cores; rewrites the README table
    python bench/compare_table.py --no-readme      # only bench/compare_results.{csv,md}

Protocol (kept modest so a 2-core laptop can rerun it): calibration = first 4 windows x 128 tokens
of the shipped WikiText-2 validation split (scoring, iterative re-scoring, greedy/search objective,
SLM similarity, the repair fit); perplexity = first 4 windows x 256 tokens of the WikiText-2 test split
(pruned, and repaired with ``--repair``, default ridge: the fit has 512 tokens, fewer than the
hidden size 576, where plain lstsq refuses); MC accuracy
= shipped SimDiff MC set, test split (35 items). The table between the README markers is replaced;
nothing else in the README is touched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = "<!-- compare-table:start -->", "<!-- compare-table:end -->"
SPECS = "oneshot:cosine,oneshot:simdiff,iterative:simdiff,greedy,block,slm,search:local,repairable"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--methods", default=SPECS)
    ap.add_argument("--budget", type=int, default=60, help="evaluation budget for search rows (greedy runs in full)")
    ap.add_argument("--repair", default="ridge", choices=["none", "lstsq", "ridge", "rescale"],
                    help="the ppl_repaired column: this repair fitted on the calibration windows (issue 22)")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    args = ap.parse_args(argv)

    from simdiff_core import load_model, make_windows
    from simdiff_core.cli.common import progress_printer
    from simdiff_core.common.fileio import atomic_write_text, write_marked
    from simdiff_core.evaluation.evaluate import eval_windows, protocol_note
    from simdiff_core.methods.compare import parse_specs, run_compare, to_markdown, write_csv

    lm = load_model(args.model, device="cpu", dtype="float32")
    calib = make_windows(lm.tokenizer, "wikitext2", n=4, seq_len=128)
    ev = eval_windows(lm.tokenizer, "wikitext2", seq_len=256, windows=4)
    specs = parse_specs(args.methods)
    t0 = time.perf_counter()
    res = run_compare(lm, calib, specs, ratio=args.ratio, eval_ids=ev, accuracy=not args.no_accuracy,
                      budget=args.budget, calibration={"source": "wikitext2"}, progress=progress_printer("compare"),
                      repair=args.repair)
    minutes = (time.perf_counter() - t0) / 60
    caption = (f"*{lm.name}, {res['k']} of {res['num_layers']} blocks removed (ratio {args.ratio}); CPU, float32. "
               f"Calibration (scores, re-scoring, greedy/search objective = calibration ppl, SLM similarity): "
               f"WikiText-2 validation, 4 x 128 tokens. ppl: {protocol_note(lm.tokenizer, 'wikitext2', 256, 4)}. "
               + ("MC acc: shipped SimDiff MC set, test split (35 items; chance 25%). " if not args.no_accuracy else "")
               + (f"ppl repaired: {args.repair} fitted on the calibration windows, same ppl windows. "
                  if args.repair != "none" else "")
               + f"Search: budget {args.budget} evaluations. Whole run {minutes:.0f} min. "
               "Regenerate with `python bench/compare_table.py`.*")
    md = to_markdown(res, caption)
    out = ROOT / "bench" / "compare_results.csv"
    write_csv(res["rows"], out)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    if not args.no_readme:
        if not write_marked(ROOT / "README.md", START, END, md):
            print(f"README has no {START} ... {END} markers; table not inserted", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
