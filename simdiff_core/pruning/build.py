"""The model a plan describes: blocks removed, merged groups folded.

    from simdiff_core.pruning.build import build_pruned
    small = build_pruned(lm, plan)     # a view (see prune.py) or, with merged groups, a merged copy

Used by evaluation, the methods' shoot-out and export alike, so it sits in the pruning stage below
them all. Cost: that of ``pruned_model`` (no weight copies) or ``merged_model`` (copies merged blocks).
"""

from __future__ import annotations

import torch

from ..models.load import LoadedModel
from .plan import Plan
from .prune import pruned_model


def build_pruned(lm: LoadedModel, plan: Plan) -> torch.nn.Module:
    """The model a plan describes: blocks removed, merged groups folded (see merge.py)."""
    plan.validate(lm.num_layers)
    if plan.merged_groups:
        from .merge import merged_model

        return merged_model(lm, plan)
    return pruned_model(lm, plan.kept_layers)
