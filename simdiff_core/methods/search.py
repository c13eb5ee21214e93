# over 400 lines: four search algorithms share one memoised, bound-eliminating objective context; splitting them apart would split that context
"""Budgeted search for the set of k blocks whose removal minimises an objective.

    plan = run_method("search", lm, calib_ids, num=8, search="local", objective="ppl", budget=150)
    plan = run_method("search", lm, fit_ids, num=8, search="greedy", objective="repaired_ppl", holdout_ids=held)

"Rethinking Layer Redundancy" finds that the calibration *objective* matters more than the search
algorithm; comparing algorithms under one objective and budget is how to check that on a model.

Algorithms (``search=``):

* ``greedy``  — SLEB: k steps, each removes the candidate whose removal is cheapest (~k x L evals).
* ``beam``    — beam search over removal sets, width ``beam_width`` (greedy is width 1).
* ``local``   — swap hill-climbing from the one-shot SimDiff plan: replace one removed block by a
  kept one when that lowers the objective (neighbouring blocks tried first), random restart at a
  local optimum, until the budget is spent.
* ``evolutionary`` — steady-state genetic search: a population seeded with the one-shot plans of
  several criteria plus random sets; a tournament parent is mutated (1-2 swaps) and replaces the
  worst member when better.

Objectives (``objective=``, ``evaluation/objectives.py``): ``ppl`` (calibration perplexity),
``accuracy`` (MC dev split), ``repaired_ppl`` — choose blocks knowing they will be repaired: each set
is pruned, repaired with the ``lstsq`` repair (ReplaceMe, dense fit on the calibration windows) and
scored by perplexity on ``holdout_ids``, windows other than the fit ones
(``evaluation/repaired_objective.py``: one capture pass, one solve per distinct span, prefix-cached
and with the same exact elimination as ``ppl``).

Every objective value is memoised by removal set. With the ``ppl`` and ``repaired_ppl`` objectives (prefix-cached
evaluator, no ``seconds`` cap) candidates are *eliminated* exactly where possible
(``PrefixEvaluator.losses_bounded``): greedy/beam evaluate exactly only the candidates whose proven
lower bound does not exceed the step's best exact values, local/evolutionary only a candidate whose
bound is below the set it must beat; the chosen sets are the same as with every candidate exact
(``bound=False``). An eliminated set has no exact value: its trace entry carries ``lower_bound`` (ppl)
and no ``value``; if its exact value is needed later (completing a budget-stopped greedy from the
single-removal costs), ``value`` is filled in. ``evals`` counts distinct sets *considered* (exact or
eliminated), ``exact_evals`` the exact ones, ``eliminated_by_bound`` the eliminated ones.
``budget`` caps ``evals`` (so a budgeted run follows the same path as exact evaluation) and
``seconds`` caps wall time; ``local``/``evolutionary`` run until a
cap (default budget 100). When a cap stops ``greedy``/``beam`` early, the partial set is completed
without further evaluation: by the measured single-block removal costs where known, else by the
dense model's ``fallback_criterion`` importance; ``details["completed_by_fallback"]`` says so.
"""

from __future__ import annotations

import math
import random
import time

from ..common.errors import SimDiffError
from ..evaluation.evaluate import ppl_from_loss
from ..evaluation.objectives import make_objective
from ..evaluation.repaired_objective import NAME as REPAIRED
from ..evaluation.repaired_objective import RepairedEvaluator, check_holdout, repaired_ppl
from ..pruning.plan import cosine_tiebreak, select_lowest
from ..pruning.prune import pruned_model

ALGORITHMS = {
    "greedy": "sequential removal, cheapest block each step (SLEB)",
    "beam": "beam search over removal sets",
    "local": "swap hill-climbing with random restarts, from the one-shot SimDiff plan",
    "evolutionary": "steady-state genetic search seeded with one-shot plans",
}
DEFAULT_OPEN_BUDGET = 100


class BudgetExhausted(Exception):
    pass


