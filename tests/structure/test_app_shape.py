"""The app's shape: one module owns the session state, and no library, ui, page or bench module grows past 400
lines unexplained.

Read as text, nothing imported (fast, and it cannot be fooled by import order)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP_FILES = sorted([ROOT / "app.py", *(ROOT / "ui").rglob("*.py"), *(ROOT / "pages").glob("*.py")])
MAX_LINES = 400
SIZED_FILES = sorted([*APP_FILES, *(ROOT / "simdiff_core").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])


def test_only_ui_state_touches_session_state():
    """``ui/state.py`` says it is the only module that touches ``st.session_state``: keep that true."""
    offenders = [str(p.relative_to(ROOT)) for p in APP_FILES
                 if p != ROOT / "ui" / "state.py" and re.search(r"\bsession_state\b", p.read_text(encoding="utf-8"))]
    assert not offenders, f"these write or read st.session_state directly (use ui.state): {offenders}"


def test_no_module_over_the_limit_without_a_reason():
    """A library, app or bench module over 400 lines says why on its first line (``# over 400 lines: ...``)."""
    assert any("simdiff_core" in p.parts for p in SIZED_FILES) and any("bench" in p.parts for p in SIZED_FILES)
    long = [str(p.relative_to(ROOT)) for p in SIZED_FILES
            if len(p.read_text(encoding="utf-8").splitlines()) > MAX_LINES
            and not p.read_text(encoding="utf-8").startswith("# over 400 lines:")]
    assert not long, f"over {MAX_LINES} lines with no reason at the top: {long}"
