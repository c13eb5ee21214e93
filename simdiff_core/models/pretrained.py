"""transformers' from_pretrained with every failure turned into one clear line.

    from simdiff_core.models.pretrained import from_pretrained   # used by models.load and models.gguf
    model, tok = from_pretrained("./my-model-dir", dtype=torch.float32, trust_remote_code=False)

Why: a missing file, gated repo, custom code without --trust-remote-code, an unknown architecture or
running out of memory must each read as a one-line SimDiffError naming what to do, never a traceback.
Cost: that of from_pretrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..common.errors import SimDiffError
from .blocks import SUPPORTED_FAMILIES


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


TRUST_REMOTE_CODE_WARNING = (
    "trust_remote_code is ON: the model repository's own Python code will run with your permissions; "
    "only do this for code you have read")


def is_oom(e: BaseException) -> bool:
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


MAX_LINE = 300  # an error line longer than this elides the middle of the path it names


def custom_code_error(shown: str, stream: bool = False) -> SimDiffError:
    """The one line (at most ``MAX_LINE`` with its ``error: ``) for a checkpoint whose config names its own
    code; ``stream``: the streamed path, which never runs such code, so the way out is a normal load."""
    tail = ("' contains custom code; --stream never runs it: load it without --stream and pass --trust-remote-code "
            "(only do that for code you have read)" if stream else
            "' contains custom code; it is not run unless you pass --trust-remote-code (only do that for code you have read)")
    room = MAX_LINE - len("error: '") - len(tail)
    if len(shown) > room:
        shown = shown[:room // 2 - 1] + "…" + shown[-(room - room // 2):]
    return SimDiffError("'" + shown + tail)


def names_custom_code(folder: Path) -> bool:
    """True when a local checkpoint's config.json maps classes to its own code (``auto_map``). Checked
    before transformers reads the config: with an unknown ``model_type`` transformers reports an
    unsupported architecture instead of the custom code, and some of its paths prompt on stdin."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no readable config: from_pretrained says what is wrong
    return isinstance(cfg, dict) and bool(cfg.get("auto_map"))


def from_pretrained(where: str, *, dtype, trust_remote_code, device_map=None, label: str | None = None, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shown = label or where  # what the user typed (a GGUF file, not its folder)
    if not trust_remote_code and Path(where).is_dir() and names_custom_code(Path(where)):
        raise custom_code_error(shown)
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
        msg = one_line(e)
        if "trust_remote_code" in str(e):
            raise custom_code_error(shown) from None
        if ("does not recognize this architecture" in str(e) or "Unrecognized configuration" in str(e)
                or "Unrecognized model" in str(e)):
            raise SimDiffError(f"unsupported architecture in '{shown}': {msg}; supported: {SUPPORTED_FAMILIES}") from None
        raise SimDiffError(f"could not load '{shown}': {msg}") from None
    except OSError as e:
        if kw.get("gguf_file"):
            raise SimDiffError(f"could not read GGUF file '{shown}': {one_line(e)}") from None
        if Path(where).is_dir():  # a local folder: the hub is not involved, do not blame it
            raise SimDiffError(f"could not load '{shown}': {one_line(e)}") from None
        raise SimDiffError(
            f"could not load '{shown}': not a local model and not reachable on the Hugging Face hub "
            f"(offline, misspelt, or gated?) — {one_line(e)}"
        ) from None
    except Exception as e:  # out of memory, corrupt safetensors/GGUF, shape mismatch, ...
        if is_oom(e):
            raise _too_large(shown) from None
        # struct.error and friends are all called "error": name the module so the line makes sense
        name = type(e).__name__ if type(e).__name__ != "error" else f"{type(e).__module__}.error"
        hint = " (truncated or corrupt file?)" if kw.get("gguf_file") or "Safetensor" in name else ""
        raise SimDiffError(f"could not load '{shown}'{hint}: {name}: {one_line(e)}") from None
    return model, tok
