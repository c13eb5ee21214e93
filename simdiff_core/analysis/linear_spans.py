"""The n-block span heatmap of linear replaceability: removing ``[a, a + n)`` for every start and length.

    from simdiff_core.analysis.linear_spans import span_replaceability
    heat = span_replaceability(lm, ids, max_span=8)     # heat["values"][n - 1][a]; its own forward pass(es)
    # CLI: python -m simdiff_core spans --model default --out spans.json

The definition and the solve are ``linear.py``'s (the single-block row n = 1 is the scoring pass's
curve); this module only accumulates, for each start ``a``, block ``a - 1``'s ``G = MᵀM`` and one
``E = Mᵀ(h_{a+n} − h_a)`` per length. Why its own pass: L²/2 d × d accumulators do not fit beside
the scoring pass (SmolLM2: ~1.3 GB), so the starts are grouped into passes that fit ``max_mb``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from .hooks import block_hooks, hook_pass
from .linear import few_tokens_warning, solve, write_site
from .score import auto_batch_size, forward_base, metric_mask, model_hidden_size


def _chunks(L: int, d: int, max_span: int, max_mb: float) -> list[list[int]]:
    """Span starts a = 1..L-1 grouped so one group's accumulators (G + one E per length) fit ``max_mb``."""
    per = d * d * 8 / 2**20
    groups, cur, used = [], [], 0.0
    for a in range(1, L):
        need = (1 + min(max_span, L - a)) * per
        if need > max_mb:
            raise SimDiffError(f"one span start needs {need:.0f} MB of accumulators (d = {d}, up to {min(max_span, L - a)} "
                               f"lengths) > {max_mb:.0f} MB: lower --max-span or raise --max-mb")
        if cur and used + need > max_mb:
            groups.append(cur)
            cur, used = [], 0.0
        cur.append(a)
        used += need
    if cur:
        groups.append(cur)
    return groups


