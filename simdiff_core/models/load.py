"""Load a causal LM and find its stack of decoder blocks.

    from simdiff_core.models.load import load_model
    lm = load_model("default")              # the embedded SmolLM2-135M GGUF
    lm = load_model("Qwen/Qwen2.5-0.5B")    # hub id (needs the network or a warm HF cache)
    lm = load_model("./my-model-dir")       # a save_pretrained directory
    lm = load_model("/path/model.gguf", device="cpu", dtype="float32")

A model spec is one of: ``default`` (or ``smollm2-135m``), ``gemma3-270m`` (the second embedded
GGUF, assembled from its chunk packages), a path to a ``.gguf`` file, a local model directory, or a
Hugging Face hub id. GGUF files are dequantised by transformers on load, which is slow (~30 s for
the embedded model on 2 cores); the dequantised weights (always float32, whatever dtype the load
asks for) and tokenizer are therefore cached as a plain safetensors directory under ``$SIMDIFF_CACHE`` (default ``~/.cache/simdiff``) and later loads
read that instead.

Nothing here mutates a loaded model afterwards: pruning builds a new view (see ``pruning/prune.py``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..common.errors import SimDiffError
from .blocks import count_parameters, find_block_path, get_attr_path, text_config
from .device import pick_device, pick_dtype
from .gguf import gguf_cache_dir, load_gguf
from .pretrained import TRUST_REMOTE_CODE_WARNING, from_pretrained, is_oom
from .sources import DEFAULT_MODEL, EMBEDDED, embedded_gguf, hub_reachable, resolve_spec


@dataclass
class LoadedModel:
    """A loaded model plus what the rest of the pipeline needs to know about it."""

    model: nn.Module
    tokenizer: object
    source: str  # the spec the user gave (recorded in scores/plans)
    device: torch.device
    dtype: torch.dtype
    block_path: str  # dotted attribute path of the decoder ModuleList
    load_seconds: float = 0.0
    gguf_file: str | None = None  # original GGUF path when the weights came from one
    notes: list[str] = field(default_factory=list)

    @property
    def blocks(self) -> nn.ModuleList:
        return get_attr_path(self.model, self.block_path)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def name(self) -> str:
        return display_name(self.source)

    @property
    def family(self) -> str:
        return getattr(text_config(self.model.config), "model_type", "unknown")

    def num_parameters(self) -> int:
        return count_parameters(self.model)


def display_name(source: str) -> str:
    if source in ("default", DEFAULT_MODEL):
        return "SmolLM2-135M-Instruct (embedded GGUF)"
    if source in EMBEDDED:
        return f"{source} (embedded GGUF)"
    return source


def load_model(
    spec: str = "default",
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    use_gguf_cache: bool = True,
) -> LoadedModel:
    """Load ``spec`` for inference (eval mode, no grad needed) and locate its decoder blocks.

    ``device_map`` (e.g. ``"auto"``) hands placement to accelerate for models larger than one
    device; then ``device`` only says where inputs go (the first block's device).
    """
    t0 = time.perf_counter()
    kind, path = resolve_spec(spec or "default")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    notes: list[str] = []
    gguf_file = None
    if kind in ("embedded", "gguf"):
        gguf = embedded_gguf(DEFAULT_MODEL if spec in (None, "", "default") else spec) if kind == "embedded" else path
        gguf_file = str(gguf)
        model, tok, notes = load_gguf(gguf, dt, use_gguf_cache)
    else:
        where = str(path) if kind == "dir" else spec
        if trust_remote_code:
            notes.append(TRUST_REMOTE_CODE_WARNING)
        # No route to the hub: read the local HF cache only, instead of ~1 minute of retries before
        # transformers falls back to it (a live demo on a flaky network must answer quickly).
        hub_kw = {"local_files_only": True} if kind == "hub" and not hub_reachable() else {}
        model, tok = from_pretrained(where, dtype=dt, trust_remote_code=trust_remote_code, device_map=device_map,
                                      **hub_kw)
    if model.dtype != dt:
        model = model.to(dt)
    if device_map is None:
        try:
            model = model.to(dev)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
            raise SimDiffError(
                f"model does not fit on {dev}: try --dtype bfloat16, --device-map auto or --stream"
            ) from None
    else:
        dev = next(model.parameters()).device
    model.eval()
    model.requires_grad_(False)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    block_path = find_block_path(model)
    return LoadedModel(
        model=model, tokenizer=tok, source=spec or "default", device=dev, dtype=dt, block_path=block_path,
        load_seconds=time.perf_counter() - t0, gguf_file=gguf_file, notes=notes,
    )


def wrap_model(model: nn.Module, tokenizer, source: str = "in-memory") -> LoadedModel:
    """Adopt an already-built model (tests, notebooks) as a LoadedModel."""
    model.eval()
    p = next(model.parameters())
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, device=p.device, dtype=p.dtype,
                       block_path=find_block_path(model))


def prewarm(spec: str | None = "default") -> dict:
    """Do ahead of time what otherwise sits between a Load click and the first forward pass.

    Measured on the embedded model with its dequantised cache on disk (bench/run.py
    ``first_curves_after_s``): in a fresh process ``load_model`` spent most of its time not reading
    weights but importing what transformers imports lazily on first use (its model-loading core,
    ``torch.distributed.tensor``, ``torch._dynamo``, the model family's modules, the tokenizer
    backend): seconds on a 2-core machine, against ~1 s for the load itself once those are imported.
    This imports them, builds a one-block model of ``spec``'s family from its config (first torch
    ops), and asks the OS to read ``spec``'s cached safetensors into the page cache. Nothing is kept
    in memory but modules. Meant for a background thread at app start; returns seconds per step.
    """
    out = {}
    t = time.perf_counter()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    import transformers.modeling_utils  # noqa: F401 - the lazy imports themselves are the point
    out["imports"] = round(time.perf_counter() - t, 3)
    cache = None
    if spec:
        try:
            kind, path = resolve_spec(spec)
            if kind == "embedded":
                cache = gguf_cache_dir(embedded_gguf(DEFAULT_MODEL if spec == "default" else spec))
            elif kind == "dir":
                cache = path
        except Exception:  # noqa: BLE001 - best effort: nothing to read ahead, the real load reports
            cache = None
    if cache is not None and (cache / "config.json").is_file():
        t = time.perf_counter()
        cfg = AutoConfig.from_pretrained(cache, trust_remote_code=False)
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(cfg, attr):
                setattr(cfg, attr, 1)
        for attr in ("layer_types",):
            if getattr(cfg, attr, None):
                setattr(cfg, attr, list(getattr(cfg, attr))[:1])
        try:
            with torch.device("meta"):
                AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)  # the family's modules, no weights allocated
            AutoTokenizer.from_pretrained(cache, trust_remote_code=False)
        except Exception:  # noqa: BLE001 - a prewarm must never break the app; the real load reports
            pass
        out["family"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        for f in cache.glob("*.safetensors"):
            try:
                with open(f, "rb") as fh:
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
        out["page_cache"] = round(time.perf_counter() - t, 3)
    return out
