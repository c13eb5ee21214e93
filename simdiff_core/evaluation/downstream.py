"""Zero-shot downstream accuracy through lm-evaluation-harness, with an offline fallback.

    from simdiff_core.evaluation.downstream import evaluate_tasks, retained
    dense = evaluate_tasks(lm.model, lm.tokenizer, ["arc_easy", "piqa"])
    small = evaluate_tasks(pruned, lm.tokenizer, ["arc_easy", "piqa"])
    small["tasks"], small["average"], small["source"]          # "lm-eval" or "offline"
    retained(dense, small)                                      # % of the dense average kept

Both paths score with lm-eval's own code (``lm_eval.simple_evaluate`` with its ``HFLM`` wrapper
around the in-memory model, so pruned views and recovered copies are evaluated without saving):

* ``source: "lm-eval"`` — the standard tasks (boolq, piqa, hellaswag, winogrande, arc_easy,
  arc_challenge, openbookqa) from the Hugging Face hub, when it is reachable (or the datasets are
  in the local HF cache with ``HF_DATASETS_OFFLINE=1``). Zero-shot, full test/validation sets
  unless ``limit`` is given.
* ``source: "offline"`` — no hub: the shipped multiple-choice set (``data/mc/simdiff_mc.jsonl``,
  written for this project, see ``objectives.py``) run through lm-eval as *local tasks* (a task
  YAML with ``dataset_path: json``), one task per item kind: ``mc_science`` (ARC/OpenBookQA
  style), ``mc_world`` (world knowledge), ``mc_physical`` (PIQA style), ``mc_completion``
  (HellaSwag style). A requested standard task is replaced by its stand-in (``stand_ins`` in the
  result says which); BoolQ and WinoGrande have none. By default the ``test`` split of the set is
  scored (the ``dev`` split is what the methods' accuracy objective may search on). The numbers
  are small-sample and not comparable with published benchmark numbers; the result says so.

Metric per task: ``acc`` (argmax of summed continuation log-likelihood), except ``acc_norm``
(per-character normalised) for hellaswag, arc_challenge and openbookqa, as the pruning papers
report them; both are kept under ``details``. Without lm-eval installed the offline set is scored
by ``objectives.mc_accuracy`` (same log-likelihood rule) and ``engine`` says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..models.sources import hub_reachable

STANDARD_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
NORM_TASKS = {"hellaswag", "arc_challenge", "openbookqa"}  # reported with acc_norm
OFFLINE_TASKS = ("mc_science", "mc_world", "mc_physical", "mc_completion")
STAND_INS = {"arc_easy": "mc_science", "arc_challenge": "mc_science", "openbookqa": "mc_science",
             "piqa": "mc_physical", "hellaswag": "mc_completion", "boolq": None, "winogrande": None}
OFFLINE_NOTE = ("offline: the hub is unreachable, so the shipped SimDiff MC set (own items, CC0) was scored "
                "instead of the standard benchmarks, through lm-eval local tasks; small samples, not comparable "
                "with published numbers")


def parse_tasks(spec) -> list[str]:
    """'arc_easy,piqa' / list -> validated task names; 'all' = the seven standard tasks."""
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else list(spec or [])) if t.strip()]
    if not names or names == ["all"]:
        return list(STANDARD_TASKS)
    if names == ["offline"]:
        return list(OFFLINE_TASKS)
    bad = [t for t in names if t not in STANDARD_TASKS and t not in OFFLINE_TASKS]
    if bad:
        raise SimDiffError(f"unknown task(s) {', '.join(bad)}; choose from {', '.join(STANDARD_TASKS + OFFLINE_TASKS)} "
                           "or 'all' / 'offline'")
    return list(dict.fromkeys(names))


def have_lm_eval() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def offline_tasks_for(names: list[str]) -> tuple[list[str], dict]:
    """Offline stand-ins for ``names`` (deduplicated, in order) and the mapping used."""
    out, mapping = [], {}
    for n in names:
        sub = n if n in OFFLINE_TASKS else STAND_INS.get(n)
        if n not in OFFLINE_TASKS:
            mapping[n] = sub
        if sub and sub not in out:
            out.append(sub)
    if not out:
        raise SimDiffError(f"no offline stand-in for {', '.join(names)} (BoolQ and WinoGrande need the hub); "
                           f"offline tasks: {', '.join(OFFLINE_TASKS)}")
    return out, mapping


def write_offline_tasks(folder: str | Path, items: list[dict] | None = None, split: str | None = "test",
                        tasks=OFFLINE_TASKS) -> Path:
    """Write lm-eval task YAMLs + JSONL data for the shipped MC set under ``folder``.

    ``items`` (default: ``objectives.load_mc``) may carry a ``kind``; items without one go to every
    requested task name that matches ``mc_<kind>``, or — for a custom set — to a task named
    ``mc_custom``.
    """
    from .objectives import load_mc

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = items if items is not None else load_mc()
    if split is not None:
        items = [it for it in items if it.get("split", split) == split]
    for task in tasks:
        kind = task[len("mc_"):]
        rows = [it for it in items if it.get("kind", "custom") == kind]
        if not rows:
            continue
        data = folder / f"{task}.jsonl"
        data.write_text("".join(json.dumps({"context": it["context"], "choices": list(it["choices"]),
                                            "gold": int(it["gold"])}) + "\n" for it in rows), encoding="utf-8")
        # Jinja templates as lm-eval's own multiple-choice tasks use them; choices are a list field.
        (folder / f"{task}.yaml").write_text(
            f"task: {task}\n"
            "dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
            "test_split: test\n"
            "output_type: multiple_choice\n"
            'doc_to_text: "{{context}}"\n'
            'doc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{gold}}"\n'
            "metric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
            encoding="utf-8")
    return folder


def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _run_lm_eval(model, tokenizer, tasks: list[str], include_path=None, limit=None, batch_size: int = 16,
                 progress=None, should_stop=None, samples: bool = False) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    tm = (TaskManager(include_path=str(include_path), include_defaults=False) if include_path
          else TaskManager())
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    per_task, details, logs = {}, {}, {}
    for k, task in enumerate(tasks):
        if should_stop is not None and should_stop():
            raise Cancelled()
        if progress is not None:
            progress(k / len(tasks), f"task {task} ({k + 1}/{len(tasks)})")
        out = lm_eval.simple_evaluate(model=hflm, tasks=[task], task_manager=tm, limit=limit,
                                      log_samples=samples, bootstrap_iters=0)
        res = out["results"][task]
        acc, acc_norm = res.get("acc,none"), res.get("acc_norm,none")
        metric = "acc_norm" if task in NORM_TASKS and acc_norm is not None else "acc"
        per_task[task] = float(acc_norm if metric == "acc_norm" else acc)
        n = out.get("n-samples", {}).get(task, {})
        details[task] = {"metric": metric, "acc": acc, "acc_norm": acc_norm,
                         "n": n.get("effective", n.get("original")) if isinstance(n, dict) else None}
        if samples:
            logs[task] = out.get("samples", {}).get(task, [])
    if progress is not None:
        progress(1.0, "done")
    return {"tasks": per_task, "details": details, **({"samples": logs} if samples else {})}


def evaluate_tasks(model, tokenizer, tasks="all", *, mode: str = "auto", limit: int | float | None = None,
                   split: str | None = "test", items: list[dict] | None = None, batch_size: int = 16,
                   progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None, samples: bool = False) -> dict:
    """Accuracy per task, their average and where the numbers come from (see module docstring).

    ``mode``: "auto" (hub if reachable, else offline), "lm-eval" (standard tasks, fail without the
    hub), "offline" (shipped set). ``items``: a custom MC item list for the offline path.
    Returns ``{"tasks", "average", "source", "engine", "details", ...}``.
    """
    names = parse_tasks(tasks)
    if mode not in ("auto", "lm-eval", "offline"):
        raise SimDiffError(f"unknown evaluation mode '{mode}': auto, lm-eval or offline")
    standard = [t for t in names if t in STANDARD_TASKS]
    online_err = None
    if mode != "offline" and standard and have_lm_eval() and (mode == "lm-eval" or hub_reachable(datasets=True)):
        try:
            res = _run_lm_eval(model, tokenizer, standard, limit=limit, batch_size=batch_size,
                               progress=progress, should_stop=should_stop, samples=samples)
            return _finish(res, "lm-eval", "lm-eval", names, note="zero-shot, lm-eval " + _lm_eval_version())
        except Cancelled:
            raise
        except Exception as e:  # hub hiccup, missing dataset script, ...: fall back, and say why
            online_err = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            if mode == "lm-eval":
                raise SimDiffError(f"lm-eval could not run {', '.join(standard)}: {online_err}") from None
    elif mode == "lm-eval":
        raise SimDiffError("lm-eval mode needs `pip install lm-eval` and a reachable Hugging Face hub; "
                           "use mode offline for the shipped set")
    offline, mapping = offline_tasks_for(names)
    note = OFFLINE_NOTE + (f" (lm-eval on the hub failed: {online_err})" if online_err else "")
    if not have_lm_eval():
        return _finish(_run_own(model, tokenizer, offline, items, split, limit, progress, should_stop),
                       "offline", "simdiff mc_accuracy (pip install lm-eval for the harness)", names, mapping, note)
    with tempfile.TemporaryDirectory(prefix="simdiff-mc-") as tmp:
        write_offline_tasks(tmp, items, split, offline)
        present = [t for t in offline if (Path(tmp) / f"{t}.yaml").exists()]
        if not present:
            raise SimDiffError(f"the multiple-choice set has no items for {', '.join(offline)}"
                               + (f" in split '{split}'" if split else ""))
        res = _run_lm_eval(model, tokenizer, present, include_path=tmp, limit=limit, batch_size=batch_size,
                           progress=progress, should_stop=should_stop, samples=samples)
    return _finish(res, "offline", "lm-eval " + _lm_eval_version() + " (local tasks)", names, mapping, note,
                   split=split)


def _run_own(model, tokenizer, tasks, items, split, limit, progress, should_stop) -> dict:
    from .objectives import load_mc, mc_accuracy

    items = items if items is not None else load_mc()
    if split is not None:
        items = [it for it in items if it.get("split", split) == split]
    per_task, details = {}, {}
    for k, task in enumerate(tasks):
        rows = [it for it in items if it.get("kind", "custom") == task[len("mc_"):]]
        if limit is not None:
            rows = rows[: int(limit if limit >= 1 else math.ceil(limit * len(rows)))]
        if not rows:
            continue
        if progress is not None:
            progress(k / len(tasks), f"task {task}")
        r = mc_accuracy(model, tokenizer, rows, should_stop=should_stop)
        metric = "acc"
        per_task[task] = r["accuracy"]
        details[task] = {"metric": metric, "acc": r["accuracy"], "acc_norm": r["acc_norm"], "n": r["n"]}
    return {"tasks": per_task, "details": details}


def _finish(res: dict, source: str, engine: str, requested, mapping=None, note="", split=None) -> dict:
    tasks = res["tasks"]
    out = {"tasks": tasks, "average": (sum(tasks.values()) / len(tasks)) if tasks else None, "source": source,
           "engine": engine, "requested": list(requested), "details": res.get("details", {}), "note": note}
    if mapping:
        out["stand_ins"] = mapping
    if split is not None and source == "offline":
        out["split"] = split
    if "samples" in res:
        out["samples"] = res["samples"]
    return out


def retained(dense: dict, pruned: dict) -> float | None:
    """'% retained' = pruned average / dense average x 100 (None when not comparable)."""
    if not dense or not pruned or dense.get("source") != pruned.get("source"):
        return None
    if set(dense.get("tasks", {})) != set(pruned.get("tasks", {})) or not dense.get("average"):
        return None
    return 100.0 * pruned["average"] / dense["average"]


def _lm_eval_version() -> str:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:
        return "?"
