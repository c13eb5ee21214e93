"""Stage 3, score: run-scoped forward hooks, the per-block metrics and their fusion (SimDiff), the
scoring pass (in memory or streamed), bootstrap bands, block drill-down.
"""
