"""Iterative: remove the lowest-importance block, re-score the *pruned* model, repeat k times.

Removing a block shifts the inputs of every block above it, so their similarity/difference
signals change; one-shot ranking misses that. Step 1 equals the one-shot choice (the dense scores
are reused when given).

Cost (prefix reuse). The per-block metrics a step ranks by (``metrics.BlockStats``: each block's
sums over its own input and output) of the blocks *below* the block removed last are unchanged: their
inputs and outputs are the same in the new pruned model. So the re-scoring keeps, per batch of
windows, the hidden state entering every kept block (``evaluator.PrefixEvaluator`` records how the
model calls each block, lazily: no dense pass), and step t+1 runs only the kept blocks above the block
removed at step t, from the cached input of that block, observing them into fresh accumulators;
the others keep their metrics. Step 2 runs every kept block once (it also builds the cache); the
batch partition is ``score_model``'s, so every metric is the same sum of the same numbers as a full
re-scoring of the pruned model (``cached=False``: the reference). Blocks run over k steps: about
(L - 1) + sum of the kept blocks above each removed one, against (L - 1) + (L - 2) + ... for full
re-scoring. Memory: per batch the inputs of the kept blocks ((L+1) x batch x S x H) while they fit in
``cache_bytes`` (default 256 MiB); other batches recompute the blocks below the removed one from
the cached input of block 0 (without observing them).
"""

from __future__ import annotations

import torch

from ..analysis.metrics import BlockStats, simdiff_importance
from ..analysis.score import Scores, auto_batch_size, metric_mask, score_model
from ..common.errors import SimDiffError
from ..models.load import LoadedModel
from ..pruning.plan import cosine_tiebreak, select_lowest
from ..pruning.prune import pruned_model

CACHE_BYTES = 256 * 2 ** 20


def run(ctx, criterion: str = "simdiff", alpha: float = 0.5, matrix_tokens: int = 16, beta: float = 0.5, norm: str = "rank",
        scale_free: bool = True, cached: bool = True):
    """``cached=False`` re-scores every pruned model with a full ``score_model`` pass (the reference)."""
    if criterion == "linear":  # the cached re-scoring keeps per-block sums only, not d x d fits
        raise SimDiffError("iterative re-scoring does not refit linear replaceability; use oneshot:linear")
    fusion = {"beta": beta, "norm": norm, "scale_free": scale_free}
    lm, L = ctx.lm, ctx.L
    kept, trace = list(range(L)), []
    rescore = None
    for step in range(ctx.k):
        ctx.check()
        ctx.report(step / ctx.k, f"iterative: scoring with {len(kept)} blocks (step {step + 1}/{ctx.k})")
        if step == 0:
            scores = ctx.get_scores()
            # later steps count position 0 exactly as the dense scores did
            first_token = scores.calibration.get("first_token", "included") != "excluded"
        elif cached:
            if rescore is None:
                rescore = Rescorer(ctx, first_token)
            scores = rescore.scores(kept, trace[-1]["removed"])
        else:
            view = pruned_model(lm, kept)
            sub = LoadedModel(model=view, tokenizer=lm.tokenizer, source=lm.source, device=lm.device,
                              dtype=lm.dtype, block_path=lm.block_path)
            scores = score_model(sub, ctx.calib_ids, matrix_tokens=matrix_tokens, should_stop=ctx.should_stop,
                                 first_token=first_token, linear=False)
        imp = scores.importance(criterion, alpha=alpha, **fusion)
        # Locked first/last blocks are never removed, so they stay the first/last of the pruned model.
        j = select_lowest(imp, 1, ctx.keep_first, ctx.keep_last, tiebreak=cosine_tiebreak(scores.layers))[0]
        trace.append({"step": step + 1, "removed": kept[j], "kept_before": list(kept),
                      "importance": [round(float(v), 6) for v in imp]})
        kept.pop(j)
    removed = sorted(set(range(L)) - set(kept))
    details = {"order": [t["removed"] for t in trace], "trace": trace}
    if rescore is not None:
        details["block_calls"] = rescore.calls
        details["block_calls_full_rescoring"] = sum(L - s for s in range(1, ctx.k)) * rescore.ev.num_batches
    # the SimDiff settings go in the plan's typed recipe fields (beta, options), not in details
    return ctx.plan(removed, "iterative", criterion=criterion, alpha=alpha if criterion == "simdiff" else None,
                    beta=beta, options={"norm": norm, "scale_free": scale_free}, details=details)


