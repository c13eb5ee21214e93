"""Device and dtype choice: ``auto`` means CUDA -> MPS -> CPU, and bf16/fp16 on GPU, fp32 on CPU.

    from simdiff_core.models.device import pick_device, pick_dtype
    dev = pick_device("auto"); dt = pick_dtype("auto", dev)

Why here: every stage that places tensors (loading, streaming, export dtype) must make the same choice
and refuse an unavailable device with one clear line. Cost: none (no allocation, no model access).
"""

from __future__ import annotations

import torch

from ..common.errors import SimDiffError


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
