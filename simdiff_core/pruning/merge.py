"""Fold windows of consecutive blocks into one block by summing parameter deltas (Sliding Layer Merging).

    from simdiff_core.pruning.merge import merged_model, merge_block_params
    plan.merged_groups = [{"base": 17, "layers": [17, 18, 19, 20]}]    # 18-20 removed, 17 kept
    small = merged_model(lm, plan)            # new model; lm.model is never touched

For a group with base block b and window W, every parameter of the merged block is

    theta_merged = theta_b + sum_{k in W, k != b} (theta_k - theta_b)

(LaCo's "reserving-differences" merge, used by Sliding Layer Merging, arXiv 2502.19159). Both
papers accumulate into the *lowest* block of the window (b = min W), and that is the default base
(``DEFAULT_BASE``, ``group_for(layers)``); ``base="highest"`` is offered as an option. The result
depends on the base: the sum has |W| - 1 deltas taken against b, so
theta_merged = sum_k theta_k - (|W| - 1) theta_b, and the merged block sits at b's position (with b's
layer type, e.g. sliding or global attention on Gemma). Every parameter of the window takes part,
norms included. The published code of both papers updates the
base in a loop that re-reads the already-updated tensor (``base = base + (block_k - base)``), which
collapses to *assignment* and ends up copying the last block of the window; this module sums the
deltas against the original base, which is what the papers' equations say.

Memory: the result is a pruned view of the loaded model (shared weights) in which only the merged
base blocks are private deep copies, so the shared model loaded once for every app session stays
unchanged (tests check its weight fingerprint).
"""

from __future__ import annotations

import torch
from torch import nn

from ..common.errors import SimDiffError
from .prune import block_weights, private_block, pruned_model

MERGE_BASES = ("lowest", "highest")
DEFAULT_BASE = "lowest"  # the papers' choice: accumulate into the lowest block of the window


def group_for(layers, base: str = DEFAULT_BASE) -> dict:
    """The ``merged_groups`` entry for a window of consecutive blocks with the given base rule."""
    if base not in MERGE_BASES:
        raise SimDiffError(f"unknown merge base '{base}'; choose from {', '.join(MERGE_BASES)}")
    layers = sorted(int(i) for i in layers)
    return {"base": layers[0] if base == "lowest" else layers[-1], "layers": layers}


@torch.no_grad()
def merge_block_params(blocks, base: int, layers) -> dict[str, torch.Tensor]:
    """The merged parameters ``{name: tensor}`` of ``layers`` folded into ``base`` (new tensors)."""
    ref = block_weights(blocks[base])  # real values also where accelerate offloaded them
    others = [block_weights(blocks[k]) for k in layers if k != base]
    out = {}
    for name, p in ref.items():
        acc = p.detach().clone().float()
        for o in others:
            if name not in o or o[name].shape != p.shape:
                raise SimDiffError(f"cannot merge blocks {list(layers)}: parameter '{name}' differs between blocks")
            acc += o[name].detach().float() - p.detach().float()
        out[name] = acc.to(p.dtype)
    return out


def merged_model(lm, plan) -> nn.Module:
    """The model ``plan`` describes with its ``merged_groups`` folded into their base blocks."""
    L = lm.num_layers
    plan.validate(L)
    blocks = lm.blocks
    small = pruned_model(lm, plan.kept_layers)
    new_blocks = small.get_submodule(lm.block_path)
    pos = {orig: j for j, orig in enumerate(plan.kept_layers)}
    seen: set[int] = set()
    for g in plan.merged_groups:
        base, layers = int(g["base"]), sorted(int(i) for i in g["layers"])
        if seen & set(layers):
            raise SimDiffError(f"merged groups overlap at blocks {sorted(seen & set(layers))}")
        seen |= set(layers)
        if layers != list(range(layers[0], layers[-1] + 1)):
            raise SimDiffError(f"merged group {layers} is not a run of consecutive blocks")
        params = merge_block_params(blocks, base, layers)
        # private copy of the (already re-indexed) view block: own tensors, layer_idx kept, no offload hooks
        new_blocks[pos[base]] = private_block(new_blocks[pos[base]], params)
    return small
