"""Pruning methods: one small module each, one registry, one result type (``plan.Plan``).

    from simdiff_core.methods import run_method, METHODS
    plan = run_method("iterative", lm, calib_ids, num=8, criterion="simdiff")
    plan = run_method("search", lm, calib_ids, ratio=0.25, search="beam", objective="ppl", budget=200)
    plan = run_method("slm", lm, calib_ids, num=8)            # merging plan (plan.merged_groups)

=========== ================================================================================
oneshot     score once, remove the k lowest-importance blocks by a criterion (``plan.make_plan``)
iterative   remove the lowest block, re-score the pruned model, repeat k times
greedy      SLEB-style: each step removes the block whose removal hurts the objective least
block       Gromov/PruneMe: the k consecutive blocks with the smallest angular distance in/out
slm         Sliding Layer Merging: top-down windows merged by parameter deltas (``pruning/merge.py``)
search      a budgeted search for the removal set minimising an objective (``search.py``)
=========== ================================================================================

Every method gets a ``Context`` (model, calibration windows, k, locks, callbacks, lazily computed
scores) and keyword options, and returns a ``Plan`` whose ``method`` is set and whose ``details``
record the options and a trace. ``progress(fraction, message)`` is called as work proceeds;
``should_stop()`` is polled and raises ``Cancelled``.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Callable

from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..pruning.plan import Plan, candidates, num_from_ratio

METHODS = {
    "oneshot": "one-shot ranking by a criterion (score once)",
    "iterative": "remove one block, re-score the pruned model, repeat",
    "greedy": "SLEB-style greedy removal by an objective on calibration data",
    "block": "contiguous window with the smallest angular distance (Gromov et al. / PruneMe)",
    "slm": "Sliding Layer Merging: top-down windows merged by parameter deltas",
    "search": "budgeted search (greedy, beam, local, evolutionary) under an objective",
    "repairable": "repair-aware: disjoint spans the lstsq repair can best undo (DP over the span heatmap)",
}
# methods that need no forward pass beyond one scoring pass
SCORE_ONLY = {"oneshot", "block"}


@dataclass
class Context:
    """Everything a method needs, independent of the method."""

    lm: object  # LoadedModel
    calib_ids: object  # LongTensor (N, S)
    k: int
    keep_first: bool = True
    keep_last: bool = True
    progress: Progress | None = None
    should_stop: Callable[[], bool] | None = None
    calibration: dict = field(default_factory=dict)
    scores: object = None  # Scores of the dense model; computed on first use
    evaluator: object = None  # evaluator.PrefixEvaluator on calib_ids; built on first use, shareable

    @property
    def L(self) -> int:
        return self.lm.num_layers

    @property
    def allowed(self) -> list[int]:
        return candidates(self.L, self.keep_first, self.keep_last)

    def report(self, frac: float, msg: str) -> None:
        if self.progress is not None:
            self.progress(max(0.0, min(1.0, frac)), msg)

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()

    def get_scores(self):
        if self.scores is None:
            from ..analysis.score import score_model

            self.scores = score_model(self.lm, self.calib_ids, should_stop=self.should_stop,
                                      calibration=self.calibration)
        return self.scores

    def get_evaluator(self):
        """The prefix-cached evaluator of removal sets on ``calib_ids`` (one per context or shared)."""
        if self.evaluator is None:
            from ..evaluation.evaluator import PrefixEvaluator

            self.evaluator = PrefixEvaluator(self.lm, self.calib_ids, should_stop=self.should_stop)
        return self.evaluator

    def plan(self, removed, method: str, criterion: str | None = None, **kw) -> Plan:
        return Plan(model=self.lm.source, num_layers=self.L, removed_layers=list(removed), method=method,
                    criterion=criterion, ratio=self.k / self.L, keep_first=self.keep_first,
                    keep_last=self.keep_last, calibration=dict(self.calibration), **kw)


def get_method(name: str) -> Callable:
    if name not in METHODS:
        raise SimDiffError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{name}").run


def method_options(name: str, opts: dict) -> dict:
    """The subset of ``opts`` (None values dropped) that method ``name`` accepts."""
    import inspect

    params = inspect.signature(get_method(name)).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in opts.items() if v is not None and (k in params or takes_any)}


def run_method(name: str, lm, calib_ids, ratio=None, num=None, keep_first: bool = True, keep_last: bool = True,
               progress=None, should_stop=None, calibration: dict | None = None, scores=None, evaluator=None,
               **opts) -> Plan:
    """Run method ``name`` on ``lm`` and return its Plan (``details["seconds"]`` = wall time).

    ``evaluator``: an ``evaluator.PrefixEvaluator`` built on ``calib_ids`` to share between runs
    (its cached states and memoised losses carry over); one is built on first use otherwise.
    """
    fn = get_method(name)
    k = num_from_ratio(lm.num_layers, ratio, num)
    if scores is not None and scores.num_layers != lm.num_layers:
        raise SimDiffError(f"scores are for {scores.num_layers} blocks but the model has {lm.num_layers}")
    ctx = Context(lm=lm, calib_ids=calib_ids, k=k, keep_first=keep_first, keep_last=keep_last, progress=progress,
                  should_stop=should_stop, calibration=dict(calibration or {}), scores=scores,
                  evaluator=evaluator)
    if k > len(ctx.allowed):
        raise SimDiffError(f"cannot remove {k} blocks: only {len(ctx.allowed)} are removable with the first/last locks")
    if evaluator is not None and (evaluator.lm is not lm or tuple(evaluator.shape) != tuple(calib_ids.shape)):
        raise SimDiffError("the shared evaluator was built for another model or other calibration windows")
    t0 = time.perf_counter()
    plan = fn(ctx, **method_options(name, opts))
    if ratio is not None:
        plan.ratio = float(ratio)
    plan.details["seconds"] = round(time.perf_counter() - t0, 3)
    ctx.report(1.0, f"{name}: removed {plan.removed_layers}")
    return plan