class Evaluator:
    """Objective of a removal set, memoised, with an evaluation and time budget.

    The ``ppl`` objective runs through the context's ``evaluator.PrefixEvaluator`` (cached block
    inputs: a set first differing from the last evaluated one at block i runs only blocks i.. and
    the head); ``many`` evaluates a list of sets together in prefix order. Values equal
    ``perplexity(pruned_model(...), calib_ids)`` to float tolerance.

    Exact elimination (``bound=True``, the ``ppl`` objective through the evaluator, no time cap):
    ``many(sets, keep=w)`` and ``below(set, than)`` ask ``PrefixEvaluator.losses_bounded`` for exact
    values only where they can change the outcome (the w best of a greedy/beam step; a local or
    evolutionary candidate that could beat the current/worst one); the other sets get a proven lower
    bound and are *eliminated*: ``memo`` holds exact values only, ``bounds`` the lower bounds (ppl) of
    eliminated sets, and their trace entries carry ``lower_bound`` and no ``value``. ``evals`` counts
    sets *considered* (exact or eliminated) and the budget caps that count, so a budgeted run takes
    the same path as with every set evaluated exactly; ``exact_evals`` counts the exact ones.
    """

    def __init__(self, ctx, objective: str, budget: int | None, seconds: float | None, items=None,
                 cached: bool = True, bound: bool = True, holdout_ids=None, repaired=None,
                 repair_method: str = "lstsq"):
        self.ctx = ctx
        self.objective = objective
        self.repaired = None
        self.f = self.prefix = None
        if objective == REPAIRED:
            self._init_repaired(holdout_ids, repaired, repair_method, cached)
        else:
            self.prefix = ctx.get_evaluator() if objective == "ppl" and cached else None
            if self.prefix is None:
                self.f = make_objective(objective, ctx.lm, ctx.calib_ids, items, should_stop=ctx.should_stop)
        self.budget, self.seconds = budget, seconds
        self.bounded = bool(bound and self.prefix is not None and seconds is None and self.prefix.bounds_supported())
        self.memo: dict[tuple, float] = {}
        self.bounds: dict[tuple, float] = {}  # eliminated sets: lower bound of the objective (ppl)
        self.trace: list[dict] = []
        self._entry: dict[tuple, dict] = {}  # trace entry of each eliminated set
        self.t0 = time.perf_counter()
        self.best: tuple | None = None

    def _init_repaired(self, holdout_ids, repaired, method, cached) -> None:
        """The repaired objective: fit on ``ctx.calib_ids``, measured on the held-out windows."""
        ctx = self.ctx
        if repaired is not None:
            if repaired.lm is not ctx.lm or repaired.fit_shape != tuple(ctx.calib_ids.shape) \
                    or repaired.method != method:
                raise SimDiffError("the shared repaired evaluator was built for another model, other fit windows "
                                   "or another repair method")
            holdout_ids = repaired.holdout_ids
        holdout_ids = check_holdout(ctx.calib_ids, holdout_ids)
        self.holdout_ids, self.repair_method = holdout_ids, method
        if cached:
            self.prefix = self.repaired = repaired or RepairedEvaluator(
                ctx.lm, ctx.calib_ids, holdout_ids, method=method, should_stop=ctx.should_stop,
                progress=lambda f, m: ctx.report(0.02 * f, m))
        else:  # the reference: fit_repair + apply_repair + perplexity for every set
            self.f = lambda key: repaired_ppl(ctx.lm, key, ctx.calib_ids, holdout_ids, method,
                                              should_stop=ctx.should_stop)

    @property
    def evals(self) -> int:
        """Sets considered: evaluated exactly or eliminated by a bound (what the budget counts)."""
        return len(self.memo) + sum(1 for k in self.bounds if k not in self.memo)

    @property
    def exact_evals(self) -> int:
        return len(self.memo)

    def considered(self, key) -> bool:
        return key in self.memo or key in self.bounds

    def exhausted(self) -> bool:
        return ((self.budget is not None and self.evals >= self.budget)
                or (self.seconds is not None and time.perf_counter() - self.t0 >= self.seconds))

    def _value(self, key: tuple) -> float:
        if self.prefix is not None:
            return float(self.prefix.ppl(key))
        if self.objective == REPAIRED:
            return float(self.f(key))
        kept = [i for i in range(self.ctx.L) if i not in set(key)]
        return float(self.f(pruned_model(self.ctx.lm, kept)))

    def _frac(self) -> float:
        return self.evals / self.budget if self.budget else min(0.99, self.evals / max(1, self.ctx.k * len(self.ctx.allowed)))

    def _record(self, key: tuple, v: float) -> None:
        self.memo[key] = v
        if len(key) == self.ctx.k and (self.best is None or v < self.memo[self.best]):
            self.best = key
        best = f" (best {self.memo[self.best]:.4g})" if self.best else ""
        cap = f"/{self.budget}" if self.budget else ""
        if key in self._entry:  # eliminated earlier; its exact value was needed after all
            self._entry.pop(key)["value"] = round(v, 6)
            self.ctx.report(self._frac(), f"exact value of {list(key)} -> {v:.4g}{best}")
            return
        self.trace.append({"eval": self.evals, "removed": list(key), "value": round(v, 6),
                           "t": round(time.perf_counter() - self.t0, 3)})
        self.ctx.report(self._frac(), f"eval {self.evals}{cap}: {list(key)} -> {v:.4g}{best}")

    def _record_bound(self, key: tuple, lb: float) -> None:
        self.bounds[key] = lb
        entry = {"eval": self.evals, "removed": list(key), "lower_bound": round(lb, 6),
                 "t": round(time.perf_counter() - self.t0, 3)}
        self.trace.append(entry)
        self._entry[key] = entry
        cap = f"/{self.budget}" if self.budget else ""
        self.ctx.report(self._frac(), f"eval {self.evals}{cap}: {list(key)} -> >= {lb:.4g} "
                        "(eliminated by its bound, not evaluated exactly)")

    @staticmethod
    def _ppl(loss: float) -> float:
        return ppl_from_loss(loss)

    def __call__(self, removed) -> float:
        key = tuple(sorted(removed))
        if key in self.memo:
            return self.memo[key]
        if key not in self.bounds and self.exhausted():
            raise BudgetExhausted()
        self.ctx.check()
        v = self._value(key)
        self._record(key, v)
        return v

    def _bounded(self, keys, keep: int = 0, below: tuple | None = None, ref=None, progress=None) -> None:
        """Consider ``keys`` through ``losses_bounded``: record exact values and eliminations."""
        thr = None if below is None else self.prefix.loss(below)
        res = self.prefix.losses_bounded(list(keys), keep=keep, below=thr, ref=ref, progress=progress)
        for k, (loss, lb) in zip(keys, res):
            if loss is not None:
                if k not in self.memo:
                    self._record(k, self._ppl(loss))
            elif k not in self.bounds:
                self._record_bound(k, self._ppl(lb))

    def many(self, sets, keep: int | None = None, ref=None) -> None:
        """Evaluate ``sets`` as ``for s in sets: self(s)`` would (same sets evaluated, same budget
        stop, same trace order), but together, in prefix order, when the objective allows it.
        ``keep=w`` (elimination on): only the w best of the considered sets need exact values;
        ``ref`` is the layout the bound's vocabulary comes from (e.g. the step's current model)."""
        keys = list(dict.fromkeys(tuple(sorted(s)) for s in sets))
        if self.prefix is None or self.seconds is not None:
            for k in keys:
                self(k)
            return
        new = [k for k in keys if not self.considered(k)]
        room = len(new) if self.budget is None else max(0, self.budget - self.evals)
        take = new[:room]
        if take:
            self.ctx.check()
            total = self.budget or max(1, self.ctx.k * len(self.ctx.allowed))
            n0 = self.evals

            def progress(f, msg):
                self.ctx.report(min(0.99, (n0 + f * len(take)) / total), f"{len(take)} candidates together: {msg}")

            if keep is not None and self.bounded:
                # sets of this call already known exactly (or eliminated earlier) take part in the ranking
                again = [k for k in keys if k in self.bounds and k not in self.memo]
                old = [k for k in keys if k in self.memo]
                # recorded in candidate order (the trace order without elimination)
                self._bounded(take + again + old, keep=keep, ref=ref, progress=progress)
            else:
                for k, v in zip(take, self.prefix.ppls(take, progress=progress)):
                    self._record(k, float(v))
        if len(take) < len(new):
            raise BudgetExhausted()

    def below(self, removed, than) -> float | None:
        """The objective of ``removed`` when it could be lower than that of the (exactly known) set
        ``than``; None when a bound proves it is not (elimination on). Budget as ``__call__``."""
        key = tuple(sorted(removed))
        if key in self.memo:
            return self.memo[key]
        than = tuple(sorted(than))
        if not self.bounded or than not in self.memo:
            return self(key)
        if key in self.bounds and self.bounds[key] >= self.memo[than]:
            return None
        if key not in self.bounds and self.exhausted():
            raise BudgetExhausted()
        self.ctx.check()
        self._bounded([key], keep=0, below=than, ref=())
        return self.memo.get(key)

    def ensure_best(self, keys, m: int) -> None:
        """Exact values for the m best of ``keys`` (already considered sets; no budget use)."""
        keys = [k for k in keys if self.considered(k)]
        if self.bounded and any(k not in self.memo for k in keys):
            self._bounded(keys, keep=m, ref=())


