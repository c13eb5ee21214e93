"""Time to first curves in this fresh process: import, load the embedded model, cut N x S calibration
windows, score. Run by ``ttfc.py`` as ``python ttfc_child.py N S``; prints one JSON line of seconds."""

import json
import sys
import time
from pathlib import Path

t0 = time.perf_counter()
sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository, not this folder of bench parts
from simdiff_core import load_model, make_windows, score_model  # noqa: E402

n, s = int(sys.argv[1]), int(sys.argv[2])
t1 = time.perf_counter()
lm = load_model("default", device="cpu", dtype="float32")
t2 = time.perf_counter()
ids = make_windows(lm.tokenizer, "wikitext2", n=n, seq_len=s)
t3 = time.perf_counter()
score_model(lm, ids)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "windows_s": t3 - t2, "score_s": t4 - t3, "total_s": t4 - t0}))
