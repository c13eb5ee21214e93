"""The ``spans`` subcommand: the n-block linear-replaceability heatmap (its own forward pass).

    python -m simdiff_core spans --model default --samples 16 --seq-len 256 --out spans.json [--max-span 8]

Thin wrapper over ``analysis.linear_spans.span_replaceability``; the single-block curve needs no
command of its own (``score`` stores it; ``plan --scores S --criterion linear`` uses it).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..common.errors import SimDiffError
from .common import add_calib_args, add_model_args, calib_from_args, load_from_args, print_result, progress_printer


def cmd_spans(args) -> int:
    from ..analysis.linear_spans import span_replaceability
    from ..common.fileio import atomic_write_text

    if args.max_mb <= 0:
        raise SimDiffError("--max-mb must be positive")
    lm = load_from_args(args)
    ids, calib = calib_from_args(args, lm)
    heat = span_replaceability(lm, ids, max_span=args.max_span, batch_size=args.batch_size, max_mb=args.max_mb,
                               progress=progress_printer("spans"))
    heat.update(model=lm.source, calibration=calib)
    atomic_write_text(Path(args.out), json.dumps(heat))
    print_result({"out": args.out, "num_layers": lm.num_layers, "max_span": heat["max_span"],
                  "passes": heat["passes"], "tokens": heat["tokens"]})
    return 0


def register(sub) -> None:
    s = sub.add_parser("spans", help="n-block linear-replaceability heatmap (removing [a, a+n), own pass)",
                       description="For every start a >= 1 and length n: the share of the removal error of blocks "
                                   "[a, a+n) that one least-squares matrix on block a-1's MLP output cannot recover "
                                   "(docs/linear_replaceability.md). Writes {values[n-1][a], x, y, ...} as JSON.")
    add_model_args(s)
    add_calib_args(s)
    s.add_argument("--max-span", type=int, default=None, help="longest span n (default: all, L - 1)")
    s.add_argument("--max-mb", type=float, default=512,
                   help="accumulator memory per pass (a d x d float64 per start and length; more starts -> more passes)")
    s.add_argument("--out", required=True, help="spans.json to write")
    s.set_defaults(func=cmd_spans)
