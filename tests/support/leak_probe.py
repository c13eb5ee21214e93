"""Test-only launcher: ``streamlit run`` plus a probe thread that reports what the server holds.

    python tests/support/leak_probe.py PROBE_DIR run serve.py --server.port 8501 ...

The load test cannot look inside the server it drives through browsers, and resident memory (RSS)
mostly measures the allocator. This launcher starts the normal Streamlit CLI in the main thread and
a daemon thread that answers requests: when ``PROBE_DIR/request-N`` appears it drops expired
disconnected sessions (what the next visitor's arrival would do), collects garbage and writes
``PROBE_DIR/answer-N.json`` with

* ``sessions``: sessions the runtime still holds (connected + kept for reconnect);
* ``objects``: live instances of the library's result types (``Scores``, ``Damage``, ``Plan``,
  ``HookPass``, ``LoadedModel``), counted with ``gc``;
* ``tensor_count`` / ``tensor_bytes``: live torch tensors and the bytes of their distinct storages;
* ``scores``: ``{session id: Scores.to_dict()}`` for every held session whose state has scores,
  so the test can compare each concurrent session's numbers with a solo run of the same server.

Counts, not memory: a session that leaks its calibration leaves objects and tensor bytes behind
that the next probe sees, deterministically. Nothing here runs unless the test starts it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path


def _runtime():
    from streamlit.runtime import Runtime

    return Runtime.instance() if Runtime.exists() else None


def _sessions(rt) -> list:
    mgr = rt._session_mgr
    storage = getattr(mgr, "_session_storage", None)
    cache = getattr(storage, "_cache", None)
    if cache is not None and hasattr(cache, "expire"):
        cache.expire()
    return list(mgr.list_sessions())


def _scores_in(session_state) -> list:
    from simdiff_core.analysis.score import Scores

    found = []
    try:
        values = list(session_state.filtered_state.values())
    except Exception:  # noqa: BLE001 - a session mid-shutdown has no readable state
        return found
    for v in values:
        if isinstance(v, Scores):
            found.append(v)
        elif hasattr(v, "__dict__"):  # typed records holding scores
            found.extend(x for x in vars(v).values() if isinstance(x, Scores))
    return found


def snapshot() -> dict:
    import torch

    from simdiff_core.analysis.hooks import HookPass
    from simdiff_core.analysis.score import Scores
    from simdiff_core.evaluation.damage_record import Damage
    from simdiff_core.models.load import LoadedModel
    from simdiff_core.pruning.plan import Plan

    rt = _runtime()
    sessions = _sessions(rt) if rt is not None else []
    scores = {}
    for info in sessions:
        for s in _scores_in(info.session.session_state):
            d = s.to_dict()
            d["meta"] = {k: v for k, v in d["meta"].items() if k != "seconds"}
            scores[info.session.id] = d
    del sessions
    gc.collect()
    kinds = (Scores, Damage, Plan, HookPass, LoadedModel)
    objects = {k.__name__: 0 for k in kinds}
    tensors, storages = 0, {}
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor):
            tensors += 1
            try:
                if o.device.type != "meta":
                    st = o.untyped_storage()
                    storages[(o.device.type, st.data_ptr())] = st.nbytes()
            except (RuntimeError, NotImplementedError):  # tensors without a plain storage
                pass
        elif isinstance(o, kinds):
            objects[type(o).__name__] += 1
    n_sessions = len(_sessions(rt)) if rt is not None else 0
    if os.environ.get("LEAK_PROBE_DEBUG"):
        return {"sessions": n_sessions, "objects": objects, "tensor_count": tensors,
                "tensor_bytes": int(sum(storages.values())), "scores": scores, "chains": _chains(kinds)}
    return {"sessions": n_sessions, "objects": objects, "tensor_count": tensors,
            "tensor_bytes": int(sum(storages.values())), "scores": scores}


def _describe(o) -> str:
    import types

    if isinstance(o, dict):
        return "dict(keys=" + ",".join(map(str, list(o)[:8])) + ")"
    if isinstance(o, types.FrameType):
        return f"frame {o.f_code.co_filename}:{o.f_lineno} {o.f_code.co_name}"
    if isinstance(o, types.CellType):
        return "cell"
    if isinstance(o, types.FunctionType):
        return f"function {o.__qualname__}"
    return type(o).__module__ + "." + type(o).__qualname__


def _chains(kinds, depth=14) -> list:
    """Debug only: for a few leaked objects, a referrer path back to a frame or module namespace."""
    import sys
    import types

    objs = gc.get_objects()
    mods = {id(vars(m)) for m in list(sys.modules.values()) if m is not None}
    targets = [o for o in objs if isinstance(o, kinds[:1])][:4]
    skip = {id(objs), id(targets)}
    out = []
    for t in targets:
        prev, frontier, found = {id(t): None}, [t], None
        me = sys._getframe()
        skip.add(id(me))
        for _ in range(depth):
            nxt = []
            for cur in frontier:
                for r in gc.get_referrers(cur):
                    if id(r) in skip or id(r) in prev or r is frontier or r is nxt:
                        continue
                    prev[id(r)] = (cur, r)
                    if isinstance(r, types.FrameType) or id(r) in mods:
                        found = r
                        break
                    nxt.append(r)
                if found is not None:
                    break
            if found is not None or not nxt:
                break
            frontier = nxt[:int(os.environ.get("LEAK_PROBE_FRONTIER", "25"))]
        chain, cur = [], found
        while cur is not None and prev.get(id(cur)):
            chain.append(_describe(cur))
            cur = prev[id(cur)][0]
        out.append([type(t).__name__] + chain[::-1][-12:] if chain else [type(t).__name__, "no root found"])
        del frontier, prev
    return out


def _serve(probe_dir: Path) -> None:
    while True:
        for req in sorted(probe_dir.glob("request-*")):
            n = req.name.split("-", 1)[1]
            try:
                answer = snapshot()
            except Exception as e:  # noqa: BLE001 - reported to the test, never kills the server
                answer = {"error": f"{type(e).__name__}: {e}"}
            tmp = probe_dir / f".answer-{n}.tmp"
            tmp.write_text(json.dumps(answer))
            tmp.rename(probe_dir / f"answer-{n}.json")
            req.unlink()
        time.sleep(0.2)


def ask(probe_dir: Path, n: int, timeout: float = 60) -> dict:
    """From the test: request snapshot ``n`` and wait for the answer."""
    (probe_dir / f"request-{n}").touch()
    answer = probe_dir / f"answer-{n}.json"
    deadline = time.monotonic() + timeout
    while not answer.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server's probe did not answer in {timeout} s")
        time.sleep(0.2)
    out = json.loads(answer.read_text())
    if "error" in out:
        raise RuntimeError(f"probe failed in the server: {out['error']}")
    return out


if __name__ == "__main__":
    probe = Path(sys.argv[1])
    probe.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_serve, args=(probe,), daemon=True, name="leak-probe").start()
    from streamlit.web.cli import main

    sys.argv = ["streamlit", *sys.argv[2:]]
    sys.exit(main())