def _fallback_order(ev: Evaluator, criterion: str) -> list[int]:
    """Candidate blocks, cheapest first, without new evaluations."""
    ctx = ev.ctx
    # the k cheapest considered single removals must be exact (a bound only proves a set is not among them)
    ev.ensure_best([(i,) for i in ctx.allowed], ctx.k)
    single = {k[0]: v for k, v in ev.memo.items() if len(k) == 1}
    imp = ctx.get_scores().importance(criterion)
    return sorted(ctx.allowed, key=lambda i: (0, single[i]) if i in single else (1, float(imp[i])))


def _complete(ev: Evaluator, partial, criterion: str) -> list[int]:
    out = list(partial)
    for i in _fallback_order(ev, criterion):
        if len(out) >= ev.ctx.k:
            break
        if i not in out:
            out.append(i)
    return sorted(out)


def _greedy(ev, ctx, criterion, width: int = 1, order: list | None = None):
    beams = [()]
    for depth in range(ctx.k):
        keys = list(dict.fromkeys(tuple(sorted(b + (c,))) for b in beams for c in ctx.allowed if c not in b))
        try:
            # every candidate of this step against the step's cached model; exact values only for those
            # that can be among the `width` best (the others are eliminated by a proven lower bound)
            ev.many(keys, keep=width, ref=beams[0])
            exhausted = False
        except BudgetExhausted:
            exhausted = True
        cand = {}
        for key in keys:  # in candidate order, up to the first one the budget did not cover
            if not ev.considered(key):
                break
            if key in ev.memo:  # an eliminated candidate is provably not among the `width` best
                cand[key] = ev.memo[key]
        if exhausted:
            best_partial = min(cand, key=cand.get) if cand else beams[0]
            return _complete(ev, best_partial, criterion), True
        beams = sorted(cand, key=lambda s: (cand[s], s))[:width]
        if order is not None:
            order.append(next(c for c in beams[0] if c not in order))
    return list(beams[0]), False


