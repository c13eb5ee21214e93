"""SimDiff Explorer benchmarks: ratios measured side by side in one run, written to bench/RESULTS.md.

    python bench/run.py            # default: a few minutes on 2 CPU cores (embedded SmolLM2 + config-built models)
    python bench/run.py --full     # longer: 2048-token prefill, bigger calibration, more repeats
    python bench/run.py --smoke    # seconds: tiny models only, checks the plumbing (used by the test suite)
    python bench/run.py --device cuda --dtype bfloat16 --full   # GPU rows (writes bench/RESULTS-cuda.md)

Absolute times on shared machines are noise; every target is a ratio of two things timed in the same
run, interleaved, best of several repeats. The last stdout line is one JSON object with every number.

Sections (each prints one line on stderr as it finishes):
  overhead   scoring pass vs plain forward over the same batches (base model = same modules the
             scoring pass runs, i.e. without the LM head; the full ``model(input_ids)`` is reported too)
  memory     peak extra memory of scoring over a plain forward, 2 depths x 2 calibration sizes
  preview    plan recomputation from cached scores of an 80-block model + chart data, forward passes counted
  speedup    prefill / decode, dense vs pruned (25 %, 37.5 %), against the ideal from measured block time shares
  ttfc       time to first curves for the embedded model: fresh process, cold (empty SIMDIFF_CACHE) and warm
  streaming  block-streamed scores vs in-memory scores under a budget of 1/4 of the model size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


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


# ----------------------------------------------------------------------------------- sections
def bench_overhead(lm, ids, bs, repeats, device) -> dict:
    from simdiff_core.score import _forward_base, score_model

    batches = [ids[i:i + bs].to(device) for i in range(0, ids.shape[0], bs)]

    def base():
        with torch.inference_mode():
            for b in batches:
                _forward_base(lm.model, b)

    def full():
        with torch.inference_mode():
            for b in batches:
                lm.model(input_ids=b, use_cache=False)

    holder = {}

    def scoring():
        holder["scores"] = score_model(lm, ids, batch_size=bs)

    scoring()  # warm-up (allocator, kernels)
    t = best_of({"base_forward": base, "scoring": scoring, "full_forward": full}, repeats, device)
    return {"scoring_overhead": t["scoring"] / t["base_forward"],
            "scoring_over_full_forward": t["scoring"] / t["full_forward"],
            "seconds": {k: round(v, 4) for k, v in t.items()}, "batches": len(batches), "batch_size": bs,
            "tokens": int(ids.numel()), "scores": holder["scores"]}


def bench_uncertainty(lm, ids, bs, repeats, device) -> dict:
    """Per-window statistics + bootstrap bands + plan stability (200 resamples each) vs the plain scoring pass.

    ``uncertainty_overhead`` = (scoring with per-window sums + bands + stability) / (scoring without them);
    target <= 1.1.
    """
    from simdiff_core.score import score_model
    from simdiff_core.uncertainty import bands, plan_stability

    holder = {}

    def plain():
        score_model(lm, ids, batch_size=bs, window_stats=False)

    def with_bands():
        sc = score_model(lm, ids, batch_size=bs, window_stats=True)
        t0 = time.perf_counter()
        bands(sc)
        plan_stability(sc, "simdiff", num=max(1, round(0.25 * sc.num_layers)))
        holder["bootstrap_s"] = time.perf_counter() - t0

    with_bands()  # warm-up
    t = best_of({"scoring_plain": plain, "scoring_bands_stability": with_bands}, repeats, device)
    return {"uncertainty_overhead": t["scoring_bands_stability"] / t["scoring_plain"],
            "bootstrap_seconds": round(holder["bootstrap_s"], 4), "resamples": 200, "windows": int(ids.shape[0]),
            "seconds": {k: round(v, 4) for k, v in t.items()}}


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


def bench_memory(depths, sizes, seq_len, hidden, device) -> dict:
    """Extra peak of scoring over a plain base forward on the same batch size, per depth and calib size."""
    from simdiff_core.load import wrap_model
    from simdiff_core.score import _forward_base, score_model

    table = {}
    for L in depths:
        model = llama_dir_model(L, hidden, hidden * 3, 2048).to(device)
        lm = wrap_model(model, None, f"llama-{L}x{hidden}")
        for n in sizes:
            ids = torch.randint(0, 2048, (n, seq_len), generator=torch.Generator().manual_seed(0))
            bs = 2

            def fwd():
                with torch.inference_mode():
                    for i in range(0, n, bs):
                        _forward_base(model, ids[i:i + bs].to(device))

            if torch.device(device).type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base0 = torch.cuda.memory_allocated()
                fwd()
                f = (torch.cuda.max_memory_allocated() - base0) / 2**20
                torch.cuda.reset_peak_memory_stats()
                score_model(lm, ids, batch_size=bs)
                s = (torch.cuda.max_memory_allocated() - base0) / 2**20
            else:
                fwd(), score_model(lm, ids, batch_size=bs)  # warm the allocator for both
                f = peak_extra_mb(fwd)
                s = peak_extra_mb(lambda: score_model(lm, ids, batch_size=bs))
            table[f"L={L},N={n}"] = {"forward_peak_mb": round(f, 2), "scoring_peak_mb": round(s, 2),
                                     "extra_mb": round(s - f, 2), "layers_x_tokens": L * n * seq_len}
        del model, lm
    return table


def synthetic_scores(L: int, seed: int = 0):
    """Scores of an L-block model with realistic shapes (cosine rising with depth, growing norms)."""
    import numpy as np

    from simdiff_core.metrics import simdiff_importance
    from simdiff_core.score import Scores

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


def bench_preview(L: int, repeats: int, figures: bool = True) -> dict:
    """One slider move: new plan from cached scores + the chart data the preview redraws.

    ``preview_ms`` = ``make_plan`` + the chart data (the curves frame with the SimDiff column and the
    dropped flags, which is what changes on a move). The app's plotly figure builders (``ui.charts``)
    are timed separately as ``preview_figure_ms`` on two moves: they are the app's code, not data.
    """
    import numpy as np
    import pandas as pd

    from simdiff_core.plan import make_plan

    scores = synthetic_scores(L)
    charts = None
    if figures:
        try:
            from ui import charts  # the app's own chart builders (plotly)
        except Exception as e:  # app not present
            log(f"preview: ui.charts not importable ({type(e).__name__}); figures not timed")

    forwards = {"n": 0}

    def count(module, args):
        forwards["n"] += 1

    def frame(imp, dropped):
        df = pd.DataFrame(scores.layers).set_index("index")
        df["simdiff"] = imp
        df["dropped"] = df.index.isin(dropped)
        return df

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    ratios = [0.1, 0.2, 0.25, 0.3, 0.375, 0.5]
    times, fig_times = [], []
    try:
        for r in range(repeats):
            for ratio in ratios:
                alpha = [0.3, 0.5, 0.7][r % 3]
                t0 = time.perf_counter()
                plan = make_plan(scores, "simdiff", ratio=ratio, alpha=alpha)
                frame(np.asarray(plan.scores), plan.removed_layers)
                times.append(time.perf_counter() - t0)
        if charts is not None:
            for ratio in (0.25, 0.375):
                plan = make_plan(scores, "simdiff", ratio=ratio)
                t0 = time.perf_counter()
                charts.layer_curves(scores.layers, dropped=plan.removed_layers).to_plotly_json()
                charts.importance_bars(np.asarray(plan.scores), dropped=plan.removed_layers).to_plotly_json()
                fig_times.append(time.perf_counter() - t0)
    finally:
        handle.remove()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"preview_ms": round(1000 * med(times), 2), "preview_max_ms": round(1000 * max(times), 2),
            "preview_figure_ms": round(1000 * med(fig_times), 1) if fig_times else None,
            "preview_forward_passes": forwards["n"], "preview_blocks": L, "preview_moves": len(times)}


def block_time_share(model, blocks, run) -> list[float]:
    """Per-block wall time while ``run()`` executes, measured with pre/post forward hooks."""
    times = [0.0] * len(blocks)
    start = {}
    hs = []
    for i, b in enumerate(blocks):
        hs.append(b.register_forward_pre_hook(lambda m, a, _i=i: start.__setitem__(_i, time.perf_counter())))
        hs.append(b.register_forward_hook(
            lambda m, a, o, _i=i: times.__setitem__(_i, times[_i] + time.perf_counter() - start[_i])))
    try:
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
    finally:
        for h in hs:
            h.remove()
    return [t / total for t in times]


def bench_speedup(lm, scores, prompt_len, decode_tokens, repeats, device) -> dict:
    from transformers import DynamicCache

    from simdiff_core.plan import make_plan
    from simdiff_core.prune import pruned_model

    vocab = lm.model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)

    def prefill(model):
        def f():
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False)
        return f

    def decode(model):
        with torch.inference_mode():
            out = model(input_ids=ids[:, :64], past_key_values=DynamicCache(config=model.config), use_cache=True)
        cache0 = out.past_key_values
        nxt0 = out.logits[:, -1:].argmax(-1)

        def f():
            import copy

            cache, nxt = copy.deepcopy(cache0), nxt0
            with torch.inference_mode():
                for _ in range(decode_tokens):
                    o = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    cache, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)
        return f

    # block time shares, from the dense model (median over two runs of each phase)
    pre_share = [sum(x) / 2 for x in zip(*[block_time_share(lm.model, lm.blocks, prefill(lm.model)) for _ in range(2)])]
    dec_share = [sum(x) / 2 for x in zip(*[block_time_share(lm.model, lm.blocks, decode(lm.model)) for _ in range(2)])]
    out = {"prompt_len": prompt_len, "decode_tokens": decode_tokens, "rows": {}}
    for ratio in (0.25, 0.375):
        plan = make_plan(scores, "simdiff", ratio=ratio)
        small = pruned_model(lm, plan.kept_layers)
        t = best_of({"dense_prefill": prefill(lm.model), "pruned_prefill": prefill(small)}, repeats, device)
        d = best_of({"dense_decode": decode(lm.model), "pruned_decode": decode(small)}, repeats, device)
        s_pre = sum(pre_share[i] for i in plan.removed_layers)
        s_dec = sum(dec_share[i] for i in plan.removed_layers)
        ideal_pre, ideal_dec = 1 / (1 - s_pre), 1 / (1 - s_dec)
        meas_pre = t["dense_prefill"] / t["pruned_prefill"]
        meas_dec = d["dense_decode"] / d["pruned_decode"]  # = pruned tok/s over dense tok/s
        out["rows"][str(ratio)] = {
            "removed": plan.removed_layers,
            "removed_time_share_prefill": round(s_pre, 4), "removed_time_share_decode": round(s_dec, 4),
            "prefill_ideal": round(ideal_pre, 4), "prefill_measured": round(meas_pre, 4),
            "prefill_speedup_over_ideal": round(meas_pre / ideal_pre, 4),
            "decode_ideal": round(ideal_dec, 4), "decode_measured": round(meas_dec, 4),
            "decode_speedup_over_ideal": round(meas_dec / ideal_dec, 4),
            "dense_decode_tok_s": round(decode_tokens / d["dense_decode"], 2),
            "pruned_decode_tok_s": round(decode_tokens / d["pruned_decode"], 2),
            "dense_prefill_s": round(t["dense_prefill"], 4), "pruned_prefill_s": round(t["pruned_prefill"], 4),
        }
        log(f"speedup {ratio}: prefill {meas_pre:.3f}x (ideal {ideal_pre:.3f}), decode {meas_dec:.3f}x (ideal {ideal_dec:.3f})")
    out["blocks_time_share_prefill"] = round(sum(pre_share), 4)
    out["blocks_time_share_decode"] = round(sum(dec_share), 4)
    return out


TTFC_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from simdiff_core import load_model, make_windows, score_model
t1 = time.perf_counter()
lm = load_model("default", device="cpu", dtype="float32")
t2 = time.perf_counter()
ids = make_windows(lm.tokenizer, "wikitext2", n={n}, seq_len={s})
t3 = time.perf_counter()
score_model(lm, ids)
t4 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "windows_s": t3 - t2, "score_s": t4 - t3, "total_s": t4 - t0}}))
"""


