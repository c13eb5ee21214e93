"""The numbers the pages compute in ui/ (not in the library), each against an independent count."""

from __future__ import annotations

import pytest


def test_prune_preview_parameter_estimate_equals_the_pruned_model(tiny):
    """Prune preview's "Parameters" metric against counting the parameters of the model actually built."""
    from simdiff_core.pruning.prune import pruned_model
    from ui.views import estimate_cost

    lm = tiny("llama", 6)
    removed = [1, 3, 4]
    small = pruned_model(lm, [i for i in range(6) if i not in removed])
    cost = estimate_cost(lm, removed)
    assert cost["params_after"] == sum(p.numel() for p in small.parameters())
    assert cost["params_before"] == sum(p.numel() for p in lm.model.parameters())
    # speedup from per-token matmul work: block weights + LM head, by direct count
    blocks = [sum(p.numel() for p in b.parameters()) for b in lm.blocks]
    head = lm.model.get_output_embeddings().weight.numel()
    assert cost["speedup"] == pytest.approx((sum(blocks) + head) / (sum(blocks) + head - sum(blocks[i] for i in removed)))
