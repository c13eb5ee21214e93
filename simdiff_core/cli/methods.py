"""CLI for the methods: ``plan --model ... --method M`` (in ``cli/core.py``) and the ``compare`` shoot-out.

    python -m simdiff_core plan --model default --method greedy --ratio 0.25 --out plan.json
    python -m simdiff_core plan --model default --method search --search local --budget 100 --num 8 --out p.json
    python -m simdiff_core plan --model default --method search --objective repaired_ppl --samples 16 --num 8 --out p.json
    python -m simdiff_core compare --model default --ratio 0.25 \\
        --methods oneshot:cosine,oneshot:simdiff,iterative:simdiff,greedy,block,slm --out results.csv

``compare`` writes results.csv (method, criterion, removed_layers, merged_groups, num_removed, ppl
[, accuracy, acc_norm], seconds, evals = candidate sets considered, exact_evals = those evaluated exactly),
results.md next to it (the Markdown table with the
protocol caption), and prints a JSON summary as the last stdout line.
"""

from __future__ import annotations

from pathlib import Path

from ..common.errors import SimDiffError


def add_method_args(p, with_method: bool = True) -> None:
    from ..evaluation.objectives import OBJECTIVES
    from ..methods import METHODS
    from ..methods.search import ALGORITHMS

    if with_method:
        p.add_argument("--method", default=None, choices=list(METHODS),
                       help="with --model: oneshot, iterative, greedy (SLEB), block (Gromov), slm (merging), search, "
                            "repairable (repair-aware: spans the lstsq repair can best undo)")
    p.add_argument("--objective", default="ppl", choices=list(OBJECTIVES),
                   help="what greedy/search minimise: calibration ppl; accuracy (shipped MC set, dev split); "
                        "repaired_ppl (repair-aware: perplexity after the lstsq repair fitted on the calibration "
                        "windows, measured on --holdout-samples held-out windows; docs/repair.md)")
    p.add_argument("--holdout-samples", type=int, default=8,
                   help="repaired_ppl: held-out windows the objective is measured on: the next N windows of --calib "
                        "after the --samples fit windows, same --seq-len (default 8)")
    p.add_argument("--objective-repair", default="lstsq", choices=["lstsq", "ridge", "rescale"],
                   help="repaired_ppl: the repair applied to every candidate set before it is measured (default lstsq; "
                        "ridge: cross-validated, safe on few fit tokens)")
    p.add_argument("--search", default="greedy", choices=list(ALGORITHMS), help="search algorithm (--method search)")
    p.add_argument("--budget", type=int, default=None,
                   help="max candidate sets considered by greedy/search (evaluated exactly or eliminated by a "
                        "proven bound; local/evolutionary default 100)")
    p.add_argument("--time-limit", type=float, default=None, help="max seconds for greedy/search")
    p.add_argument("--cost", default=None, choices=["relative", "absolute"],
                   help="repairable: span residual relative to ||h_b||^2 (default) or per token")
    p.add_argument("--threshold", type=float, default=None, help="slm: starting output-similarity threshold (default 0.9)")
    p.add_argument("--merge-base", default=None, choices=["lowest", "highest"],
                   help="slm: block of each window the deltas accumulate into (default lowest, as in the paper)")


def method_plan(args, lm=None):
    """Build the plan for ``plan --model M --method X`` (used by cli.cmd_plan)."""
    from ..methods import run_method
    from .common import calib_from_args, holdout_from_args, load_from_args, parse_alpha, progress_printer

    alpha = parse_alpha(args.alpha)
    if alpha == "auto":
        raise SimDiffError("--alpha auto works with the one-shot --scores path; give a number with --method")
    if not Path(args.out).resolve().parent.exists():
        raise SimDiffError(f"output directory does not exist: {Path(args.out).parent}")
    lm = lm or load_from_args(args)
    ids, calib = calib_from_args(args, lm)
    holdout = None
    if args.objective == "repaired_ppl" and args.method in ("greedy", "search"):
        holdout, calib["holdout"] = holdout_from_args(args, lm)
    return run_method(args.method, lm, ids, ratio=args.ratio, num=args.num, keep_first=args.keep_first,
                      keep_last=args.keep_last, progress=progress_printer(args.method), calibration=calib,
                      criterion=args.criterion, alpha=alpha, beta=args.beta, norm=args.norm,
                      scale_free=not args.raw, objective=args.objective, search=args.search, budget=args.budget,
                      seconds=args.time_limit, threshold=args.threshold,
                      merge_base=args.merge_base, cost=getattr(args, "cost", None), holdout_ids=holdout,
                      repair_method=args.objective_repair if holdout is not None else None)


