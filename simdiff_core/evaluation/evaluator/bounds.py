"""Exact elimination: exact losses only for the candidates that can be among the best.

    ev.losses_bounded(specs, keep=1)          # greedy, beam: [(loss or None, lower bound or None), ...]
    ev.losses_bounded(specs, keep=0, below=x) # local / evolutionary acceptance: exact where it can be < x

Guarantee: every spec whose exact loss could be among the ``keep`` smallest of ``specs`` (ties
included), or could be strictly below ``below``, gets its exact loss; the others get only a lower
bound and are provably worse (their loss, as the evaluator would compute it, exceeds the ``keep``-th
smallest exact loss, or is >= ``below``). Memoised specs return ``(loss, None)``.

How. Each spec runs its blocks (prefix-cached as in ``losses``) and a *subset head*: the logits of a
vocabulary subset S (``bound_vocab_size()`` entries, those with the most probability mass under a
reference layout ``ref``; default the dense model) plus each row's target. Per row,
``a = logsumexp(S and target)`` and the bound is ``a - z_target``. Specs are then taken in
increasing bound order and evaluated exactly while their bound does not exceed the ``keep``-th
smallest exact loss found so far (or is below ``below``); the first one that does ends the pass,
since the rest bound higher.

Proof that an eliminated spec is worse. (1) Dropping positive terms lowers a logsumexp, so
``logsumexp(S and target) <= logsumexp(all)``; the model's logit post-processing is elementwise, so it
is applied to the subset logits as to the full ones. (2) The exact value reuses the row's stored ``a``
and ``z_target`` and adds the complement: ``logaddexp(a, logsumexp(other logits)) - z_target``,
computed as ``max(a, c) + log1p(exp(-|a - c|))``, which is >= ``a`` in floating point (``log1p`` of a
non-negative number is non-negative, and rounding is monotone). (3) Row values are summed with
``math.fsum`` (correctly rounded, hence monotone) and divided by the same token count. So an
eliminated spec's computed loss is >= its computed bound, which exceeds the ``keep``-th exact loss:
no tolerance, ties included. The exact value equals ``losses`` to float rounding (the same terms,
summed in another order).

Cost. Per spec: its blocks plus ``bound_vocab_size() / V`` of the head (1/8 by default); the specs
evaluated exactly add one full head each. S for a new ``ref`` costs one evaluation of ``ref`` (free
when ``ref`` was evaluated exactly by an earlier call: its column mass is kept). How many candidates
need the full head depends on how peaked the model's distributions are (``bench/RESULTS.md``).
Memory during one call: per spec and batch two float64 numbers per predicted row; the final hidden
state (batch x seq x hidden) of each spec while they fit in another ``cache_bytes`` (the others re-run
their blocks if evaluated exactly); the head rows of the vocabulary subsets (at most 4 cached:
4 x V/8 x hidden, 14 MB each on SmolLM2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...common.errors import Cancelled
from .head import head_chunk_rows

BOUND_VOCAB_SHARE = 8  # the bound's vocabulary subset: 1/8 of the vocabulary (1/8 of the head's cost)
MAX_SUBSETS = 4  # vocabulary subsets (one per reference layout) kept between calls


def bound_vocab_size(vocab: int, want: int | None) -> int:
    """Entries in the bound's vocabulary subset S (``want``, default 1/8 of the vocabulary)."""
    want = want if want is not None else vocab // BOUND_VOCAB_SHARE
    return max(1, min(vocab - 1, int(want)))


def subset_vocab(ev, ref) -> dict:
    """The bound's vocabulary subset S: the ``ev.bound_vocab_size()`` entries with the most probability
    mass summed over the calibration rows under layout ``ref`` (cached per ref; costs one evaluation
    of ``ref`` the first time), with its slice of the head weight and bias."""
    layout = ev.layout(() if ref is None else ref)
    key = ev.key(layout)
    cache = ev.vocab_cache
    if key in cache:
        return cache[key]
    mass = ev.mass_cache.get(key)
    if mass is None:
        mass = 0.0
        for _, bt in ev.each_batch():
            mass = mass + ev.loss_head.column_mass(ev.advance(bt, layout, key))
    head = ev.loss_head.head
    S = torch.topk(mass, ev.bound_vocab_size()).indices.sort().values.to(head.weight.device)
    bias = getattr(head, "bias", None)
    entry = {"S": S, "W": head.weight[S].contiguous(), "b": None if bias is None else bias[S].contiguous()}
    while len(cache) >= MAX_SUBSETS:
        cache.pop(next(iter(cache)))
    cache[key] = entry
    return entry


def subset_rows(lh, last: torch.Tensor, ids: torch.Tensor, voc: dict):
    """Per predicted row (float64): a = logsumexp of the logits over S and the row's target, zt =
    the target's logit. a - zt <= the row's NLL (dropping positive terms lowers a logsumexp)."""
    h = last[:, :-1].reshape(-1, last.shape[-1])
    tgt = ids[:, 1:].reshape(-1)
    W, b, S = voc["W"], voc["b"], voc["S"]
    rows = head_chunk_rows(W.shape[0] + 1, lh.head_chunk_bytes)
    a_out, z_out = [], []
    inside = torch.isin(tgt, S)
    for s in range(0, h.shape[0], rows):
        hn = lh.normed(h[s:s + rows])
        t = tgt[s:s + rows]
        zs = lh.post(F.linear(hn, W, b)).float()
        zt = (hn * lh.head.weight[t]).sum(-1)
        if b is not None:
            zt = zt + lh.head.bias[t]
        zt = lh.post(zt).float()
        a = torch.logsumexp(zs, dim=-1)
        a = torch.where(inside[s:s + rows], a, torch.logaddexp(a, zt))
        a_out.append(a.double())
        z_out.append(zt.double())
    lh.stats["bound_rows"] = lh.stats.get("bound_rows", 0) + h.shape[0]
    return torch.cat(a_out), torch.cat(z_out)


