"""The least-squares fit of one removed span, as running sums (memory bounded, batch by batch).

    from simdiff_core.repair.accumulate import SpanAccumulator
    acc = SpanAccumulator(d)                 # d = hidden size
    for M, Y in batches:                     # M: block a-1's MLP output, Y = h_b - R, both (..., d)
        acc.add(M, Y)
    T = acc.solve()                          # (d, d) float64: argmin ||M T - Y||^2
    acc.residual(T), acc.residual()          # fit residual after / before (T = I, the unrepaired model)

What: for a removed span ``[a, b)`` block ``a-1`` ends with ``h_a = R + M``; the repaired model
computes ``R + M T`` where the dense one reached ``h_b``. The normal equations need only
``MᵀM`` and ``MᵀY`` (``Y = h_b - R``), so those are summed in float64 per batch and solved once.
``diagonal=True`` keeps only their diagonals (a per-channel scale ``t``: ``rescale``).

Why float64: ``MᵀM`` sums thousands of outer products of activations whose channels differ by
orders of magnitude (the attention-sink channels); float32 sums lose the small channels.

The solve is ridge-regularised *towards the identity* with a tiny ``λ = 1e-9·tr(MᵀM)/d``:
``(MᵀM + λI) T = MᵀY + λI``. It changes a well-posed fit by ~1e-9 relative, keeps a rank-deficient
one (fewer tokens than channels) near the unrepaired model instead of an arbitrary minimum-norm map,
and keeps the guarantee that the residual never exceeds the unrepaired one (at ``T = I`` the penalty
is zero).

Cost: two ``d x d`` float64 matrices per span (8 MB at d = 576, 268 MB at d = 4096; ``diagonal``:
two vectors), ``2·n·d²`` flops per batch of ``n`` tokens, one ``d x d`` solve.

``cv=True`` (the ``ridge`` repair): the ridge towards I gets a strength chosen on the calibration text
itself. Why: the plain fit has ``d²`` free numbers; with too few tokens it reproduces the calibration
text and wrecks every other text (SmolLM2, d = 576, 8/30 removed, WikiText-2 test: pruned 74, plain
lstsq fitted on 512 tokens 7e6, on 1152 tokens 182, on 4096 tokens 45; docs/repair.md). The windows
are split by parity into two folds (even-numbered windows, odd ones; a window never straddles), a
grid of strengths ``λ = s·tr(MᵀM)/d`` is fitted on each fold and scored by its residual on the
other (two-fold cross-validation), and the ``s`` with the least held-out residual is solved on all
tokens. ``s = ∞`` (``T = I``, the unrepaired model) is in the grid, so where no fit generalises the
repair leaves the span alone. Per ``s`` the held-out residual is ``O(d²)`` from one eigendecomposition
per fold (``MᵀM_A = QΛQᵀ``, ``T − I = Q·diag(1/(Λ+λ))·Qᵀ(MᵀY_A − MᵀM_A)``). Cost: a second pair of
sums (the even fold's), per fold one ``eigh`` and five ``d x d`` products.
"""

from __future__ import annotations

import torch
from torch import nn

from ..common.errors import SimDiffError
from ..models.blocks import text_config

RIDGE = 1e-9
# the cross-validated strengths s (λ = s·tr(MᵀM)/d; 0 is the plain fit, inf the unrepaired T = I)
CV_GRID = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, float("inf"))


