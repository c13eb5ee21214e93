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
"""

from __future__ import annotations

import torch

RIDGE = 1e-9


class SpanAccumulator:
    """Running sums ``MᵀM``, ``MᵀY``, ``‖Y‖²`` (float64) for one span's fit ``min ‖M T − Y‖²``."""

    def __init__(self, d: int, diagonal: bool = False, device: torch.device | str = "cpu"):
        self.d = int(d)
        self.diagonal = bool(diagonal)
        shape = (self.d,) if diagonal else (self.d, self.d)
        self.MtM = torch.zeros(shape, dtype=torch.float64, device=device)
        self.MtY = torch.zeros(shape, dtype=torch.float64, device=device)
        self.trMtM = 0.0  # tr(MᵀM), tr(MᵀY), ‖Y‖² as Python floats (the residual needs them at T = I)
        self.trMtY = 0.0
        self.YtY = 0.0
        self.tokens = 0

    def add(self, M: torch.Tensor, Y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add one batch: ``M``, ``Y`` of shape (..., d); ``mask`` (...,) selects the tokens that count."""
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
        if other.d != self.d or other.diagonal != self.diagonal:
            raise ValueError("accumulators of different shapes")
        self.MtM += other.MtM.to(self.MtM.device)
        self.MtY += other.MtY.to(self.MtY.device)
        self.trMtM += other.trMtM
        self.trMtY += other.trMtY
        self.YtY += other.YtY
        self.tokens += other.tokens

    def solve(self) -> torch.Tensor:
        """The fitted map: ``T`` (d, d) or, ``diagonal``, the per-channel scale ``t`` (d,), float64."""
        if self.tokens == 0:
            raise ValueError("no tokens accumulated")
        lam = RIDGE * max(self.trMtM, 1e-300) / self.d
        if self.diagonal:
            return (self.MtY + lam) / (self.MtM + lam)
        eye = torch.eye(self.d, dtype=torch.float64, device=self.MtM.device)
        return torch.linalg.solve(self.MtM + lam * eye, self.MtY + lam * eye)

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
