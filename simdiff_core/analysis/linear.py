r"""Linear replaceability: how much of a block's removal error one matrix on the block below recovers.

    from simdiff_core.analysis.score import score_model
    scores = score_model(lm, ids)                   # the single-block curve comes with every scoring pass
    [l["linear"] for l in scores.layers]            # None for block 0 (and where the family is refused)
    from simdiff_core.analysis.linear_spans import span_replaceability
    heat = span_replaceability(lm, ids)             # heat["values"][a][n - 1]: removing [a, a + n), own pass

What: removing the span ``[a, b)`` leaves the residual stream at ``h_a`` where the model had ``h_b``.
Block ``a - 1`` ends with ``h_a = R + M`` (``R``: its post-attention residual, ``M``: what its MLP adds
to the residual). The ReplaceMe repair (arXiv 2505.02819) replaces ``M`` by ``M·T`` with
``T = argmin ‖M·T − (h_b − R)‖²`` over the calibration tokens. The curve is the share of the removal's
error that this cannot recover::

    linear[a, b) = min_T ‖M·T − (h_b − R)‖² / ‖h_b − h_a‖²        (per block i: the span [i, i + 1))

It lies in [0, 1]: ``T = I`` gives exactly ``‖h_a − h_b‖²``. 0: the block below can imitate what the
span did with one matrix; 1: no linear map at that place helps. Cosine says "this block changes
little"; this says "what it changes, the block below can imitate".

How (exact, bounded): write ``T = I + Δ`` and ``D = h_b − h_a``; then ``M·T − (h_b − R) = M·Δ − D`` and
the normal equations need only ``G = MᵀM`` and ``E = MᵀD`` (d × d each) and ``q = ‖D‖²``, summed
over tokens (``MᵀY = E + G`` for the issue's ``Y = h_b − R``: the same fit, centred on the unrepaired
model so the subtraction below loses nothing when the repair recovers little). With ``Δ = G⁺E``::

    residual = q − tr(Eᵀ G⁺ E)          (≥ 0, ≤ q: G⁺ is positive semi-definite)

``G⁺`` is the eigen-pseudo-inverse in float64 (eigenvalues below ``λ_max · PINV_RTOL`` dropped: the
per-batch products are float32 GEMMs, summed in float64, so directions that weak are rounding noise;
dropping one can only raise the ratio, never push it past 1). Where "what the MLP adds" is: the
output of ``post_feedforward_layernorm`` (Gemma 2/3, OLMo 2: a norm after the MLP, so the curve then
measures replaceability by a linear map *after* that norm, not a fold into ``down_proj``), Phi-3's
``resid_mlp_dropout``, GPT-NeoX's ``post_mlp_dropout``, OPT's ``fc2``, otherwise ``mlp``; times
Granite's ``residual_multiplier``. Post-LN blocks (OPT with ``do_layer_norm_before=False``) normalise
the sum, so no such place exists: the curve is None there with the reason in ``meta["linear"]``.

Cost: two (tokens × d) x (d × d) float32 GEMMs per block per batch (about 1/6 of a Llama block's
multiply-adds on CPU), and ``2·L·d²`` float64 accumulators: 160 MB for SmolLM2 (L 30, d 576);
at d = 4096 one block's pair is 268 MB, 8.6 GB for 32 blocks, over the default ``max_mb`` (1024):
the in-memory pass then stores None with the reason, and the block-streamed pass
(``analysis/streaming.py``) holds the accumulators of one block at a time (3 d × d: 400 MB at 4096).
Bands (``uncertainty.py``): per-window sums of the residual *at the full-data fit* and of ``‖D‖²``
need the fitted Δ, so ``score_model`` makes a second forward pass for them when asked (``linear_bands``:
the app's and the CLI's calibration do; the streamed pass keeps what it needs and makes none).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


PINV_RTOL = 1e-7          # relative eigenvalue cut of G's pseudo-inverse (float32 products, see above)
DEFAULT_MAX_MB = 1024     # in-memory accumulator budget (2·L·d² float64); beyond it: None + reason
# Module whose output (times the scale) the block adds to the residual, most specific first.
WRITE_SITES = ("post_feedforward_layernorm", "resid_mlp_dropout", "post_mlp_dropout", "mlp", "fc2")


def write_site(block: nn.Module) -> tuple[nn.Module | None, float, str | None]:
    """``(module, scale, refusal)``: the block adds ``scale * module(...)`` to its residual stream.

    ``refusal`` is a one-line reason (module None) where no such place exists.
    """
    if getattr(block, "do_layer_norm_before", True) is False:
        return None, 1.0, "post-LN blocks (OPT do_layer_norm_before=False) normalise the sum: no additive MLP write"
    for name in WRITE_SITES:
        mod = getattr(block, name, None)
        if isinstance(mod, nn.Module):
            return mod, float(getattr(block, "residual_multiplier", 1.0) or 1.0), None
    return None, 1.0, f"{type(block).__name__} has no known MLP output module ({', '.join(WRITE_SITES)})"


def site_name(block: nn.Module) -> str | None:
    mod, _, _ = write_site(block)
    return None if mod is None else next(n for n, m in block.named_children() if m is mod)


def few_tokens_warning(tokens: int, d: int | None) -> str | None:
    """The fit has d unknowns per output column: with few tokens it is in-sample optimistic (0 at tokens <= d)."""
    if d and tokens < 4 * d:
        return (f"fitted on {tokens} tokens for d = {d} unknowns per output column: in-sample values are optimistic "
                f"(exactly 0 when tokens <= d); calibrate on at least {4 * d} tokens")
    return None


def accumulator_mb(num_layers: int, hidden: int) -> float:
    """Memory of the in-memory pass's accumulators: a float64 G and E per block."""
    return 2 * num_layers * hidden * hidden * 8 / 2**20


