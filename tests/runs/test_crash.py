"""Crash safety and concurrency of the run library, with real processes and threads.

* ``kill -9`` of a writer at each step of a save (and of a delete), and at a random moment of a
  stream of saves: the library stays readable, every run whose save returned is there and opens, at
  most the run being written is lost (or it is adopted whole), and writing goes on afterwards.
* Two processes, and eight threads, finishing the same key at once: one run, every writer gets its id.

The writers are ``tests/support/run_writer.py`` processes (started together, so the interpreter
start-up is paid once in wall time).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from simdiff_core.runs import RunStore
from tests.support.builders import constructed_scores
from tests.support.repo import ROOT


@pytest.fixture(scope="module")
def scores_file(tmp_path_factory):
    rng = random.Random(0)
    s = constructed_scores([[rng.uniform(0.3, 0.9) for _ in range(16)] for _ in range(12)])
    s.matrices = {"output_cosine": [[rng.random() for _ in range(12)] for _ in range(12)]}
    p = tmp_path_factory.mktemp("w") / "scores.json"
    s.save(p)
    return p


def _writer(home, scores_file, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tests.support.run_writer", str(home), str(scores_file), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def _check_intact(home, promised: set[str]) -> set[str]:
    """Every listed run opens, none is unreadable, the promised ones are there; returns the listed ids."""
    store = RunStore(home, readonly=False)
    infos = store.list()
    assert [i.error for i in infos if i.error] == []
    ids = {i.id for i in infos}
    assert promised <= ids
    for i in infos:
        assert store.open(i.id).scores.num_layers == 12
    assert not list(store.files.glob(".del-*"))
    return ids


POINTS = ["before_rename", "after_rename", "before_commit", "in_delete"]


def test_kill_9_at_every_step_of_a_write_loses_at_most_that_run(tmp_path, scores_file):
    procs = {p: _writer(tmp_path / p, scores_file, "kill-at", p, "3") for p in POINTS}
    loop = _writer(tmp_path / "loop", scores_file, "loop")
    assert loop.stdout.readline().strip() == "ready"
    rng = random.Random(1)
    first = [loop.stdout.readline().strip() for _ in range(rng.randint(3, 8))]
    time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the stream of saves
    loop.send_signal(signal.SIGKILL)
    loop_out, _ = loop.communicate(timeout=60)
    loop_out = "\n".join(first) + "\n" + loop_out
    outs = {p: pr.communicate(timeout=600) for p, pr in procs.items()}
    for p, (out, err) in outs.items():
        assert procs[p].returncode == -signal.SIGKILL, (p, err[-2000:])
        done = [ln for ln in out.split() if ln != "ready"]
        assert len(done) == 3
        ids = _check_intact(tmp_path / p, set(done) - ({done[-1]} if p == "in_delete" else set()))
        extra = ids - set(done)
        if p in ("after_rename", "before_commit"):
            assert len(extra) == 1  # the file was in place: adopted whole, not lost
        elif p == "before_rename":
            assert not extra
        else:  # the delete was under way: it is finished, the run does not come back
            assert ids == set(done[:-1])
        store = RunStore(tmp_path / p, readonly=False)
        d = json.loads(scores_file.read_text())
        rid = store.save(dict(d, model=f"after-{p}"))  # the library takes writes again
        assert store.open(rid).scores.model == f"after-{p}"
    promised = {ln for ln in loop_out.split() if ln != "ready"}
    assert promised, "the writer saved nothing before it was killed"
    assert len(_check_intact(tmp_path / "loop", promised) - promised) <= 1


def test_two_processes_finishing_the_same_key_store_one_run(tmp_path, scores_file):
    go, key = tmp_path / "go", "d" * 64
    procs = [_writer(tmp_path / "home", scores_file, "same-key", str(go), key) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    ids = [p.communicate(timeout=600)[0].split()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert ids == ["d" * 16, "d" * 16]
    store = RunStore(tmp_path / "home", readonly=False)
    assert [i.id for i in store.list()] == ["d" * 16]
    assert store.open(ids[0]).scores.to_dict() == json.loads(scores_file.read_text())
    assert len(list(store.files.glob("*.npz"))) == 1 and not list(store.files.glob(".tmp-*"))


def test_threads_same_key_and_many_keys_at_once(tmp_path, scores_file):
    d = json.loads(scores_file.read_text())
    store = RunStore(tmp_path / "home", readonly=False)
    barrier = threading.Barrier(8)
    got, errors = [], []

    def same():
        try:
            s = RunStore(tmp_path / "home", readonly=False)  # one object per session, as the app has
            barrier.wait()
            got.append(s.save(d, key="e" * 64))
            for j in range(3):
                got.append(s.save(dict(d, model=f"t{threading.get_ident()}-{j}")))
                s.list()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=same) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert got.count("e" * 16) == 8
    infos = store.list()
    assert len(infos) == 1 + 8 * 3 and all(i.error is None for i in infos)
    assert len({i.key for i in infos}) == len(infos)
    for i in infos:
        store.open(i.id)
