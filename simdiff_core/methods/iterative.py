"""Iterative: remove the lowest-importance block, re-score the *pruned* model, repeat k times.

Removing a block shifts the inputs of every block above it, so their similarity/difference
signals change; one-shot ranking misses that. Cost: k scoring passes on the calibration windows.
Step 1 equals the one-shot choice (the dense scores are reused when given).
"""

from __future__ import annotations

from ..analysis.score import score_model
from ..models.load import LoadedModel
from ..pruning.plan import cosine_tiebreak, select_lowest
from ..pruning.prune import pruned_model


def run(ctx, criterion: str = "simdiff", alpha: float = 0.5, matrix_tokens: int = 16, beta: float = 0.5, norm: str = "rank",
        scale_free: bool = True):
    fusion = {"beta": beta, "norm": norm, "scale_free": scale_free}
    lm, L = ctx.lm, ctx.L
    kept, trace = list(range(L)), []
    for step in range(ctx.k):
        ctx.check()
        ctx.report(step / ctx.k, f"iterative: scoring with {len(kept)} blocks (step {step + 1}/{ctx.k})")
        if step == 0:
            scores = ctx.get_scores()
            # later steps count position 0 exactly as the dense scores did
            first_token = scores.calibration.get("first_token", "included") != "excluded"
        else:
            view = pruned_model(lm, kept)
            sub = LoadedModel(model=view, tokenizer=lm.tokenizer, source=lm.source, device=lm.device,
                              dtype=lm.dtype, block_path=lm.block_path)
            scores = score_model(sub, ctx.calib_ids, matrix_tokens=matrix_tokens, should_stop=ctx.should_stop,
                                 first_token=first_token)
        imp = scores.importance(criterion, alpha=alpha, **fusion)
        # Locked first/last blocks are never removed, so they stay the first/last of the pruned model.
        j = select_lowest(imp, 1, ctx.keep_first, ctx.keep_last, tiebreak=cosine_tiebreak(scores.layers))[0]
        trace.append({"step": step + 1, "removed": kept[j], "kept_before": list(kept),
                      "importance": [round(float(v), 6) for v in imp]})
        kept.pop(j)
    removed = sorted(set(range(L)) - set(kept))
    # the SimDiff settings go in the plan's typed recipe fields (beta, options), not in details
    return ctx.plan(removed, "iterative", criterion=criterion, alpha=alpha if criterion == "simdiff" else None,
                    beta=beta, options={"norm": norm, "scale_free": scale_free},
                    details={"order": [t["removed"] for t in trace], "trace": trace})
