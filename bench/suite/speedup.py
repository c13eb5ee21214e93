"""Prefill/decode speed, dense vs pruned, against the ideal from measured per-block time shares."""

from __future__ import annotations

import time

import torch

from .harness import best_of, log


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

    from simdiff_core.pruning.plan import make_plan
    from simdiff_core.pruning.prune import pruned_model

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
