"""Atomic file writes shared by every stage (scores, plans, damage, reports, tables, exports).

    from simdiff_core.common.fileio import atomic_write_text
    atomic_write_text(Path("plan.json"), plan.to_json())

Why: a crash or a full disk must never leave a half-written file under the target name, so text is
written to a temporary file in the same directory and renamed into place (``os.replace`` is atomic
on one filesystem). This module sits below everything else (it imports only ``errors``), so any
stage can use it without an import circle. Cost: one extra rename per write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import SimDiffError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise SimDiffError(f"output directory does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise SimDiffError(f"cannot write {path}: {e.strerror or e}") from None