def _neighbours(removed, allowed, rng):
    """Swaps (r out, c in): adjacent blocks first, then the rest in random order."""
    rem, kept = set(removed), [c for c in allowed if c not in removed]
    swaps = [(r, c) for r in removed for c in kept]
    near = [s for s in swaps if abs(s[0] - s[1]) == 1]
    far = [s for s in swaps if abs(s[0] - s[1]) != 1]
    rng.shuffle(near)
    rng.shuffle(far)
    return [tuple(sorted((rem - {r}) | {c})) for r, c in near + far]


def _seed_plans(ctx, criteria=("simdiff", "cosine", "mssd_rel", "masd_rel")) -> list[tuple]:
    sc = ctx.get_scores()
    out = []
    for c in criteria:
        s = tuple(select_lowest(sc.importance(c), ctx.k, ctx.keep_first, ctx.keep_last,
                                tiebreak=cosine_tiebreak(sc.layers)))
        if s not in out:
            out.append(s)
    return out


def _local(ev, ctx, rng):
    current = _seed_plans(ctx)[0]
    restarts = 0
    try:
        cur_v = ev(current)
        while True:
            improved = False
            for nb in _neighbours(current, ctx.allowed, rng):
                v = ev.below(nb, current)  # None: a bound proves nb is no better than current
                if v is not None and v < cur_v:
                    current, cur_v, improved = nb, v, True
                    break
            if not improved:  # local optimum: restart from a random set
                if sum(1 for key in set(ev.memo) | set(ev.bounds) if len(key) == ctx.k) \
                        >= math.comb(len(ctx.allowed), ctx.k):
                    break  # every k-set has been evaluated: nothing left to search
                restarts += 1
                current = tuple(sorted(rng.sample(ctx.allowed, ctx.k)))
                cur_v = ev(current)
    except BudgetExhausted:
        pass
    return restarts


def _mutate(s, allowed, rng):
    s = set(s)
    for _ in range(rng.choice((1, 1, 2))):
        out = rng.choice(sorted(s))
        inn = rng.choice([c for c in allowed if c not in s])
        s = (s - {out}) | {inn}
    return tuple(sorted(s))


def _evolutionary(ev, ctx, rng, pop_size: int = 8):
    pop = _seed_plans(ctx)
    while len(pop) < min(pop_size, 2 * len(ctx.allowed)):
        s = tuple(sorted(rng.sample(ctx.allowed, ctx.k)))
        if s not in pop:
            pop.append(s)
        elif len(ctx.allowed) == ctx.k:
            break
    gens = 0
    try:
        ev.many(pop)
        vals = {s: ev(s) for s in pop}
        while True:
            gens += 1
            a, b = rng.sample(pop, 2) if len(pop) > 1 else (pop[0], pop[0])
            parent = a if vals[a] <= vals[b] else b
            child = _mutate(parent, ctx.allowed, rng)
            if child in vals:
                if all(ev.considered(n) for n in _neighbours(parent, ctx.allowed, rng)):
                    break  # the whole neighbourhood of the parent is known: nothing left to try
                continue
            worst = max(pop, key=lambda s: vals[s])
            v = ev.below(child, worst)  # None: a bound proves the child is no better than the worst
            vals[child] = math.inf if v is None else v
            if vals[child] < vals[worst]:
                pop[pop.index(worst)] = child
    except BudgetExhausted:
        pass
    return gens


