# over 400 lines: the four core subcommands, each with its streamed and repaired path, in --help order
"""The core subcommands: ``score``, ``plan``, ``prune``, ``ppl`` (registered first, so ``--help`` lists them first).

    python -m simdiff_core score --model default --out scores.json     # also saved in the run library
    python -m simdiff_core plan  --scores scores.json --criterion simdiff --ratio 0.25 --out plan.json
    python -m simdiff_core prune --model default --plan plan.json --out pruned/ --zip
    python -m simdiff_core ppl   --model pruned/ --json

Each command is a thin wrapper over the library functions the app uses too; shared flags come from
``cli.common``. Cost: the import of argparse only; the library is imported inside each command.
"""

from __future__ import annotations

import argparse

import os
import sys
from pathlib import Path

from ..common.errors import SimDiffError
from .common import (add_calib_args, add_model_args, add_ratio_args, add_stream_args, calib_from_args, load_from_args,
                     parse_alpha, print_result, progress_line, progress_printer)


def _stream_tokenizer(args):
    """--stream: the model directory to stream and a stand-in 'lm' carrying only its tokenizer."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from ..models.streaming import resolve_stream_dir

    where = resolve_stream_dir(args.model)
    try:
        tok = AutoTokenizer.from_pretrained(str(where), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise SimDiffError(f"no usable tokenizer in '{where}': {str(e).splitlines()[0][:200]}") from None
    progress_line(f"streaming {where} one block at a time"
                  + (f" (memory budget {args.memory_budget_mb} MB)" if args.memory_budget_mb else ""), end=True)
    return where, SimpleNamespace(tokenizer=tok)


def cmd_score(args) -> int:
    import argparse

    models = args.model
    if getattr(args, "stream", False) and args.exclude_first_token:
        raise SimDiffError("--exclude-first-token is not available with --stream (streamed scores include position 0)")
    if len(models) > 1:
        if args.out:
            raise SimDiffError("--out takes one model; with several --model the runs go to the run library "
                               "(see 'simdiff runs list' and 'simdiff runs export')")
        if args.no_save:
            raise SimDiffError("--no-save with several --model would keep nothing: drop --no-save")
        if args.name:
            raise SimDiffError("--name names one run: give it with a single --model (or use 'simdiff runs rename')")
    elif args.out is None and args.no_save:
        raise SimDiffError("nothing would be kept: give --out scores.json, or drop --no-save to save the run "
                           "in the run library")
    results = [_score_one(argparse.Namespace(**{**vars(args), "model": m})) for m in models]
    print_result(results[0] if len(results) == 1 else {"gallery": results})
    return 0


def _from_library(info) -> None:
    progress_line(f"from the run library, computed {info.created} (run {info.id}; --recompute to score again)",
                  end=True)


def _score_one(args) -> dict:
    """Score one model (or reuse its stored run); returns the result line's dict."""
    from ..analysis.score import protocol

    store = None
    if not args.no_save:
        from ..runs import RunStore

        store = RunStore()
    if getattr(args, "stream", False):
        scores, run_id, hit = _score_streamed(args, store)
    else:
        from ..workflows import calibrate_stored

        lm = load_from_args(args)
        if store is None:
            from ..workflows import calibrate

            scores, _, _ = calibrate(lm, args.calib, args.samples, args.seq_len, batch_size=args.batch_size,
                                     matrix_tokens=args.matrix_tokens, progress=progress_printer("score"),
                                     first_token=not args.exclude_first_token, linear=args.linear is not False,
                                     linear_max_mb=args.linear_max_mb)
            run_id, hit = None, None
        else:
            scores, _, info = calibrate_stored(lm, args.calib, args.samples, args.seq_len, store=store,
                                               recompute=args.recompute, name=args.name,
                                               batch_size=args.batch_size, matrix_tokens=args.matrix_tokens,
                                               progress=progress_printer("score"),
                                               first_token=not args.exclude_first_token, linear=args.linear is not False,
                                               linear_max_mb=args.linear_max_mb)
            run_id, hit = info["run_id"], info["from_store"]
    if hit is not None:
        _from_library(hit)
    if args.out:
        scores.save(args.out)
    if args.pin and run_id and store is not None and not store.readonly:
        store.pin(run_id, True)
    res = {"out": args.out, "model": args.model, "num_layers": scores.num_layers,
           "seconds": scores.meta.get("seconds"), "protocol": protocol(scores.calibration), "run_id": run_id,
           "from_library": hit.created if hit is not None else None}
    if "stream" in scores.meta:
        res["stream"] = scores.meta["stream"]
    return res