def span_replaceability(lm, input_ids: torch.Tensor, max_span: int | None = None, batch_size: int | None = None,
                        attention_mask: torch.Tensor | None = None, first_token: bool = True,
                        max_mb: float = 512, progress: Progress | None = None,
                        should_stop: Callable[[], bool] | None = None) -> dict:
    """Linear replaceability of removing ``[a, a + n)`` for every start ``a >= 1`` and length ``n``.

    Returns ``{"values": V, "x": starts, "y": lengths, "tokens", "passes", "max_span", "definition"}``
    plus the sums behind ``V``: ``residual[n - 1][a]`` (``min_T ‖M·T − (h_b − R)‖²``), ``removal[n - 1][a]``
    (``‖h_b − h_a‖²``) and ``out_norm2[j]`` (``‖h_{j+1}‖²``, block j's output), summed over the tokens
    with ``V[n - 1][a]`` (None where undefined: a = 0, a + n > L, n > max_span) — the layout of
    ``analysis.derived.nblock_angular`` so the two heatmaps sit side by side. The single-block row (n = 1) is
    the scoring pass's curve. Memory: a G and one E per length for each start, float64, grouped into
    passes of at most ``max_mb`` (SmolLM2, d 576, all lengths: ~1.3 GB -> 3 passes at 512 MB); each
    pass is one forward over the calibration windows plus one (tokens × d) x (d × d) GEMM per (start,
    length) and batch.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise SimDiffError("calibration input must be a non-empty (N, S) tensor of token ids")
    blocks = lm.blocks
    L = len(blocks)
    N, S = input_ids.shape
    span = L - 1 if max_span is None else int(max_span)
    if span < 1:
        raise SimDiffError(f"--max-span must be at least 1, got {span}")
    sites = [write_site(b) for b in blocks]
    refused = next((why for mod, _, why in sites[:-1] if mod is None), None)
    if refused:
        raise SimDiffError(f"linear replaceability is not defined for this model: {refused}")
    d = model_hidden_size(lm.model)
    groups = _chunks(L, d, span, max_mb)
    bs = batch_size or auto_batch_size(lm.device, S)
    V: list[list] = [[None] * L for _ in range(L)]
    Res: list[list] = [[None] * L for _ in range(L)]   # absolute residual sums (what V divides by Q)
    Q: list[list] = [[None] * L for _ in range(L)]     # ||h_{a+n} - h_a||^2 summed over tokens
    out_norm2 = [0.0] * L                              # ||h_{j+1}||^2 (block j's output) summed over tokens
    tokens = 0
    nb = math.ceil(N / bs)
    for gi, starts in enumerate(groups):
        want = {a - 1: a for a in starts}                     # write of block a-1 -> start a
        G: dict[int, torch.Tensor] = {}
        E: dict[tuple, torch.Tensor] = {}
        q: dict[tuple, float] = {}
        cur: dict = {}

        def make_write(i):
            def on_post(module, args, kwargs, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                cur[("M", i)] = out
            return on_post

        def on_block(j, x, y):
            if should_stop is not None and should_stop():
                raise Cancelled()
            m = cur["mask"]
            if gi == 0:
                yf = y.reshape(-1, d).double()
                if m is not None:
                    yf = yf * m.to(y.device).double()
                out_norm2[j] += float(yf.square().sum())
            if j in want:
                a = want[j]
                Mf = cur.pop(("M", j)).reshape(-1, d).float() * sites[j][1]
                if m is not None:
                    Mf = Mf * m
                G[a] = G.get(a, 0) + (Mf.T @ Mf).double()
                cur[("Mf", a)] = Mf
                cur[("h", a)] = y                              # h_a: the output of block a-1
            for a in starts:
                n = j - a + 1
                if n < 1 or n > span or ("Mf", a) not in cur:
                    continue
                Mf = cur[("Mf", a)].to(y.device)
                D = (y.float() - cur[("h", a)].to(y.device).float()).reshape(-1, d)
                if m is not None:
                    D = D * m.to(y.device)
                E[(a, n)] = E.get((a, n), 0) + (Mf.T @ D).double()
                q[(a, n)] = q.get((a, n), 0.0) + float(D.double().square().sum())

        post = {sites[j][0]: make_write(j) for j in want}
        with torch.inference_mode(), block_hooks(blocks, on_block, name="linear-spans"), \
                hook_pass(post=post, name="linear-spans-write"):
            for b, start in enumerate(range(0, N, bs)):
                end = min(start + bs, N)
                ids = input_ids[start:end].to(lm.device)
                mask = attention_mask[start:end].to(lm.device) if attention_mask is not None else None
                mm = metric_mask(mask, end - start, S, ids.device, first_token)
                cur.clear()
                cur["mask"] = None if mm is None else mm.to(torch.float32).reshape(-1, 1)
                forward_base(lm.model, ids, mask)
                if gi == 0:
                    tokens += int(mm.sum()) if mm is not None else (end - start) * S
                if progress is not None:
                    progress((gi * nb + b + 1) / (len(groups) * nb), f"spans: pass {gi + 1}/{len(groups)}, "
                                                                     f"batch {b + 1}/{nb}")
        cur.clear()
        for (a, n), E_an in E.items():
            if q[(a, n)] > 0:
                res, _ = solve(G[a], E_an, q[(a, n)])
                V[n - 1][a] = res / q[(a, n)]
                Res[n - 1][a], Q[n - 1][a] = float(res), float(q[(a, n)])
        del G, E
    return {"values": V, "residual": Res, "removal": Q, "out_norm2": out_norm2, "x": list(range(L)), "y": list(range(1, L + 1)), "tokens": int(tokens),
            "passes": len(groups), "max_span": span, "first_token": bool(first_token), "samples": int(N), "seq_len": int(S),
            "warning": few_tokens_warning(tokens, d),
            "definition": "V[n-1][a] = min_T ||M T - (h_{a+n} - R)||^2 / ||h_{a+n} - h_a||^2, M and R of block a-1"}