def run(ctx, search: str = "greedy", objective: str = "ppl", budget: int | None = None,
        seconds: float | None = None, items=None, beam_width: int = 3, seed: int = 0,
        fallback_criterion: str = "simdiff", cached: bool = True, bound: bool = True, holdout_ids=None,
        repaired_evaluator=None, repair_method: str = "lstsq"):
    """``cached=False`` evaluates every candidate the reference way (``pruned_model`` + the objective
    on the whole model; for ``repaired_ppl``: ``fit_repair`` + ``apply_repair`` + perplexity) instead of
    through the prefix-cached evaluator; same results, slower.
    ``bound=False`` evaluates every considered set exactly (no elimination); same results, slower.

    ``objective="repaired_ppl"`` (repair-aware search): each set is repaired with ``repair_method``
    (dense fit on ``ctx.calib_ids``) and scored by its perplexity on ``holdout_ids``, windows that are
    not fit windows (``evaluation/repaired_objective.py``); ``repaired_evaluator``: a
    ``RepairedEvaluator`` on the same fit windows to share between runs (its holdout windows are used)."""
    if search not in ALGORITHMS:
        raise SimDiffError(f"unknown search algorithm '{search}'; choose from {', '.join(ALGORITHMS)}")
    if budget is not None and int(budget) < 1:
        raise SimDiffError(f"--budget must be at least 1 evaluation, got {budget}")
    if seconds is not None and float(seconds) <= 0:
        raise SimDiffError(f"search time limit must be positive, got {seconds}")
    if search in ("local", "evolutionary") and budget is None and seconds is None:
        budget = DEFAULT_OPEN_BUDGET
    ev = Evaluator(ctx, objective, None if budget is None else int(budget), seconds, items, cached=cached,
                   bound=bound, holdout_ids=holdout_ids, repaired=repaired_evaluator, repair_method=repair_method)
    rng = random.Random(seed)
    info, fallback = {}, False
    if search in ("greedy", "beam"):
        order: list[int] = []
        removed, fallback = _greedy(ev, ctx, fallback_criterion, width=1 if search == "greedy" else int(beam_width),
                                    order=order if search == "greedy" else None)
        if search == "greedy" and not fallback:
            info["order"] = order
        if search == "beam":
            info["beam_width"] = int(beam_width)
    else:
        n = _local(ev, ctx, rng) if search == "local" else _evolutionary(ev, ctx, rng)
        info["restarts" if search == "local" else "generations"] = n
        if ev.best is None:  # budget too small to evaluate even one complete set
            removed, fallback = list(_seed_plans(ctx)[0]), True
        else:
            removed = list(ev.best)
    value = ev.memo.get(tuple(sorted(removed)))
    if objective == REPAIRED:
        info["repaired_objective"] = _repaired_details(ev, removed)
    return ctx.plan(removed, "search", criterion=objective, details={
        "search": search, "objective": objective, "budget": ev.budget, "seconds_limit": seconds, "seed": seed,
        "evals": ev.evals, "exact_evals": ev.exact_evals, "eliminated_by_bound": len(ev.bounds),
        "bound_elimination": ev.bounded, "objective_value": value, "completed_by_fallback": fallback,
        "fallback_criterion": fallback_criterion if fallback else None, **info, "trace": ev.trace})


def _repaired_details(ev: Evaluator, removed) -> dict:
    """What the repaired objective measured, and the chosen set's repair (spans, fit residuals)."""
    H = ev.holdout_ids
    out = {"repair": ev.repair_method, "fit": "dense", "fit_windows": list(ev.ctx.calib_ids.shape),
           "holdout_windows": list(H.shape),
           "note": "each set repaired (fitted on the calibration windows) and scored by perplexity on the held-out "
                   "windows, none of which is a calibration window"}
    if ev.repaired is not None:
        out.update({k: v for k, v in ev.repaired.describe().items() if k not in out and k != "objective"})
        rep = ev.repaired.repair(removed)
        out["spans"] = [{k: r[k] for k in ("start", "end", "status", "ratio") if k in r} for r in rep.spans]
    return out