def _score_streamed(args, store):
    """--stream: the key comes from samples of the weight files (runs.files_fingerprint), not a loaded model."""
    from ..analysis.streaming import stream_score

    where, lm = _stream_tokenizer(args)
    ids, calib = calib_from_args(args, lm)
    key = settings = None
    if store is not None:
        from ..models.device import pick_device, pick_dtype
        from ..runs import files_fingerprint, run_key, scoring_options, tokens_hash

        dev = pick_device(args.device)
        settings = {"weights": files_fingerprint(where), "tokens": tokens_hash(ids),
                    "options": scoring_options(ids=ids, matrix_tokens=args.matrix_tokens, first_token=True,
                                               batch_size=args.batch_size, device=dev,
                                               dtype=pick_dtype(args.dtype, dev), stream=True,
                                               linear=bool(args.linear))}
        key = run_key(**settings)
        hit = None if args.recompute else store.lookup(key)
        if hit is not None:
            try:
                return store.open(hit.id).scores, hit.id, hit
            except SimDiffError:
                pass  # unreadable: score again and replace it
    scores = stream_score(where, ids, memory_budget_mb=args.memory_budget_mb, device=args.device,
                          dtype=args.dtype, batch_size=args.batch_size, matrix_tokens=args.matrix_tokens,
                          progress=progress_printer("score"), calibration=calib, source=args.model,
                          linear=bool(args.linear), linear_bands=bool(args.linear))
    run_id = None
    if store is not None and not store.readonly:
        from ..runs import run_meta

        run_id = store.save(scores, meta=run_meta(scores, settings), key=key, name=args.name, replace=args.recompute)
    return scores, run_id, None


