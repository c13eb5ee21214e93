"""One forward of the embedded model at 2 torch threads, timed (run in a fresh process by ``omp.py``,
whose environment sets the OpenMP wait policy). Prints the mean seconds of 3 forwards."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository, not this folder of bench parts

import torch  # noqa: E402

torch.set_num_threads(2)
from simdiff_core import load_model, make_windows  # noqa: E402

lm = load_model("default", device="cpu", dtype="float32")
ids = make_windows(lm.tokenizer, "wikitext2", n=2, seq_len=64)
with torch.inference_mode():
    lm.model(input_ids=ids, use_cache=False)
    t0 = time.perf_counter()
    for _ in range(3):
        lm.model(input_ids=ids, use_cache=False)
print((time.perf_counter() - t0) / 3)
