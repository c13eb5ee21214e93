"""The benchmarks bench/run.py runs, one module per benchmark (shared helpers in harness.py)."""