def cmd_plan(args) -> int:
    from ..analysis.score import Scores
    from ..pruning.plan import make_plan

    if args.stability and (args.stability < 2 or (args.method not in (None, "oneshot"))):
        raise SimDiffError("--stability needs N >= 2 resamples and a one-shot plan from --scores")
    if args.method is not None and (args.method != "oneshot" or args.scores is None):
        if args.model is None:
            raise SimDiffError(f"--method {args.method} runs the model: give --model too")
        from .methods import method_plan

        plan = method_plan(args)
        plan.save(args.out)
        print_result({"out": args.out, "method": plan.method, "removed_layers": plan.removed_layers,
                      "kept_layers": plan.kept_layers, "merged_groups": plan.merged_groups,
                      "seconds": plan.details.get("seconds")})
        return 0
    if args.scores is None:
        raise SimDiffError("plan needs --scores scores.json (or --model with --method; see --help)")
    scores = Scores.load(args.scores)
    alpha = parse_alpha(args.alpha)
    fusion = {"norm": args.norm, "scale_free": not args.raw, "beta": 0.5 if args.beta is None else args.beta}
    choice = None
    if alpha == "auto":
        if args.criterion != "simdiff":
            raise SimDiffError("--alpha auto only applies to --criterion simdiff")
        if args.model is None:
            raise SimDiffError("--alpha auto evaluates candidate prunings: give --model too")
        from ..workflows import choose_alpha

        lm = load_from_args(args)
        if lm.num_layers != scores.num_layers:
            raise SimDiffError(f"scores are for {scores.num_layers} blocks but the model has {lm.num_layers}")
        ids, _ = calib_from_args(args, lm)
        # With --beta left unset, auto also tries an all-MSSD and an all-MASD difference view.
        choice = choose_alpha(lm, scores, ids, ratio=args.ratio, num=args.num, keep_first=args.keep_first,
                              keep_last=args.keep_last, tune_beta=args.beta is None, beta=fusion.pop("beta"),
                              progress=progress_printer("alpha"), **fusion)
        alpha, fusion["beta"] = choice.alpha, choice.beta
    plan = make_plan(scores, args.criterion, ratio=args.ratio, num=args.num, alpha=alpha,
                     keep_first=args.keep_first, keep_last=args.keep_last, **fusion)
    if choice is not None:
        plan.details["auto_alpha"] = choice.record()
    result = {"out": args.out, "removed_layers": plan.removed_layers, "kept_layers": plan.kept_layers,
              "alpha": plan.alpha}
    if args.stability:
        from ..pruning.stability import plan_stability

        stab = plan_stability(scores, args.criterion, num=plan.num_removed, alpha=plan.alpha,
                              keep_first=args.keep_first, keep_last=args.keep_last, n_boot=args.stability,
                              seed=args.seed, **fusion)
        plan.details["stability"] = stab.to_dict()
        result["stability"] = {"frequency": {str(i): round(f, 4) for i, f in enumerate(stab.frequency) if f > 0},
                               "unstable": stab.unstable, "stable": stab.stable, "resamples": stab.n_boot,
                               "seed": stab.seed}
        for i, f in enumerate(stab.frequency):
            if f > 0:
                print(f"block {i:3d}: removed in {100 * f:5.1f}% of {stab.n_boot} resamples"
                      f"{'  (in plan)' if i in plan.removed_layers else ''}", file=sys.stderr)
        if not stab.stable:
            print(f"warning: unstable plan: blocks {stab.unstable} are removed in fewer than "
                  f"{100 * stab.threshold:.0f}% of the resamples", file=sys.stderr)
    plan.save(args.out)
    print_result(result)
    return 0


def cmd_prune(args) -> int:
    from ..analysis.score import Scores
    from ..models.device import pick_dtype
    from ..pruning.plan import Plan
    from ..workflows import evaluate_plan, export_and_record

    plan = Plan.load(args.plan)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not args.force:
        raise SimDiffError(f"'{args.out}' already exists; use --force to replace it")
    if getattr(args, "stream", False):
        return _prune_streamed(args, plan, out)
    scores = Scores.load(args.scores) if args.scores else None
    lm = load_from_args(args)
    plan.validate(lm.num_layers)
    if args.repair != "none":  # refuse before minutes of perplexity passes, not after
        from ..repair import RepairRefused, refusal

        if refusal(lm.model, args.repair):
            raise RepairRefused(refusal(lm.model, args.repair))
    evaluation = None
    if args.eval_windows > 0:
        evaluation = evaluate_plan(lm, plan, args.eval_windows, args.eval_seq_len, text=args.text,
                                   progress=progress_printer("ppl dense/pruned"))
    dtype = pick_dtype(args.out_dtype) if args.out_dtype else None
    if args.repair != "none":
        path, report = _prune_repaired(args, lm, plan, out, evaluation, scores, dtype)
    else:
        path, report = export_and_record(lm, plan, out, evaluation=evaluation, scores=scores, force=args.force,
                                         make_zip=args.zip, dtype=dtype)
    result = {"out": str(path), "num_layers": len(plan.kept_layers), **report.to_dict().get("evaluation", {})}
    if "repair" in report.extra:
        r = report.extra["repair"]
        result.update(repair=r["method"], ppl_repaired=r["evaluation"]["held_out"]["repaired"],
                      ppl_calib_pruned=r["evaluation"]["calibration"]["pruned"],
                      ppl_calib_repaired=r["evaluation"]["calibration"]["repaired"],
                      improves_held_out=r["evaluation"]["improves_held_out"], verdict=r["evaluation"]["verdict"])
    if args.zip:
        result["zip"] = str(path.with_suffix(".zip"))
    print_result(result)
    return 0


