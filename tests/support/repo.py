"""The repository root and the CLI run from it as a user would (``python -m simdiff_core ...``).

Why here: many test folders run the CLI end to end; one definition keeps the environment (the
checkout on PYTHONPATH, cwd at the root) the same for all. Cost: one subprocess per call (~5 s of
interpreter, torch and transformers start-up): where the process itself is not the point, the ``cli``
fixture (tests/conftest.py) calls the same ``main(argv)`` in the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, timeout=600, env=None):
    """Run ``python -m simdiff_core ARGS`` and return the CompletedProcess (text mode)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "simdiff_core", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=e)
