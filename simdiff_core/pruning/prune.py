"""Build a pruned model as a new *view* of a loaded one, leaving the original untouched.

    from simdiff_core.pruning.prune import pruned_model
    small = pruned_model(lm, plan.kept_layers)   # shares weight tensors with lm.model
    small.generate(...)                          # KV cache works: layer_idx and config are fixed

The loaded model is shared by every app session (``st.cache_resource``), so pruning must not touch
it. We shallow-copy each module on the path from the top-level model down to the block list (and
each kept block and its attention module), give the copies their own ``_modules`` dicts, and put a
new ``ModuleList`` of the kept blocks in place. Parameters are shared, not copied: a pruned view of
a 7B model costs no extra weight memory. Code that *changes* weights (merging, LoRA merge) must use
``materialize=True`` to get private copies first.

Each copied module also gets its own hook dictionaries (forward, pre, with-kwargs, always-called,
backward, state-dict), starting as a copy of the original's: a hook added to or removed from the
view never reaches the original, and vice versa. (Modules below a block that are not copied, such
as the MLP, are the same objects in both; scope hooks on them with ``hooks.hook_pass``.)

Under accelerate dispatch (``--device-map``) each module's ``forward`` is an instance attribute
bound to that module, and offloaded weights live in the hook's weight map with ``meta``
placeholders in the module: the copies are re-bound to themselves (``_rebind``), the view's
``hf_device_map`` is renumbered like its blocks, and merged blocks are built by ``private_block``
from the real (offloaded) values, so every result equals the one without a device map.

What has to be fixed after removing blocks, or generation with a KV cache silently breaks:

* ``self_attn.layer_idx`` (and ``layer_idx`` on the block) — the cache is indexed by it;
* ``config.num_hidden_layers`` — Qwen2-style forwards iterate ``layers[:num_hidden_layers]``;
* ``config.layer_types`` — Gemma3/Qwen sliding-window caches are built one layer per entry.
"""

from __future__ import annotations

import copy
import functools
import types

import torch
from torch import nn

from ..common.errors import SimDiffError
from ..models.blocks import find_block_path, get_attr_path, text_config
from ..models.load import LoadedModel


def shallow_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that shares its tensors and children but nothing it can be changed through."""
    new = copy.copy(module)
    d = new.__dict__
    # copy.copy shares __dict__'s containers: give the copy its own so edits stay local. That
    # includes every hook dict (forward/pre/with-kwargs/always-called/backward/state-dict): a hook
    # added to or removed from the view never reaches the original, and vice versa.
    for k, v in module.__dict__.items():
        if isinstance(v, dict) and (k in ("_modules", "_parameters", "_buffers") or "hooks" in k):
            d[k] = type(v)(v)
        elif isinstance(v, set) and k.startswith("_"):  # _non_persistent_buffers_set
            d[k] = set(v)
    _rebind(module, new)
    return new



def with_block_list(model, path: str, new_list: nn.ModuleList):
    """A view of ``model`` whose block list (at dotted ``path``) is ``new_list``: shallow copies of the
    modules from the top down to the list's owner, so the original model is untouched."""
    parts = path.split(".")
    new_top = shallow_copy(model)
    parent_old, parent_new = model, new_top
    for part in parts[:-1]:
        child_new = shallow_copy(getattr(parent_old, part))
        parent_new._modules[part] = child_new
        parent_old, parent_new = getattr(parent_old, part), child_new
    parent_new._modules[parts[-1]] = new_list
    return new_top

def _rebind(old: nn.Module, new: nn.Module) -> None:
    """Point instance-level methods of the copy at the copy (accelerate dispatch stores them).

    ``dispatch_model`` replaces ``module.forward`` with ``partial(new_forward, module)`` and keeps
    the class forward, bound to ``module``, as ``_old_forward``. A plain copy would carry both, so
    calling the view would run the *original* module's forward with the original's children and
    ``layer_idx`` (generate with a KV cache then indexes past the pruned cache; a merged block is
    never used). The hook object is copied too: it keeps per-call state.
    """
    d = new.__dict__
    for k, v in list(d.items()):
        if isinstance(v, types.MethodType) and v.__self__ is old:
            d[k] = types.MethodType(v.__func__, new)
    fwd = d.get("forward")
    if isinstance(fwd, functools.partial) and fwd.args and fwd.args[0] is old:
        d["forward"] = functools.update_wrapper(functools.partial(fwd.func, new, *fwd.args[1:], **fwd.keywords),
                                                d.get("_old_forward", fwd))
    if d.get("_hf_hook") is not None:
        d["_hf_hook"] = copy.copy(d["_hf_hook"])


