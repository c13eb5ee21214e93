"""Exact elimination: exact losses only for the candidates that can be among the best.

    ev.losses_bounded(specs, keep=1)          # greedy, beam: [(loss or None, lower bound or None), ...]
    ev.losses_bounded(specs, keep=0, below=x) # local / evolutionary acceptance: exact where it can be < x

Guarantee: every spec whose exact loss could be among the ``keep`` smallest of ``specs`` (ties
included), or could be strictly below ``below``, gets its exact loss; the others get only a lower
bound and are provably worse (their loss, as ``losses`` computes it, exceeds the ``keep``-th smallest
exact loss, or is >= ``below``). Memoised specs return ``(loss, None)``. So a method makes the same
choices with elimination on or off, ties included.

How. Each spec runs its blocks (prefix-cached as in ``losses``) and the *subset part* of the loss head
(``head.py``): per row, ``a`` = logsumexp of the logits over the vocabulary subset S and the row's
target, and ``z_target``; the spec's bound is the mean of ``a - z_target``. Specs are then taken in
increasing bound order and evaluated exactly while their bound does not exceed the ``keep``-th
smallest exact loss found so far (or is below ``below``); the first one that does ends the pass,
since the rest bound higher. The exact value adds the complement part ``c`` (the other logits) to
the stored ``a`` and ``z_target``: the same computation, on the same numbers, as ``losses``.

Proof that an eliminated spec is worse. (1) Mathematically, dropping positive terms lowers a
logsumexp, so ``logsumexp(S and target) <= logsumexp(all)``; the logit post-processing is elementwise,
so it applies to the subset logits as to the full ones. (2) In floating point, the exact row value is
``max(a, c) + log1p(exp(-|a - c|)) - z_target`` with the very ``a`` and ``z_target`` of the bound
(bit for bit: one function of the same hidden state), and ``max(a, c) + log1p(x >= 0) >= a`` since
``log1p`` of a non-negative number is non-negative and rounding is monotone. (3) Row values are
summed with ``math.fsum`` per batch and the batch sums again with ``math.fsum`` (correctly rounded,
hence monotone), then divided by the same token count. So an eliminated spec's loss, as ``losses``
would compute it, is >= its computed bound, which exceeds the ``keep``-th exact loss: no tolerance.

Cost. Per spec: its blocks plus ``|S| / V`` of the head (1/8 by default); the specs evaluated exactly
add one full head each. S is fixed when the evaluator first needs it (the dense model's batch 0 unless
built ``lazy``; then ``ref`` or the first spec). How many candidates need the full head depends on
how peaked the model's distributions are (``bench/RESULTS.md``). Memory during one call: per spec
and batch two float64 numbers per predicted row; the final hidden state (batch x seq x hidden) of
each spec while they fit in another ``cache_bytes`` (the others re-run their blocks if evaluated
exactly); for the evaluator's life, S's head rows (V/8 x hidden: 14 MB on SmolLM2).
"""

from __future__ import annotations

import math

BOUND_VOCAB_SHARE = 8  # the bound's vocabulary subset: 1/8 of the vocabulary (1/8 of the head's cost)


def bound_vocab_size(vocab: int, want: int | None) -> int:
    """Entries in the bound's vocabulary subset S (``want``, default 1/8 of the vocabulary)."""
    want = want if want is not None else vocab // BOUND_VOCAB_SHARE
    return max(1, min(vocab - 1, int(want)))


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
        if lh.subset is None and ref is not None:  # S not fixed yet (a lazy evaluator): from ref's mass
            h, _ = lh.predicted(ev.advance(ev.batches[0], ev.layout(ref), ev.key(ev.layout(ref))), ev.batches[0]["ids"])
            lh.pick_subset(h)
        rows = {keys[n]: [] for n in todo}
        states: dict[tuple, list] = {keys[n]: [] for n in todo}
        room = ev.cache_bytes
        for _, bt, n, last in ev.sweep(todo, layouts, keys, progress, share=0.5, label="bounds: "):
            rows[keys[n]].append(lh.subset_rows(*lh.predicted(last, bt["ids"])))
            size = last.numel() * last.element_size()
            if size <= room:
                room -= size
                states[keys[n]].append(last)
            else:
                states[keys[n]].append(None)
        for n in todo:
            k = keys[n]
            lb = ev.mean([lh.lower_bound(a, zt) for a, zt in rows[k]])
            out_bound[k] = -math.inf if math.isnan(lb) else lb
        ev.stats["bounded"] = ev.stats.get("bounded", 0) + len(todo)
        exact_vals = sorted(v if not math.isnan(v) else math.inf for v in known.values())
        ranked = sorted(todo, key=lambda n: out_bound[keys[n]])
        for i, n in enumerate(ranked):
            k = keys[n]
            kth = exact_vals[keep - 1] if 0 < keep <= len(exact_vals) else (math.inf if keep > 0 else -math.inf)
            if not (out_bound[k] <= kth or (below is not None and out_bound[k] < below)):
                break  # every later spec bounds at least as high: provably not needed
            ev.poll()
            sums = []
            for b, bt in ev.each_batch():
                last = states[k][b]
                if last is None:
                    last = ev.advance(bt, layouts[n], k)
                h, tgt = lh.predicted(last, bt["ids"])
                a, zt = rows[k][b]
                sums.append(lh.assemble(a, zt, lh.complement_rows(h, tgt)))
                states[k][b] = None
            v = ev.mean(sums)
            out_exact[k] = v
            exact_vals.append(v if not math.isnan(v) else math.inf)
            exact_vals.sort()
            if ev.is_plain(layouts[n]):
                ev.memo[k] = v
            if progress is not None:
                progress(0.5 + 0.5 * (i + 1) / len(ranked), f"exact: candidate {i + 1} in bound order")
        ev.stats["layouts"] += sum(1 for n in todo if keys[n] in out_exact)
        ev.stats["bound_eliminated"] = ev.stats.get("bound_eliminated", 0) + \
            sum(1 for n in todo if keys[n] not in out_exact)
    return [(out_exact[k], None) if k in known else (out_exact.get(k), out_bound.get(k)) for k in keys]


__all__ = ["BOUND_VOCAB_SHARE", "bound_vocab_size", "losses_bounded"]
