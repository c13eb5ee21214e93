"""CLI: ``recover`` (LoRA healing of a pruned model) and ``evaluate`` (downstream accuracy).

    python -m simdiff_core recover  --model pruned/ --calib wikitext2 --steps 40 --rank 8 --out recovered/
    python -m simdiff_core recover  --model default --plan plan.json --calib wikitext2 --out recovered/
    python -m simdiff_core evaluate --model recovered/ --tasks arc_easy,piqa,hellaswag --json
    python -m simdiff_core evaluate --model default --plan plan.json --tasks all --json   # + % retained

``recover`` exports the merged checkpoint (loads with plain transformers, no peft) with
``simdiff_report.json`` holding the recovery report (loss curve, ppl dense / pruned / recovered).
With ``--plan`` the dense model is given the same LoRA run as the fair reference (``ppl_dense_lora``),
and every perplexity is also measured on a second-domain text (``second_domain``); the flags in
``evaluation.honesty`` say when a number only looks good on the training corpus' domain
(``evaluation/honest.py``).
``evaluate`` prints ``{"tasks": {name: accuracy}, "average": ..., "source": "lm-eval"|"offline", ...}``
as the last stdout line; with ``--plan`` (or ``--baseline MODEL``) also ``retained_pct``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .common import (add_calib_args, add_model_args, calib_from_args, load_from_args, print_result, progress_line,
                     progress_printer)
from ..common.errors import SimDiffError


def _identity_plan(lm, source_dir: str | None):
    """A no-removal plan over the loaded (already pruned) model, remembering where it came from."""
    from ..pruning.plan import Plan

    details = {"recovered_from": lm.source}
    if source_dir:
        try:
            details["source_plan"] = json.loads((Path(source_dir) / "plan.json").read_text())
        except (OSError, ValueError):
            pass
    return Plan(model=lm.source, num_layers=lm.num_layers, removed_layers=[], method="recovery", details=details)


def cmd_recover(args) -> int:
    from ..evaluation.recover import RecoveryConfig, recover
    from ..models.device import pick_dtype
    from ..pruning.plan import Plan
    from ..workflows import export_and_record, recover_and_compare

    cfg = RecoveryConfig(steps=args.steps, rank=args.rank, lr=args.lr, lora_alpha=args.lora_alpha,
                         batch_size=args.batch_size or 2, seed=args.seed,
                         target_modules=[t.strip() for t in args.target_modules.split(",") if t.strip()]
                         if args.target_modules else None)
    cfg.validate()
    plan = Plan.load(args.plan) if args.plan else None
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not args.force:
        raise SimDiffError(f"'{args.out}' already exists; use --force to replace it")
    lm = load_from_args(args)
    if plan is not None:
        plan.validate(lm.num_layers)
        if plan.merged_groups:
            raise SimDiffError("recover --plan supports block-removal plans; export the merged model first "
                               "with 'prune' and recover that directory")
    else:
        plan = _identity_plan(lm, args.model if os.path.isdir(args.model) else None)
    ids, calib = calib_from_args(args, lm)

    def printer(label):
        def progress(step, total, loss):
            if step == 1 or step == total or step % max(1, total // 10) == 0:
                progress_line(f"[{label}] step {step}/{total} loss {loss:.4f}")
        return progress

    kept = plan.kept_layers if plan.removed_layers else None
    evaluation = None
    if args.eval_windows > 0:
        second = None if args.second_text == "none" else args.second_text
        res, evaluation = recover_and_compare(lm, kept, ids, calib, cfg, eval_text=args.text,
                                              eval_windows=args.eval_windows, eval_seq_len=args.eval_seq_len,
                                              second_text=second, dense_reference=args.dense_reference,
                                              progress=printer("recover"), dense_progress=printer("dense + same LoRA"))
        for msg in evaluation.honesty["messages"]:
            progress_line(f"note: {msg}", end=True)
    else:
        res = recover(lm, kept, ids, cfg, progress=printer("recover"))
        res.report["calibration"] = calib
    dtype = pick_dtype(args.out_dtype) if args.out_dtype else None
    path, report = export_and_record(lm, plan, out, evaluation=evaluation, recovery=res.report, force=args.force,
                                     make_zip=args.zip, dtype=dtype, model=res.model)
    result = {"out": str(path), "num_layers": res.report["num_layers"], "steps": cfg.steps, "rank": cfg.rank,
              "train_loss_before": res.report["train_loss_before"], "train_loss_after": res.report["train_loss_after"],
              **report.to_dict().get("evaluation", {}), "seconds": res.report["seconds"]}
    if evaluation is not None:
        result["flags"] = evaluation.honesty["flags"]
    if args.zip:
        result["zip"] = str(path.with_suffix(".zip"))
    print_result(result)
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluation.downstream import evaluate_tasks, parse_tasks, retained
    from ..pruning.build import build_pruned
    from ..pruning.plan import Plan

    tasks = parse_tasks(args.tasks)
    if args.limit is not None:
        if not args.limit > 0:
            raise SimDiffError(f"--limit must be > 0 (got {args.limit})")
        args.limit = int(args.limit) if args.limit >= 1 else args.limit
    if args.batch_size < 1:
        raise SimDiffError(f"--batch-size must be >= 1 (got {args.batch_size})")
    plan = Plan.load(args.plan) if args.plan else None
    split = None if args.split == "all" else args.split
    lm = load_from_args(args)
    kw = dict(mode=args.mode, limit=args.limit, split=split, batch_size=args.batch_size)
    model = lm.model
    baseline = None
    if plan is not None:
        plan.validate(lm.num_layers)
        baseline = evaluate_tasks(lm.model, lm.tokenizer, tasks, progress=progress_printer("eval dense"), **kw)
        model = build_pruned(lm, plan)
    elif args.baseline:
        from ..models.load import load_model

        progress_line(f"loading baseline {args.baseline} ...", end=True)
        base = load_model(args.baseline, device=args.device, dtype=args.dtype,
                          trust_remote_code=args.trust_remote_code)
        baseline = evaluate_tasks(base.model, base.tokenizer, tasks, progress=progress_printer("eval baseline"), **kw)
        del base
    res = evaluate_tasks(model, lm.tokenizer, tasks, progress=progress_printer("eval"), **kw)
    res.pop("samples", None)
    res["model"] = args.model
    if baseline is not None:
        res["baseline"] = {"model": args.baseline or f"{args.model} (dense, before the plan)",
                           "tasks": baseline["tasks"], "average": baseline["average"]}
        res["retained_pct"] = retained(baseline, res)
    if args.json:
        print_result(res)
    else:
        for name, acc in res["tasks"].items():
            print(f"{name:16s} {100 * acc:6.2f}  ({res['details'][name]['metric']}, n={res['details'][name]['n']})")
        print(f"{'average':16s} {100 * res['average']:6.2f}  [{res['source']}: {res['engine']}]")
        if res.get("retained_pct") is not None:
            print(f"{'% retained':16s} {res['retained_pct']:6.2f}  (vs {res['baseline']['model']})")
        if res["source"] == "offline":
            print(res["note"])
    return 0


def register(sub) -> None:
    s = sub.add_parser("recover", help="LoRA-recover a pruned model on calibration text and export it merged",
                       description="Short LoRA fine-tune (peft) of a pruned model on calibration text; the adapters "
                                   "are merged into the weights and the checkpoint is exported with its report.")
    add_model_args(s)
    s.add_argument("--plan", help="prune --model in memory with this plan first (else --model is already pruned)")
    add_calib_args(s)
    s.set_defaults(samples=32, seq_len=128)
    s.add_argument("--steps", type=int, default=40, help="optimizer steps (default 40)")
    s.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    s.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3; warm-up + cosine)")
    s.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    s.add_argument("--target-modules", default=None,
                   help="comma-separated linear layer names inside the blocks (default: all, e.g. q_proj..down_proj)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--text", default="wikitext2", help="held-out perplexity text (default: WikiText-2 test)")
    s.add_argument("--eval-windows", type=int, default=4, help="perplexity windows for the report (0 = skip)")
    s.add_argument("--eval-seq-len", type=int, default=256, help="perplexity window length for the report")
    s.add_argument("--second-text", default="auto",
                   help="second-domain perplexity text beside --text: auto (the shipped code sample, or the "
                        "dialogue one when code is the training or evaluation text), shipped:code, "
                        "shipped:dialogue, a path, or none")
    s.add_argument("--no-dense-reference", dest="dense_reference", action="store_false",
                   help="skip training the dense model the same way (the fair reference; needs --plan; "
                        "costs a second LoRA run of the full-depth model)")
    s.add_argument("--out", required=True, help="output directory for the merged checkpoint")
    s.add_argument("--force", action="store_true", help="replace an existing output directory")
    s.add_argument("--zip", action="store_true", help="also write OUT.zip")
    s.add_argument("--out-dtype", default=None, help="dtype of the exported weights (default: as loaded)")
    s.set_defaults(func=cmd_recover)

    s = sub.add_parser("evaluate", help="zero-shot downstream accuracy (lm-eval; offline: shipped MC set)",
                       description="Accuracy per task with lm-evaluation-harness on the in-memory model. Without "
                                   "the Hugging Face hub, the shipped multiple-choice set is scored through lm-eval "
                                   "local tasks instead, and the result says source: offline.")
    add_model_args(s)
    s.add_argument("--tasks", default="all",
                   help="comma-separated: boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa "
                        "(default all), or offline names mc_science,mc_world,mc_physical,mc_completion / 'offline'")
    s.add_argument("--plan", help="evaluate the model pruned in memory by this plan (and the dense one, for %% retained)")
    s.add_argument("--baseline", help="also evaluate this (dense) model and report %% retained")
    s.add_argument("--mode", default="auto", choices=["auto", "lm-eval", "offline"],
                   help="auto: standard tasks when the hub is reachable, else the shipped set")
    s.add_argument("--limit", type=float, default=None, help="items per task (lm-eval limit; <1 = fraction)")
    s.add_argument("--split", default="test", choices=["test", "dev", "all"], help="offline set split (default test)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--json", action="store_true", help="print the result JSON as the last stdout line")
    s.set_defaults(func=cmd_evaluate)
