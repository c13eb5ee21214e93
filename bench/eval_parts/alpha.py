"""Auto alpha: measured cost against the naive loop (CPU time), and what the evaluator computes against
the floor of any exact evaluator (both in multiply-adds).

Units. ``auto_alpha_cost_vs_naive`` is a ratio of CPU times. ``auto_alpha_floor_vs_naive`` and
``auto_alpha_macs_vs_naive`` are ratios of multiply-adds: the floor counts the edges of the plans'
prefix trie and one head per plan; the evaluator's count comes from its own block calls and head rows
(its subset head and the subset pick included). A CPU-time ratio is not comparable with either: the
naive side also materialises (B, S, V) float32 logits and a float32 log-softmax over them, work that is
no multiply-add and costs more time per multiply-add than the evaluator's head tiles.
"""

from __future__ import annotations

import torch

from .common import naive_ppl, timed


def trie_edges(sets, L: int) -> int:
    """Blocks any exact evaluator must run per batch for these removal sets: the edges of the prefix trie
    of their layouts (distinct (membership of blocks 0..j-1, block j kept) pairs)."""
    return len({tuple(i in s for i in range(j + 1)) for s in map(set, sets) for j in range(L) if j not in s})


def macs_per_token(lm, S: int) -> tuple[float, float]:
    """(one block, the LM head) multiply-adds per token: every nn.Linear of the block plus the attention
    products (q.k and p.v over the causal context, (S+1)/2 positions on average); the head's weight
    (and OPT's project_out)."""
    from simdiff_core.evaluation.evaluator import tail_modules
    from simdiff_core.models.blocks import text_config

    blk = lm.blocks[len(lm.blocks) // 2]
    lin = sum(m.in_features * m.out_features for m in blk.modules() if isinstance(m, torch.nn.Linear))
    lin += sum(m.weight.shape[0] * m.weight.shape[1] for m in blk.modules()
               if type(m).__name__ == "Conv1D")  # GPT-2's linear layers
    cfg = text_config(lm.model.config)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 1)
    hd = int(getattr(cfg, "head_dim", 0) or (cfg.hidden_size // heads))
    attn = 2 * heads * hd * (S + 1) / 2
    _, proj, head, _ = tail_modules(lm)
    h = head.weight.shape[0] * head.weight.shape[1] + (proj.in_features * proj.out_features if proj is not None else 0)
    return float(lin + attn), float(h)


def alpha_floor(lm, sets, shape) -> dict:
    """Multiply-adds of the floor of evaluating these plans exactly, relative to the naive loop: (trie
    edges x block + one head per plan over the predicted rows) / (per plan: kept blocks + head over all
    rows, what ``perplexity(pruned_model(...))`` computes)."""
    N, S = shape
    L = lm.num_layers
    b, h = macs_per_token(lm, S)
    E = trie_edges(sets, L)
    P = len(sets)
    naive_blocks = sum(L - len(s) for s in sets)
    floor = E * b * S + P * h * (S - 1)
    naive = naive_blocks * b * S + P * h * S
    return {"auto_alpha_floor_vs_naive": round(floor / naive, 3), "auto_alpha_trie_edges": E,
            "auto_alpha_naive_blocks": naive_blocks, "head_in_blocks": round(h / b, 2),
            "_naive_macs": naive * N}


def evaluator_macs(lm, ev, S: int) -> float:
    """Multiply-adds the evaluator ran, from its counters: block calls (capture included; each on one
    batch of ``N / batches`` windows x S tokens), full-head rows and subset-head rows."""
    b, h = macs_per_token(lm, S)
    N = ev.shape[0]
    V = int(ev.head.weight.shape[0])
    calls = ev.stats["capture_block_calls"] + ev.stats["block_calls"]
    sub = ev.stats.get("subset_rows", 0) * h * ev.bound_vocab_size() / V
    return calls * b * S * N / ev.num_batches + ev.stats["head_rows"] * h + sub


def bench_alpha(lm, ids, k: int, rounds: int = 2) -> dict:
    """Auto alpha itself (lazy evaluator: no dense pass) vs evaluating each distinct plan by
    pruned_model + perplexity; ``rounds`` interleaved rounds, CPU time of this process, same ppls asserted."""
    from simdiff_core.analysis.score import score_model
    from simdiff_core.evaluation.evaluator import PrefixEvaluator
    from simdiff_core.methods.alpha import AUTO_BETAS, auto_alpha

    scores = score_model(lm, ids)
    cpu = {"c": 0.0, "n": 0.0}
    wall = {"c": 0.0, "n": 0.0}
    worst, calls, macs = 0.0, {}, 0.0
    for _ in range(rounds):
        box = {}

        def cached():
            box["ev"] = PrefixEvaluator(lm, ids, lazy=True)  # what auto_alpha builds itself
            return auto_alpha(lm, scores, ids, num=k, betas=AUTO_BETAS, evaluator=box["ev"])

        (best, trials), w, c = timed(cached)
        cpu["c"] += c
        wall["c"] += w
        ev = box["ev"]
        sets = list(dict.fromkeys(tuple(t["removed_layers"]) for t in trials))
        calls = {"capture": ev.stats["capture_block_calls"], "candidates": ev.stats["block_calls"],
                 "trie_edges_x_batches": trie_edges(sets, lm.num_layers) * ev.num_batches}
        macs = evaluator_macs(lm, ev, ids.shape[1])
        for st in sets:
            r, w, c = timed(lambda: naive_ppl(lm, ids, st))
            cpu["n"] += c
            wall["n"] += w
            got = [tr["ppl"] for tr in trials if tuple(tr["removed_layers"]) == st][0]
            worst = max(worst, abs(got - r) / r)
            assert abs(got - r) / r < 1e-4, (st, got, r)
    out = {"auto_alpha_cached_cpu_s": round(cpu["c"], 2), "auto_alpha_naive_cpu_s": round(cpu["n"], 2),
           "auto_alpha_cost_vs_naive": round(cpu["c"] / cpu["n"], 3),
           "auto_alpha_cost_vs_naive_wall": round(wall["c"] / wall["n"], 3),
           "auto_alpha_distinct_plans": len(sets), "auto_alpha_max_rel_diff": worst, "auto_alpha_best": best,
           "auto_alpha_block_calls": calls}
    floor = alpha_floor(lm, sets, tuple(ids.shape))
    out["auto_alpha_macs_vs_naive"] = round(macs / floor.pop("_naive_macs"), 3)
    out.update(floor)
    return out


def bench_alpha_floor(lm, ids, k: int) -> dict:
    """Only the floor of auto alpha's evaluation on these windows (one scoring pass, no timing)."""
    from simdiff_core.analysis.score import score_model
    from simdiff_core.methods.alpha import AUTO_BETAS, DEFAULT_GRID
    from simdiff_core.pruning.plan import make_plan

    scores = score_model(lm, ids)
    sets = list(dict.fromkeys(tuple(make_plan(scores, "simdiff", num=k, alpha=a, beta=b).removed_layers)
                              for b in AUTO_BETAS for a in DEFAULT_GRID))
    floor = alpha_floor(lm, sets, tuple(ids.shape))
    floor.pop("_naive_macs")
    return dict(floor, auto_alpha_distinct_plans=len(sets), auto_alpha_plans=[list(s) for s in sets])
