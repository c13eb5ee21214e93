"""Build a pruned model as a new *view* of a loaded one, leaving the original untouched.

    from simdiff_core.prune import pruned_model
    small = pruned_model(lm, plan.kept_layers)   # shares weight tensors with lm.model
    small.generate(...)                          # KV cache works: layer_idx and config are fixed

The loaded model is shared by every app session (``st.cache_resource``), so pruning must not touch
it. We shallow-copy each module on the path from the top-level model down to the block list (and
each kept block and its attention module), give the copies their own ``_modules`` dicts, and put a
new ``ModuleList`` of the kept blocks in place. Parameters are shared, not copied: a pruned view of
a 7B model costs no extra weight memory. Code that *changes* weights (merging, LoRA merge) must use
``materialize=True`` to get private copies first.

What has to be fixed after removing blocks, or generation with a KV cache silently breaks:

* ``self_attn.layer_idx`` (and ``layer_idx`` on the block) — the cache is indexed by it;
* ``config.num_hidden_layers`` — Qwen2-style forwards iterate ``layers[:num_hidden_layers]``;
* ``config.layer_types`` — Gemma3/Qwen sliding-window caches are built one layer per entry.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import SimDiffError
from .load import LoadedModel, find_block_path, get_attr_path, text_config


def _shallow(module: nn.Module) -> nn.Module:
    new = copy.copy(module)
    # copy.copy shares __dict__'s containers: give the copy its own so edits stay local.
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


def _fix_layer_idx(block: nn.Module, new_idx: int) -> nn.Module:
    block = _shallow(block)
    if hasattr(block, "layer_idx"):
        block.layer_idx = new_idx
    for name, child in list(block._modules.items()):
        if child is not None and hasattr(child, "layer_idx"):
            child = _shallow(child)
            child.layer_idx = new_idx
            block._modules[name] = child
    return block


def _configs(model: nn.Module):
    """Every distinct config object reachable from the model (top-level and nested text configs)."""
    seen = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            seen[id(cfg)] = cfg
    return list(seen.values())


def pruned_model(source, kept_layers, materialize: bool = False) -> nn.Module:
    """A model with only ``kept_layers`` (indices into the original block list), as a view.

    ``source`` is a LoadedModel or an nn.Module. With ``materialize=True`` the result owns deep
    copies of its weights (for code that modifies them).
    """
    model = source.model if isinstance(source, LoadedModel) else source
    path = source.block_path if isinstance(source, LoadedModel) else find_block_path(model)
    blocks = get_attr_path(model, path)
    L = len(blocks)
    kept = [int(i) for i in kept_layers]
    if not kept:
        raise SimDiffError("cannot build a model with no blocks")
    if sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= L:
        raise SimDiffError(f"kept blocks must be increasing indices in 0..{L - 1}")

    # Copy the path: top-level model -> ... -> owner of the block list.
    parts = path.split(".")
    new_top = _shallow(model)
    parent_old, parent_new = model, new_top
    for part in parts[:-1]:
        child_new = _shallow(getattr(parent_old, part))
        parent_new._modules[part] = child_new
        parent_old, parent_new = getattr(parent_old, part), child_new
    new_list = nn.ModuleList([_fix_layer_idx(blocks[i], j) for j, i in enumerate(kept)])
    parent_new._modules[parts[-1]] = new_list

    # Give every module on the copied path a private, fixed config.
    old_cfgs = {id(c): c for c in _configs(model)}
    new_cfgs = {}
    for cid, cfg in old_cfgs.items():
        c = copy.deepcopy(cfg)
        tc = text_config(c)
        for target in {id(c): c, id(tc): tc}.values():
            if hasattr(target, "num_hidden_layers"):
                target.num_hidden_layers = len(kept)
            lt = getattr(target, "layer_types", None)
            if isinstance(lt, (list, tuple)) and len(lt) == L:
                target.layer_types = [lt[i] for i in kept]
            mw = getattr(target, "max_window_layers", None)  # Qwen2: first N layers use full attention
            if isinstance(mw, int) and mw < L:
                target.max_window_layers = sum(1 for i in kept if i < mw)
        new_cfgs[cid] = c
    for m in _path_modules(new_top, parts):
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) in new_cfgs:
            m.config = new_cfgs[id(cfg)]
    if hasattr(new_top, "generation_config") and new_top.generation_config is not None:
        new_top.generation_config = copy.deepcopy(new_top.generation_config)
    if materialize:
        new_top = copy.deepcopy(new_top)
    return new_top


def _path_modules(top: nn.Module, parts):
    mods = [top]
    m = top
    for part in parts[:-1]:
        m = getattr(m, part)
        mods.append(m)
    return mods


def block_parameter_count(source) -> list[int]:
    blocks = source.blocks if isinstance(source, LoadedModel) else get_attr_path(source, find_block_path(source))
    return [sum(p.numel() for p in b.parameters()) for b in blocks]


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """A cheap hash of all weights (sum and a strided sample per tensor) to prove non-mutation."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().float().flatten()
        h.update(name.encode())
        h.update(f"{t.numel()}:{t.sum().item():.8e}:{t.abs().sum().item():.8e}".encode())
        h.update(t[:: max(1, t.numel() // 64)].cpu().numpy().tobytes())
    return h.hexdigest()
