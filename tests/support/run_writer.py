"""A run-library writer process for the crash and concurrency tests (tests/runs/test_crash.py).

    python -m tests.support.run_writer HOME SCORES_JSON kill-at POINT N   # N saves, then die at POINT in the next
    python -m tests.support.run_writer HOME SCORES_JSON loop               # save variants until killed
    python -m tests.support.run_writer HOME SCORES_JSON same-key GO KEY    # wait for file GO, save under KEY

Every completed save prints its run id on its own line (flushed) *after* ``save`` returned, so the
parent knows which runs were promised. ``kill-at`` SIGKILLs this process at a named point of the
next write, by wrapping the store's own steps (nothing in the library knows about tests):
``before_rename`` (temporary file written), ``after_rename`` (file in place, row not committed),
``before_commit`` (row inserted, COMMIT not run), ``in_delete`` (a delete's file moved to trash, row
deletion not committed). ``ready`` is printed once the imports are done.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    from simdiff_core.runs import RunStore
    from simdiff_core.runs import store as store_mod

    home, scores_path, mode, *rest = argv
    base = json.loads(Path(scores_path).read_text())
    store = RunStore(home, readonly=False)
    store.list()  # creates the library (schema) before any fault is armed
    print("ready", flush=True)

    def variant(i: int) -> dict:
        return dict(base, model=f"writer-{os.getpid()}-{i}")

    if mode == "kill-at":
        point, n = rest[0], int(rest[1])
        saved = [store.save(variant(i)) for i in range(n)]
        print("\n".join(saved), flush=True)
        armed = [True]
        cls = store_mod.RunStore
        if point == "before_rename":
            cls._install = lambda self, tmp, fname: _die()
        elif point == "after_rename":
            install = cls._install
            cls._install = lambda self, tmp, fname: (install(self, tmp, fname), _die())
        elif point == "before_commit":
            connect = cls._connect

            class Dying:
                def __init__(self, con):
                    self._con = con

                def execute(self, sql, *a):
                    if sql == "COMMIT" and armed[0]:
                        _die()
                    return self._con.execute(sql, *a)

                def __getattr__(self, name):
                    return getattr(self._con, name)

            cls._connect = lambda self: (lambda c: c if c is None else Dying(c))(connect(self))
        elif point == "in_delete":
            trash = cls._trash
            cls._trash = lambda self, con, rid: (trash(self, con, rid), _die())
            store.delete(saved[-1])
            return 1  # not reached
        else:
            raise SystemExit(f"unknown point {point}")
        store.save(variant(n))
        return 1  # not reached
    if mode == "loop":
        i = 0
        while True:
            print(store.save(variant(i)), flush=True)
            i += 1
    if mode == "same-key":
        go, key = rest
        while not Path(go).exists():
            time.sleep(0.002)
        print(store.save(base, key=key), flush=True)
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
