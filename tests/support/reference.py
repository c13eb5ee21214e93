"""Independent reference computations shared by test folders (never the code path under test).

``naive_loss``: build the pruned model and measure its perplexity, the definition every cached or
bounded evaluation must reproduce. Cost: one full forward of the pruned model per call.
"""

from __future__ import annotations

from simdiff_core.evaluation.evaluate import perplexity
from simdiff_core.pruning.prune import pruned_model


def naive_loss(lm, ids, removed) -> float:
    """Mean NLL of the model with blocks ``removed`` taken out, by pruned_model + perplexity."""
    kept = [j for j in range(lm.num_layers) if j not in set(removed)]
    return perplexity(pruned_model(lm, kept), ids, batch_size=2)["nll"]