def _prune_streamed(args, plan, out) -> int:
    """prune --stream: copy the kept blocks' tensors shard by shard (export/streamed.py), never load the model."""
    from ..export.checkpoint import zip_dir
    from ..export.streamed import stream_export
    from ..models.device import pick_dtype
    from ..models.streaming import resolve_stream_dir

    if plan.merged_groups:
        raise SimDiffError("--stream cannot merge blocks (merging needs their weights in memory); "
                           "use a plan without merged groups or prune without --stream")
    where = resolve_stream_dir(args.model)
    dtype = pick_dtype(args.out_dtype) if args.out_dtype else None
    progress_line(f"streamed prune of {where}: {len(plan.kept_layers)} of {plan.num_layers} blocks kept"
                  + (f" (memory budget {args.memory_budget_mb} MB)" if args.memory_budget_mb else ""), end=True)
    if args.eval_windows > 0:
        progress_line("note: --stream writes no perplexity into the report; measure the output with "
                      "'ppl --model OUT --stream'", end=True)
    method = getattr(args, "repair", "none") or "none"
    ids, calib = None, None
    if method != "none":
        from .common import calib_from_args

        _, tok = _stream_tokenizer(args)
        ids, calib = calib_from_args(args, tok)
    res = stream_export(where, plan, out, out_dtype=dtype, memory_budget_mb=args.memory_budget_mb, force=args.force,
                        repair=method, windows=ids, calibration=calib, device=args.device, dtype=args.dtype,
                        batch_size=getattr(args, "batch_size", None), source=args.model,
                        progress=progress_printer("repair fit, then prune" if method != "none" else "prune"))
    if method != "none":
        progress_line(f"repair: {res.pop('repair_summary')}", end=True)
        progress_line("note: the streamed repair is not checked on held-out text here; compare 'ppl --stream' of "
                      "this output with the unrepaired prune before calling it an improvement", end=True)
    if args.zip:
        res["zip"] = str(zip_dir(out, Path(out).with_suffix(".zip"), force=True))
    print_result(res)
    return 0


def _prune_repaired(args, lm, plan, out, evaluation, scores, dtype):
    """prune --repair: fit on the calibration windows, check on them and on the held-out text, export."""
    from ..common.records import ExportReport
    from ..evaluation.evaluate import eval_windows, protocol_note
    from ..evaluation.honest import second_domain_text, second_domain_windows
    from ..evaluation.repaired import evaluate_repair
    from ..export.checkpoint import export_pruned
    from ..pruning.build import build_pruned
    from ..repair import apply_repair, fit_repair

    if plan.merged_groups:
        raise SimDiffError("--repair needs a plan without merged groups (the fit assumes the kept blocks are unchanged)")
    if args.eval_windows <= 0:
        raise SimDiffError("--repair always measures held-out perplexity before and after: --eval-windows must be > 0")
    ids, calib = calib_from_args(args, lm)
    rep = fit_repair(lm, plan.removed_layers, ids, method=args.repair, calibration=calib,
                     progress=progress_printer(f"repair {args.repair}"))
    pruned = build_pruned(lm, plan)
    repaired = apply_repair(pruned, rep)
    held = eval_windows(lm.tokenizer, args.text, args.eval_seq_len, args.eval_windows)
    # a text of another domain than the calibration and held-out ones: held-out text of the same corpus shares
    # its format, so a repair can look better there than it is (evaluation/honest.py)
    spec = second_domain_text(args.calib, args.text)
    second, second_protocol = second_domain_windows(lm.tokenizer, spec, args.eval_seq_len, args.eval_windows)
    ev = evaluate_repair(rep, pruned, repaired, ids, held,
                         held_protocol=protocol_note(lm.tokenizer, args.text, args.eval_seq_len, args.eval_windows),
                         progress=progress_printer("repair check"), second_ids=second, second_protocol=second_protocol,
                         dense=lm.model)
    if not (ev["improves_held_out"] and ev.get("improves_second_domain", True)):
        print(f"warning: {ev['verdict']}", file=sys.stderr)
    report = ExportReport.build(lm, plan, evaluation=evaluation, scores=scores, extra={"repair": rep.to_dict()})
    path = export_pruned(lm, plan, out, force=args.force, make_zip=args.zip, report=report, dtype=dtype,
                         model=repaired)
    return path, report


