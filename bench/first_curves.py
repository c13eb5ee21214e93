"""Warm start: time from the Load & calibrate click to the first (partial) curves, in forward batches.

    python bench/first_curves.py            # one JSON line: {"first_curves_after_s": {...}}

The embedded SmolLM2-135M with its dequantised safetensors cache already on disk ("warm"), in a fresh
process that has imported the app's own modules (a running server has) but not loaded any model.
The click does what the app's Load & calibrate does: ``load_model``, cut the calibration windows
(8 x 256 of WikiText-2, the app's defaults), score until the first batch's partial scores arrive
(``score_model(on_batch=...)``) and build the partial curves figure. That time is divided by the time
of one plain forward batch of the same windows (base model, no hooks; best of 2) -- issue 14's
``first_curves_after_s`` goal is <= 2. Run twice: with ``simdiff_core.load.prewarm`` done first (the
app starts it in a background thread when the server starts), and without (what a click cost
before). Cost: two fresh processes, ~1 minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
import simdiff_core
from simdiff_core import load_model, make_windows, score_model
from simdiff_core.errors import Cancelled
from simdiff_core.load import prewarm
from simdiff_core.score import _forward_base
from ui import charts  # the app's figure module (imported by every page)
out = {{}}
if {prewarm}:
    t = time.perf_counter()
    out["prewarm_steps"] = prewarm("default")
    out["prewarm_s"] = time.perf_counter() - t
first = {{}}

def on_batch(partial):
    first["t"] = time.perf_counter()
    charts.curves_spec(charts.curves_base(partial.layers))
    first["t_fig"] = time.perf_counter()
    raise Cancelled()

t0 = time.perf_counter()
lm = load_model("default", device="cpu", dtype="float32")
t1 = time.perf_counter()
ids = make_windows(lm.tokenizer, "wikitext2", n={n}, seq_len={s})
t2 = time.perf_counter()
try:
    score_model(lm, ids, on_batch=on_batch)
except Cancelled:
    pass
bs = int({bs}) if {bs} else simdiff_core.score.auto_batch_size(lm.device, ids.shape[1])
fwd = []
with torch.inference_mode():
    for _ in range(2):
        t = time.perf_counter()
        _forward_base(lm.model, ids[:bs])
        fwd.append(time.perf_counter() - t)
out.update(load_s=t1 - t0, windows_s=t2 - t1, first_batch_s=first["t"] - t2, figure_s=first["t_fig"] - first["t"],
           click_to_first_curves_s=first["t_fig"] - t0, forward_batch_s=min(fwd), batch_size=bs)
out["ratio_to_forward_batch"] = out["click_to_first_curves_s"] / out["forward_batch_s"]
print(json.dumps(out))
"""


def run(prewarm: bool, n: int = 8, s: int = 256, bs: int = 0) -> dict:
    code = SNIPPET.format(root=str(ROOT), prewarm=prewarm, n=n, s=s, bs=bs)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200,
                       env=dict(os.environ, TOKENIZERS_PARALLELISM="false"), cwd=ROOT)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}


def bench_first_curves(n: int = 8, s: int = 256) -> dict:
    """``first_curves_after_s`` for bench/run.py's JSON: the prewarmed (app) path, and without prewarm."""
    t = time.perf_counter()
    warm = run(True, n, s)
    cold_imports = run(False, n, s)
    res = dict(warm, calibration=f"{n} x {s}", no_prewarm=cold_imports, loadavg=os.getloadavg()[0],
               bench_s=round(time.perf_counter() - t, 1))
    return res


if __name__ == "__main__":
    print(json.dumps({"first_curves_after_s": bench_first_curves()}))
