"""Write one benchmark's section into bench/RESULTS.md, between ``<!-- keep:NAME -->`` markers.

bench/run.py rewrites RESULTS.md but carries these sections over (``kept_sections``), so the browser
and warm-start benchmarks, which run separately, keep their latest numbers there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simdiff_core.common.fileio import write_marked  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    write_marked(path, f"<!-- keep:{name} -->", f"<!-- /keep:{name} -->", markdown, append=True)