class SpanAccumulator:
    """Running sums ``MᵀM``, ``MᵀY``, ``‖Y‖²`` (float64) for one span's fit ``min ‖M T − Y‖²``."""

    def __init__(self, d: int, diagonal: bool = False, device: torch.device | str = "cpu", cv: bool = False):
        self.d = int(d)
        self.diagonal = bool(diagonal)
        if cv and diagonal:
            raise ValueError("cross-validated ridge applies to the full map, not the per-channel scale")
        # cv: the even-numbered windows' sums as well (the odd fold is the total minus these)
        self.even = SpanAccumulator(d, device=device) if cv else None
        self.windows = 0
        self.cv: dict | None = None  # after solve(): the chosen strength and the held-out residual per s
        shape = (self.d,) if diagonal else (self.d, self.d)
        self.MtM = torch.zeros(shape, dtype=torch.float64, device=device)
        self.MtY = torch.zeros(shape, dtype=torch.float64, device=device)
        self.trMtM = 0.0  # tr(MᵀM), tr(MᵀY), ‖Y‖² as Python floats (the residual needs them at T = I)
        self.trMtY = 0.0
        self.YtY = 0.0
        self.tokens = 0

    def add(self, M: torch.Tensor, Y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add one batch: ``M``, ``Y`` of shape (..., d); ``mask`` (...,) selects the tokens that count.
        With ``cv``, a (B, S, d) batch is B windows (numbered on from the previous batches); anything
        flatter counts as one window."""
        self.cv = None  # new tokens: a strength chosen before no longer holds
        if self.even is not None:
            B = M.shape[0] if M.dim() >= 3 else 1
            w = [k for k in range(B) if (self.windows + k) % 2 == 0]
            if w:
                if B == 1:
                    self.even.add(M, Y, mask)
                else:
                    self.even.add(M[w], Y[w], None if mask is None else mask[w])
            self.windows += B
        M = M.reshape(-1, self.d).to(self.MtM.device, torch.float64)
        Y = Y.reshape(-1, self.d).to(self.MtM.device, torch.float64)
        if mask is not None:
            keep = mask.reshape(-1).to(M.device).bool()
            M, Y = M[keep], Y[keep]
        if self.diagonal:
            mm, my = (M * M).sum(0), (M * Y).sum(0)
            self.MtM += mm
            self.MtY += my
            self.trMtM += float(mm.sum())
            self.trMtY += float(my.sum())
        else:
            self.MtM += M.T @ M
            self.MtY += M.T @ Y
            self.trMtM += float((M * M).sum())
            self.trMtY += float((M * Y).sum())
        self.YtY += float((Y * Y).sum())
        self.tokens += int(M.shape[0])

    def merge(self, other: "SpanAccumulator") -> None:
        """Add another accumulator's sums (batches seen elsewhere, e.g. another device or process)."""
        if other.d != self.d or other.diagonal != self.diagonal or (self.even is None) != (other.even is None):
            raise ValueError("accumulators of different shapes")
        self.MtM += other.MtM.to(self.MtM.device)
        self.MtY += other.MtY.to(self.MtY.device)
        self.trMtM += other.trMtM
        self.trMtY += other.trMtY
        self.YtY += other.YtY
        self.tokens += other.tokens
        self.cv = None
        if self.even is not None:  # window numbering restarts in ``other``: its parity is kept as is
            self.even.merge(other.even)
            self.windows += other.windows

    def solve(self) -> torch.Tensor:
        """The fitted map: ``T`` (d, d) or, ``diagonal``, the per-channel scale ``t`` (d,), float64."""
        if self.tokens == 0:
            raise ValueError("no tokens accumulated")
        s = RIDGE
        if self.even is not None:
            s = self._choose_strength()
            if s == float("inf"):
                return torch.eye(self.d, dtype=torch.float64, device=self.MtM.device)
        lam = max(s, RIDGE) * max(self.trMtM, 1e-300) / self.d
        if self.diagonal:
            return (self.MtY + lam) / (self.MtM + lam)
        eye = torch.eye(self.d, dtype=torch.float64, device=self.MtM.device)
        return torch.linalg.solve(self.MtM + lam * eye, self.MtY + lam * eye)

    def _choose_strength(self) -> float:
        """Two-fold cross-validation over ``CV_GRID`` (module docstring); sets ``self.cv``. Chosen once per
        set of sums (``add``/``merge`` clear it): a second ``solve`` of the same sums reuses the choice."""
        if self.cv is not None:
            return self.cv["strength"]
        A = self.even
        odd = (self.MtM - A.MtM, self.MtY - A.MtY, self.trMtM - A.trMtM, self.trMtY - A.trMtY, self.YtY - A.YtY)
        even = (A.MtM, A.MtY, A.trMtM, A.trMtY, A.YtY)
        if A.tokens == 0 or A.tokens == self.tokens:  # one window: no held-out fold, the plain fit
            self.cv = {"strength": RIDGE, "lambda": RIDGE * self.trMtM / self.d, "held_out": None,
                       "note": "one calibration window: no held-out fold, plain least squares"}
            return RIDGE
        total = torch.zeros(len(CV_GRID), dtype=torch.float64)
        for fit, held in ((even, odd), (odd, even)):
            total += _held_out_residuals(fit, held, self.d)
        k = int(torch.argmin(total))
        s = CV_GRID[k]
        self.cv = {"strength": s, "lambda": (max(s, RIDGE) * self.trMtM / self.d) if s != float("inf") else s,
                   "held_out": {str(g): float(r) for g, r in zip(CV_GRID, total)},
                   "windows": [self.windows - self.windows // 2, self.windows // 2]}
        return s

    def residual(self, T: torch.Tensor | None = None) -> float:
        """``‖M T − Y‖²`` summed over the accumulated tokens; ``T=None`` is the identity (unrepaired).

        From the sums: ``tr(Tᵀ MᵀM T) − 2 tr(Tᵀ MᵀY) + ‖Y‖²`` (clamped at 0 against rounding).
        """
        if T is None:
            r = self.trMtM - 2 * self.trMtY + self.YtY
        elif self.diagonal:
            T = T.to(self.MtM.device, torch.float64)
            r = float((T * T * self.MtM).sum() - 2 * (T * self.MtY).sum()) + self.YtY
        else:
            T = T.to(self.MtM.device, torch.float64)
            r = float((T * (self.MtM @ T)).sum() - 2 * (T * self.MtY).sum()) + self.YtY
        return max(float(r), 0.0)


def _held_out_residuals(fit, held, d: int) -> torch.Tensor:
    """Per strength in ``CV_GRID``: ``‖M_h T − Y_h‖²`` on the held fold for ``T`` fitted on the other.

    ``fit``/``held``: (MᵀM, MᵀY, tr MᵀM, tr MᵀY, ‖Y‖²). With ``C = MᵀM_f = QΛQᵀ``, ``G = MᵀY_f − C``:
    ``T − I = D = Q S P``, ``S = diag(1/(Λ+λ))``, ``P = QᵀG``; on the held fold (``C_h``, ``G_h = MᵀY_h − C_h``)
    ``r(T) = r(I) − 2 tr(Dᵀ G_h) + tr(Dᵀ C_h D)`` = ``r(I) − 2 s·rowsum(P∘QᵀG_h) + sᵀ((QᵀC_hQ)∘(PPᵀ)) s``.
    """
    C, E, trC = fit[0], fit[1], fit[2]
    Ch, Eh = held[0], held[1]
    r_identity = held[2] - 2 * held[3] + held[4]
    lam_unit = max(trC, 1e-300) / d
    evals, Q = torch.linalg.eigh(C)
    evals = evals.clamp_min(0.0)
    P = Q.T @ (E - C)
    lin = (P * (Q.T @ (Eh - Ch))).sum(1)           # (d,)
    H = (Q.T @ Ch @ Q) * (P @ P.T)                  # (d, d), symmetric
    out = []
    for s in CV_GRID:
        if s == float("inf"):
            out.append(r_identity)
            continue
        w = 1.0 / (evals + max(s, RIDGE) * lam_unit)
        out.append(float(r_identity - 2 * (w * lin).sum() + w @ H @ w))
    return torch.tensor(out, dtype=torch.float64)


def new_accumulator(method: str, d: int, device="cpu") -> SpanAccumulator:
    """The sums one span's fit of ``method`` needs (``rescale``: diagonal; ``ridge``: with the even fold)."""
    return SpanAccumulator(d, diagonal=(method == "rescale"), device=device, cv=(method == "ridge"))


def check_fit_tokens(method: str, tokens: int, d: int | None) -> None:
    """One line, before any pass: ``lstsq`` with no more fit tokens than channels is underdetermined (the
    map reproduces the calibration text exactly and wrecks every other text)."""
    if method == "lstsq" and d and tokens <= d:
        raise SimDiffError(f"repair 'lstsq' needs more fit tokens than the hidden size ({tokens} <= {d}): with fewer "
                           "it reproduces the calibration text and wrecks other text; calibrate on more tokens or "
                           "use the 'ridge' repair")


def hidden_size(m: nn.Module) -> int | None:
    return int(getattr(text_config(m.config), "hidden_size", 0) or 0) or None


def cv_record(acc: SpanAccumulator) -> dict:
    """A span record's ``ridge`` entry (the chosen strength and held-out residual per strength), if any.
    Plain JSON: where the choice is ``T = I`` (strength ∞) ``strength`` and ``lambda`` are null and
    ``kept_identity`` is true (``Infinity`` is no JSON number; jq and browsers reject it)."""
    if acc.cv is None:
        return {}
    rec = dict(acc.cv)
    rec["kept_identity"] = rec["strength"] == float("inf")
    if rec["kept_identity"]:
        rec["strength"] = rec["lambda"] = None
    return {"ridge": rec}


def solve_span(acc: SpanAccumulator) -> tuple[torch.Tensor, float, float]:
    """``(T, residual before, residual after)`` of one span's sums; ``T = I`` where rounding would make
    the solve worse than the unrepaired model (the ridge is towards I, so only rounding can)."""
    T = acc.solve()
    before, after = acc.residual(None), acc.residual(T)
    if not after <= before:
        T = torch.ones(acc.d, dtype=torch.float64) if acc.diagonal else torch.eye(acc.d, dtype=torch.float64)
        after = before
    return T, before, after