def _fix_layer_idx(block: nn.Module, new_idx: int) -> nn.Module:
    block = shallow_copy(block)
    if hasattr(block, "layer_idx"):
        block.layer_idx = new_idx
    for name, child in list(block._modules.items()):
        if child is not None and hasattr(child, "layer_idx"):
            child = shallow_copy(child)
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


# Config entries with one value per block (sliced like the blocks) and lists of block indices
# (renumbered, removed blocks dropped). A stale per-layer array silently misconfigures the kept blocks.
PER_LAYER_ARRAYS = ("layer_types", "no_rope_layers", "layers_block_type")
LAYER_INDEX_LISTS = ("mlp_only_layers",)


def pruned_config(cfg, kept: list[int], L: int):
    """A deep copy of ``cfg`` (and its nested text config) for a model keeping blocks ``kept`` of ``L``.

    Shared by the in-memory view (``pruned_model``) and the streamed export (``export/streamed.py``),
    so both write the same config.
    """
    c = copy.deepcopy(cfg)
    tc = text_config(c)
    pos = {orig: j for j, orig in enumerate(kept)}
    for target in {id(c): c, id(tc): tc}.values():
        if hasattr(target, "num_hidden_layers"):
            target.num_hidden_layers = len(kept)
        for name in PER_LAYER_ARRAYS:
            arr = getattr(target, name, None)
            if isinstance(arr, (list, tuple)) and len(arr) == L:
                setattr(target, name, [arr[i] for i in kept])
        for name in LAYER_INDEX_LISTS:
            arr = getattr(target, name, None)
            if isinstance(arr, (list, tuple)):
                setattr(target, name, [pos[i] for i in arr if i in pos])
        mw = getattr(target, "max_window_layers", None)  # Qwen2: first N layers use full attention
        if isinstance(mw, int) and mw < L:
            target.max_window_layers = sum(1 for i in kept if i < mw)
    return c


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

    new_list = nn.ModuleList([_fix_layer_idx(blocks[i], j) for j, i in enumerate(kept)])
    new_top = with_block_list(model, path, new_list)
    parts = path.split(".")

    # Give every module on the copied path a private, fixed config.
    old_cfgs = {id(c): c for c in _configs(model)}
    new_cfgs = {}
    for cid, cfg in old_cfgs.items():
        new_cfgs[cid] = pruned_config(cfg, kept, L)
    for m in _path_modules(new_top, parts):
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) in new_cfgs:
            m.config = new_cfgs[id(cfg)]
    dmap = getattr(model, "hf_device_map", None)
    if isinstance(dmap, dict):  # accelerate's map names blocks by index: renumber it like the blocks
        new_top.hf_device_map = _renumber_device_map(dmap, path, kept)
    if hasattr(new_top, "generation_config") and new_top.generation_config is not None:
        new_top.generation_config = copy.deepcopy(new_top.generation_config)
    if materialize:  # a dispatched model's offloaded weights live in accelerate's maps: read them
        new_top = private_block(new_top) if is_dispatched(new_top) else copy.deepcopy(new_top)
    return new_top


def _renumber_device_map(dmap: dict, path: str, kept: list[int]) -> dict:
    """``hf_device_map`` of the view: entries of removed blocks dropped, kept blocks renumbered."""
    pos = {orig: j for j, orig in enumerate(kept)}
    out = {}
    for name, dev in dmap.items():
        if name.startswith(path + "."):
            idx, _, rest = name[len(path) + 1:].partition(".")
            if idx.isdigit():
                if int(idx) not in pos:
                    continue
                name = f"{path}.{pos[int(idx)]}" + (f".{rest}" if rest else "")
        out[name] = dev
    return out


def _path_modules(top: nn.Module, parts):
    mods = [top]
    m = top
    for part in parts[:-1]:
        m = getattr(m, part)
        mods.append(m)
    return mods


