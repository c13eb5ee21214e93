"""CLI subcommands for the insight views: calibration sensitivity, run overlays, block drill-down.

    simdiff sensitivity --model default --calib wikitext2 --calib shipped:code --ratio 0.25
    simdiff overlay --scores a.json --scores b.json --metric cosine --out overlay.csv
    simdiff drilldown --model default --block 11 --windows 4 --top 20

Thin wrappers over ``simdiff_core/pruning/sensitivity.py`` and ``simdiff_core/analysis/drilldown.py``
(definitions there and in docs/insight.md); bootstrap stability is ``plan --stability N``. Each prints a
table on stderr and one JSON line.
"""

from __future__ import annotations

import sys

from ..common.errors import SimDiffError
from .common import add_model_args, add_ratio_args, load_from_args, parse_alpha, print_result, progress_printer


def cmd_sensitivity(args) -> int:
    from ..analysis.score import score_model
    from ..data.text import load_text, make_windows
    from ..pruning.plan import num_from_ratio
    from ..pruning.sensitivity import sensitivity

    calibs = args.calib or ["wikitext2", "shipped:code"]
    if len(calibs) < 2:
        raise SimDiffError("give at least two --calib sources")
    alpha = parse_alpha(args.alpha)
    if alpha == "auto":
        raise SimDiffError("sensitivity needs a numeric --alpha")
    lm = load_from_args(args)
    k = num_from_ratio(lm.num_layers, ratio=args.ratio, num=args.num)
    runs = {}
    for c in calibs:
        src = load_text(c, purpose="calib")
        ids = make_windows(lm.tokenizer, src, args.samples, args.seq_len)
        runs[c] = score_model(lm, ids, progress=progress_printer(c), calibration={"source": c})
    rep = sensitivity(runs, args.criterion, num=k, alpha=alpha, keep_first=args.keep_first,
                      keep_last=args.keep_last)
    for r in rep.pairs_table():
        print(f"{r['source A']} vs {r['source B']}: spearman {r['spearman_rho']:+.3f}, "
              f"{r['common_removed']}/{k} removed blocks in common", file=sys.stderr)
    for b, who in rep.flips.items():
        print(f"block {b} flips: removed by {', '.join(who)} only", file=sys.stderr)
    print_result(rep.to_dict())
    return 0


def cmd_overlay(args) -> int:
    from ..analysis.score import Scores
    from ..pruning.sensitivity import overlay_frame

    if len(args.scores) < 2:
        raise SimDiffError("give at least two --scores files")
    runs = {}
    for p in args.scores:
        name = p if p not in runs else f"{p} ({len(runs)})"
        runs[name] = Scores.load(p)
    frame, relative = overlay_frame(runs, args.metric, relative=True if args.relative else None)
    if args.out:
        from pathlib import Path

        from ..common.fileio import atomic_write_text

        atomic_write_text(Path(args.out), frame.to_csv(index=False))
    print_result({"out": args.out, "metric": args.metric, "relative_depth": relative,
                  "runs": {n: s.num_layers for n, s in runs.items()}})
    return 0


def cmd_drilldown(args) -> int:
    from ..analysis.drilldown import drill_down
    from ..data.text import load_text, make_windows

    lm = load_from_args(args)
    ids = make_windows(lm.tokenizer, load_text(args.calib, purpose="calib"), args.windows, args.seq_len)
    d = drill_down(lm, ids, args.block, windows=args.windows, top=args.top)
    for t in d.top:
        ctx = (t["before"] + "[" + t["token"] + "]" + t["after"]).replace("\n", "⏎")
        print(f"{t['value']:10.4g}  w{t['window']}:{t['position']:<5d} {ctx}", file=sys.stderr)
    print_result({"block": d.block, "summary": d.summary(), "top": d.top})
    return 0


def register(sub) -> None:
    s = sub.add_parser("sensitivity", help="score one model on several calibration texts and compare the verdicts",
                       description="Spearman rho between per-block rankings, overlap of the removed blocks, flips.")
    add_model_args(s)
    s.add_argument("--calib", action="append", help="a calibration source (repeat, >= 2; default: wikitext2 and "
                                                    "shipped:code)")
    s.add_argument("--samples", type=int, default=8, help="windows per source (default 8)")
    s.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    s.add_argument("--criterion", default="simdiff")
    s.add_argument("--alpha", default="0.5")
    add_ratio_args(s)
    s.set_defaults(func=cmd_sensitivity)

    s = sub.add_parser("overlay", help="overlay one metric of two or more scores.json runs (CSV)",
                       description="Runs with different block counts go on relative depth i / (L - 1).")
    s.add_argument("--scores", action="append", required=True, help="scores.json (repeat, >= 2)")
    s.add_argument("--metric", default="cosine", help="cosine, bi, angular, mssd, masd, mssd_rel, masd_rel")
    s.add_argument("--relative", action="store_true", help="relative depth even when block counts agree")
    s.add_argument("--out", help="CSV to write (run, block, depth, x, value)")
    s.set_defaults(func=cmd_overlay)

    s = sub.add_parser("drilldown", help="the tokens one block changes most (||y - x|| / ||x||), in context",
                       description="A bounded second pass over the first windows that stops after the block.")
    add_model_args(s)
    s.add_argument("--block", type=int, required=True, help="block index (0-based)")
    s.add_argument("--calib", default="wikitext2", help="text (as for score --calib)")
    s.add_argument("--windows", type=int, default=4, help="windows to run (default 4, at most 16)")
    s.add_argument("--seq-len", type=int, default=256)
    s.add_argument("--top", type=int, default=20, help="tokens to list (default 20)")
    s.set_defaults(func=cmd_drilldown)
