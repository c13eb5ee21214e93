"""Warm start: ``load.prewarm`` imports what the first model load would import on the click.

In a fresh process (as a new server is), prewarm must leave transformers' model-loading core and the
default model's family modules imported, load nothing into memory, and never raise, whatever the spec.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = r"""
import json, sys
sys.path.insert(0, {root!r})
import torch
from simdiff_core.models.load import prewarm
before = set(sys.modules)
steps = prewarm("default")
bad = [prewarm(s) for s in ("no/such-model-anywhere", "/no/such/dir", None)]
new = set(sys.modules) - before
print(json.dumps({{"steps": steps, "bad": bad,
                  "has": [m for m in ("transformers.modeling_utils", "transformers.models.llama.modeling_llama",
                                      "transformers.models.auto.tokenization_auto") if m in sys.modules],
                  "new_modules": len(new)}}))
"""


def test_prewarm_imports_the_load_path_and_never_raises():
    p = subprocess.run([sys.executable, "-c", CODE.format(root=str(ROOT))], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    want = ["transformers.modeling_utils", "transformers.models.auto.tokenization_auto"]
    if "family" in r["steps"]:  # the embedded model's dequantised cache exists: its family's modules too
        want.insert(1, "transformers.models.llama.modeling_llama")
    assert r["has"] == want
    assert r["new_modules"] > 100  # the lazy imports really happened here, not at the first load
    assert all(set(b) == {"imports"} for b in r["bad"])  # unknown specs: imports only, no error
