"""The measured parts of ``bench/bench_eval.py``, one file each (damage, greedy, alpha, iterative, slm,
shootout, omp) plus ``common`` (timing, the naive reference) and ``results`` (the RESULTS.md section)."""
