"""Content-derived run keys: the same weights, the same calibration tokens and the same options give the same key.

    from simdiff_core.runs import calibration_key, run_key, weights_fingerprint, tokens_hash
    key, settings = calibration_key(lm, ids, matrix_tokens=256, first_token=True)   # before calibrating
    run_key(weights=weights_fingerprint(lm.model), tokens=tokens_hash(ids), options={...})  # the same, by parts

What goes in (``settings`` records each part; the run's metadata keeps it):

* **weights**: ``weights_fingerprint(model)``: SHA-256 of the model config (minus paths and version
  stamps) and, for every parameter and buffer, its name, shape, dtype and 16 evenly spaced values.
  Cheap (milliseconds, no full pass over the weights) and deterministic. It tells apart any two
  real checkpoints (fine-tunes, other seeds, other quantisations change nearly every value); an edit
  that touches none of the sampled entries is not seen (recompute explicitly then).
  Streamed models (not loaded): ``files_fingerprint(dir)``: config.json plus, per weight file, its
  name, size, first 64 KiB (the safetensors/GGUF header) and 64 bytes at 32 evenly spaced offsets.
  Paths and modification times are left out, so a copy on another machine has the same key.
* **tokens**: ``tokens_hash(ids)``: SHA-256 of the calibration token ids (shape and values). This
  covers the text, its source, the tokenizer, samples x seq. length and BOS handling at once.
* **options** (everything else that changes the numbers): matrix_tokens, first_token, window_stats,
  the effective batch size (summation order), dtype, device type, device map, streamed or not, and
  the simdiff_core, torch and transformers versions.

Cost: the fingerprint samples ~16 values per tensor (a few ms for a 135M model); hashing the ids is
microseconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_SAMPLES = 16
_DROP_CONFIG = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash", "_attn_implementation",
                "_attn_implementation_autoset"}


def _canon(d) -> str:
    return json.dumps(d, sort_keys=True, default=str, separators=(",", ":"))


def _config_dict(config) -> dict:
    try:
        d = config.to_dict()
    except Exception:
        d = dict(getattr(config, "__dict__", {}))

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in _DROP_CONFIG}
        return x

    return clean(d)


def weights_fingerprint(model) -> str:
    """SHA-256 (hex) of a loaded model's config and a fixed sample of every tensor (see the module docstring)."""
    import torch

    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(_canon(_config_dict(cfg) if cfg is not None else {}).encode())
    seen, names, samples = set(), [], []
    tensors = list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers(remove_duplicate=True))
    with torch.no_grad():
        for name, t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            names.append(f"{name}|{tuple(t.shape)}|{t.dtype}")
            if t.device.type == "meta" or t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            n = flat.numel()
            m = min(_SAMPLES, n)
            idx = torch.tensor([k * (n - 1) // max(m - 1, 1) for k in range(m)], device=flat.device)
            samples.append(flat[idx].to(device="cpu", dtype=torch.float64))
    h.update("\n".join(names).encode())
    if samples:
        h.update(torch.cat(samples).numpy().tobytes())
    return h.hexdigest()


def files_fingerprint(where: str | Path) -> str:
    """SHA-256 (hex) of a model folder (or one .gguf) from samples of its files: for models that are streamed, not loaded."""
    where = Path(where)
    files = [where] if where.is_file() else sorted(
        p for p in where.iterdir() if p.suffix in (".safetensors", ".gguf", ".bin", ".json") and p.is_file())
    h = hashlib.sha256()
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}|{size}".encode())
        with open(p, "rb") as f:
            if p.suffix == ".json":
                h.update(f.read(1 << 20))
                continue
            h.update(f.read(1 << 16))
            for k in range(32):
                f.seek(int(k * max(size - 64, 0) / 31))
                h.update(f.read(64))
    return h.hexdigest()


def tokens_hash(ids) -> str:
    """SHA-256 (hex) of the calibration token ids: shape and values (int64)."""
    import numpy as np

    a = np.ascontiguousarray(ids.detach().cpu().numpy() if hasattr(ids, "detach") else np.asarray(ids), dtype=np.int64)
    return hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()


def versions() -> dict:
    import torch
    import transformers

    from .. import __version__

    return {"simdiff_core": __version__, "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}


def run_key(weights: str, tokens: str, options: dict) -> str:
    """The run key (64 hex digits) of a calibration: weights fingerprint + token hash + every option that changes the numbers."""
    return hashlib.sha256(_canon({"weights": weights, "tokens": tokens, "options": options}).encode()).hexdigest()


def scoring_options(lm=None, ids=None, *, matrix_tokens: int = 256, first_token: bool = True,
                    window_stats: bool = True, batch_size: int | None = None, device=None, dtype=None,
                    device_map=None, stream: bool = False, linear: bool = True) -> dict:
    """The options part of a key, with the batch size resolved the way score_model resolves it."""
    import torch

    from ..analysis.score import auto_batch_size

    dev = torch.device(device if device is not None else (lm.device if lm is not None else "cpu"))
    if dtype is None and lm is not None:
        dtype = lm.dtype
    seq_len = int(ids.shape[1]) if ids is not None else 1
    bs = int(batch_size or auto_batch_size(dev, seq_len))
    if device_map is None and lm is not None:
        device_map = getattr(getattr(lm, "model", None), "hf_device_map", None)
    return {"matrix_tokens": int(matrix_tokens), "first_token": bool(first_token), "window_stats": bool(window_stats),
            "batch_size": bs, "dtype": str(dtype).replace("torch.", ""), "device": dev.type,
            "device_map": None if device_map is None else _canon(device_map), "stream": bool(stream),
            # the linear-replaceability curve (analysis/linear.py) and its bands: runs scored before it lack them
            "linear": 1 if linear else 0, **versions()}


def calibration_key(lm, ids, *, matrix_tokens: int = 256, first_token: bool = True, window_stats: bool = True,
                    batch_size: int | None = None, linear: bool = True) -> tuple[str, dict]:
    """(key, settings) of scoring ``lm`` (a LoadedModel) on ``ids`` with these options, before running it."""
    settings = {"weights": weights_fingerprint(lm.model), "tokens": tokens_hash(ids),
                "options": scoring_options(lm, ids, matrix_tokens=matrix_tokens, first_token=first_token,
                                           window_stats=window_stats, batch_size=batch_size, linear=linear)}
    return run_key(**settings), settings


def content_key(scores_dict: dict) -> str:
    """The key of scores that arrived without one (a plain scores.json): a hash of their content."""
    return "c" + hashlib.sha256(_canon(scores_dict).encode()).hexdigest()[1:]
