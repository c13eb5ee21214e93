"""Shared pieces of the benchmarks: repo root, logging, best-of timing, config-built models, peak memory.

Every benchmark module imports from here; nothing here runs a benchmark. Cost: nothing at import
beyond torch.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: bench/suite/harness.py)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_of(fns: dict, repeats: int, device="cpu") -> dict:
    """Interleave the callables (A B A B ...) and keep each one's best time: fair under shared load."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def llama_dir_model(num_layers: int, hidden: int, inter: int, vocab: int, dtype=torch.float32, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=num_layers,
                         num_attention_heads=max(4, hidden // 64), num_key_value_heads=max(4, hidden // 64),
                         max_position_embeddings=4096, tie_word_embeddings=False)
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    with torch.no_grad():  # random init makes blocks near-identical; vary their scale
        for i, p in enumerate(model.parameters()):
            if p.ndim == 2:
                p.mul_(1.0 + 0.25 * (i % 5))
    return model


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_extra_mb(fn) -> float:
    """Peak resident memory growth while fn runs (Linux: reset VmHWM via clear_refs), in MB."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    before = _rss_kb("VmRSS")
    fn()
    return (_rss_kb("VmHWM") - before) / 1024


def synthetic_scores(L: int, seed: int = 0):
    """Scores of an L-block model with realistic shapes (cosine rising with depth, growing norms)."""
    import numpy as np

    from simdiff_core.analysis.metrics import simdiff_importance
    from simdiff_core.analysis.score import Scores

    rng = np.random.default_rng(seed)
    layers = []
    for i in range(L):
        cos = float(np.clip(0.75 + 0.2 * i / L + 0.03 * rng.standard_normal(), -1, 0.999))
        rms = 1.0 + 3.0 * i / L
        mssd = float(abs(rng.lognormal(0, 0.5)) * rms ** 2 * 0.1)
        masd = float(abs(rng.lognormal(0, 0.3)) * rms * 0.2)
        layers.append({"index": i, "cosine": cos, "bi": 1 - cos, "angular": math.acos(cos) / math.pi,
                       "mssd": mssd, "masd": masd, "mssd_rel": mssd / rms ** 2, "masd_rel": masd / rms,
                       "max_abs_diff": 10 * masd, "input_rms": rms})
    for l, v in zip(layers, simdiff_importance(layers)):
        l["simdiff"] = float(v)
    m = rng.random((L, L)).tolist()
    a = rng.random((L + 1, L + 1)).tolist()
    return Scores("synthetic-80", L, layers, {"output_cosine": m, "cka": m, "angular_boundaries": a})