def bench_ttfc(n: int, s: int, cold: bool) -> dict:
    """Fresh process: import, load the embedded model, cut calibration windows, score (the first curves)."""
    code = TTFC_SNIPPET.format(root=str(ROOT), n=n, s=s)
    out = {"calibration": f"{n} x {s}"}
    runs = [("warm", None)]
    if cold:
        runs.insert(0, ("cold", tempfile.mkdtemp(prefix="simdiff-cold-")))
    for name, cache in runs:
        env = dict(os.environ)
        if cache:
            env["SIMDIFF_CACHE"] = cache
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            out[name] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out[name] = {k: round(v, 2) for k, v in r.items()} | {"process_wall_s": round(wall, 2)}
        if cache:
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
        log(f"time to first curves ({name}): {wall:.1f}s")
    return out


def first_curves_after() -> dict:
    """Warm start (issue 14): click -> first partial curves, in plain forward batches (bench/first_curves.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from first_curves import bench_first_curves

    out = bench_first_curves()
    log(f"first curves after {out.get('click_to_first_curves_s')} s = {out.get('ratio_to_forward_batch')} forward "
        f"batches (without prewarm: {out.get('no_prewarm', {}).get('ratio_to_forward_batch')})")
    return out


def bench_streaming(num_layers, hidden, n, seq_len) -> dict:
    import numpy as np

    from simdiff_core.load import count_parameters, wrap_model
    from simdiff_core.score import score_model
    from simdiff_core.streaming import stream_score

    model = llama_dir_model(num_layers, hidden, hidden * 3, 2048)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        size_mb = count_parameters(model) * 4 / 2**20
        budget = size_mb / 4
        ids = torch.randint(0, 2048, (n, seq_len), generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        ref = score_model(wrap_model(model, None, d), ids, batch_size=2)
        t1 = time.perf_counter()
        got = stream_score(d, ids, memory_budget_mb=budget, device="cpu", dtype="float32", batch_size=2)
        t2 = time.perf_counter()
    diff = 0.0
    for a, b in zip(ref.layers, got.layers):
        for k in ("cosine", "mssd", "masd", "mssd_rel", "masd_rel", "max_abs_diff", "simdiff"):
            diff = max(diff, abs(a[k] - b[k]))
    for k in ("output_cosine", "cka", "angular_boundaries"):
        diff = max(diff, float(np.abs(np.array(ref.matrices[k]) - np.array(got.matrices[k])).max()))
    meta = got.meta["stream"]
    return {"streaming_max_abs_diff": diff, "streaming_peak_mb": meta["peak_weights_mb"],
            "streaming_model_mb": round(size_mb, 2), "streaming_budget_mb": round(budget, 2),
            "streaming_min_budget_mb": meta["min_budget_mb"], "streaming_seconds": round(t2 - t1, 2),
            "in_memory_seconds": round(t1 - t0, 2), "streaming_model": f"llama {num_layers} blocks x hidden {hidden}"}


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
    w(f"| streamed vs in-memory scores, max abs diff | **{st['streaming_max_abs_diff']:.3g}** | equal |")
    w(f"| streamed peak resident weights / model size | **{st['streaming_peak_mb']:.2f} / {st['streaming_model_mb']:.2f} MB** | <= 1/4 |")
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
        w(f"Building the app's plotly figures (`ui.charts.layer_curves` + `importance_bars`, 80 blocks, 25 % / "
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
        w("Already in place: the dequantised-weights cache (load.py), `torch.inference_mode`, the base model "
          "without LM head, tokenising only as much text as the windows need (data.py), fused metric reductions.")
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="long runs: 2048-token prefill, more calibration and repeats")
    g.add_argument("--smoke", action="store_true", help="tiny models only, seconds (for the test suite)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (empty cache) time-to-first-curves run")
    ap.add_argument("--gpu-model-layers", type=int, default=0, help="benchmark a config-built llama of this depth instead of the embedded model")
    ap.add_argument("--gpu-model-hidden", type=int, default=1536)
    ap.add_argument("--out", default=os.environ.get("SIMDIFF_BENCH_OUT"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    from simdiff_core.load import load_model, pick_dtype, wrap_model
    from simdiff_core.data import make_windows

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
    name = lm.name
    res = {"model": name, "model_params": lm.num_parameters(), "model_blocks": lm.num_layers, "device": str(device),
           "dtype": str(dtype).replace("torch.", ""), "repeats": repeats}

    bs = 4 if not args.full else 4
    ov = bench_overhead(lm, ids, bs, repeats, device)
    scores = ov.pop("scores")
    res["overhead"] = ov
    log(f"scoring overhead {ov['scoring_overhead']:.3f} (vs full forward {ov['scoring_over_full_forward']:.3f})")

    res["uncertainty"] = bench_uncertainty(lm, ids, bs, repeats, device)
    log(f"uncertainty overhead {res['uncertainty']['uncertainty_overhead']:.3f} "
        f"(bootstrap {res['uncertainty']['bootstrap_seconds']} s)")

    res["memory"] = bench_memory(mem_depths, mem_sizes, mem_seq, mem_hidden, device)
    log("memory " + json.dumps({k: v["extra_mb"] for k, v in res["memory"].items()}))

    res["preview"] = bench_preview(80, repeats=2 if args.smoke else 10, figures=not args.smoke)
    log(f"preview {res['preview']['preview_ms']} ms, {res['preview']['preview_forward_passes']} forward passes")

    res["speedup"] = bench_speedup(lm, scores, prompt, decode_n, repeats, device)

    if not args.smoke and device == "cpu" and not args.gpu_model_layers:
        n_calib, s_calib = (8, 256)
        res["ttfc"] = bench_ttfc(n_calib, s_calib, cold=not args.no_cold)
        res["first_curves"] = first_curves_after()

    res["streaming"] = bench_streaming(*stream_cfg)
    log(f"streaming diff {res['streaming']['streaming_max_abs_diff']} peak {res['streaming']['streaming_peak_mb']} MB "
        f"of {res['streaming']['streaming_model_mb']} MB")

    if not args.smoke and not args.gpu_model_layers:
        # candidate evaluation cost (bench_eval.py): damage vs its floor, greedy / auto alpha vs the naive loop,
        # the Shootout page's defaults; small calibration, ratios measured in this run
        sys.path.insert(0, str(ROOT / "bench"))
        import bench_eval

        res["eval"] = bench_eval.run_all(lm, make_windows(lm.tokenizer, "wikitext2", n=2, seq_len=64), 7,
                                         ("damage", "greedy", "alpha", "shootout"))

    res["loadavg"] = [load_start, os.getloadavg()[0]]
    out = Path(args.out) if args.out else (None if args.smoke else ROOT / "bench" / (
        "RESULTS.md" if not str(device).startswith("cuda") else "RESULTS-cuda.md"))
    if out is not None:
        write_results(out, res, args)
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
        **{k: res.get("eval", {}).get(k) for k in ("greedy_cost_vs_naive", "auto_alpha_cost_vs_naive",
                                                   "damage_vs_floor", "shootout_default_s")},
        "bench_seconds": round(time.perf_counter() - t_start, 1),
    }
    if "first_curves" in res:
        summary["first_curves_after_s"] = res["first_curves"].get("ratio_to_forward_batch")
        summary["first_curves_detail"] = res["first_curves"]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
