"""SLM's cost profile: evaluations, threshold passes, block calls, and where the CPU time goes."""

from __future__ import annotations

from .common import timed


def bench_slm(lm, ids, k: int) -> dict:
    import cProfile
    import pstats

    from simdiff_core.evaluation.evaluator import PrefixEvaluator
    from simdiff_core.methods import run_method

    pr = cProfile.Profile()
    box = {}

    def go():
        box["ev"] = PrefixEvaluator(lm, ids)
        pr.enable()
        try:
            return run_method("slm", lm, ids, num=k, evaluator=box["ev"])
        finally:
            pr.disable()

    plan, w, c = timed(go)
    st = pstats.Stats(pr)
    tot = sum(v[2] for v in st.stats.values())  # tottime of every function

    def share(pred):
        return round(sum(v[2] for f, v in st.stats.items() if pred(f)) / max(tot, 1e-9), 3)

    return {"slm_cpu_s": round(c, 2), "slm_wall_s": round(w, 2), "slm_evals": plan.details["evals"],
            "slm_passes": len(plan.details["passes"]), "slm_threshold_final": plan.details["threshold_final"],
            "slm_block_calls": box["ev"].stats["block_calls"],
            "slm_share_linear": share(lambda f: f[2] == "<built-in method torch._C._nn.linear>"),
            "slm_share_merge": share(lambda f: f[0].endswith(("merge.py", "copy.py"))),
            "slm_windows": plan.details["windows"]}
