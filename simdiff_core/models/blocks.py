"""Find a model's stack of decoder blocks (the unit everything else scores, removes and merges).

    from simdiff_core.models.blocks import find_block_path, get_attr_path
    blocks = get_attr_path(model, find_block_path(model))   # an nn.ModuleList

Known families keep their blocks at fixed dotted paths (``BLOCK_PATHS``); anything else is found by
the longest ModuleList of identical block types. Cost: one walk over the module tree.
"""

from __future__ import annotations

from torch import nn

from ..common.errors import SimDiffError


# Dotted paths where common families keep their decoder blocks, tried before the generic search.
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma/2/3 text, Phi3, OLMo, Granite, ...
    "model.language_model.layers",  # multimodal wrappers (Gemma3 conditional generation)
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
SUPPORTED_FAMILIES = "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, phi3, olmo, granite, gpt2, gpt-neox, opt"


def text_config(config):
    """The text part of a config (multimodal configs nest it)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def count_parameters(model: nn.Module) -> int:
    # Tied embeddings are one tensor seen twice: count each storage once. Offloaded (meta) and empty
    # tensors have no storage (data pointer 0 for all of them): count those by parameter object.
    seen, total = set(), 0
    for p in model.parameters():
        key = ("obj", id(p)) if p.device.type == "meta" or p.numel() == 0 else ("ptr", p.data_ptr())
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


def get_attr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_block_path(model: nn.Module) -> str:
    """Dotted path of the ModuleList holding the decoder blocks.

    Tries the family paths in BLOCK_PATHS, then falls back to the longest ModuleList whose children
    all share one class and whose length equals ``num_hidden_layers``.
    """
    n = getattr(text_config(model.config), "num_hidden_layers", None)
    for path in BLOCK_PATHS:
        try:
            mod = get_attr_path(model, path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return path
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1:
            if len({type(m) for m in mod}) == 1 and (n is None or len(mod) == n):
                if best is None or len(mod) > len(get_attr_path(model, best)):
                    best = name
    if best is None:
        raise SimDiffError(
            f"unsupported architecture {type(model).__name__}: no decoder-block list found; "
            f"supported families: {SUPPORTED_FAMILIES}"
        )
    return best
