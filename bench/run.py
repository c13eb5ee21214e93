"""SimDiff Explorer benchmarks: ratios measured side by side in one run, written to bench/RESULTS.md.

    python bench/run.py            # default: a few minutes on 2 CPU cores (embedded SmolLM2 + config-built models)
    python bench/run.py --full     # longer: 2048-token prefill, bigger calibration, more repeats
    python bench/run.py --smoke    # seconds: tiny models only, checks the plumbing (used by the test suite)
    python bench/run.py --device cuda --dtype bfloat16 --full   # GPU rows (writes bench/RESULTS-cuda.md)

Absolute times on shared machines are noise; every target is a ratio of two things timed in the same
run, interleaved, best of several repeats. The last stdout line is one JSON object with every number.

Sections (each prints one line on stderr as it finishes):
  repaired   (--repaired / --full / --only-repaired) best_repaired_vs_dense_smollm2: the best lstsq- or ridge-repaired
             8/30 checkpoint of any candidate plan, chosen by the ppl after repair on held-out selection
             windows / dense (test ppl)
  linear     linear-replaceability curve: scoring with it (curve + band pass) / without (suite/linear.py)
  overhead   scoring pass vs plain forward over the same batches (base model = same modules the
             scoring pass runs, i.e. without the LM head; the full ``model(input_ids)`` is reported too)
  memory     peak extra memory of scoring over a plain forward, 2 depths x 2 calibration sizes
  preview    plan recomputation from cached scores of an 80-block model + chart data, forward passes counted
  speedup    prefill / decode, dense vs pruned (25 %, 37.5 %), against the ideal from measured block time shares
  ttfc       time to first curves for the embedded model: fresh process, cold (empty SIMDIFF_CACHE) and warm;
             first_curves_after_s (warm start: click -> first partial curves / one plain forward batch,
             bench/first_curves.py, best of 2 fresh processes; also in CPU seconds: first_curves_after_cpu)
  eval       candidate evaluation (bench/bench_eval.py): damage_vs_floor, greedy_cost_vs_naive,
             auto_alpha_cost_vs_naive (+ auto_alpha_floor_vs_naive), shootout_default_s
  streaming  block-streamed scores vs in-memory scores under a budget of 1/4 of the model size
  store      calibration through the run library (key + save) / plain calibration (store_overhead), run file
             bytes per block (store_bytes_per_block), at the default calibration (8 x 256; smoke: the tiny model)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from suite.harness import ROOT, llama_dir_model, log
from suite.linear import bench_linear
from suite.memory import bench_memory
from suite.overhead import bench_overhead
from suite.preview import bench_preview
from suite.reopen import bench_reopen
from suite.results import write_results
from suite.speedup import bench_speedup
from suite.store import bench_store
from suite.streaming import bench_streaming
from suite.ttfc import bench_ttfc, first_curves_after
from suite.uncertainty import bench_uncertainty

sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="long runs: 2048-token prefill, more calibration and repeats")
    g.add_argument("--smoke", action="store_true", help="tiny models only, seconds (for the test suite)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repaired", action="store_true",
                    help="also the best repaired 8/30 checkpoint / dense (suite/repaired.py; minutes; on with --full)")
    ap.add_argument("--only-repaired", action="store_true", help="run only the repaired section (embedded model)")
    ap.add_argument("--repaired-candidates", default=None,
                    help="comma list: repair only these candidates of the repaired section (e.g. "
                         "repairable:relative,oneshot:simdiff); the choice is then among them only")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (empty cache) time-to-first-curves run")
    ap.add_argument("--gpu-model-layers", type=int, default=0, help="benchmark a config-built llama of this depth instead of the embedded model")
    ap.add_argument("--gpu-model-hidden", type=int, default=1536)
    ap.add_argument("--out", default=os.environ.get("SIMDIFF_BENCH_OUT"))
    ap.add_argument("--repair", action="store_true", help="also run the repair section (bench/suite/repair.py)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    from simdiff_core.data.text import make_windows
    from simdiff_core.models.device import pick_dtype
    from simdiff_core.models.load import load_model, wrap_model

    device = args.device
    dtype = pick_dtype(args.dtype, torch.device(device))
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    if args.smoke:
        model = llama_dir_model(6, 64, 192, 2048).to(device=device, dtype=dtype)
        lm = wrap_model(model, None, "llama-6x64 (config-built)")
        ids = torch.randint(0, 2048, (4, 32), generator=torch.Generator().manual_seed(0))
        repeats, prompt, decode_n = 1, 32, 2
        mem_depths, mem_sizes, mem_seq, mem_hidden = (2, 4), (2, 4), 32, 64
        stream_cfg = (12, 128, 3, 16)
    else:
        if args.gpu_model_layers:
            h = args.gpu_model_hidden
            model = llama_dir_model(args.gpu_model_layers, h, int(h * 8 / 3), 32000, dtype=dtype).to(device)
            from transformers import AutoTokenizer  # noqa: F401

            lm = wrap_model(model, load_model("default", device="cpu").tokenizer,
                            f"llama {args.gpu_model_layers}x{h} (config-built)")
        else:
            lm = load_model("default", device=device, dtype=args.dtype)
        n, s = (16, 512) if args.full else (4, 256)
        ids = make_windows(lm.tokenizer, "wikitext2", n=n, seq_len=s)
        repeats = 5 if args.full else 3
        prompt, decode_n = (2048, 64) if args.full else (512, 16)
        mem_depths, mem_sizes, mem_seq, mem_hidden = (8, 16), (4, 8), 256, 256
        stream_cfg = (16, 256, 4, 128) if args.full else (12, 256, 4, 64)
    if args.only_repaired:
        from suite.repaired import bench_repaired

        out = bench_repaired(lm, only=args.repaired_candidates)
        log(f"best_repaired_vs_dense_smollm2 {out['best_repaired_vs_dense_smollm2']}")
        print(json.dumps(out))
        return 0
    name = lm.name
    res = {"model": name, "model_params": lm.num_parameters(), "model_blocks": lm.num_layers, "device": str(device),
           "dtype": str(dtype).replace("torch.", ""), "repeats": repeats}

    bs = 4 if not args.full else 4
    ov = bench_overhead(lm, ids, bs, repeats, device)
    scores = ov.pop("scores")
    res["overhead"] = ov
    log(f"scoring overhead {ov['scoring_overhead']:.3f} (vs full forward {ov['scoring_over_full_forward']:.3f})")

    store_ids = ids if args.smoke or args.gpu_model_layers else make_windows(lm.tokenizer, "wikitext2", n=8, seq_len=256)
    res["store"] = bench_store(lm, store_ids, repeats, device)
    log(f"store overhead {res['store']['store_overhead']:.3f}, {res['store']['store_bytes_per_block']:.0f} bytes/block")

    res["uncertainty"] = bench_uncertainty(lm, ids, bs, repeats, device)
    log(f"uncertainty overhead {res['uncertainty']['uncertainty_overhead']:.3f} "
        f"(bootstrap {res['uncertainty']['bootstrap_seconds']} s)")

    res["linear"] = bench_linear(lm, ids, bs, repeats, device)
    log(f"linear replaceability cost {res['linear']['linear_scoring_cost']:.3f} "
        f"(curve only {res['linear']['linear_curve_only_cost']:.3f}, accumulators {res['linear']['linear_accumulator_mb']} MB)")

    res["memory"] = bench_memory(mem_depths, mem_sizes, mem_seq, mem_hidden, device)
    log("memory " + json.dumps({k: v["extra_mb"] for k, v in res["memory"].items()}))

    res["preview"] = bench_preview(80, repeats=2 if args.smoke else 10, time_figures=not args.smoke)
    log(f"preview {res['preview']['preview_ms']} ms, {res['preview']['preview_forward_passes']} forward passes")

    res["speedup"] = bench_speedup(lm, scores, prompt, decode_n, repeats, device)

    if not args.smoke and device == "cpu" and not args.gpu_model_layers:
        n_calib, s_calib = (8, 256)
        res["ttfc"] = bench_ttfc(n_calib, s_calib, cold=not args.no_cold)
        res["first_curves"] = first_curves_after()

    if not args.smoke and device == "cpu":
        # a stored 80-block run's link -> its curves drawn in Chromium (bench/suite/reopen.py; goal <= 1.5 s)
        res["reopen"] = bench_reopen()
        log(f"reopen_run_s {res['reopen'].get('reopen_run_s')} (first {res['reopen'].get('first_s')}); the explorer's "
            f"deep link reopen_app_s {res['reopen'].get('reopen_app_s')}")

    res["streaming"] = bench_streaming(*stream_cfg)
    log(f"streaming diff {res['streaming']['streaming_max_abs_diff']} peak {res['streaming']['streaming_peak_mb']} MB "
        f"of {res['streaming']['streaming_model_mb']} MB")

    if not args.smoke and not args.gpu_model_layers:
        # candidate evaluation cost (bench_eval.py): damage vs its floor, greedy / auto alpha vs the naive loop,
        # the Shootout page's defaults; small calibration, ratios measured in this run
        sys.path.insert(0, str(ROOT / "bench"))
        import bench_eval

        res["eval"] = bench_eval.run_all(lm, make_windows(lm.tokenizer, "wikitext2", n=2, seq_len=64), 7,
                                         ("damage", "greedy", "alpha", "iterative", "shootout"))

    if (args.repaired or args.full) and not args.smoke and not args.gpu_model_layers:
        from suite.repaired import bench_repaired

        res["repaired"] = bench_repaired(lm, only=args.repaired_candidates)
        log(f"best_repaired_vs_dense_smollm2 {res['repaired']['best_repaired_vs_dense_smollm2']}")

    if args.repair and not args.smoke:
        from suite.repair import run_all

        res["repair"] = run_all()

    res["loadavg"] = [load_start, os.getloadavg()[0]]
    out = Path(args.out) if args.out else (None if args.smoke else ROOT / "bench" / (
        "RESULTS.md" if not str(device).startswith("cuda") else "RESULTS-cuda.md"))
    if out is not None:
        write_results(out, res, args)
        if "first_curves" in res and "error" not in res["first_curves"]:
            from first_curves import markdown
            from results_md import write_section

            write_section("first_curves", markdown(res["first_curves"], by="python bench/run.py"), out)
        log(f"wrote {out}")
    rows = res["speedup"]["rows"]
    summary = {
        "model": name, "model_params": res["model_params"], "model_blocks": res["model_blocks"], "device": str(device),
        "scoring_overhead": round(ov["scoring_overhead"], 4),
        "scoring_over_full_forward": round(ov["scoring_over_full_forward"], 4),
        "scoring_peak_extra_mb": {f"L={L}": res["memory"][f"L={L},N={max(mem_sizes)}"]["extra_mb"] for L in mem_depths},
        "scoring_peak_extra_mb_table": {k: v["extra_mb"] for k, v in res["memory"].items()},
        "preview_ms": res["preview"]["preview_ms"], "preview_figure_ms": res["preview"]["preview_figure_ms"],
        "preview_forward_passes": res["preview"]["preview_forward_passes"],
        "prefill_speedup_over_ideal": {r: v["prefill_speedup_over_ideal"] for r, v in rows.items()},
        "decode_speedup_over_ideal": {r: v["decode_speedup_over_ideal"] for r, v in rows.items()},
        "decode_tok_s": {r: [v["dense_decode_tok_s"], v["pruned_decode_tok_s"]] for r, v in rows.items()},
        "prefill_tokens": prompt,
        "time_to_first_curves_s": {k: v.get("total_s") for k, v in res.get("ttfc", {}).items() if isinstance(v, dict)},
        "streaming_max_abs_diff": res["streaming"]["streaming_max_abs_diff"],
        "streaming_peak_mb": res["streaming"]["streaming_peak_mb"],
        "streaming_model_mb": res["streaming"]["streaming_model_mb"],
        "streaming_budget_mb": res["streaming"]["streaming_budget_mb"],
        "uncertainty_overhead": round(res["uncertainty"]["uncertainty_overhead"], 4),
        "bootstrap_seconds": res["uncertainty"]["bootstrap_seconds"],
        "linear_scoring_cost": round(res["linear"]["linear_scoring_cost"], 4),
        "linear_curve_only_cost": round(res["linear"]["linear_curve_only_cost"], 4),
        **({"best_repaired_vs_dense_smollm2": res["repaired"]["best_repaired_vs_dense_smollm2"]}
           if "repaired" in res else {}),
        **{k: res.get("eval", {}).get(k) for k in ("greedy_cost_vs_naive", "auto_alpha_cost_vs_naive",
                                                   "auto_alpha_floor_vs_naive", "damage_vs_floor",
                                                   "iterative_cost_vs_full_rescoring", "shootout_default_s")},
        "store_overhead": round(res["store"]["store_overhead"], 4),
        "store_bytes_per_block": round(res["store"]["store_bytes_per_block"], 1),
        **{k: res.get("reopen", {}).get(k) for k in ("reopen_run_s", "reopen_run_warm_s", "reopen_app_s",
                                                     "reopen_app_warm_s")},
        "bench_seconds": round(time.perf_counter() - t_start, 1),
        **(res["repair"]["keys"] if "repair" in res else {}),
    }
    if "first_curves" in res:
        summary["first_curves_after_s"] = res["first_curves"].get("ratio_to_forward_batch")
        summary["first_curves_after_cpu"] = res["first_curves"].get("ratio_cpu")
        summary["first_curves_detail"] = res["first_curves"]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
