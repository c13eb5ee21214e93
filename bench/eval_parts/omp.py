"""``omp_passive_speedup``: one forward at 2 threads, libgomp's default (spinning) wait policy / PASSIVE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = Path(__file__).with_name("omp_child.py")


def bench_omp(rounds: int = 2) -> dict:
    """Fresh processes, the two policies interleaved; the best of ``rounds`` each."""
    env0 = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    times = {"default": [], "passive": []}
    for _ in range(rounds):
        for name, env in (("default", env0), ("passive", dict(env0, OMP_WAIT_POLICY="PASSIVE"))):
            r = subprocess.run([sys.executable, str(CHILD)], capture_output=True, text=True, env=env, timeout=600)
            times[name].append(float(r.stdout.strip().splitlines()[-1]))
    d, p = min(times["default"]), min(times["passive"])
    return {"forward_2threads_default_s": round(d, 3), "forward_2threads_passive_s": round(p, 3),
            "omp_passive_speedup": round(d / p, 2)}