class Rescorer:
    """Per-block metrics of successive pruned models, re-running only the blocks above the last removal."""

    def __init__(self, ctx, first_token: bool, cache_bytes: int | None = None):
        from ..evaluation.evaluator import PrefixEvaluator

        ids = ctx.calib_ids
        N, S = ids.shape
        self.ctx, self.first_token = ctx, first_token
        self.N, self.S = N, S
        self.bs = auto_batch_size(ctx.lm.device, S)  # score_model's batches: the same sums as a full pass
        self.ev = PrefixEvaluator(ctx.lm, ids, batch_size=self.bs, lazy=True, should_stop=ctx.should_stop)
        self.inputs: list[dict | None] = [None] * self.ev.num_batches  # per batch: {block: input state}
        hidden = self.ev.batch_input(0)
        per_batch = (ctx.L + 1) * hidden.numel() * hidden.element_size()
        self.persistent = max(0, min(self.ev.num_batches, int(CACHE_BYTES if cache_bytes is None else cache_bytes) // max(1, per_batch)))
        self.layers: dict[int, dict] | None = None  # block -> its metrics in the current pruned model
        self.calls = self.ev.stats["capture_block_calls"]
        self.tokens = 0

    @torch.inference_mode()
    def scores(self, kept: list[int], removed: int) -> Scores:
        """Scores (per-block metrics only) of the model keeping ``kept``, right after removing ``removed``."""
        ctx, ev = self.ctx, self.ev
        first = self.layers is None  # step 2: every kept block is observed (and its input cached)
        todo = kept if first else [j for j in kept if j > removed]
        pos = {j: p for p, j in enumerate(kept)}
        stats = BlockStats(len(todo), windows=False)
        for b in range(ev.num_batches):
            x0 = ev.batch_input(b)
            B = x0.shape[0]
            mask = metric_mask(None, B, self.S, x0.device, self.first_token)
            cache = self.inputs[b]
            if first:
                h, new = x0, {}
            elif cache is not None:  # the input of the removed block now enters the next kept block
                h, new = cache[removed], {j: s for j, s in cache.items() if j < removed}
            else:  # a batch beyond the memory bound: the blocks below, from block 0, not observed
                h, new = x0, {}
                for j in kept:
                    if j > removed:
                        break
                    h = self._run(b, j, h)
            for i, j in enumerate(todo):
                ctx.check()
                new[j] = h
                y = self._run(b, j, h)
                stats.observe(i, h, y, mask)
                h = y
            stats.commit()
            self.inputs[b] = new if b < self.persistent else None
        fresh = stats.layers()
        layers = {} if first else {j: d for j, d in self.layers.items() if j < removed}
        for i, j in enumerate(todo):
            layers[j] = fresh[i]
        self.layers = layers
        out = []
        for j in kept:
            d = dict(layers[j])
            d["index"] = pos[j]
            out.append(d)
        for d, v in zip(out, simdiff_importance(out, alpha=0.5)):
            d["simdiff"] = float(v)
        self.tokens = stats.tokens or self.tokens  # nothing observed (the top block went): unchanged
        return Scores(model=ctx.lm.source, num_layers=len(kept), layers=out,
                      calibration={"samples": int(self.N), "seq_len": int(self.S), "tokens": int(self.tokens),
                                   "first_token": "included" if self.first_token else "excluded"},
                      meta={"partial_rescoring": {"observed_blocks": todo}})

    def _run(self, b: int, j: int, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.ev.run_block(b, j, h)
