"""Greedy by objective (SLEB, Song et al. 2024): at each of k steps, try removing every remaining
candidate block, measure the objective (calibration perplexity by default) of each resulting model,
and remove the cheapest. First/last blocks stay unless unlocked. Cost: about k x L evaluations,
bounded by ``budget`` (evaluations) and ``seconds``; see ``search.py``. Each step evaluates all its
candidates together against the step's cached model (``evaluator.PrefixEvaluator``): candidate c
runs only the kept blocks after c and a subset head (1/8 of the vocabulary) giving a proven lower
bound of its loss; only candidates whose bound does not exceed the best exact loss found so far get
the full head (exact elimination: same choice as evaluating all; see ``search.py``). ``bound=False``
evaluates every candidate exactly; ``cached=False`` is the reference full-model loop.
``objective="repaired_ppl"`` (with ``holdout_ids``): SLEB that knows the model will be repaired — each
candidate is scored after the lstsq repair, on held-out windows (``search.py``, docs/repair.md).
"""

from __future__ import annotations


def run(ctx, objective: str = "ppl", budget: int | None = None, seconds: float | None = None,
        items=None, criterion: str = "simdiff", cached: bool = True, bound: bool = True, holdout_ids=None,
        repaired_evaluator=None, repair_method: str = "lstsq"):
    from .search import run as search_run

    plan = search_run(ctx, search="greedy", objective=objective, budget=budget, seconds=seconds, items=items,
                      fallback_criterion=criterion, cached=cached, bound=bound, holdout_ids=holdout_ids,
                      repaired_evaluator=repaired_evaluator, repair_method=repair_method)
    plan.method = "greedy"
    return plan
