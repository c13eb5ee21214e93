"""One-shot: score the dense model once, remove the k lowest-importance blocks by ``criterion``."""

from __future__ import annotations

from ..pruning.plan import make_plan


def run(ctx, criterion: str = "simdiff", alpha: float = 0.5, beta: float = 0.5, norm: str = "rank",
        scale_free: bool = True):
    fusion = {"beta": beta, "norm": norm, "scale_free": scale_free}
    ctx.report(0.0, "scoring the dense model")
    plan = make_plan(ctx.get_scores(), criterion, num=ctx.k, alpha=alpha, keep_first=ctx.keep_first,
                     keep_last=ctx.keep_last, **fusion)
    plan.calibration = dict(ctx.calibration, **plan.calibration)
    return plan
