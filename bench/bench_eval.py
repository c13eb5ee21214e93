"""Cost of evaluating candidate prunings: prefix-cached evaluator vs the naive full-forward loop.

    python bench/bench_eval.py                  # embedded SmolLM2-135M, small calibration, CPU (minutes)
    python bench/bench_eval.py --no-shootout    # skip the Shootout default-set timing

Every key is a ratio of two things measured in the same run (except ``shootout_default_s``), as CPU time
of this process (unless it says multiply-adds) with the two paths alternating candidate by candidate (the machine is shared: wall-clock
ratios of consecutive runs swung from 0.6 to 1.7 with other jobs' load; ``*_wall`` keys keep them):

  damage_vs_floor          leave-one-out damage / (L+1) plain ``model(input_ids)`` forwards of the same batches
  greedy_cost_vs_naive     greedy 7/30 (SLEB) as the app runs it (``run_method("greedy")``: prefix-cached
                           evaluator with exact elimination) / the naive loop (pruned_model + perplexity per
                           candidate); same removal order asserted; greedy_exact_evals of greedy_candidates
                           were evaluated exactly (the rest eliminated by a proven lower bound)
  auto_alpha_cost_vs_naive auto alpha (3 betas x 11 alphas) / evaluating each distinct plan by pruned_model +
                           perplexity; same trials asserted
  auto_alpha_macs_vs_naive / auto_alpha_floor_vs_naive
                           in multiply-adds (not CPU time): what the evaluator computed, and the floor of any
                           exact evaluator, each / the naive loop's (eval_parts/alpha.py says why the units differ)
  shootout_default_s       the Shootout page's default method set at its default settings (8 x 256 calibration,
                           4 x 256 eval windows, ratio 0.25): CPU seconds of the 1-thread process (~ the wall
                           time on an idle core; the wall time is kept as shootout_default_wall_s)
  omp_passive_speedup      one forward at 2 threads with libgomp's default (spinning) wait policy / with
                           OMP_WAIT_POLICY=PASSIVE, fresh processes interleaved (the oversubscription finding)

One file per measured part in ``bench/eval_parts/``. The last stdout line is one JSON object;
``--results`` rewrites the section between the ``eval-bench`` markers of bench/RESULTS.md
(``eval_parts/results.py``); findings measured once (profiles, other models) are kept, dated, in its
``keep:eval_findings`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from eval_parts.alpha import bench_alpha, bench_alpha_floor  # noqa: E402
from eval_parts.common import log  # noqa: E402
from eval_parts.damage import bench_damage  # noqa: E402
from eval_parts.greedy import bench_greedy  # noqa: E402
from eval_parts.iterative import bench_iterative  # noqa: E402
from eval_parts.omp import bench_omp  # noqa: E402
from eval_parts.results import results_section, write_section  # noqa: E402  (bench/suite/results.py uses it)
from eval_parts.shootout import bench_shootout  # noqa: E402
from eval_parts.slm import bench_slm  # noqa: E402

def run_all(lm, ids, num: int = 7, parts=("damage", "greedy", "alpha", "iterative", "shootout", "omp"),
            rounds: int = 2) -> dict:
    """Every eval-bench key on ``lm`` with calibration ``ids`` (one batch); used by bench/run.py too."""
    res = {"model": lm.name, "threads": torch.get_num_threads(),
           "calib": f"{ids.shape[0]} x {ids.shape[1]} tokens, batch {ids.shape[0]}"}
    load0 = os.getloadavg()[0]
    if "damage" in parts:
        res.update(bench_damage(lm, ids, ids.shape[0]))
        log(f"damage_vs_floor {res['damage_vs_floor']}")
    if "greedy" in parts:
        res.update(bench_greedy(lm, ids, num))
        log(f"greedy_cost_vs_naive {res['greedy_cost_vs_naive']}")
    if "alpha" in parts:
        res.update(bench_alpha(lm, ids, num, rounds=rounds))
        log(f"auto_alpha_cost_vs_naive {res['auto_alpha_cost_vs_naive']}")
    if "iterative" in parts:
        res.update(bench_iterative(lm, ids, num))
        log(f"iterative_cost_vs_full_rescoring {res['iterative_cost_vs_full_rescoring']}")
    if "slm" in parts:
        res.update(bench_slm(lm, ids, num))
        log(f"slm {res['slm_cpu_s']} CPU s, {res['slm_evals']} evaluations")
    if "alpha_floor" in parts:
        res.update(bench_alpha_floor(lm, ids, num))
        log(f"auto_alpha_floor_vs_naive {res['auto_alpha_floor_vs_naive']}")
    if "shootout" in parts:
        res.update(bench_shootout(lm))
        log(f"shootout_default_s {res['shootout_default_s']}")
    if "omp" in parts:
        res.update(bench_omp())
        log(f"omp_passive_speedup {res['omp_passive_speedup']}")
    res["loadavg"] = [load0, os.getloadavg()[0]]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model spec (default: the embedded SmolLM2-135M; "
                    "gemma3-270m for the issue's auto-alpha setting)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--num", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the auto-alpha timing (1 for the "
                    "long Gemma3-270M 16 x 256 setting)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: 1 when the machine is oversubscribed, else 2)")
    ap.add_argument("--no-shootout", action="store_true")
    ap.add_argument("--no-omp", action="store_true")
    ap.add_argument("--only", default="", help="comma list of damage,greedy,alpha,alpha_floor,"
                    "iterative,slm,shootout,omp (alpha_floor: only the floor, no timing; slm: minutes, not in the "
                    "default set)")
    ap.add_argument("--results", action="store_true", help="rewrite the eval-bench section of bench/RESULTS.md")
    ap.add_argument("--merge", nargs="*", default=[], help="JSON outputs of other bench_eval runs whose keys "
                    "join (and override) this run's; with --only none, just write their results")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    threads = a.threads or (1 if load0 > (os.cpu_count() or 1) else min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    from simdiff_core import load_model, make_windows

    lm = load_model(a.model, device="cpu", dtype="float32")
    ids = make_windows(lm.tokenizer, "wikitext2", n=a.samples, seq_len=a.seq_len)
    only = set(filter(None, a.only.split(","))) or {"damage", "greedy", "alpha", "iterative", "shootout", "omp"}
    if a.no_shootout:
        only.discard("shootout")
    if a.no_omp:
        only.discard("omp")
    t0 = time.perf_counter()
    res = run_all(lm, ids, a.num, tuple(only), rounds=a.rounds)
    res["bench_seconds"] = round(time.perf_counter() - t0, 1)
    if a.merge:
        res["merged_runs"] = len(a.merge) + (0 if only == {"none"} else 1)
    loads = [res["loadavg"]] if only != {"none"} else []
    for f in a.merge:
        other = json.loads(Path(f).read_text().strip().splitlines()[-1])
        if "loadavg" in other:
            loads.append(other["loadavg"])
        res.update(other)
    if loads:  # several runs: the widest load range
        res["loadavg"] = [min(v[0] for v in loads), max(v[1] for v in loads)]
    if a.results:
        write_section(ROOT / "bench" / "RESULTS.md", results_section(res))
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