def _offload_maps(block: nn.Module) -> list[tuple[str, object]]:
    """(module prefix, weights map) of every accelerate offload hook in ``block``, deepest first."""
    maps = []
    for name, m in block.named_modules():
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or [hook]:  # SequentialHook holds several
            if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
                maps.append((name, h.weights_map))
    return sorted(maps, key=lambda t: -len(t[0]))


def block_weights(block: nn.Module, buffers: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter (and buffer) of ``block`` by name, with real values.

    Under accelerate offloading (``--device-map`` with ``cpu``/``disk`` entries) a block's tensors
    are ``meta`` placeholders and the values live in its hooks' weight maps; this reads them there.
    """
    maps = None
    out = {}
    for mname, m in block.named_modules():
        items = list(m.named_parameters(recurse=False)) + (list(m.named_buffers(recurse=False)) if buffers else [])
        for pname, t in items:
            full = f"{mname}.{pname}" if mname else pname
            if t.device.type == "meta":
                maps = _offload_maps(block) if maps is None else maps
                for prefix, wm in maps:
                    if not prefix or full.startswith(prefix + "."):
                        key = full[len(prefix) + 1:] if prefix else full
                        if key in wm:
                            t = wm[key]
                            break
                else:
                    raise SimDiffError(f"'{full}' has no value: it is on the meta device and no offload map holds it")
            out[full] = t
    return out


def is_dispatched(module: nn.Module) -> bool:
    """True when accelerate hooks (``--device-map``) sit on ``module`` or anything inside it."""
    return any("_hf_hook" in m.__dict__ for m in module.modules())


def private_block(block: nn.Module, params: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A deep copy of ``block`` (or a whole view) that owns real tensors and no offload hooks.

    ``params`` (``{name: tensor}``) replace the named parameters. For merging: the merged block must
    not share weights with the shared model, and under accelerate offloading it must not reload its
    old weights from the offload map before each call. For ``pruned_model(materialize=True)`` on a
    dispatched model: every tensor becomes real and private. Tensors go to the execution device of
    ``block``'s own hook (else where its first tensor lives); tied tensors stay tied; if ``block``
    was dispatched, a plain device-alignment hook (no offload) moves its inputs there as before.
    """
    from accelerate.hooks import AlignDevicesHook, _accelerate_added_attributes, add_hook_to_module

    hook = getattr(block, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    values = block_weights(block, buffers=True)
    if dev is None:
        dev = next((t.device for t in values.values() if t.device.type != "meta"), torch.device("cpu"))
    dev = torch.device(dev)
    # the copy must not drag the hooks (and their weight maps: possibly the whole offloaded model) along
    memo = {id(m.__dict__["_hf_hook"]): None for m in block.modules() if "_hf_hook" in m.__dict__}
    private = copy.deepcopy(block, memo)
    for m in private.modules():
        if "_hf_hook" in m.__dict__:  # accelerate's forward wrapper and helpers, bound to the hook
            for attr in ("_hf_hook", "_old_forward", "forward", *_accelerate_added_attributes):
                m.__dict__.pop(attr, None)
    private.__dict__.pop("hf_device_map", None)
    params = params or {}
    done: dict[int, torch.Tensor] = {}  # id of the copy's tensor -> its replacement (keeps ties)
    with torch.no_grad():
        for name, t in values.items():
            owner, _, leaf = name.rpartition(".")
            mod = private.get_submodule(owner) if owner else private
            is_param = leaf in mod._parameters
            current = mod._parameters[leaf] if is_param else mod._buffers[leaf]
            if name in params:
                new = params[name].detach().to(dev)
            elif id(current) in done:
                new = done[id(current)]
            elif current.device.type == "meta":  # offloaded: a private copy of the stored value
                new = t.detach().to(dev, copy=True)
            elif current.device != dev:
                new = current.detach().to(dev)
            else:
                continue  # deepcopy already made it private
            if is_param and not isinstance(new, nn.Parameter):
                new = nn.Parameter(new, requires_grad=current.requires_grad)
            done.setdefault(id(current), new)
            if is_param:
                mod._parameters[leaf] = new
            else:
                mod._buffers[leaf] = new
    if hook is not None:
        add_hook_to_module(private, AlignDevicesHook(execution_device=dev,
                                                     io_same_device=bool(getattr(hook, "io_same_device", False))))
    return private


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
