"""CLI: ``damage``, ``agreement`` and ``report`` subcommands (ground truth for the curves).

    python -m simdiff_core damage    --model default --samples 8 --seq-len 256 --out damage.json \
                                     [--attach scores.json] [--plans a.json b.json]
    python -m simdiff_core agreement --scores scores.json --damage damage.json --ratio 0.25 [--alpha 0.5]
    python -m simdiff_core report    --scores scores.json --damage damage.json --plan plan.json \
                                     [--model default] --out report.html --figure fig.pdf
"""

from __future__ import annotations

import math

from .common import (add_calib_args, add_model_args, calib_from_args, load_from_args, parse_alpha, print_result,
                     progress_printer)
from ..common.errors import SimDiffError


def cmd_damage(args) -> int:
    from ..analysis.score import Scores
    from ..evaluation.damage import measure_damage
    from ..pruning.plan import Plan

    scores = Scores.load(args.attach) if args.attach else None
    plans = [(p, Plan.load(p)) for p in (args.plans or [])]
    lm = load_from_args(args)
    if scores is not None and scores.num_layers != lm.num_layers:
        raise SimDiffError(f"{args.attach} is for {scores.num_layers} blocks but the model has {lm.num_layers}")
    for p, plan in plans:
        plan.validate(lm.num_layers)
    ids, calib = calib_from_args(args, lm)
    dmg = measure_damage(lm, ids, batch_size=args.batch_size, progress=progress_printer("damage"),
                         calibration=calib)
    if plans:
        from ..evaluation.agreement import set_damage

        sets = {(plan.criterion or plan.method or p) + f" ({p})": plan.removed_layers for p, plan in plans}
        dmg.meta["sets"] = set_damage(lm, ids, sets, dmg, progress=progress_printer("sets"))
    dmg.save(args.out)
    if scores is not None:
        dmg.attach(scores).save(args.attach)
    worst = max(dmg.layers, key=lambda l: l["delta_loss"])
    least = min(dmg.layers[1:-1] or dmg.layers, key=lambda l: l["delta_loss"])
    print_result({"out": args.out, "num_layers": dmg.num_layers, "dense_ppl": dmg.dense_ppl,
                  "most_damaging_block": worst["index"], "least_damaging_inner_block": least["index"],
                  "seconds": dmg.meta["seconds"], "block_executions": dmg.meta["block_executions"],
                  "naive_block_executions": dmg.meta["naive_block_executions"]})
    return 0


def _load_damage(path, scores):
    from ..evaluation.damage_record import Damage

    if path:
        return Damage.load(path)
    return Damage.from_scores(scores)  # damage attached to the scores file, if any


