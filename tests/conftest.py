"""Shared fixtures: the embedded GGUF model (loaded once per session) and tiny config-built models.

The embedded model is dequantised once and cached under $SIMDIFF_CACHE (default ~/.cache/simdiff),
which is how the app and CLI run too; later loads in the same run take seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def embedded_lm():
    from simdiff_core import load_model

    return load_model("default", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tokenizer(embedded_lm):
    return embedded_lm.tokenizer


@pytest.fixture(scope="session")
def calib_ids(embedded_lm):
    from simdiff_core import make_windows

    return make_windows(embedded_lm.tokenizer, "wikitext2", n=4, seq_len=128)


@pytest.fixture(scope="session")
def embedded_scores(embedded_lm, calib_ids):
    from simdiff_core import score_model

    return score_model(embedded_lm, calib_ids, calibration={"source": "wikitext2"})


@pytest.fixture
def tiny(tokenizer):
    """Factory: tiny(family, num_layers=6, seed=0) -> LoadedModel."""
    from tiny import tiny_lm

    def make(family="llama", num_layers=6, seed=0):
        return tiny_lm(family, tokenizer, num_layers, seed)

    return make


def run_cli(*args, timeout=600, env=None):
    """Run ``python -m simdiff_core ARGS`` and return the CompletedProcess (text mode)."""
    import subprocess

    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "simdiff_core", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=e)