def complement_rows(lh, last: torch.Tensor, ids: torch.Tensor, voc: dict, mass: bool):
    """Per predicted row (float64): logsumexp of the logits outside S and the row's target (full head
    in row chunks, those columns masked); with ``mass`` also the summed softmax column mass."""
    h = last[:, :-1].reshape(-1, last.shape[-1])
    tgt = ids[:, 1:].reshape(-1)
    V = int(lh.head.weight.shape[0])
    rows = head_chunk_rows(V, lh.head_chunk_bytes)
    S = voc["S"]
    out = []
    col = torch.zeros(V, dtype=torch.float64, device=h.device) if mass else None
    for s in range(0, h.shape[0], rows):
        z = lh.logits(h[s:s + rows]).float()
        if mass:
            col += torch.softmax(z, dim=-1).sum(0).double()
        z[:, S] = float("-inf")
        z[torch.arange(z.shape[0], device=z.device), tgt[s:s + rows]] = float("-inf")
        out.append(torch.logsumexp(z, dim=-1).double())
    lh.stats["head_rows"] += h.shape[0]
    return torch.cat(out), col


def losses_bounded(ev, specs, keep: int = 1, below: float | None = None, ref=None, progress=None):
    """``PrefixEvaluator.losses_bounded`` (see the module docstring)."""
    layouts = [ev.layout(s) for s in specs]
    keys = [ev.key(lay) for lay in layouts]
    if not ev.bounds_supported():  # a head that is not a plain linear layer: everything exact
        return [(v, None) for v in ev.losses(layouts, progress)]
    known = {k: ev.memo[k] for k in keys if k in ev.memo}
    todo = ev.pending(keys, skip=known)
    out_exact: dict[tuple, float] = dict(known)
    out_bound: dict[tuple, float] = {}
    if todo:
        lh = ev.loss_head
        voc = subset_vocab(ev, ref)
        rows = {keys[n]: [] for n in todo}
        states: dict[tuple, list] = {keys[n]: [] for n in todo}
        room = ev.cache_bytes
        for _, bt, n, last in ev.sweep(todo, layouts, keys, progress, share=0.5, label="bounds: "):
            rows[keys[n]].append(subset_rows(lh, last, bt["ids"], voc))
            size = last.numel() * last.element_size()
            if size <= room:
                room -= size
                states[keys[n]].append(last)
            else:
                states[keys[n]].append(None)
        for n in todo:
            k = keys[n]
            lb = math.fsum(math.fsum((a - zt).tolist()) for a, zt in rows[k]) / ev.tokens
            out_bound[k] = -math.inf if math.isnan(lb) else lb
        ev.stats["bounded"] = ev.stats.get("bounded", 0) + len(todo)
        masses = {}
        exact_vals = sorted(v if not math.isnan(v) else math.inf for v in known.values())
        ranked = sorted(todo, key=lambda n: out_bound[keys[n]])
        for i, n in enumerate(ranked):
            k = keys[n]
            kth = exact_vals[keep - 1] if 0 < keep <= len(exact_vals) else (math.inf if keep > 0 else -math.inf)
            if not (out_bound[k] <= kth or (below is not None and out_bound[k] < below)):
                break  # every later spec bounds at least as high: provably not needed
            ev.poll()
            total, col = [], None
            for b, bt in ev.each_batch():
                last = states[k][b]
                if last is None:
                    last = ev.advance(bt, layouts[n], k)
                a, zt = rows[k][b]
                c_, m = complement_rows(lh, last, bt["ids"], voc, mass=keep > 0)
                hi = torch.maximum(a, c_)
                lae = hi + torch.log1p(torch.exp(-(a - c_).abs()))
                lae = torch.where(torch.isneginf(c_), a, lae)  # empty complement: exactly a
                total.append(math.fsum((lae - zt).tolist()))
                if m is not None:
                    col = m if col is None else col + m
                states[k][b] = None
            v = math.fsum(total) / ev.tokens
            out_exact[k] = v
            if col is not None:
                masses[k] = col
            exact_vals.append(v if not math.isnan(v) else math.inf)
            exact_vals.sort()
            if ev.is_plain(layouts[n]):
                ev.memo[k] = v
            if progress is not None:
                progress(0.5 + 0.5 * (i + 1) / len(ranked), f"exact: candidate {i + 1} in bound order")
        ev.stats["layouts"] += sum(1 for n in todo if keys[n] in out_exact)
        ev.stats["bound_eliminated"] = ev.stats.get("bound_eliminated", 0) + \
            sum(1 for n in todo if keys[n] not in out_exact)
        if masses:  # the column mass of this call's exact specs: the next call's ref is usually one
            ev.mass_cache = masses
    return [(out_exact[k], None) if k in known else (out_exact.get(k), out_bound.get(k)) for k in keys]


__all__ = ["BOUND_VOCAB_SHARE", "bound_vocab_size", "losses_bounded"]
