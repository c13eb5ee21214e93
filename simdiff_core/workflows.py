"""One function per workflow that both the app pages and the CLI run, so neither re-implements it.

    from simdiff_core.workflows import calibrate, choose_alpha, evaluate_plan, export_and_record
    scores, ids, info = calibrate(lm, "wikitext2", samples=8, seq_len=256)
    scores, ids, info = calibrate_stored(lm, "wikitext2", 8, 256)   # through the run library (info["from_store"])
    choice = choose_alpha(lm, scores, ids, num=7)                     # AlphaChoice: alpha, beta, ppl, trials
    ev = evaluate_plan(lm, plan, windows=8, seq_len=256)              # records.Evaluation, dense vs pruned
    out, report = export_and_record(lm, plan, "exports/x", evaluation=ev, scores=scores)

Why: the Export page and ``simdiff prune`` used to evaluate and write the report each their own way
(two report shapes, see ``common/records.py``). Pages call these and only render; the CLI calls these and only
parses flags. Cost: exactly the forward passes named (no hidden extra evaluation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .common.progress import Progress
from .common.records import Evaluation, ExportReport


def _sub(progress: Progress | None, lo: float, hi: float, label: str) -> Progress | None:
    if progress is None:
        return None
    return lambda f, m="": progress(lo + (hi - lo) * min(max(f, 0.0), 1.0), f"{label}: {m}")


def eval_batch_size(device) -> int:
    """Windows per perplexity batch: 4 on a GPU, 2 on a CPU (full-vocabulary logits are the cost)."""
    return 4 if torch.device(device).type == "cuda" else 2


def calibrate(lm, source, samples: int, seq_len: int, progress: Progress | None = None,
              batch_size: int | None = None, matrix_tokens: int = 256, first_token: bool = True, should_stop=None,
              on_batch=None, windows=None, linear: bool = True, linear_max_mb: float | None = None):
    """Score every block of ``lm`` on ``samples`` windows of ``seq_len`` tokens of ``source``.

    ``source`` is a ``data.TextSource`` or a spec (``wikitext2``, a path, ``text:...``, ``hf:...``).
    ``first_token`` counts position 0 in the block metrics and ``on_batch`` receives the partial Scores
    after every batch (see score.score_model); ``windows`` may pass the windows already cut from
    ``source`` (the app keeps them for partial scores). Returns (Scores,
    the calibration windows, an info dict: source, samples, seq_len, seconds, forward_seconds).
    """
    from .analysis.score import score_model
    from .data.text import load_text, make_windows

    t0 = time.perf_counter()
    src = load_text(source, purpose="calib") if isinstance(source, str) else source
    ids = make_windows(lm.tokenizer, src, int(samples), int(seq_len)) if windows is None else windows
    kw = {"should_stop": should_stop} if should_stop is not None else {}
    if on_batch is not None:
        kw["on_batch"] = on_batch
    calib = {"source": source, "description": src.description} if isinstance(source, str) else \
        {"source": src.description}
    scores = score_model(lm, ids, batch_size=batch_size, matrix_tokens=matrix_tokens, progress=progress,
                         calibration=calib, first_token=first_token, linear=linear, linear_max_mb=linear_max_mb,
                         linear_bands=linear, **kw)
    return scores, ids, calibration_info(src.description, ids, time.perf_counter() - t0, scores.meta["seconds"])


def calibration_info(source: str, windows, seconds: float, forward_seconds: float, **extra) -> dict:
    """What a calibration was, one shape everywhere (``calibrate``, the app's streamed and cancelled passes):
    the text's description, ``windows``' samples × seq_len, wall seconds (rounded to 0.1), the forward
    pass's seconds, and ``extra`` (the app's ``streamed`` details, a cancelled pass's ``partial``)."""
    return {"source": source, "samples": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
            "seconds": round(seconds, 1), "forward_seconds": forward_seconds, **extra}


def calibrate_stored(lm, source, samples: int, seq_len: int, store=None, recompute: bool = False, save: bool = True,
                     name: str | None = None, progress: Progress | None = None, batch_size: int | None = None,
                     matrix_tokens: int = 256, first_token: bool = True, should_stop=None, on_batch=None,
                     windows=None, linear: bool = True, linear_max_mb: float | None = None):
    """``calibrate`` through the run library: reuse the stored run with the same key, else score and save.

    ``store``: a runs.RunStore (default: ``RunStore()``, i.e. $SIMDIFF_HOME). The key is computed
    before scoring (weights fingerprint + calibration token ids + options, ``runs.calibration_key``).
    A stored complete run is returned unless ``recompute`` (its scores, no forward pass; a recomputed
    run replaces the stored one under the same id). A read-only
    store is used for lookups only. A cancelled pass (``Cancelled``) saves the scores of the windows
    done so far as a *partial* run when ``save`` (``e.run_id`` names it) and re-raises.
    Returns (Scores, windows, info) with info as ``calibrate``'s plus ``key``, ``run_id`` (None when not
    saved) and ``from_store`` (the RunInfo reused, or None).
    """
    from .common.errors import Cancelled, SimDiffError
    from .data.text import load_text, make_windows
    from .runs import RunStore, calibration_key, run_meta

    store = store if store is not None else RunStore()
    t0 = time.perf_counter()
    src = load_text(source, purpose="calib") if isinstance(source, str) else source
    ids = make_windows(lm.tokenizer, src, int(samples), int(seq_len)) if windows is None else windows
    key, settings = calibration_key(lm, ids, matrix_tokens=matrix_tokens, first_token=first_token,
                                    batch_size=batch_size, linear=linear)
    hit = None if recompute else store.lookup(key)
    if hit is not None:
        try:
            run = store.open(hit.id)
        except SimDiffError:
            run = None  # unreadable: compute again (the save below replaces it)
        if run is not None:
            info = calibration_info(src.description, ids, time.perf_counter() - t0, 0.0, key=key, run_id=run.id,
                                    from_store=run.info)
            return run.scores, ids, info
    last = {}

    def keep(partial):
        last["scores"] = partial
        if on_batch is not None:
            on_batch(partial)

    writable = save and not store.readonly
    try:
        scores, ids, info = calibrate(lm, source if isinstance(source, str) else src, samples, seq_len,
                                      progress=progress, batch_size=batch_size, matrix_tokens=matrix_tokens,
                                      first_token=first_token, should_stop=should_stop, on_batch=keep, windows=ids,
                                      linear=linear, linear_max_mb=linear_max_mb)
    except Cancelled as e:
        if writable and last.get("scores") is not None:
            e.run_id = store.save(last["scores"], meta=run_meta(last["scores"], settings), partial=True, key=key,
                                  name=name)
        raise
    info.update(key=key, from_store=None, run_id=None)
    if writable:
        info["run_id"] = store.save(scores, meta=run_meta(scores, settings), key=key, name=name, replace=recompute)
    return scores, ids, info


@dataclass
class AlphaChoice:
    """What ``choose_alpha`` picked: the fusion weights, their calibration ppl and every trial."""

    alpha: float
    beta: float
    ppl: float
    num: int
    trials: list[dict] = field(default_factory=list)

    @property
    def distinct(self) -> int:
        """How many distinct prunings were evaluated (several grid points often give the same set)."""
        return len({tuple(t["removed_layers"]) for t in self.trials})

    def record(self) -> dict:
        """The plan's ``details["auto_alpha"]`` entry."""
        return {"chosen": self.alpha, "beta": self.beta, "trials": self.trials, "objective": "calibration ppl"}


def choose_alpha(lm, scores, calib_ids, ratio=None, num=None, keep_first: bool = True, keep_last: bool = True,
                 tune_beta: bool = True, beta: float = 0.5, progress: Progress | None = None,
                 should_stop=None, **fusion) -> AlphaChoice:
    """Auto α (and β over 0, 0.5, 1 when ``tune_beta``) by calibration perplexity; see ``methods/alpha.py``."""
    from .methods.alpha import AUTO_BETAS, auto_alpha, trials_best
    from .pruning.plan import num_from_ratio

    k = num_from_ratio(scores.num_layers, ratio, num)
    a, trials = auto_alpha(lm, scores, calib_ids, num=k, keep_first=keep_first, keep_last=keep_last,
                           progress=progress, should_stop=should_stop, betas=AUTO_BETAS if tune_beta else None,
                           beta=beta, **fusion)
    best = trials_best(trials)
    return AlphaChoice(alpha=a, beta=float(best.get("beta", beta)), ppl=float(best["ppl"]), num=k, trials=trials)


def evaluate_plan(lm, plan, windows: int, seq_len: int, text: str = "wikitext2", dense: Evaluation | None = None,
                  progress: Progress | None = None, should_stop=None) -> Evaluation:
    """Perplexity of the dense model and of ``plan`` applied to it, on the same ``text`` windows.

    ``dense`` may pass an earlier Evaluation on the same windows (same protocol) whose dense number
    is reused: the dense perplexity does not depend on the plan.
    """
    from .evaluation.evaluate import eval_windows, perplexity, protocol_note
    from .pruning.build import build_pruned

    protocol = protocol_note(lm.tokenizer, text, int(seq_len), int(windows))
    ids = eval_windows(lm.tokenizer, text, int(seq_len), int(windows))
    bs = eval_batch_size(lm.device)
    if dense is not None and dense.ppl_dense is not None and dense.protocol == protocol:
        ppl_dense, tokens = dense.ppl_dense, dense.tokens
    else:
        d = perplexity(lm.model, ids, bs, lm.device, progress=_sub(progress, 0.0, 0.5, "dense model"),
                       should_stop=should_stop)
        ppl_dense, tokens = d["ppl"], d["tokens"]
    small = build_pruned(lm, plan)
    p = perplexity(small, ids, bs, lm.device, progress=_sub(progress, 0.5, 1.0, "pruned model"),
                   should_stop=should_stop)
    return Evaluation(ppl_dense=float(ppl_dense), ppl_pruned=float(p["ppl"]), tokens=int(tokens), protocol=protocol)


def recover_and_compare(lm, kept_layers, train_ids, train_info: dict, config=None, eval_text: str = "wikitext2",
                        eval_windows: int = 4, eval_seq_len: int = 256, second_text: str | None = "auto",
                        dense_reference: bool = True, progress=None, dense_progress=None, should_stop=None):
    """LoRA recovery of ``lm`` pruned to ``kept_layers``, with the honest references; returns (Recovery,
    records.Evaluation).

    ``train_info``: the training text as the caller resolved it ({"source": spec, ...}), recorded as
    ``report["calibration"]``. Perplexities on ``eval_windows`` x ``eval_seq_len`` of ``eval_text``
    (held out) and, with ``second_text`` ("auto": the shipped code sample, or the dialogue one when
    code is the training or evaluation text; None: skip), on as many windows of that text as fit. With
    ``dense_reference`` (and the dense source known: ``kept_layers`` given) the dense model gets the
    same LoRA run on the same windows. ``report["honesty"]`` holds ``evaluation.honest.verdict``. Cost:
    one LoRA run of the pruned model, one of the dense model with the reference, and the perplexities.
    """
    from .evaluation.evaluate import eval_windows as windows_of, protocol_note
    from .evaluation.honest import second_domain_text, second_domain_windows, verdict
    from .evaluation.recover import RecoveryConfig, recover

    from dataclasses import replace

    cfg = replace(config or RecoveryConfig(), eval_batch_size=eval_batch_size(lm.device))
    eval_ids = windows_of(lm.tokenizer, eval_text, int(eval_seq_len), int(eval_windows))
    protocol = protocol_note(lm.tokenizer, eval_text, int(eval_seq_len), int(eval_windows))
    second_ids = second_protocol = None
    if second_text:
        if second_text == "auto":
            second_text = second_domain_text(train_info.get("source"), eval_text)
        second_ids, second_protocol = second_domain_windows(lm.tokenizer, second_text, int(eval_seq_len),
                                                            int(eval_windows))
    res = recover(lm, kept_layers, train_ids, cfg, eval_ids=eval_ids, eval_protocol=protocol, progress=progress,
                  should_stop=should_stop, second_ids=second_ids, second_protocol=second_protocol,
                  dense_reference=bool(dense_reference and kept_layers is not None), dense_progress=dense_progress)
    r = res.report
    r["calibration"] = dict(train_info)
    r["eval_text"] = eval_text
    if second_text:
        r["second_domain"]["text"] = second_text
    r["honesty"] = verdict(_treat(r), _treat(r.get("second_domain")), train_text=train_info.get("source"),
                           eval_text=eval_text, treatment=f"LoRA ({cfg.steps} steps)", eval_name=_short(eval_text),
                           second_name=_short(second_text))
    return res, recovery_evaluation(r)


def _treat(d: dict | None) -> dict | None:
    if not d:
        return None
    return {"dense": d.get("ppl_dense"), "pruned": d.get("ppl_pruned"), "treated": d.get("ppl_recovered"),
            "dense_treated": d.get("ppl_dense_lora")}


def _short(spec: str | None) -> str:
    """A text spec as a short name for sentences ("WikiText-2 test", "shipped code sample")."""
    s = spec or "wikitext2"
    if s in ("wikitext2", "wikitext2:test"):
        return "WikiText-2 test"
    if s.startswith("shipped:"):
        return f"shipped {s.split(':', 1)[1]} sample"
    return s if len(s) <= 40 else s[:39] + "…"


def honest_table(report: dict) -> list[dict]:
    """Rows (model, held-out ppl, second-domain ppl) of a recovery report: dense, pruned, recovered and
    the dense model given the same LoRA, as the Recovery page shows them."""
    sd = report.get("second_domain") or {}
    held = f"ppl, {_short(report.get('eval_text'))}"
    second = f"ppl, {_short(sd['text'])}" if sd.get("text") else "ppl, second domain"
    rows = []
    for label, key in (("dense", "ppl_dense"), ("pruned", "ppl_pruned"), ("pruned + LoRA", "ppl_recovered"),
                       ("dense + same LoRA", "ppl_dense_lora")):
        if report.get(key) is None and sd.get(key) is None:
            continue
        row = {"model": label, held: report.get(key)}
        if sd:
            row[second] = sd.get(key)
        rows.append(row)
    return rows


def recovery_evaluation(report: dict) -> Evaluation:
    """The ``records.Evaluation`` of a recovery report (its perplexities, references and verdict)."""
    r = report
    return Evaluation(ppl_dense=r.get("ppl_dense"), ppl_pruned=r.get("ppl_pruned"),
                      ppl_recovered=r.get("ppl_recovered"), protocol=r.get("eval_protocol"),
                      ppl_dense_lora=r.get("ppl_dense_lora"), second_domain=r.get("second_domain"),
                      honesty=r.get("honesty"))


def estimate_repair(lm, plan, calib_ids, method: str = "lstsq", calibration: dict | None = None,
                    progress: Progress | None = None, should_stop=None) -> dict:
    """Fit ``method`` (``repair.REPAIR_METHODS``) for ``plan`` on the calibration windows and return the
    calibration perplexity of the pruned and the repaired model: the cheap estimate the Prune preview
    shows. It is measured on the text the repair was fitted on, so it is optimistic; held-out numbers
    come from the Export page. Raises ``RepairRefused`` (one line) where the method does not apply.
    Cost: one forward of the dense model over ``calib_ids`` (the fit) and two of the pruned one.
    """
    from .evaluation.evaluate import perplexity
    from .pruning.prune import pruned_model
    from .repair import apply_repair, fit_repair

    if plan.merged_groups:
        from .common.errors import SimDiffError

        raise SimDiffError("repair applies to block-removal plans, not merged ones")
    rep = fit_repair(lm, plan.removed_layers, calib_ids, method=method, calibration=calibration,
                     progress=_sub(progress, 0.0, 0.5, "fit"), should_stop=should_stop)
    small = pruned_model(lm, plan.kept_layers)
    bs = eval_batch_size(lm.device)
    before = perplexity(small, calib_ids, bs, lm.device, progress=_sub(progress, 0.5, 0.75, "pruned"),
                        should_stop=should_stop)
    after = perplexity(apply_repair(small, rep), calib_ids, bs, lm.device,
                       progress=_sub(progress, 0.75, 1.0, "repaired"), should_stop=should_stop)
    return {"method": method, "removed_layers": list(plan.removed_layers), "ppl_pruned": before["ppl"],
            "ppl_repaired": after["ppl"], "windows": list(calib_ids.shape), "summary": rep.summary(),
            "repair": rep.to_dict()}


def evaluate_repair(lm, plan, calib_ids, method: str, held: Evaluation, windows: int, seq_len: int,
                    text: str = "wikitext2", calibration: dict | None = None, progress: Progress | None = None,
                    should_stop=None) -> dict:
    """Dense / pruned / repaired side by side, on the calibration windows the repair is fitted on *and* on
    held-out windows (``held``: ``evaluate_plan``'s Evaluation of the same plan on ``windows`` x ``seq_len`` of
    ``text``, whose dense number is reused). The pruned / repaired numbers and the guard are
    ``evaluation.repaired.evaluate_repair`` (stored in ``rep.evaluation``, so the export records them); the
    verdict is ``honest.verdict`` with trains=False (a repair that raises held-out ppl is flagged
    ``worse_held_out`` and ``improved`` is False) and on a second-domain text (the shipped sample of another
    domain than the calibration and held-out text, ``windows`` x ``seq_len`` where it fits: a repair that raises
    it is flagged ``worse_out_of_domain``). Returns {"method", "rows", "verdict", "summary", "repair" (the Repair),
    "model" (repaired), "calib_protocol", "held_protocol", "second_protocol"}.
    Cost: the fit (one dense pass over ``calib_ids``), a dense calibration pass and ``evaluate_repair``'s seven.
    """
    from .evaluation.evaluate import eval_windows, perplexity, protocol_note
    from .evaluation.honest import second_domain_text, second_domain_windows, verdict
    from .evaluation.repaired import evaluate_repair as guard
    from .pruning.prune import pruned_model
    from .repair import apply_repair, fit_repair

    if held is None or held.ppl_dense is None:
        from .common.errors import SimDiffError

        raise SimDiffError("evaluate dense vs pruned first: the repair is compared on the same held-out windows")
    rep = fit_repair(lm, plan.removed_layers, calib_ids, method=method, calibration=calibration,
                     progress=_sub(progress, 0.0, 0.4, "fit"), should_stop=should_stop)
    small = pruned_model(lm, plan.kept_layers)
    repaired = apply_repair(small, rep)
    bs = eval_batch_size(lm.device)
    dense_calib = perplexity(lm.model, calib_ids, bs, lm.device, should_stop=should_stop,
                             progress=_sub(progress, 0.4, 0.5, "dense, calibration"))["ppl"]
    held_protocol = protocol_note(lm.tokenizer, text, int(seq_len), int(windows))
    ids = eval_windows(lm.tokenizer, text, int(seq_len), int(windows))
    # and a text of another domain (held-out text of the same corpus shares its format)
    spec = second_domain_text((calibration or {}).get("source"), text)
    second, second_protocol = second_domain_windows(lm.tokenizer, spec, int(seq_len), int(windows))
    ev = guard(rep, small, repaired, calib_ids, ids, held_protocol=held_protocol, batch_size=bs,
               progress=_sub(progress, 0.5, 1.0, "check"), second_ids=second, second_protocol=second_protocol,
               dense=lm.model)
    c, h, sd = ev["calibration"], ev["held_out"], ev["second_domain"]
    v = verdict({"dense": held.ppl_dense, "pruned": h["pruned"], "treated": h["repaired"]},
                {"dense": sd["dense"], "pruned": sd["pruned"], "treated": sd["repaired"]},
                treatment=f"{method} repair", trains=False, eval_name="held-out text")
    rows = [{"model": "dense", "calibration ppl": dense_calib, "held-out ppl": held.ppl_dense,
             "second-domain ppl": sd["dense"]},
            {"model": "pruned", "calibration ppl": c["pruned"], "held-out ppl": h["pruned"],
             "second-domain ppl": sd["pruned"]},
            {"model": "repaired", "calibration ppl": c["repaired"], "held-out ppl": h["repaired"],
             "second-domain ppl": sd["repaired"]}]
    n, s = calib_ids.shape
    return {"method": method, "rows": rows, "verdict": v, "summary": rep.summary(), "repair": rep, "model": repaired,
            "calib_protocol": f"{(calibration or {}).get('source', 'calibration text')}; the {n} x {s} windows the "
                              "repair was fitted on", "held_protocol": held_protocol,
            "second_protocol": second_protocol}


def repair_record(result: dict) -> dict:
    """What an export records of an ``evaluate_repair`` result: ``Repair.to_dict()`` (method, spans, fit
    residuals, calibration, the guard's calibration and held-out perplexities, the export note) read by the
    model card, plus the dense reference row and the honest verdict."""
    return {**result["repair"].to_dict(), "perplexity": result["rows"], "honesty": result["verdict"]}


def export_and_record(lm, plan, out_dir: str | Path, evaluation: Evaluation | dict | None = None, scores=None,
                      recovery: dict | None = None, force: bool = False, make_zip: bool = False,
                      dtype: torch.dtype | None = None, model=None, extra: dict | None = None) -> tuple[Path, ExportReport]:
    """Export ``plan`` applied to ``lm`` (export.export_pruned) with its one report; returns both.
    ``model``: the weights to write instead of the plain pruned view (recovered, repaired); ``extra``: other
    report keys (e.g. ``{"repair": repair_record(...)}``)."""
    from .export.checkpoint import export_pruned

    report = ExportReport.build(lm, plan, evaluation=evaluation, scores=scores, recovery=recovery, extra=extra)
    out = export_pruned(lm, plan, out_dir, force=force, make_zip=make_zip, report=report, dtype=dtype, model=model)
    return out, report
