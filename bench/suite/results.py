"""Write bench/RESULTS.md from one run's numbers (every ratio with how it was measured)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from .harness import ROOT


# ----------------------------------------------------------------------------------- report
def kept_sections(path: Path) -> str:
    """Sections other benchmarks wrote into RESULTS.md between ``<!-- keep:NAME -->`` and
    ``<!-- /keep:NAME -->`` (bench/browser_slider.py, bench/first_curves.py): carried over on rewrite."""
    import re

    old = path.read_text() if path.exists() else ""
    blocks = re.findall(r"<!-- keep:(\S+) -->.*?<!-- /keep:\1 -->", old, flags=re.S)
    return "".join("\n" + m.group(0) + "\n" for m in re.finditer(r"<!-- keep:(\S+) -->.*?<!-- /keep:\1 -->", old,
                                                                   flags=re.S)) if blocks else ""


def write_results(path: Path, res: dict, args) -> None:
    ov, sp, mem, ttfc, st = res["overhead"], res["speedup"], res["memory"], res.get("ttfc"), res["streaming"]
    L = []
    w = L.append
    w("# SimDiff Explorer benchmarks")
    w("")
    w(f"Written by `python bench/run.py{' --full' if args.full else ''}{' --smoke' if args.smoke else ''}` on "
      f"{time.strftime('%Y-%m-%d %H:%M')}; device {res['device']} ({res['dtype']}), torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads, {os.cpu_count()} CPU cores (shared machine: absolute times are noise, "
      "every target below is a ratio of two things timed in the same run, interleaved, best of "
      f"{res['repeats']}).")
    load = res.get("loadavg")
    if load:
        w("")
        w(f"System load average at start / end of the run: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores"
          + (" — the machine was oversubscribed by other jobs, so timing ratios (overhead, speedups) are unreliable "
             "in this run; re-run on an idle machine." if max(load) > 1.5 * (os.cpu_count() or 1) else "."))
    w("")
    w("| target | measured | goal |")
    w("|---|---|---|")
    w(f"| scoring pass / plain base forward (same batches) | **{ov['scoring_overhead']:.3f}** | <= 1.10 |")
    w(f"| scoring pass / full `model(input_ids)` forward (incl. LM head) | {ov['scoring_over_full_forward']:.3f} | (for reference) |")
    for r, row in sp["rows"].items():
        w(f"| prefill speedup / ideal, {float(r):.1%} pruned | **{row['prefill_speedup_over_ideal']:.3f}** | >= 0.90 |")
        w(f"| decode speedup / ideal, {float(r):.1%} pruned | **{row['decode_speedup_over_ideal']:.3f}** | >= 0.90 |")
    pv = res["preview"]
    w(f"| preview (plan + chart data, {pv['preview_blocks']} blocks), median | **{pv['preview_ms']:.1f} ms** | < 50 ms |")
    w(f"| forward passes during preview | **{pv['preview_forward_passes']}** | 0 |")
    sto = res.get("store")
    if sto:
        w(f"| calibration with the run library / without ({sto['windows']} x {sto['seq_len']}, key + save) | "
          f"**{sto['store_overhead']:.3f}** | <= 1.03 |")
        w(f"| run file bytes per block ({sto['blocks']} blocks, {sto['windows']} x {sto['seq_len']}) | "
          f"**{sto['store_bytes_per_block']:.0f}** | (reported) |")
    w(f"| streamed vs in-memory scores, max abs diff | **{st['streaming_max_abs_diff']:.3g}** | equal |")
    w(f"| streamed peak resident weights / model size | **{st['streaming_peak_mb']:.2f} / {st['streaming_model_mb']:.2f} MB** | <= 1/4 |")
    fc = res.get("first_curves") or {}
    if fc.get("ratio_to_forward_batch") is not None:
        w(f"| click -> first partial curves / one plain forward batch, warm (`first_curves_after_s`) | "
          f"**{fc['ratio_to_forward_batch']:.2f}** (CPU-seconds ratio {fc.get('ratio_cpu', float('nan')):.2f}) | <= 2 |")
    w("")
    w(f"## Scoring overhead ({res['model']})")
    w("")
    w(f"{ov['batches']} batches x {ov['batch_size']} windows, {ov['tokens']} tokens. Scoring runs the *base* model (no "
      "LM head: logits are not needed) with hooks on every block, so the fair baseline is the plain base-model "
      "forward over the same batches; the full `model(input_ids)` forward (with the LM head) is slower still.")
    w("")
    w("| pass | best seconds |")
    w("|---|---|")
    for k, v in ov["seconds"].items():
        w(f"| {k} | {v:.3f} |")
    w("")
    w("Hot path: `metrics.BlockStats.observe` computes everything from a few reductions over x, y and "
      "d = y - x (2-norms, in-place |d| then sum/amax; cosine via the polarisation identity), with no per-op float "
      "copies of the activations.")
    w("")
    w("## Peak extra memory of scoring")
    w("")
    w("Peak resident memory while scoring minus the peak of a plain base forward over the same batches "
      "(batch size 2; CPU: VmHWM reset via /proc/self/clear_refs; CUDA: max_memory_allocated). It stays flat "
      "as layers x tokens grow: per-block metrics are O(L) running sums and the heatmap subsample is capped.")
    w("")
    w("| model / calibration | layers x tokens | plain forward peak MB | scoring peak MB | extra MB |")
    w("|---|---|---|---|---|")
    for k, v in mem.items():
        w(f"| {k} | {v['layers_x_tokens']} | {v['forward_peak_mb']} | {v['scoring_peak_mb']} | {v['extra_mb']} |")
    w("")
    w("## Preview")
    w("")
    w(f"Slider move = `plan.make_plan` from cached scores of an {pv['preview_blocks']}-block model + the chart "
      f"data (curves frame with SimDiff importance and dropped flags), {pv['preview_moves']} moves over ratios and "
      f"alphas: median {pv['preview_ms']} ms, worst {pv['preview_max_ms']} ms. Forward passes, counted with a "
      f"global module forward pre-hook: {pv['preview_forward_passes']}.")
    if pv.get("preview_figure_ms") is not None:
        w("")
        w(f"Building the app's plotly figures (`figures.layer_curves` + `bars_spec`, 80 blocks, 25 % / "
          f"37.5 % dropped) takes {pv['preview_figure_ms']} ms per move on this machine: `layer_curves` calls "
          "`fig.add_vrect` once per dropped block per panel, and each call re-validates the whole layout. "
          "Passing all rectangles in one `fig.update_layout(shapes=[...])` (or one `go.Bar` band trace) removes "
          "almost all of it; that is the app's code and is left to it.")
    w("")
    w(f"## Pruned speedup ({res['model']})")
    w("")
    w(f"Prefill: batch 1 x {sp['prompt_len']} tokens, no cache. Decode: {sp['decode_tokens']} greedy tokens with "
      "the KV cache after a 64-token prompt. Ideal = 1 / (1 - share of the dense time spent in the removed blocks), "
      "block times measured with forward pre/post hooks on the dense model (blocks are "
      f"{sp['blocks_time_share_prefill']:.0%} of prefill time and {sp['blocks_time_share_decode']:.0%} of decode "
      "time; the rest is embeddings, final norm, LM head and framework overhead, which pruning cannot remove).")
    w("")
    w("| pruned | removed blocks | prefill ideal | prefill measured | ratio | decode ideal | decode measured | ratio | decode tok/s dense -> pruned |")
    w("|---|---|---|---|---|---|---|---|---|")
    for r, row in sp["rows"].items():
        w(f"| {float(r):.1%} | {row['removed']} | {row['prefill_ideal']:.3f}x | {row['prefill_measured']:.3f}x | "
          f"{row['prefill_speedup_over_ideal']:.3f} | {row['decode_ideal']:.3f}x | {row['decode_measured']:.3f}x | "
          f"{row['decode_speedup_over_ideal']:.3f} | {row['dense_decode_tok_s']} -> {row['pruned_decode_tok_s']} |")
    w("")
    w("## Time to first curves (embedded SmolLM2-135M GGUF)")
    w("")
    if ttfc:
        w(f"Fresh Python process: import, `load_model('default')`, calibration windows ({ttfc['calibration']}), "
          "`score_model`. Cold = empty `SIMDIFF_CACHE` (the GGUF is dequantised, then cached as safetensors); "
          "warm = the dequantised safetensors cache exists.")
        w("")
        w("| run | import s | load s | windows s | score s | total s | process wall s |")
        w("|---|---|---|---|---|---|---|")
        for name in ("cold", "warm"):
            r = ttfc.get(name)
            if r and "error" not in r:
                w(f"| {name} | {r['import_s']} | {r['load_s']} | {r['windows_s']} | {r['score_s']} | {r['total_s']} | {r['process_wall_s']} |")
            elif r:
                w(f"| {name} | error: {r['error']} | | | | | |")
        w("")
        w("Already in place: the dequantised-weights cache (simdiff_core/models/gguf.py), `torch.inference_mode`, "
          "the base model without LM head, tokenising only as much text as the windows need "
          "(simdiff_core/data/text.py), fused metric reductions.")
    else:
        w("Not measured in this mode (run without `--smoke`).")
    w("")
    w("## Bigger than memory: block streaming")
    w("")
    w(f"{st['streaming_model']} ({st['streaming_model_mb']} MB fp32) saved as safetensors, scored by "
      f"`streaming.stream_score` with a budget of {st['streaming_budget_mb']} MB (1/4 of the model; minimum for this "
      f"model {st['streaming_min_budget_mb']} MB). Peak materialised weights: {st['streaming_peak_mb']} MB. "
      f"Max abs difference to the in-memory scores (all metrics and matrices): {st['streaming_max_abs_diff']}. "
      f"Time: streamed {st['streaming_seconds']} s vs in-memory {st['in_memory_seconds']} s (includes reading "
      "each block from disk).")
    w("")
    if res.get("eval"):
        sys.path.insert(0, str(ROOT / "bench"))
        import bench_eval

        w("<!-- eval-bench:start -->")
        w(bench_eval.results_section(res["eval"]))
        w("<!-- eval-bench:end -->")
        w("")
    w("## GPU rows")
    w("")
    if res["device"].startswith("cuda"):
        w("This file holds the GPU run.")
    else:
        w("No GPU was available to this session, so there are no GPU rows. On a CUDA machine run "
          "`python bench/run.py --device cuda --dtype bfloat16 --full --out bench/RESULTS-cuda.md` "
          "(uses the embedded model; add `--gpu-model-layers 24 --gpu-model-hidden 1536` for a ~1B config-built "
          "model) and paste its table here.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n" + kept_sections(path))
