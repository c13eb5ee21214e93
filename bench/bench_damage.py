"""Leave-one-out damage: cached block inputs vs naive remove-and-evaluate (time and block calls).

    python bench/bench_damage.py                      # embedded SmolLM2-135M, 2 x 128 tokens, CPU
    python bench/bench_damage.py --model default --samples 4 --seq-len 256 --device cuda

Prints one JSON line: seconds of both paths, the speedup, block executions of each (L + L(L-1)/2
vs L^2 per batch) and the largest loss difference between them (should be ~0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simdiff_core import load_model, make_windows  # noqa: E402
from simdiff_core.evaluation.damage_reference import benchmark_damage  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=None)
    a = p.parse_args()
    lm = load_model(a.model, device=a.device, dtype=a.dtype)
    ids = make_windows(lm.tokenizer, "wikitext2", n=a.samples, seq_len=a.seq_len)
    print(json.dumps(benchmark_damage(lm, ids, batch_size=a.batch_size)))


if __name__ == "__main__":
    main()
