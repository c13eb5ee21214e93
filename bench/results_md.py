"""Write one benchmark's section into bench/RESULTS.md, between ``<!-- keep:NAME -->`` markers.

bench/run.py rewrites RESULTS.md but carries these sections over (``kept_sections``), so the browser
and warm-start benchmarks, which run separately, keep their latest numbers there.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    block = f"<!-- keep:{name} -->\n{markdown.strip()}\n<!-- /keep:{name} -->"
    old = path.read_text() if path.exists() else ""
    pat = re.compile(rf"<!-- keep:{re.escape(name)} -->.*?<!-- /keep:{re.escape(name)} -->", re.S)
    new = pat.sub(lambda _: block, old) if pat.search(old) else old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)
