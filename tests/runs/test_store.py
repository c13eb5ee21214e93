"""The run library: a reopened run is the original Scores (every array, every plan, every band), keys find
runs again, partial runs stay partial, unreadable files are reported one line each, imports are validated,
the size cap evicts least recently used runs only, and a read-only library refuses every change.

Independent checks: arrays are compared with numpy against the original Scores' own lists, plans and
bands are recomputed from both objects by the library's planners (never read back from the store).
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from simdiff_core import Cancelled, SimDiffError, make_plan, make_windows, score_model
from simdiff_core.runs import RunStore, calibration_key, run_file_bytes, run_meta


@pytest.fixture(scope="module")
def lm(tokenizer):
    from tests.support.tiny import tiny_lm

    return tiny_lm("llama", tokenizer, 6, seed=3)


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=6, seq_len=24)


@pytest.fixture(scope="module")
def scores(lm, ids):
    return score_model(lm, ids, batch_size=2, calibration={"source": "wikitext2", "description": "WikiText-2 valid"})


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home", readonly=False)


def _variant(scores, name: str):
    """The same Scores under another model name (another content key)."""
    from simdiff_core.analysis.score import Scores

    d = scores.to_dict()
    d["model"] = name
    return Scores.from_dict(d)


def _arrays(d, prefix=""):
    """Every numeric list in a Scores dict, by path (independent of the codec's own walk)."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_arrays(v, f"{prefix}.{k}"))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, x in enumerate(d):
            out.update(_arrays(x, f"{prefix}[{i}]"))
    elif isinstance(d, list):
        out[prefix] = np.asarray(d)
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = np.asarray(d)
    return out


def test_reopened_run_equals_the_original(store, scores, lm, ids):
    from simdiff_core.analysis.uncertainty import bands, fused_band
    from simdiff_core.pruning.sweep import removal_order

    key, settings = calibration_key(lm, ids, batch_size=2)
    rid = store.save(scores, meta=run_meta(scores, settings), key=key)
    run = RunStore(store.home).open(rid)  # a fresh object: nothing cached in memory
    back = run.scores
    a, b = _arrays(scores.to_dict()), _arrays(back.to_dict())
    assert a.keys() == b.keys() and len(a) > 30
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert {"output_cosine", "cka", "angular_boundaries"} <= set(back.matrices)
    assert len(back.windows["tokens"]) == 6 and back.calibration == scores.calibration and back.meta == scores.meta
    for l0, l1 in zip(scores.layers, back.layers):  # types too: an int index stays an int
        assert [type(v) for v in l0.values()] == [type(v) for v in l1.values()]
    for crit in ("simdiff", "cosine", "angular", "mssd"):
        for num in (1, 2, 3):
            p0, p1 = make_plan(scores, crit, num=num), make_plan(back, crit, num=num)
            assert p0.removed_layers == p1.removed_layers and p0.scores == p1.scores
    assert removal_order(scores) == removal_order(back)
    b0, b1 = bands(scores, n_boot=50), bands(back, n_boot=50)
    assert all(np.array_equal(np.asarray(b0[k]), np.asarray(b1[k])) for k in b0)
    f0, f1 = fused_band(scores, n_boot=50), fused_band(back, n_boot=50)
    assert json.dumps(f0, default=str) == json.dumps(f1, default=str)
    assert run.info.blocks == 6 and run.info.samples == 6 and run.info.seq_len == 24 and not run.info.partial
    m = run.info.meta
    assert m["weights_fingerprint"] == settings["weights"] and m["tokens_hash"] == settings["tokens"]
    assert m["options"]["batch_size"] == 2 and m["versions"]["transformers"] and m["created"]


def test_content_key_finds_the_run_and_every_option_changes_it(store, scores, lm, ids, tokenizer):
    from tests.support.tiny import tiny_lm

    key, _ = calibration_key(lm, ids, batch_size=2)
    assert calibration_key(lm, ids, batch_size=2)[0] == key  # deterministic
    others = [calibration_key(tiny_lm("llama", tokenizer, 6, seed=4), ids, batch_size=2)[0],  # other weights
              calibration_key(lm, ids[:5], batch_size=2)[0],                                  # other text
              calibration_key(lm, ids, batch_size=3)[0],
              calibration_key(lm, ids, batch_size=2, matrix_tokens=64)[0],
              calibration_key(lm, ids, batch_size=2, first_token=False)[0]]
    assert len({key, *others}) == 6
    assert store.lookup(key) is None
    rid = store.save(scores, key=key)
    assert store.lookup(key).id == rid and store.save(scores, key=key) == rid  # stored once
    assert len(store.list()) == 1


def test_calibrate_stored_reuses_without_a_forward_pass(tmp_path, lm):
    from simdiff_core.workflows import calibrate_stored

    store = RunStore(tmp_path / "h", readonly=False)
    calls = []
    h = lm.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        s1, _, i1 = calibrate_stored(lm, "wikitext2", 4, 24, store=store, batch_size=2)
        n = len(calls)
        s2, _, i2 = calibrate_stored(lm, "wikitext2", 4, 24, store=store, batch_size=2)
        assert n > 0 and len(calls) == n  # no forward pass the second time
        assert i1["from_store"] is None and i2["from_store"].id == i1["run_id"] and s2.to_dict() == s1.to_dict()
        s3, _, i3 = calibrate_stored(lm, "wikitext2", 4, 24, store=store, batch_size=2, recompute=True)
        assert len(calls) > n and i3["from_store"] is None and i3["run_id"] == i1["run_id"]
        assert len(store.list()) == 1
    finally:
        h.remove()


def test_a_cancelled_calibration_is_saved_partial_and_never_looked_up(tmp_path, lm):
    from simdiff_core.workflows import calibrate_stored

    store = RunStore(tmp_path / "h", readonly=False)
    seen = []

    def stop():
        return len(seen) >= 1  # after the first committed batch

    with pytest.raises(Cancelled) as e:
        calibrate_stored(lm, "wikitext2", 6, 24, store=store, batch_size=2, should_stop=stop,
                         on_batch=seen.append)
    pid = e.value.run_id
    info = store.info(pid)
    assert info.partial and store.open(pid).scores.calibration["samples"] == 2
    s, _, i = calibrate_stored(lm, "wikitext2", 6, 24, store=store, batch_size=2)
    assert i["from_store"] is None and i["run_id"] != pid  # the partial run was not taken for the whole
    assert store.lookup(i["key"]).id == i["run_id"] and not store.lookup(i["key"]).partial
    assert {r.id for r in store.list()} == {pid, i["run_id"]}


def test_unreadable_files_are_listed_one_line_each_and_the_rest_opens(store, scores):
    ids = [store.save(_variant(scores, f"m{i}")) for i in range(5)]
    p = lambda rid: store.files / store.info(rid).file  # noqa: E731
    data = p(ids[0]).read_bytes()
    p(ids[0]).write_bytes(data[: len(data) // 2])                               # truncated
    flipped = bytearray(p(ids[1]).read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    p(ids[1]).write_bytes(bytes(flipped))                                       # same size, corrupt
    p(ids[2]).write_bytes(b"#!/bin/sh\necho foreign file\n")                    # foreign
    p(ids[3]).unlink()                                                          # missing
    (store.files / "stray.npz").write_bytes(b"PK\x03\x04 not a real zip")      # a foreign file with no row
    errors = {i.id: i.error for i in store.list()}
    assert errors[ids[4]] is None
    for rid in ids[:4]:
        with pytest.raises(SimDiffError) as e:
            store.open(rid)
        msg = str(e.value)
        assert "\n" not in msg and rid in msg
    infos = {i.id: i for i in store.list()}
    assert all(infos[r].error and "\n" not in infos[r].error for r in ids[:4]) and infos["stray"].error
    assert store.open(ids[4]).scores.to_dict() == _variant(scores, "m4").to_dict()
    store.delete(ids[0])
    store.delete("stray")
    assert ids[0] not in {i.id for i in store.list()}


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_imports_are_validated_and_nothing_is_unpickled(store, scores, tmp_path, monkeypatch):
    good = run_file_bytes(scores, {"key": "a" * 64})
    header = json.loads(np.load(io.BytesIO(good))["header"].tobytes())
    d = scores.to_dict()
    bad_shape = dict(d, matrices=dict(d["matrices"], cka=[[0.0] * 6] * 5))
    nan_layer = json.dumps(d).replace(str(d["layers"][2]["mssd"]), "NaN", 1)
    cases = {
        "text.npz": b"hello, not a run",
        "nan.json": nan_layer.encode(),
        "shape.json": json.dumps(bad_shape).encode(),
        "layers.json": json.dumps(dict(d, num_layers=7)).encode(),
        "list.json": b"[1, 2, 3]",
        "pickle.npz": _npz(header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                           a0=np.array([{"x": 1}], dtype=object)),
        "foreign.npz": _npz(weights=np.zeros(3)),
        "inf.npz": _npz(header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                        **{k: np.full_like(v, np.inf) if v.dtype.kind == "f" else v
                           for k, v in np.load(io.BytesIO(good)).items() if k != "header"}),
    }
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("header.npy", good[:10])
        z.writestr("../evil.py", "print('owned')")
    cases["members.npz"] = zbuf.getvalue()
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SimDiffError) as e:
            store.import_file(tmp_path / name)
        assert "\n" not in str(e.value), name
    assert store.list() == []
    # size limit
    (tmp_path / "ok.npz").write_bytes(good)
    monkeypatch.setenv("SIMDIFF_RUNS_MAX_IMPORT_MB", str(len(good) / 2**20 / 2))
    with pytest.raises(SimDiffError, match="over the"):
        store.import_file(tmp_path / "ok.npz")
    monkeypatch.delenv("SIMDIFF_RUNS_MAX_IMPORT_MB")
    # a run file keeps its key (the same id on every server), a plain scores.json gets a content key
    rid = store.import_file(tmp_path / "ok.npz")
    assert rid == "a" * 16 and store.open(rid).scores.to_dict() == d
    scores.save(tmp_path / "s.json")
    rid2 = store.import_file(tmp_path / "s.json", name="from the GPU box")
    assert rid2 != rid and store.info(rid2).name == "from the GPU box" and store.import_file(tmp_path / "s.json") == rid2
    assert store.open(rid2).scores.to_dict() == d


def test_export_then_import_elsewhere_gives_the_same_run(store, scores, tmp_path):
    rid = store.save(scores, meta={"name": "x"}, key="b" * 64)
    store.export(rid, tmp_path / "run.npz")
    store.export(rid, tmp_path / "run.json")
    other = RunStore(tmp_path / "other", readonly=False)
    assert other.import_file(tmp_path / "run.npz") == rid
    assert other.open(rid).scores.to_dict() == scores.to_dict()
    assert other.info(rid).created == store.info(rid).created  # when it was computed, not imported
    assert json.loads((tmp_path / "run.json").read_text()) == scores.to_dict()


def test_size_cap_evicts_least_recently_used_never_pinned_or_held(tmp_path, scores):
    one = len(run_file_bytes(_variant(scores, "m0"), {}))
    store = RunStore(tmp_path / "h", readonly=False, max_mb=(4.5 * one * 1.05) / 2**20)
    ids = [store.save(_variant(scores, f"m{i}")) for i in range(4)]   # 0 1 2 3 fit
    store.pin(ids[0], True)
    token = store.hold(ids[1])
    store.open(ids[2])                                                 # 2 is now more recent than 3
    ids.append(store.save(_variant(scores, "m4")))                     # over the cap: evict LRU = 3
    left = {i.id for i in store.list()}
    assert left == {ids[0], ids[1], ids[2], ids[4]}
    ids.append(store.save(_variant(scores, "m5")))                     # next LRU: 2 (0 pinned, 1 held)
    assert {i.id for i in store.list()} == {ids[0], ids[1], ids[4], ids[5]}
    store.release(token)
    with store.opened(ids[4]):
        ids.append(store.save(_variant(scores, "m6")))                 # 1 released -> evicted; 4 held
    assert {i.id for i in store.list()} == {ids[0], ids[4], ids[5], ids[6]}
    assert sorted(p.name.split("-")[0] for p in store.files.iterdir()) == sorted([ids[0], ids[4], ids[5], ids[6]])


def test_readonly_library_opens_and_refuses_every_change(tmp_path, scores, monkeypatch):
    rw = RunStore(tmp_path / "h", readonly=False)
    rid = rw.save(scores)
    scores.save(tmp_path / "s.json")
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in rw.root.rglob("*") if p.is_file()
                    and not p.name.endswith(("-wal", "-shm")))
    monkeypatch.setenv("SIMDIFF_RUNS_READONLY", "1")
    ro = RunStore(tmp_path / "h")
    assert ro.readonly and [i.id for i in ro.list()] == [rid]
    assert ro.open(rid).scores.to_dict() == scores.to_dict()
    with ro.opened(rid) as run:
        assert run.id == rid
    for action in (lambda: ro.save(_variant(scores, "x")), lambda: ro.delete(rid), lambda: ro.rename(rid, "n"),
                   lambda: ro.pin(rid), lambda: ro.import_file(tmp_path / "s.json")):
        with pytest.raises(SimDiffError, match="read-only") as e:
            action()
        assert "\n" not in str(e.value)
    after = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in rw.root.rglob("*") if p.is_file()
                   and not p.name.endswith(("-wal", "-shm")))
    assert after == before
    assert RunStore(tmp_path / "empty", readonly=True).list() == []  # no library yet: nothing, nothing created
    assert not (tmp_path / "empty").exists()
