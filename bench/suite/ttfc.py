"""Time to first curves: a fresh process, cold (empty cache) and warm; and click -> first partial curves (warm start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import ROOT, log


CHILD = Path(__file__).with_name("ttfc_child.py")


def bench_ttfc(n: int, s: int, cold: bool) -> dict:
    """Fresh process: import, load the embedded model, cut calibration windows, score (the first curves)."""
    out = {"calibration": f"{n} x {s}"}
    runs = [("warm", None)]
    if cold:
        runs.insert(0, ("cold", tempfile.mkdtemp(prefix="simdiff-cold-")))
    for name, cache in runs:
        env = dict(os.environ)
        if cache:
            env["SIMDIFF_CACHE"] = cache
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, str(CHILD), str(n), str(s)], capture_output=True, text=True, env=env, timeout=1200)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            out[name] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out[name] = {k: round(v, 2) for k, v in r.items()} | {"process_wall_s": round(wall, 2)}
        if cache:
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
        log(f"time to first curves ({name}): {wall:.1f}s")
    return out


def first_curves_after() -> dict:
    """Warm start (issue 14): click -> first partial curves, in plain forward batches (bench/first_curves.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from first_curves import bench_first_curves

    out = bench_first_curves()
    log(f"first curves after {out.get('click_to_first_curves_s')} s = {out.get('ratio_to_forward_batch')} forward "
        f"batches (without prewarm: {out.get('no_prewarm', {}).get('ratio_to_forward_batch')})")
    return out
