"""Atomic file writes shared by every stage (scores, plans, damage, reports, tables, exports).

    from simdiff_core.common.fileio import atomic_write_bytes, atomic_write_text
    atomic_write_text(Path("plan.json"), plan.to_json())
    atomic_write_bytes(Path("figure.png"), png)

Why: a crash or a full disk must never leave a half-written file under the target name, so data is
written to a temporary file in the same directory and renamed into place (``os.replace`` is atomic
on one filesystem). This module sits below everything else (it imports only ``errors``), so any
stage can use it without an import circle. Cost: one extra rename per write.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import SimDiffError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename; a missing
    directory or a failed write is one ``SimDiffError`` line and leaves no temporary file behind."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise SimDiffError(f"output directory does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise SimDiffError(f"cannot write {path}: {e.strerror or e}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_marked(text: str, start: str, end: str, body: str) -> str | None:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``body`` (the markers
    kept, each on its own line), or None where either marker is missing. The one rule every generated
    section (docs tables, bench/RESULTS.md sections) is written by."""
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    return text[:i] + f"{start}\n{body.strip()}\n{end}" + text[j + len(end):]


def write_marked(path: Path, start: str, end: str, body: str, append: bool = False) -> bool:
    """Replace the marked section of the file at ``path`` (``replace_marked``), atomically. Where the markers
    are missing: append the section at the end with ``append``, else leave the file and return False."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    new = replace_marked(old, start, end, body)
    if new is None:
        if not append:
            return False
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + f"{start}\n{body.strip()}\n{end}\n"
    atomic_write_text(path, new)
    return True


@contextmanager
def staged_dir(out: Path, force: bool, what: str):
    """A temporary folder next to ``out`` to write into; when the block ends it becomes ``out``
    (``replace_dir``). On any failure the folder is removed and nothing is written to ``out``: an
    ``OSError`` (or a safetensors write error, which carries "(os error N)") becomes the one line
    "``what`` failed, nothing written to ``out``: ..."."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an export is meant to be shared
        replace_dir(tmp, out, force)
    except SimDiffError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SimDiffError(f"{what} failed, nothing written to {out}: {e.strerror or e}") from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk / write error as SafetensorError("... I/O error: ... (os error N)")
        if isinstance(e, Exception) and "(os error" in str(e):
            detail = str(e).strip().splitlines()[0][:200]
            raise SimDiffError(f"{what} failed, nothing written to {out}: {detail}") from None
        raise


def replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an existing ``out`` (only with ``force``) is moved aside
    first and put back if the rename fails, so ``out`` is always the old or the new folder, never neither."""
    if out.exists():
        if not force:
            raise SimDiffError(f"'{out}' already exists; use --force to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        try:
            os.rename(out, old / "x")
        except BaseException:
            shutil.rmtree(old, ignore_errors=True)  # nothing moved: the old export is where it was
            raise
        try:
            os.rename(tmp, out)
        except BaseException:
            # The new export could not take the name: put the previous one back, never leave it hidden.
            try:
                os.rename(old / "x", out)
            except OSError as e:
                raise SimDiffError(f"export failed and the previous export could not be put back at {out}: "
                                   f"it is in {old / 'x'} ({e.strerror or e})") from None
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
