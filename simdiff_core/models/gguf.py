"""GGUF in: dequantise with transformers once, then cache plain safetensors for later loads.

Dequantising the embedded model takes ~30 s on 2 cores; the result is saved (float32, atomically via
a temporary sibling directory and a rename) under ``$SIMDIFF_CACHE/dequantized/<name>-<hash>``, keyed
by path, size and mtime, so later loads read safetensors in about a second. A read-only home only
costs the cache, never the load. ``strip_gguf_quantizer`` lets a dequantised model be saved again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..common.errors import SimDiffError
from .pretrained import from_pretrained, one_line
from .sources import cache_root


def gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    # "float32" is part of the key: the cache always holds float32 weights (caches from versions that
    # saved whatever dtype the first load asked for, e.g. bf16-rounded, are never reused).
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}|float32".encode()).hexdigest()[:16]
    return cache_root() / "dequantized" / f"{gguf.stem}-{key}"


def strip_gguf_quantizer(model: nn.Module) -> None:
    """transformers keeps a GGUF quantizer on dequantised models, which blocks save_pretrained."""
    for attr in ("hf_quantizer",):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    if hasattr(model.config, "quantization_config"):
        try:
            del model.config.quantization_config
        except AttributeError:
            model.config.quantization_config = None


def load_gguf(gguf: Path, dtype, use_cache: bool):
    """Load a GGUF file, going through the dequantised safetensors cache when allowed.

    The cache always holds float32 weights, whatever ``dtype`` this load asks for: a bf16 load must
    not leave bf16-rounded weights that a later float32 load would silently reuse. The model is
    dequantised in float32 and converted to ``dtype`` by the caller.
    """
    cache = gguf_cache_dir(gguf)
    if use_cache and (cache / "config.json").is_file():
        model, tok = from_pretrained(str(cache), dtype=dtype, trust_remote_code=False)
        return model, tok, ["loaded dequantised GGUF from cache " + str(cache)]
    try:
        with open(gguf, "rb") as f:
            if f.read(4) != b"GGUF":
                raise SimDiffError(f"'{gguf}' is not a GGUF file (bad magic bytes)")
    except OSError as e:
        raise SimDiffError(f"cannot read '{gguf}': {one_line(e)}") from None
    model, tok = from_pretrained(str(gguf.parent), dtype=torch.float32 if use_cache else dtype,
                                  trust_remote_code=False, gguf_file=gguf.name, label=str(gguf))
    strip_gguf_quantizer(model)
    notes = ["dequantised GGUF " + gguf.name]
    if use_cache:
        try:
            _write_cache(model, tok, cache)
            notes.append("cached dequantised weights at " + str(cache))
        except OSError as e:  # a read-only home must not break loading
            notes.append(f"could not cache dequantised weights: {one_line(e)}")
    return model, tok, notes


def _write_cache(model, tok, cache: Path) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
    try:
        # Save in float32 so the cache serves every later dtype choice losslessly.
        if model.dtype != torch.float32:
            raise SimDiffError(f"internal: GGUF cache must be written in float32, got {model.dtype}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, cache)
        except OSError:  # another process won the race: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
