"""Shared fixtures: the embedded GGUF model (loaded once per session) and tiny config-built models.

The embedded model is dequantised once and cached under $SIMDIFF_CACHE (default ~/.cache/simdiff),
which is how the app and CLI run too; later loads in the same run take seconds.

This file applies to every folder under tests/. Helpers that are not fixtures live in tests/support/
(imported as ``tests.support.*``: pytest.ini puts the repository root on sys.path).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The run library (simdiff_core.runs) lives under $SIMDIFF_HOME: the whole suite, and every CLI or app
# process it starts (they inherit the environment), gets a fresh one, never the user's ~/.cache/simdiff
# (and each test file its own, see _run_library_per_file).
# The dequantised-model cache ($SIMDIFF_CACHE) is separate and stays shared.
_SUITE_HOME = tempfile.mkdtemp(prefix="simdiff-suite-home-")
os.environ["SIMDIFF_HOME"] = _SUITE_HOME
os.environ.pop("SIMDIFF_RUNS_READONLY", None)
atexit.register(shutil.rmtree, _SUITE_HOME, True)
# Under pytest-xdist (scripts/setup.sh test runs ``-n 2``) the cores are shared out between the workers:
# two workers each running torch on every core would oversubscribe the 2-core CI box. The processes a
# test starts (CLI, Streamlit server) inherit the same share through OMP_NUM_THREADS, unless it is set.
# Results compared across processes are unaffected by the thread count (the suite also passes with
# OMP_NUM_THREADS=1 set for child processes and 2 threads in the test process).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
_THREADS = max(1, min(4, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


def pytest_collection_modifyitems(config, items):
    """Under xdist (``--dist loadfile --no-loadscope-reorder``) files are handed out in collection order:
    put the files that hold a ``slow`` test first, so the long ones start early and the many short files
    fill in at the end instead of one long file running alone on one worker (stable: order within a file
    and among the rest is kept). A plain run keeps pytest's order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def pytest_sessionstart(session):
    """Under xdist, dequantise the embedded model once in the controller before the workers start:
    otherwise on a cold cache (a fresh clone's new venv path is a new cache key) each worker, and each
    CLI or Streamlit process started meanwhile, dequantises it at the same time (~30 s each)."""
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    from simdiff_core import load_model
    from simdiff_core.common.errors import SimDiffError
    from simdiff_core.models.gguf import gguf_cache_dir
    from simdiff_core.models.sources import DEFAULT_MODEL, embedded_gguf

    try:
        if not (gguf_cache_dir(embedded_gguf(DEFAULT_MODEL)) / "config.json").is_file():
            load_model("default", device="cpu", dtype="float32")
    except SimDiffError:  # not installed: the tests that need it say so themselves
        pass


@pytest.fixture(scope="module", autouse=True)
def _run_library_per_file(tmp_path_factory):
    """Each test file gets an empty run library ($SIMDIFF_HOME, inherited by the CLI and app processes its
    tests start). Under xdist which files ran before this one in the same worker depends on timing: a
    calibration another file stored must never be what a test here reopens instead of computing."""
    old = os.environ["SIMDIFF_HOME"]
    os.environ["SIMDIFF_HOME"] = str(tmp_path_factory.mktemp("simdiff-home"))
    yield
    os.environ["SIMDIFF_HOME"] = old


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*args, env={...}) -> (returncode, stdout, stderr) of ``simdiff_core.cli.main(args)`` in this
    process, run from the repository root as ``tests.support.repo.run_cli`` runs it.

    The same parser and commands as ``python -m simdiff_core``, without a new interpreter per call (each
    pays ~5 s of torch and transformers imports). ``run_cli`` (a real subprocess) stays where the process
    is the point: its exit status and clean stderr, environment read at import time, a second process
    reading what the first one wrote."""
    from types import SimpleNamespace

    from simdiff_core.cli import main
    from tests.support.repo import ROOT

    def call(*args, env=None):
        with monkeypatch.context() as m:
            for k, v in (env or {}).items():
                m.setenv(k, str(v))
            m.chdir(ROOT)
            capsys.readouterr()
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse: a usage error exits 2
                code = e.code
            out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


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


@pytest.fixture(scope="module")
def ids32(tokenizer):
    """32 wikitext2 windows of 24 tokens (the insight tests resample them: bands, stability, reports)."""
    from simdiff_core import make_windows

    return make_windows(tokenizer, "wikitext2", n=32, seq_len=24)


@pytest.fixture
def tiny(tokenizer):
    """Factory: tiny(family, num_layers=6, seed=0) -> LoadedModel."""
    from tests.support.tiny import tiny_lm

    def make(family="llama", num_layers=6, seed=0):
        return tiny_lm(family, tokenizer, num_layers, seed)

    return make


@pytest.fixture(scope="module")
def tiny_bundle(tokenizer, ids):
    """A 6-block tiny llama with its scores and damage on the requesting module's ``ids`` windows
    (shared by the damage, agreement, report and ground-truth CLI tests)."""
    from simdiff_core import score_model
    from simdiff_core.evaluation.damage import measure_damage
    from tests.support.tiny import tiny_lm

    lm = tiny_lm("llama", tokenizer, 6, seed=1)
    scores = score_model(lm, ids, calibration={"source": "wikitext2"})
    dmg = measure_damage(lm, ids, batch_size=2, calibration={"source": "wikitext2"})
    return lm, scores, dmg