def cmd_agreement(args) -> int:
    from ..analysis.score import Scores
    from ..evaluation.agreement import agreement_table

    scores = Scores.load(args.scores)
    dmg = _load_damage(args.damage, scores)
    if dmg is None:
        raise SimDiffError("no damage: give --damage damage.json (from 'damage') or a scores file with damage attached")
    alpha = parse_alpha(args.alpha)
    if alpha == "auto":
        raise SimDiffError("agreement needs a numeric --alpha")
    rows = agreement_table(scores, dmg, alpha=alpha, ratio=args.ratio, num=args.num,
                           keep_first=args.keep_first, keep_last=args.keep_last)
    if not args.json:
        for r in rows:
            extra = f"  top-{r['k']} overlap {r['topk_overlap']}/{r['k']}" if "k" in r else ""
            print(f"{r['criterion']:<20} spearman {r['spearman']:+.3f}  kendall {r['kendall']:+.3f}{extra}")
    print_result({"rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                           for r in rows]})
    return 0


def cmd_report(args) -> int:
    from ..analysis.score import Scores
    from ..export.report import FIGURE_FORMATS, write_figure, write_report
    from ..pruning.plan import Plan

    scores = Scores.load(args.scores)
    dmg = _load_damage(args.damage, scores)
    plan = Plan.load(args.plan) if args.plan else None
    if plan is not None:
        plan.validate(scores.num_layers)
    if args.figure and args.figure.rsplit(".", 1)[-1].lower() not in FIGURE_FORMATS:
        raise SimDiffError(f"--figure must end in .png, .pdf or .svg, got '{args.figure}'")
    alpha = None
    if args.alpha is not None:
        alpha = parse_alpha(args.alpha)
        if alpha == "auto":
            raise SimDiffError("report needs a numeric --alpha")
    ppl = None
    if args.ppl_before is not None:
        ppl = {"before": args.ppl_before, "after": args.ppl_after, "protocol": args.ppl_protocol}
    elif args.model and args.eval_windows > 0:
        from ..evaluation.evaluate import eval_windows, perplexity, protocol_note
        from ..pruning.build import build_pruned

        lm = load_from_args(args)
        if lm.num_layers != scores.num_layers:
            raise SimDiffError(f"scores are for {scores.num_layers} blocks but the model has {lm.num_layers}")
        ids = eval_windows(lm.tokenizer, args.text, args.eval_seq_len, args.eval_windows)
        before = perplexity(lm.model, ids, device=lm.device, progress=progress_printer("ppl dense"))["ppl"]
        after = None
        if plan is not None:
            after = perplexity(build_pruned(lm, plan), ids, device=lm.device,
                               progress=progress_printer("ppl pruned"))["ppl"]
        ppl = {"before": before, "after": after,
               "protocol": protocol_note(lm.tokenizer, args.text, args.eval_seq_len, args.eval_windows)}
    sets = dmg.meta.get("sets") if dmg is not None else None
    res = write_report(args.out, scores, damage=dmg, plan=plan, ppl=ppl, sets=sets, alpha=alpha,
                       ratio=args.ratio, title=args.title)
    if args.figure:
        res.update(write_figure(args.figure, scores, damage=dmg, plan=plan, alpha=alpha))
    if ppl:
        res.update(ppl_before=ppl["before"], ppl_after=ppl["after"])
    print_result(res)
    return 0


def register(sub) -> None:
    s = sub.add_parser(
        "damage", help="measure leave-one-out damage of every block (ground truth for the curves)",
        description="For each block i, the calibration loss and perplexity of the model with only block i removed. "
                    "Block inputs of one dense pass are cached, so the shared prefix is not re-run "
                    "(L + L(L-1)/2 block calls instead of L^2). Memory: (L+1) x batch x seq-len x hidden "
                    "activations; keep the calibration small.")
    add_model_args(s)
    add_calib_args(s)
    s.add_argument("--out", required=True, help="damage.json to write")
    s.add_argument("--attach", metavar="SCORES_JSON",
                   help="also store damage_loss/damage_ppl in this scores.json (rewritten in place)")
    s.add_argument("--plans", nargs="+", metavar="PLAN_JSON",
                   help="also measure the damage of removing each plan's whole set at once, next to the sum "
                        "of its single-block damages (stored in damage.json meta.sets and shown in the report)")
    s.set_defaults(func=cmd_damage)

    s = sub.add_parser(
        "agreement", help="Spearman/Kendall/top-k agreement of every criterion with measured damage",
        description="Compare each criterion's importance (cosine, BI, angular, MSSD, MASD, *_rel, SimDiff) "
                    "with measured leave-one-out damage. Needs no model.")
    s.add_argument("--scores", required=True, help="scores.json from 'score'")
    s.add_argument("--damage", help="damage.json from 'damage' (default: damage attached to the scores file)")
    s.add_argument("--alpha", default="0.5", help="SimDiff alpha in [0, 1] (default 0.5)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, help="pruning ratio for the top-k overlap column (k = round(R * L))")
    g.add_argument("--num", type=int, help="k for the top-k overlap column")
    s.add_argument("--no-keep-first", dest="keep_first", action="store_false", help="allow block 0 in the top-k")
    s.add_argument("--no-keep-last", dest="keep_last", action="store_false", help="allow the last block in the top-k")
    s.add_argument("--json", action="store_true", help="print only the JSON result line")
    s.set_defaults(func=cmd_agreement)

    s = sub.add_parser(
        "report", help="write a self-contained HTML report (and a publication figure)",
        description="One HTML file that opens offline (plotly.js inline): model, calibration protocol, curves, "
                    "heatmaps, damage agreement, plan, perplexity before/after. --figure also writes the main "
                    "figure as PNG/PDF/SVG in print style (kaleido; needs Chromium).")
    s.add_argument("--scores", required=True, help="scores.json from 'score'")
    s.add_argument("--damage", help="damage.json from 'damage' (default: damage attached to the scores file)")
    s.add_argument("--plan", help="plan.json: removed blocks are marked and the plan is listed")
    s.add_argument("--out", required=True, help="report.html to write")
    s.add_argument("--figure", help="also write the main figure to this .png, .pdf or .svg")
    s.add_argument("--alpha", default=None, help="SimDiff alpha for the curve (default: the plan's, else 0.5)")
    s.add_argument("--ratio", type=float, default=None,
                   help="pruning ratio for the top-k agreement column (default: the plan's)")
    s.add_argument("--title", default=None, help="report title")
    add_model_args(s, required=False)
    s.set_defaults(model=None)
    s.add_argument("--text", default="wikitext2", help="perplexity text when --model is given (default WikiText-2 test)")
    s.add_argument("--eval-windows", type=int, default=4,
                   help="perplexity windows when --model is given (0 = skip; default 4)")
    s.add_argument("--eval-seq-len", type=int, default=512, help="perplexity window length (default 512)")
    s.add_argument("--ppl-before", type=float, default=None, help="dense perplexity measured elsewhere (skips --model)")
    s.add_argument("--ppl-after", type=float, default=None, help="pruned perplexity measured elsewhere")
    s.add_argument("--ppl-protocol", default=None, help="how --ppl-before/--ppl-after were measured")
    s.set_defaults(func=cmd_report)

