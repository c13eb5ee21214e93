"""The atomic writers and the marked-section writer every generated table uses (simdiff_core/common/fileio.py)."""

from __future__ import annotations

import pytest

from simdiff_core.common.errors import SimDiffError
from simdiff_core.common.fileio import atomic_write_bytes, atomic_write_text, replace_marked, staged_dir, write_marked

S, E = "<!-- t:start -->", "<!-- t:end -->"


def test_replace_marked_keeps_everything_outside_the_markers():
    doc = f"# Title\n\nintro\n{S}\nold | table\n{E}\n\n## Next\n"
    assert replace_marked(doc, S, E, "new\n\n") == f"# Title\n\nintro\n{S}\nnew\n{E}\n\n## Next\n"
    assert replace_marked("no markers", S, E, "x") is None
    assert replace_marked(f"{E} before {S}", S, E, "x") is None   # an end marker must follow the start


def test_write_marked_appends_only_when_asked(tmp_path):
    p = tmp_path / "RESULTS.md"
    p.write_text("# Results\n")
    assert write_marked(p, S, E, "a") is False and p.read_text() == "# Results\n"
    assert write_marked(p, S, E, "a", append=True) and p.read_text() == f"# Results\n\n{S}\na\n{E}\n"
    assert write_marked(p, S, E, "b") and p.read_text() == f"# Results\n\n{S}\nb\n{E}\n"
    q = tmp_path / "new.md"
    assert write_marked(q, S, E, "c", append=True) and q.read_text() == f"{S}\nc\n{E}\n"


def test_atomic_write_bytes_replaces_whole_or_leaves_nothing(tmp_path):
    p = tmp_path / "fig.png"
    atomic_write_bytes(p, b"\x89PNG one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "é\n")
    assert (tmp_path / "t.txt").read_bytes() == "é\n".encode("utf-8")
    with pytest.raises(SimDiffError, match="output directory does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"x")
    (tmp_path / "d").mkdir()  # the rename onto a directory fails: no temporary file may stay behind
    with pytest.raises(SimDiffError, match="cannot write"):
        atomic_write_bytes(tmp_path / "d", b"x")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["d", "fig.png", "t.txt"]


def test_staged_dir_becomes_the_folder_or_leaves_the_old_one(tmp_path):
    out = tmp_path / "export"
    with staged_dir(out, force=False, what="export") as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1" and (out.stat().st_mode & 0o777) == 0o755
    with pytest.raises(SimDiffError, match="already exists"), staged_dir(out, force=False, what="export") as tmp:
        (tmp / "a").write_text("2")
    with pytest.raises(SimDiffError, match=r"^export failed, nothing written to .*: disk full$"):
        with staged_dir(out, force=True, what="export") as tmp:
            (tmp / "a").write_text("3")
            raise OSError(28, "disk full")
    with pytest.raises(KeyboardInterrupt), staged_dir(out, force=True, what="export") as tmp:
        raise KeyboardInterrupt
    assert (out / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with staged_dir(out, force=True, what="export") as tmp:
        (tmp / "b").write_text("4")
    assert sorted(p.name for p in out.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
