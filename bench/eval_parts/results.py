"""The evaluation section of bench/RESULTS.md, generated from one run's keys (no frozen numbers here:
findings measured once, with their dates, live in RESULTS.md's ``keep:eval_findings`` section)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROWS = [("damage time / (L+1) plain forwards of the same tokens (CPU time)", "damage_vs_floor", "<= 1.0"),
        ("greedy 7/30 as the app runs it (cached evaluator, exact elimination) / naive full-forward loop "
         "(same removal order asserted; CPU time)", "greedy_cost_vs_naive", "<= 0.55"),
        ("auto alpha (3 betas x 11 alphas): cached / naive (CPU time)", "auto_alpha_cost_vs_naive", "<= 0.6"),
        ("auto alpha: what the evaluator computed / naive (multiply-adds, from its block calls and head rows)",
         "auto_alpha_macs_vs_naive", "(finding)"),
        ("auto alpha: floor of any exact evaluator (prefix-trie blocks + one head per plan) / naive "
         "(multiply-adds)", "auto_alpha_floor_vs_naive", "(bound)"),
        ("iterative simdiff 7/30: prefix reuse / full re-scoring of every pruned model (same trace asserted; "
         "CPU time)", "iterative_cost_vs_full_rescoring", "(finding)"),
        ("Shootout page default set at its defaults: CPU seconds at 1 thread (~ wall on an idle core)",
         "shootout_default_s", "<= 300"),
        ("forward at 2 threads: default OpenMP wait policy / OMP_WAIT_POLICY=PASSIVE", "omp_passive_speedup",
         "(finding)")]

GREEDY_NOTE = ("**Greedy: prefix reuse + exact elimination.** A candidate that first differs from the cached path "
               "at block i runs the kept blocks after i and the LM head; evaluating every candidate exactly "
               "measured {greedy_no_elimination_vs_naive} of the naive loop (elimination off). The method "
               "evaluates each candidate's blocks and a *subset head* (1/8 of the vocabulary, fixed per "
               "evaluator: the entries with the most probability mass under the dense model, plus each row's "
               "target), which gives a proven lower bound of its loss. Candidates are then evaluated exactly in "
               "increasing bound order only while the bound does not exceed the best exact loss so far: here "
               "{greedy_exact_evals} of {greedy_candidates} candidates needed the full head, the rest were "
               "eliminated. Every exact value, with or without elimination, is assembled from the same subset "
               "and complement log-sum-exps, so the chosen removals are those of evaluating every candidate "
               "exactly (asserted against the naive loop here; tests/evaluation/test_bound.py, ties included).")

ALPHA_NOTE = ("**Auto alpha.** CPU time: {auto_alpha_cost_vs_naive} of the naive loop on {calib}. In "
              "multiply-adds the evaluator computed {auto_alpha_macs_vs_naive} of the naive loop, against a "
              "floor of {auto_alpha_floor_vs_naive} for any exact evaluator. The 33 grid points give "
              "{auto_alpha_distinct_plans} distinct plans; their ppls are exact (each asserted against "
              "`perplexity(pruned_model(...))`, max relative difference {auto_alpha_max_rel_diff}: the naive "
              "loop's float32 cross-entropy rounding). Floor: each edge of the prefix trie of the plans' layouts "
              "once ({auto_alpha_trie_edges} blocks per batch, against {auto_alpha_naive_blocks} for the naive "
              "loop) and one full LM head per plan (the head costs {head_in_blocks} blocks). The evaluator runs "
              "exactly the trie (block calls {calls}); above the floor it adds the subset head (1/8 of a head per "
              "evaluation) and the one-time pick of the subset. The CPU-time ratio is not in the same unit: the "
              "naive side also materialises (B, S, V) float32 logits and a float32 log-softmax over them, work "
              "the multiply-add count does not see.")

ITERATIVE_NOTE = ("**Iterative** re-scores the pruned model after each removal. The per-block metrics of the "
                  "blocks below the block removed last are unchanged (same inputs and outputs), so "
                  "`methods/iterative.py` keeps every kept block's input per batch and runs only the blocks above "
                  "the last removal: {iterative_block_calls} block calls for 7 steps instead of "
                  "{iterative_block_calls_full}, the same metrics bit for bit, {iterative_cost_vs_full_rescoring} "
                  "of the CPU time.")


def results_section(res: dict) -> str:
    lines: list[str] = []
    w = lines.append
    w("## Evaluating candidate prunings (prefix-cached evaluator)")
    w("")
    w(f"Written by `python bench/bench_eval.py` on {time.strftime('%Y-%m-%d %H:%M')}; {res.get('model')}, "
      f"{res.get('threads')} torch threads, load average {res.get('loadavg', [0, 0])[0]:.1f} -> "
      f"{res.get('loadavg', [0, 0])[1]:.1f} on {os.cpu_count()} cores (shared machine: absolute times are noise; "
      "each ratio compares two things measured in the same run, in the unit its row names). Calibration for "
      f"the ratios: {res.get('calib')}." + (f" Keys merged from {res['merged_runs']} runs (`--merge`); the load "
                                            "range spans them, the thread count is the last run's."
                                            if res.get("merged_runs") else ""))
    w("")
    w("`first_curves_after_s` (click -> first partial curves / one plain forward batch, goal <= 2) is measured by "
      "`bench/run.py` in its own section.")
    w("")
    w("| target | measured | goal |")
    w("|---|---|---|")
    for label, key, goal in ROWS:
        if key in res:
            w(f"| {label} | **{res[key]}** | {goal} |")
    w("")
    w(GREEDY_NOTE.format(**{k: res.get(k, "?") for k in ("greedy_exact_evals", "greedy_candidates",
                                                          "greedy_no_elimination_vs_naive")}))
    w("")
    w("What bounds the other ratios: a candidate that first differs from the cached path at block i runs the kept "
      "blocks after i and the LM head. Damage's single removals share everything below the removed block "
      "(L + L(L-1)/2 block calls instead of (L+1) L for its floor).")
    if "auto_alpha_cost_vs_naive" in res or "auto_alpha_floor_vs_naive" in res:
        w("")
        diff = res.get("auto_alpha_max_rel_diff")
        w(ALPHA_NOTE.format(**{k: res.get(k, "?") for k in (
            "auto_alpha_cost_vs_naive", "auto_alpha_macs_vs_naive", "auto_alpha_floor_vs_naive",
            "auto_alpha_distinct_plans", "auto_alpha_trie_edges", "auto_alpha_naive_blocks", "head_in_blocks",
            "calib")}, auto_alpha_max_rel_diff=f"{diff:.1e}" if isinstance(diff, float) else "?",
            calls=res.get("auto_alpha_block_calls", {})))
    if "iterative_cost_vs_full_rescoring" in res:
        w("")
        w(ITERATIVE_NOTE.format(**{k: res.get(k, "?") for k in (
            "iterative_cost_vs_full_rescoring", "iterative_block_calls", "iterative_block_calls_full")}))
    if "shootout_default_s" in res:
        w("")
        w(f"Shootout defaults ({', '.join(res.get('shootout_methods', []))}; 8 x 256 calibration, 4 x 256 eval "
          f"windows, ratio 0.25): {res['shootout_default_s']} CPU seconds at 1 thread, "
          f"{res.get('shootout_default_wall_s')} s wall.")
    w("")
    w("Details: " + json.dumps({k: v for k, v in res.items() if k not in dict((r[1], 0) for r in ROWS)}))
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the text between the ``eval-bench`` markers of ``path`` (append the markers if missing)."""
    from simdiff_core.common.fileio import write_marked

    write_marked(path, "<!-- eval-bench:start -->", "<!-- eval-bench:end -->", text, append=True)
