"""Sliding Layer Merging (arXiv 2502.19159): merge windows of consecutive blocks, top-down.

Start a window at the deepest removable block; grow it downwards one
block at a time while the merged model's final hidden states stay similar to the original model's
(mean token cosine on the calibration windows >= ``threshold``); when the next block would drop the
similarity below it, close the window (merge = base + sum of parameter deltas, see ``pruning/merge.py``)
and start a new window at the block below. The base is the *lowest* block of the window, as in the
paper and LaCo's RDSC (``merge_base="highest"`` uses the top block instead); the plan records it in
each group's ``base`` and in ``details["merge_base"]``. Stop once k blocks are merged away.

The paper picks the threshold by hand; here the user asks for k blocks, so if a pass over the
model merges fewer than k, the threshold is lowered to the highest similarity that was refused and
the pass repeats (earlier decisions are memoised, so a repeat only evaluates the new frontier).
Everything below the window being grown is still the original model, and every merge above it is
fixed. Evaluations run through the prefix-cached evaluator (``evaluator.PrefixEvaluator``): a
candidate starts from the cached dense input of its window's lowest block and runs only the merged
block and what lies above it (merged blocks are private copies, one per window in use; the loaded
model is never touched). ``cached=False`` builds each merged model and runs it whole (reference).
"""

from __future__ import annotations

import copy

import torch

from ..analysis.score import forward_base
from ..common.errors import SimDiffError
from ..pruning.merge import DEFAULT_BASE, group_for, merge_block_params, merged_model


@torch.inference_mode()
def _final_states(model, ids, device, bs: int = 4) -> list[torch.Tensor]:
    return [forward_base(model, ids[i:i + bs].to(device)).last_hidden_state.float()
            for i in range(0, ids.shape[0], bs)]


def _mean_cosine(out: list[torch.Tensor], ref: list[torch.Tensor], group: int = 4) -> float:
    """Mean over groups of ``group`` windows of the mean token cosine (the reference path's batches)."""
    per_window = torch.cat([torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(-1) for a, b in zip(out, ref)])
    return float(torch.stack([per_window[i:i + group].mean() for i in range(0, len(per_window), group)]).mean())


@torch.inference_mode()
def _merged_block(lm, base: int, layers) -> torch.nn.Module:
    """A private copy of block ``base`` carrying the merged parameters of ``layers`` (see ``pruning/merge.py``)."""
    params = merge_block_params(lm.blocks, base, layers)
    src = lm.blocks[base]
    # the copy takes the merged tensors as its parameters directly (no copy of the old weights first)
    memo = {id(p): torch.nn.Parameter(params[name].to(p.device), requires_grad=p.requires_grad)
            for name, p in src.named_parameters()}
    return copy.deepcopy(src, memo)


def run(ctx, threshold: float = 0.9, max_passes: int = 50, merge_base: str = DEFAULT_BASE, cached: bool = True):
    """``cached=False`` builds every candidate merged model and runs it whole (the reference path)."""
    group_for([0], merge_base)  # validates the option before any work
    if not -1.0 <= float(threshold) <= 1.0:
        raise SimDiffError(f"SLM similarity threshold must lie in [-1, 1], got {threshold}")
    allowed = ctx.allowed
    lo, hi = allowed[0], allowed[-1]
    if ctx.k > hi - lo:
        raise SimDiffError(f"sliding layer merging can fold at most {hi - lo} of blocks {lo}..{hi} away; asked for {ctx.k}")
    lm = ctx.lm
    ev = ctx.get_evaluator() if cached else None
    ref = ev.final_states(()) if cached else _final_states(lm.model, ctx.calib_ids, lm.device)
    memo: dict[tuple, float] = {}
    blocks: dict[tuple, torch.nn.Module] = {}  # merged block per window, for the windows in use
    trace = []

    def groups_plan(groups):
        merged = [group_for(g, merge_base) for g in groups]
        removed = [i for g in merged for i in g["layers"] if i != g["base"]]
        return ctx.plan(removed, "slm", criterion="output_cosine", merged_groups=merged)

    def layout(groups) -> tuple:
        lay = list(lm.blocks)
        for g in groups_plan(groups).merged_groups:
            w = tuple(g["layers"])
            if w not in blocks:
                blocks[w] = _merged_block(lm, g["base"], w)
            for i in w:
                lay[i] = blocks[w] if i == g["base"] else None
        in_use = {tuple(g) for g in groups}
        for w in [w for w in blocks if w not in in_use]:
            del blocks[w]
        return tuple(lay)

    def similarity(groups) -> float:
        key = tuple(tuple(g) for g in groups)
        if key not in memo:
            ctx.check()
            if cached:
                out = ev.final_states(layout(groups))
            else:
                out = _final_states(merged_model(lm, groups_plan(groups)), ctx.calib_ids, lm.device)
            memo[key] = _mean_cosine(out, ref)
            trace.append({"groups": [list(g) for g in groups], "similarity": round(memo[key], 6)})
            ctx.report(min(0.99, sum(len(g) - 1 for g in groups) / ctx.k),
                       f"slm: windows {[f'{g[0]}-{g[-1]}' for g in groups]} similarity {memo[key]:.4f}")
        return memo[key]

    def one_pass(T):
        groups, removed, refused = [], 0, None
        base = hi
        while base > lo and removed < ctx.k:
            window = [base]
            while window[0] - 1 >= lo and removed < ctx.k:
                trial = [window[0] - 1] + window
                s = similarity(groups + [trial])
                if s >= T:
                    window = trial
                    removed += 1
                else:
                    refused = s if refused is None else max(refused, s)
                    break
            if len(window) > 1:
                groups.append(window)
            base = window[0] - 1
        return groups, removed, refused

    T, passes = float(threshold), []
    for _ in range(max_passes):
        groups, removed, refused = one_pass(T)
        passes.append({"threshold": round(T, 6), "removed": removed})
        if removed >= ctx.k or refused is None:
            break
        T = refused  # the best refused extension now passes: at least one more merge next pass
    if sum(len(g) - 1 for g in groups) < ctx.k:
        raise SimDiffError(f"sliding layer merging stopped at {removed} of {ctx.k} blocks; try a lower --ratio")
    plan = groups_plan(groups)
    plan.details = {"threshold_start": float(threshold), "threshold_final": T, "passes": passes,
                    "similarity": similarity(groups), "evals": len(memo),
                    "windows": [f"{g['layers'][0]}-{g['layers'][-1]} -> {g['base']}" for g in plan.merged_groups],
                    "merge_base": merge_base,
                    "merge": f"base + sum(block_k - base) over every parameter of the window; base = {merge_base} "
                             "block of the window", "trace": trace}
    return plan
