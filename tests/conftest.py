"""Shared fixtures: the embedded GGUF model (loaded once per session) and tiny config-built models.

The embedded model is dequantised once and cached under $SIMDIFF_CACHE (default ~/.cache/simdiff),
which is how the app and CLI run too; later loads in the same run take seconds.

This file applies to every folder under tests/. Helpers that are not fixtures live in tests/support/
(imported as ``tests.support.*``: pytest.ini puts the repository root on sys.path).
"""

from __future__ import annotations

import os

import pytest
import torch

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
    from tests.support.tiny import tiny_lm

    def make(family="llama", num_layers=6, seed=0):
        return tiny_lm(family, tokenizer, num_layers, seed)

    return make