def cmd_compare(args) -> int:
    from ..common.fileio import atomic_write_text
    from ..evaluation.evaluate import eval_windows, protocol_note
    from ..methods.compare import parse_specs, run_compare, to_markdown, write_csv
    from .common import calib_from_args, holdout_from_args, load_from_args, print_result, progress_printer

    specs = parse_specs(args.methods)
    out = Path(args.out)
    if not out.parent.exists():
        raise SimDiffError(f"output directory does not exist: {out.parent}")
    lm = load_from_args(args)
    ids, calib = calib_from_args(args, lm)
    holdout = None
    if args.objective == "repaired_ppl":
        holdout, calib["holdout"] = holdout_from_args(args, lm)
    eval_ids = eval_windows(lm.tokenizer, args.text, args.eval_seq_len, args.eval_windows)
    accuracy = args.accuracy or args.objective == "accuracy"
    res = run_compare(lm, ids, specs, ratio=args.ratio, num=args.num, eval_ids=eval_ids, accuracy=accuracy,
                      objective=args.objective, budget=args.budget, keep_first=args.keep_first,
                      keep_last=args.keep_last, calibration=calib, alpha=args.alpha,
                      progress=progress_printer("compare"), repair=args.repair, holdout_ids=holdout,
                      objective_repair=args.objective_repair)
    protocol = protocol_note(lm.tokenizer, args.text, args.eval_seq_len, args.eval_windows)
    caption = (f"{lm.name}, {res['k']} of {res['num_layers']} blocks removed. Calibration: {calib['description']}, "
               f"{args.samples} x {args.seq_len} tokens. Perplexity: {protocol}."
               + (" MC acc: shipped SimDiff MC set, test split (35 items), lm-eval-style log-likelihood." if accuracy else "")
               + f" Greedy/search objective: {args.objective}"
               + (f" (held-out: {calib['holdout']['description']})" if holdout is not None else "")
               + (f"; search budget {args.budget} evals." if args.budget else ".")
               + (f" Repaired: {args.repair} fitted on the calibration windows, same held-out perplexity."
                  if args.repair != "none" else ""))
    write_csv(res["rows"], out)
    md = out.with_suffix(".md")
    atomic_write_text(md, to_markdown(res, caption))
    print_result({"out": str(out), "markdown": str(md), "k": res["k"],
                  "rows": [{c: r.get(c) for c in ("method", "criterion", "removed_layers", "ppl", "ppl_repaired",
                                                  "accuracy") if c in r}
                           for r in res["rows"]]})
    return 0


def register(sub) -> None:
    from ..methods.compare import DEFAULT_SPECS
    from .common import add_calib_args, add_model_args, add_ratio_args

    s = sub.add_parser("compare", help="shoot-out: several methods/criteria, same model and ratio, one table",
                       description="Run several pruning methods at the same ratio and measure each pruned model "
                                   "(perplexity, optionally multiple-choice accuracy). Writes CSV and Markdown.")
    add_model_args(s)
    add_ratio_args(s)
    add_calib_args(s)
    s.add_argument("--methods", default=DEFAULT_SPECS,
                   help=f"comma-separated method[:criterion] or search:ALGO (default {DEFAULT_SPECS})")
    s.add_argument("--alpha", type=float, default=0.5, help="SimDiff alpha for simdiff rows")
    add_method_args(s, with_method=False)
    s.add_argument("--accuracy", action="store_true", help="also measure MC accuracy (shipped set, test split)")
    s.add_argument("--text", default="wikitext2", help="perplexity text (default: WikiText-2 test split)")
    s.add_argument("--eval-windows", type=int, default=8, help="perplexity windows (default 8)")
    s.add_argument("--eval-seq-len", type=int, default=256, help="perplexity window length (default 256)")
    s.add_argument("--out", required=True, help="results.csv to write (results.md is written next to it)")
    s.add_argument("--repair", default="none", choices=["none", "lstsq", "ridge", "rescale"],
                   help="also measure every pruned row after this training-free repair, fitted on the calibration "
                        "windows (a ppl_repaired column; docs/repair.md); default none")
    s.set_defaults(func=cmd_compare)
