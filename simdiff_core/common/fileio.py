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
import tempfile
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