def cmd_ppl(args) -> int:
    from ..evaluation.evaluate import eval_windows, perplexity, protocol_note
    from ..pruning.build import build_pruned
    from ..pruning.plan import Plan

    if getattr(args, "stream", False):
        from ..evaluation.streaming import stream_perplexity

        if args.plan:
            raise SimDiffError("--stream measures the model as saved; export the pruned model first (prune) "
                               "and stream that directory")
        where, lm = _stream_tokenizer(args)
        ids = eval_windows(lm.tokenizer, args.text, args.seq_len, args.windows)
        res = stream_perplexity(where, ids, memory_budget_mb=args.memory_budget_mb, device=args.device,
                                dtype=args.dtype, batch_size=args.batch_size or 2, progress=progress_printer("ppl"))
        res["protocol"] = protocol_note(lm.tokenizer, args.text, args.seq_len, args.windows)
        if args.json:
            print_result(res)
        else:
            print(f"ppl {res['ppl']:.3f} over {res['tokens']} tokens ({res['protocol']}; streamed, "
                  f"peak weights {res['stream']['peak_weights_mb']:.1f} MB)")
        return 0
    lm = load_from_args(args)
    model = lm.model
    if args.plan:
        model = build_pruned(lm, Plan.load(args.plan))
    ids = eval_windows(lm.tokenizer, args.text, args.seq_len, args.windows)
    res = perplexity(model, ids, batch_size=args.batch_size or 2, device=lm.device, progress=progress_printer("ppl"))
    res["protocol"] = protocol_note(lm.tokenizer, args.text, args.seq_len, args.windows)
    if args.json:
        print_result(res)
    else:
        print(f"ppl {res['ppl']:.3f} over {res['tokens']} tokens ({res['protocol']})")
    return 0