def solve(G: torch.Tensor, E: torch.Tensor, q: float, rtol: float = PINV_RTOL) -> tuple[float, torch.Tensor]:
    """``(residual, Δ)`` minimising ``‖MΔ − D‖²`` from ``G = MᵀM``, ``E = MᵀD``, ``q = ‖D‖²`` (float64)."""
    G = G.double()
    E = E.double()
    lam, V = torch.linalg.eigh(0.5 * (G + G.T))
    keep = lam > max(float(lam.max()), 0.0) * rtol
    W = V[:, keep].T @ E                    # (r, d) coordinates of E in G's kept eigenbasis
    inv = 1.0 / lam[keep]
    gain = float((inv[:, None] * W * W).sum())
    delta = V[:, keep] @ (inv[:, None] * W)
    return max(q - gain, 0.0), delta


class LinearAccumulator:
    """Running ``G_{i-1} = Σ MᵀM`` and ``E_i = Σ M_{i-1}ᵀ D_i`` for the single-block spans [i, i + 1).

    Feed it ``observe_write(i, M)`` (block i's MLP write, fired before the block's own output) and
    ``observe_block(i, x, y, mask)``; ``commit()`` after every batch. ``rollback()`` (an interrupted
    batch) marks the totals unusable: the partial batch was already added, and undoing a float sum
    is not exact, so the result says so instead of carrying it (OOM retries are rare).

    With ``deltas`` (the fitted Δ_i of a first pass) it accumulates nothing d × d: it sums, per
    calibration window, the residual ``‖M_{i-1}Δ_i − D_i‖²`` and ``‖D_i‖²`` (``windows()``), the
    bootstrap's inputs.
    """

    def __init__(self, num_layers: int, blocks=None, max_mb: float | None = DEFAULT_MAX_MB, hidden: int | None = None,
                 deltas: dict | None = None):
        self.L = num_layers
        self.G: dict[int, torch.Tensor] = {}
        self.E: dict[int, torch.Tensor] = {}
        self.q = torch.zeros(num_layers, dtype=torch.float64)
        self.tokens = 0
        self.reason: str | None = None
        self.scales: list[float] = [1.0] * num_layers
        self.deltas = deltas
        self._dcache: dict[int, torch.Tensor] = {}
        self.win_num: list[torch.Tensor] = []   # per committed batch: (L, B) float64
        self.win_den: list[torch.Tensor] = []
        self._bnum: dict[int, torch.Tensor] = {}
        self._bden: dict[int, torch.Tensor] = {}
        self._M: dict[int, torch.Tensor] = {}
        self._prev: dict[int, torch.Tensor] = {}
        self._dirty = False
        if blocks is not None:
            for i, b in enumerate(blocks):
                mod, scale, why = write_site(b)
                self.scales[i] = scale
                if mod is None and i < num_layers - 1:
                    self.reason = why
        if self.reason is None and deltas is None and hidden is not None and max_mb is not None \
                and accumulator_mb(num_layers, hidden) > max_mb:
            self.reason = (f"accumulators need {accumulator_mb(num_layers, hidden):.0f} MB (2 x L x d^2 float64) > "
                           f"{max_mb:.0f} MB: score with --stream (one block's at a time) or raise the limit")

    @property
    def active(self) -> bool:
        return self.reason is None

    def observe_write(self, i: int, out: torch.Tensor) -> None:
        if self.active:
            self._M[i] = out

    @torch.no_grad()
    def observe_block(self, i: int, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if not self.active:
            return
        self._dirty = True
        B, d = y.shape[0], y.shape[-1]
        m = None if mask is None else mask.to(device=y.device, dtype=torch.float32).reshape(-1, 1)
        prev = self._prev.pop(i - 1, None)
        if prev is not None:
            prev = prev.to(y.device)  # device maps: block i-1 may live elsewhere
            D = (y.float() - x.float()).reshape(-1, d)  # (B*S, d): the removal's error h_b - h_a
            if m is not None:
                D = D * m
            if self.deltas is None:
                self._add(self.E, i, prev.T @ D)
                self.q[i] += float(D.double().square().sum())
            elif i in self.deltas:
                if i not in self._dcache:
                    self._dcache[i] = self.deltas[i].to(device=D.device, dtype=torch.float32)
                r = prev @ self._dcache[i] - D
                self._bnum[i] = r.square().sum(-1).reshape(B, -1).sum(-1).double().cpu()
                self._bden[i] = D.square().sum(-1).reshape(B, -1).sum(-1).double().cpu()
        if i < self.L - 1:
            M = self._M.pop(i, None)
            if M is None:
                self.reason = f"block {i}'s MLP output was not seen (write sites {', '.join(WRITE_SITES)})"
                return
            Mf = M.reshape(-1, d).float()
            if self.scales[i] != 1.0:
                Mf = Mf * self.scales[i]
            if m is not None:
                Mf = Mf * m
            if self.deltas is None:
                self._add(self.G, i, Mf.T @ Mf)
            self._prev[i] = Mf
        if i == 0:
            self.tokens += int(m.sum()) if m is not None else x.shape[0] * x.shape[1]
            self._B = B

    @staticmethod
    def _add(store: dict, key: int, v: torch.Tensor) -> None:
        if key in store:
            store[key] += v.double()
        else:
            store[key] = v.double()

    def commit(self) -> None:
        if self.deltas is not None and self.active:
            B = self._B
            z = torch.zeros(B, dtype=torch.float64)
            self.win_num.append(torch.stack([self._bnum.get(i, z) for i in range(self.L)]))
            self.win_den.append(torch.stack([self._bden.get(i, z) for i in range(self.L)]))
        self._clear()

    def _clear(self) -> None:
        self._M.clear()
        self._prev.clear()
        self._bnum.clear()
        self._bden.clear()
        self._dirty = False

    def rollback(self) -> None:
        if self._dirty and self.deltas is None:
            self.reason = self.reason or ("an out-of-memory retry interrupted the accumulation: score with a "
                                          "smaller batch size")
        self._clear()

    def windows(self) -> dict:
        """Per-window sums (second pass): ``{"lin_num": [L][N], "lin_den": [L][N]}`` ({} when inactive)."""
        if not self.win_num or not self.active:
            return {}
        return {"lin_num": torch.cat(self.win_num, 1).tolist(), "lin_den": torch.cat(self.win_den, 1).tolist()}

    def finish(self) -> tuple[list, dict, dict]:
        """Per block: the replaceability (None where undefined), the fitted Δ_i, and ``meta``."""
        meta = {"definition": "min_T ||M T - (h_b - R)||^2 / ||h_b - h_a||^2 for the span [i, i+1), M = block i-1's "
                              "MLP write to the residual",
                "pinv_rtol": PINV_RTOL, "tokens": int(self.tokens)}
        vals: list = [None] * self.L
        deltas: dict[int, torch.Tensor] = {}
        if not self.active:
            meta["reason"] = self.reason
            return vals, deltas, meta
        for i in range(1, self.L):
            q = float(self.q[i])
            if i - 1 not in self.G or i not in self.E or q <= 0:
                continue
            res, delta = solve(self.G[i - 1], self.E[i], q)
            vals[i] = res / q
            deltas[i] = delta
        warn = few_tokens_warning(self.tokens, next(iter(self.G.values())).shape[0] if self.G else None)
        if warn:
            meta["warning"] = warn
        return vals, deltas, meta


def write_hooks(blocks, acc_fn: Callable[[int, torch.Tensor], None]) -> dict:
    """Post-hook callbacks (for ``hooks.hook_pass``) giving ``acc_fn(i, M)`` each block's MLP write."""
    return write_hooks_for([write_site(b) for b in blocks], acc_fn)


class StreamedLinear:
    """The single-block curve for the block-major streamed pass (``analysis/streaming.py``).

    There every batch goes through block i before block i + 1 runs, so only the current block's
    accumulators live: ``G_{i-1}``, ``G_i`` (being built) and ``E_i`` — 3 d × d float64 (400 MB at
    d = 4096) — plus, per batch, block i-1's and block i's MLP writes and block i's ``h_b − h_a`` (three
    float32 copies of the calibration activations, which the streamed pass keeps on the device
    anyway). Sums run in batch order, as in the in-memory pass, so the curves agree to float rounding.
    Per-window residuals at the fitted map (the bootstrap's inputs) are computed when a block ends.
    """

    def __init__(self, num_layers: int, blocks, batches: list[tuple[int, int]], windows: bool = True):
        self.L = num_layers
        self.batches = batches
        self.windows_on = windows
        self.sites = [write_site(b) for b in blocks]
        self.reason = next((why for mod, _, why in self.sites[:-1] if mod is None), None)
        N = batches[-1][1] if batches else 0
        self.vals: list = [None] * num_layers
        self.num = torch.zeros(num_layers, N, dtype=torch.float64)
        self.den = torch.zeros(num_layers, N, dtype=torch.float64)
        self.block = -1
        self._last = None
        self.prev_M: dict[int, torch.Tensor] = {}
        self.cur_M: dict[int, torch.Tensor] = {}
        self.D: dict[int, torch.Tensor] = {}
        self.G_prev = self.G_cur = self.E = None
        self.q = 0.0
        self.tokens = 0

    @property
    def active(self) -> bool:
        return self.reason is None

    def write_hooks(self) -> dict:
        return write_hooks_for(self.sites, self._on_write) if self.active else {}

    def _on_write(self, i: int, out: torch.Tensor) -> None:
        self._last = out

    @torch.no_grad()
    def observe(self, b: int, i: int, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> None:
        if not self.active:
            return
        if i != self.block:
            self._end_block()
            self.block = i
        d = y.shape[-1]
        m = None if mask is None else mask.to(device=y.device, dtype=torch.float32).reshape(-1, 1)
        if i > 0 and b in self.prev_M:
            D = (y.float() - x.float()).reshape(-1, d)
            if m is not None:
                D = D * m
            P = self.prev_M[b].to(y.device)
            self.E = _acc(self.E, P.T @ D)
            self.q += float(D.double().square().sum())
            if self.windows_on:
                self.D[b] = D
        if i < self.L - 1:
            if self._last is None:
                self.reason = f"block {i}'s MLP output was not seen (write sites {', '.join(WRITE_SITES)})"
                return
            Mf = self._last.reshape(-1, d).float() * self.sites[i][1]
            self._last = None
            if m is not None:
                Mf = Mf * m
            self.G_cur = _acc(self.G_cur, Mf.T @ Mf)
            self.cur_M[b] = Mf
        if i == 0:
            self.tokens += int(m.sum()) if m is not None else x.shape[0] * x.shape[1]

    def _end_block(self) -> None:
        i = self.block
        if i >= 1 and self.active and self.G_prev is not None and self.E is not None and self.q > 0:
            res, delta = solve(self.G_prev, self.E, self.q)
            self.vals[i] = res / self.q
            if self.windows_on:
                for b, D in self.D.items():
                    s, e = self.batches[b]
                    r = self.prev_M[b].to(D.device) @ delta.to(device=D.device, dtype=torch.float32) - D
                    self.num[i, s:e] = r.square().sum(-1).reshape(e - s, -1).sum(-1).double().cpu()
                    self.den[i, s:e] = D.square().sum(-1).reshape(e - s, -1).sum(-1).double().cpu()
        self.prev_M, self.cur_M, self.D = self.cur_M, {}, {}
        self.G_prev, self.G_cur, self.E, self.q = self.G_cur, None, None, 0.0

    def finish(self) -> tuple[list, dict, dict]:
        """(curve, per-window sums for ``Scores.windows`` ({} if off), ``meta``)."""
        d = None if self.G_prev is None else self.G_prev.shape[0]
        self._end_block()
        d = d or (None if self.G_prev is None else self.G_prev.shape[0])
        self.prev_M, self.G_prev = {}, None
        meta = {"definition": "min_T ||M T - (h_b - R)||^2 / ||h_b - h_a||^2 for the span [i, i+1), M = block i-1's "
                              "MLP write to the residual",
                "pinv_rtol": PINV_RTOL, "tokens": int(self.tokens), "stream": "one block's accumulators at a time"}
        if not self.active:
            meta["reason"] = self.reason
            return [None] * self.L, {}, meta
        wins = {"lin_num": self.num.tolist(), "lin_den": self.den.tolist()} if self.windows_on and self.L > 1 else {}
        warn = few_tokens_warning(self.tokens, d)
        if warn:
            meta["warning"] = warn
        return self.vals, wins, meta


def _acc(total, v: torch.Tensor) -> torch.Tensor:
    return v.double() if total is None else total + v.double()


def write_hooks_for(sites, acc_fn: Callable[[int, torch.Tensor], None]) -> dict:
    post = {}
    for i, (mod, _, _) in enumerate(sites):
        if mod is None:
            continue

        def on_post(module, args, kwargs, output, _i=i):
            acc_fn(_i, output[0] if isinstance(output, (tuple, list)) else output)

        post[mod] = on_post
    return post