def register(sub) -> None:
    s = sub.add_parser("score", help="score every block on calibration text (one streaming pass)",
                       description="Score every decoder block (cosine, BI, angular, MSSD, MASD, SimDiff) and the "
                                   "cross-layer matrices. The run is saved in the run library ($SIMDIFF_HOME, see "
                                   "'runs'); scoring the same weights on the same tokens with the same options "
                                   "again reuses it.")
    add_model_args(s, several=True)
    add_calib_args(s)
    s.add_argument("--matrix-tokens", type=int, default=256, help="token subsample for the cosine/CKA heatmaps")
    s.add_argument("--exclude-first-token", action="store_true",
                   help="leave position 0 (BOS, massive activation) out of the per-block metrics (default: "
                        "included, as ShortGPT's BI; the heatmaps always use positions 1..S-1)")
    s.add_argument("--linear", action=argparse.BooleanOptionalAction, default=None,
                   help="the linear-replaceability curve and its band pass (default: on in memory; off with --stream, "
                        "where it costs a d x d eigen-solve per block: --stream --linear turns it on)")
    s.add_argument("--linear-max-mb", type=float, default=None,
                   help="cap on the linear curve's in-memory accumulators, 2 x L x d^2 float64 (default 1024; "
                        "over it the curve is left out with the reason; --stream needs no cap)")
    s.add_argument("--out", default=None, help="scores.json to write (one model; the run library keeps the run too)")
    s.add_argument("--no-save", action="store_true",
                   help="do not use the run library: neither reuse a stored run nor save this one")
    s.add_argument("--recompute", action="store_true",
                   help="score again even when the run library holds a run with the same key (the new scores "
                        "replace it, under the same run id)")
    s.add_argument("--name", default=None, help="a name for the saved run (shown by 'runs list' and the Runs page)")
    s.add_argument("--pin", action="store_true", help="pin the saved run(s): the library's size cap never evicts them")
    add_stream_args(s)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("plan", help="choose blocks to remove (from scores, or by a method on a model)",
                       description="One-shot plan from --scores by a criterion, or --model with --method "
                                   "(oneshot, iterative, greedy, block, slm, search).")
    from .methods import add_method_args

    add_method_args(s)
    s.add_argument("--scores", help="scores.json from 'score'")
    s.add_argument("--criterion", default="simdiff", help="simdiff, cosine, bi, angular, mssd, masd, mssd_rel, masd_rel, linear "
                                                         "(linear replaceability: needs scores that carry it)")
    s.add_argument("--alpha", default="0.5", help="SimDiff similarity weight in [0, 1], or 'auto' (needs --model)")
    s.add_argument("--beta", type=float, default=None,
                   help="SimDiff MSSD share of the difference view (default 0.5; with --alpha auto and no --beta, "
                        "beta is tuned over 0, 0.5, 1 too)")
    s.add_argument("--norm", default="rank", choices=["rank", "robust"], help="SimDiff per-signal normalisation")
    s.add_argument("--raw", action="store_true", help="fuse raw MSSD/MASD instead of the scale-free variants")
    s.add_argument("--stability", type=int, default=0, metavar="N",
                   help="also report how often each block is removed when the plan is made from N bootstrap "
                        "resamples of the calibration windows (needs scores with per-window statistics)")
    s.add_argument("--seed", type=int, default=0, help="seed of the --stability resampling (default 0)")
    add_ratio_args(s)
    add_model_args(s, required=False)
    s.set_defaults(model=None)
    add_calib_args(s)
    s.add_argument("--out", required=True, help="plan.json to write")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("prune", help="export a pruned checkpoint from a plan",
                       description="Apply a plan and export a checkpoint loadable by plain transformers (atomic write).")
    add_model_args(s)
    s.add_argument("--plan", required=True, help="plan.json")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--force", action="store_true", help="replace an existing output directory")
    s.add_argument("--zip", action="store_true", help="also write OUT.zip for download")
    s.add_argument("--scores", help="include this scores.json in the report")
    s.add_argument("--out-dtype", default=None, help="dtype of the exported weights (default: as loaded)")
    s.add_argument("--text", default="wikitext2", help="perplexity text for the report (default: WikiText-2 test)")
    s.add_argument("--eval-windows", type=int, default=8, help="perplexity windows for the report (0 = skip)")
    s.add_argument("--eval-seq-len", type=int, default=512, help="perplexity window length for the report")
    add_stream_args(s, what="prune: copy the kept blocks' tensors shard by shard, never loading the model "
                            "(no report perplexity; run 'ppl --stream' on the output)")
    s.add_argument("--repair", default="none", choices=["none", "lstsq", "ridge", "rescale"],
                   help="training-free repair folded into the exported weights (docs/repair.md): lstsq (ReplaceMe "
                        "linear map per removed span), ridge (lstsq regularised towards no change, strength chosen by "
                        "cross-validation over the calibration windows: safe with few tokens), rescale (per-channel "
                        "magnitude compensation); default none")
    s.add_argument("--calib", default="wikitext2",
                   help="--repair calibration text (default wikitext2: the shipped validation split; same forms as "
                        "score --calib)")
    s.add_argument("--samples", type=int, default=16, help="--repair calibration windows (default 16)")
    s.add_argument("--seq-len", type=int, default=256, help="--repair tokens per calibration window (default 256)")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("ppl", help="perplexity of a model (optionally with a plan applied)",
                       description="Perplexity on non-overlapping windows (default: WikiText-2 test, 16 x 512 tokens).")
    add_model_args(s)
    s.add_argument("--text", default="wikitext2", help="wikitext2 (test split), a file path, text:RAW, hf:DATASET/SPLIT")
    s.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    s.add_argument("--windows", type=int, default=16, help="number of windows (default 16)")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--plan", help="apply this plan (prune in memory) before measuring")
    s.add_argument("--json", action="store_true", help='print {"ppl": ..., "tokens": ...} as the last line')
    add_stream_args(s)
    s.set_defaults(func=cmd_ppl)
