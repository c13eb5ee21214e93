r"""Per-block redundancy metrics, their streaming accumulator, and the SimDiff fusion.

For block :math:`i` with input hidden states :math:`x_t` and output :math:`y_t` (token :math:`t`,
feature dimension :math:`H`), averaged over the real (non-padding) calibration tokens:

* ``cosine``   = mean_t cos(x_t, y_t)
* ``bi``       = 1 - cosine                       (ShortGPT Block Influence)
* ``angular``  = arccos(cosine) / pi              (angular distance of the block)
* ``mssd``     = mean_{t,d} (y_td - x_td)^2        (mean squared successive difference)
* ``masd``     = mean_{t,d} |y_td - x_td|          (mean absolute successive difference)
* ``mssd_rel`` = mean_t ||y_t - x_t||^2 / ||x_t||^2   (scale-free: hidden-state norms grow with depth)
* ``masd_rel`` = mean_t ||y_t - x_t||_1 / ||x_t||_1

The scale-free variants divide *per token* before averaging: a few tokens (usually the first) carry
"massive activations" thousands of times larger than the rest, and a ratio of global means would be
dominated by them.

SimDiff importance (higher = more important, kept first)::

    simdiff_i = alpha * N(bi)_i + (1 - alpha) * ( beta * N(mssd*)_i + (1 - beta) * N(masd*)_i )

where ``mssd*``/``masd*`` are the scale-free variants (``scale_free=True``, default) or the raw ones,
and ``N`` puts each signal on a comparable [0, 1] scale across the blocks of the model:

* ``norm="rank"`` (default): N(v)_i = (rank of v_i among the L blocks, ties averaged) / (L - 1).
  Immune to the massive-activation outliers that make raw MSSD explode on a few blocks.
* ``norm="robust"``: z = (v - median) / (1.4826 * MAD), clipped to [-3, 3], mapped to [0, 1]. Keeps
  *how much* a block stands out (MSSD's outlier sensitivity) while bounding its weight.

``alpha`` weighs similarity against difference: ``alpha = 1`` is cosine-only (ShortGPT ranking),
``alpha = 0`` difference-only; ``beta`` (default 0.5) splits the difference view between MSSD
(outlier-sensitive: rare, decisive corrections) and MASD (robust average contribution).
``alpha="auto"`` (see ``alpha.auto_alpha``) picks alpha (and, optionally, beta) from a grid by the calibration perplexity of
the pruning each alpha produces; the grid includes alpha = 1, so auto is never worse than
cosine-only on the calibration data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Criteria the planner understands, with the direction that makes "higher = more important".
CRITERIA = {
    "simdiff": "SimDiff fusion of similarity (BI) and difference (MSSD, MASD)",
    "cosine": "cosine similarity of block input/output (high = redundant)",
    "bi": "ShortGPT Block Influence, 1 - cosine",
    "angular": "angular distance arccos(cosine)/pi",
    "mssd": "mean squared successive difference (raw)",
    "masd": "mean absolute successive difference (raw)",
    "mssd_rel": "MSSD divided by mean x^2 (scale-free)",
    "masd_rel": "MASD divided by mean |x| (scale-free)",
    "linear": "linear replaceability: share of the removal error one fitted matrix on the block below cannot "
              "recover (low = repairable; analysis/linear.py)",
}
METRIC_KEYS = ("cosine", "bi", "angular", "mssd", "masd", "mssd_rel", "masd_rel")


class BlockStats:
    """Running sums of the per-block metrics; memory is O(L), independent of token count.

    Observations of a batch go to batch-local sums and are folded in by ``commit()``, so a batch
    interrupted by an out-of-memory retry or a cancel leaves the totals untouched (``rollback()``).
    """

    FIELDS = ("cos", "sq", "ab", "x2", "xa", "sq_rel", "ab_rel", "maxdiff")
    # Per-window sums kept for the bootstrap (``uncertainty.py``): O(L x windows) numbers per field.
    WINDOW_FIELDS = ("cos", "sq", "ab", "x2", "xa", "sq_rel", "ab_rel")

    def __init__(self, num_layers: int, windows: bool = True):
        self.L = num_layers
        self.total = {k: torch.zeros(num_layers, dtype=torch.float64) for k in self.FIELDS}
        self.tokens = 0
        self.keep_windows = windows
        self.window_sums: list[torch.Tensor] = []  # per committed batch: (fields, L, B) float64
        self.window_tokens: list[torch.Tensor] = []  # per committed batch: (B,) token counts
        self._batch: dict[str, list] = {}
        self._batch_tokens = 0
        self.rollback()

    def rollback(self) -> None:
        self._batch = {k: [None] * self.L for k in self.FIELDS}
        self._win: list = [None] * self.L
        self._win_tokens = None
        self._batch_tokens = 0

    @torch.no_grad()
    def observe(self, i: int, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        # Hot path (runs once per block per batch): a handful of reductions over x, y and
        # d = y - x, with no per-op float copies of the (B, S, H) activations. Each
        # reduction reads its input once and writes only a (B, S) result; cos(x, y) comes
        # from the polarisation identity x.y = (|x|^2 + |y|^2 - |d|^2) / 2, so no x * y product
        # is materialised either. Low-precision activations are upcast inside the reductions.
        f32 = torch.float32
        H = x.shape[-1]
        if x.dtype == f32 and y.dtype == f32:
            d = y - x  # (B, S, H): the only full-size temporary
        else:
            d = y.to(f32, copy=True)
            d.sub_(x)
        vn = torch.linalg.vector_norm
        x_n2 = vn(x, 2, -1, dtype=f32)  # (B, S)
        y_n2 = vn(y, 2, -1, dtype=f32)
        d_n2 = vn(d, 2, -1)
        # p=1 / p=inf norms are several times slower than abs + sum/amax on CPU (measured), and d is
        # our own temporary, so take its absolute value in place.
        x_l1 = x.abs().sum(-1, dtype=f32)
        d.abs_()
        d_l1 = d.sum(-1)
        d_inf = d.amax(-1)
        del d
        xx, yy, dd = x_n2 * x_n2, y_n2 * y_n2, d_n2 * d_n2
        cos = (0.5 * (xx + yy - dd) / (x_n2 * y_n2).clamp_min(1e-8)).clamp(-1.0, 1.0)
        sq, ab = dd / H, d_l1 / H
        x2, xa = xx / H, x_l1 / H
        per_tok = {
            "cos": cos, "sq": sq, "ab": ab, "x2": x2, "xa": xa,
            "sq_rel": sq / x2.clamp_min(1e-12), "ab_rel": ab / xa.clamp_min(1e-12),
        }
        if mask is not None:
            m = mask.to(device=cos.device, dtype=f32)
            sums = {k: (v * m).sum() for k, v in per_tok.items()}
            maxdiff = (d_inf * m).max()
            if i == 0:
                self._batch_tokens = int(m.sum().item())
                if self.keep_windows:
                    self._win_tokens = m.sum(-1)
        else:
            sums = {k: v.sum() for k, v in per_tok.items()}
            maxdiff = d_inf.max()
            if i == 0:
                self._batch_tokens = cos.numel()
                if self.keep_windows:
                    self._win_tokens = torch.full((cos.shape[0],), float(cos.shape[-1]), device=cos.device)
        if self.keep_windows:  # (fields, B): one sum per calibration window, stays on the device until commit
            self._win[i] = torch.stack([(per_tok[k] * m if mask is not None else per_tok[k]).sum(-1)
                                        for k in self.WINDOW_FIELDS])
        # Keep the sums as (device) tensors: no host sync per block, which keeps GPU overhead low.
        for k, v in sums.items():
            self._batch[k][i] = v
        self._batch["maxdiff"][i] = maxdiff

    def commit(self) -> None:
        for k in self.FIELDS:
            vals = [v if v is not None else torch.tensor(0.0) for v in self._batch[k]]
            t = torch.stack([v.double().cpu() for v in vals])
            if k == "maxdiff":
                self.total[k] = torch.maximum(self.total[k], t)
            else:
                self.total[k] += t
        self.tokens += self._batch_tokens
        if self.keep_windows and self._win_tokens is not None:
            B = self._win_tokens.shape[0]
            wins = [w.double().cpu() if w is not None else torch.zeros(len(self.WINDOW_FIELDS), B, dtype=torch.float64)
                    for w in self._win]
            self.window_sums.append(torch.stack(wins, dim=1))  # (fields, L, B)
            self.window_tokens.append(self._win_tokens.double().cpu())
        self.rollback()

    def windows(self) -> dict:
        """Per-window sums as plain lists: ``{"tokens": [N], field: [L][N], ...}`` (empty if not kept)."""
        if not self.window_sums:
            return {}
        sums = torch.cat(self.window_sums, dim=2)  # (fields, L, N)
        out = {"tokens": torch.cat(self.window_tokens).tolist()}
        for f, k in enumerate(self.WINDOW_FIELDS):
            out[k] = sums[f].tolist()
        return out

    def absorb(self, other: "BlockStats") -> None:
        """Fold a committed accumulator of later windows into this one (streamed scoring, batch order)."""
        for k in self.FIELDS:
            self.total[k] = torch.maximum(self.total[k], other.total[k]) if k == "maxdiff" \
                else self.total[k] + other.total[k]
        self.tokens += other.tokens
        self.window_sums.extend(other.window_sums)
        self.window_tokens.extend(other.window_tokens)

    def layers(self) -> list[dict]:
        n = max(self.tokens, 1)
        out = []
        for i in range(self.L):
            cos = float(self.total["cos"][i] / n)
            mssd = float(self.total["sq"][i] / n)
            masd = float(self.total["ab"][i] / n)
            x2 = float(self.total["x2"][i] / n)
            c = min(1.0, max(-1.0, cos))
            out.append({
                "index": i,
                "cosine": cos,
                "bi": 1.0 - cos,
                "angular": math.acos(c) / math.pi,
                "mssd": mssd,
                "masd": masd,
                "mssd_rel": float(self.total["sq_rel"][i] / n),
                "masd_rel": float(self.total["ab_rel"][i] / n),
                "max_abs_diff": float(self.total["maxdiff"][i]),
                "input_rms": math.sqrt(x2),
            })
        return out


def normalise(values, norm: str = "rank") -> np.ndarray:
    """Map one signal over the L blocks onto [0, 1] (see the module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size <= 1:
        return np.zeros_like(v)
    if norm == "rank":
        order = v.argsort(kind="stable")
        ranks = np.empty_like(v)
        ranks[order] = np.arange(v.size, dtype=np.float64)
        for val in np.unique(v):  # average the ranks of ties
            idx = v == val
            if idx.sum() > 1:
                ranks[idx] = ranks[idx].mean()
        return ranks / (v.size - 1)
    if norm == "robust":
        med = np.median(v)
        mad = 1.4826 * np.median(np.abs(v - med))
        if mad <= 0:
            mad = v.std() or 1.0
        z = np.clip((v - med) / mad, -3.0, 3.0)
        return (z + 3.0) / 6.0
    raise ValueError(f"unknown normalisation '{norm}' (rank or robust)")


def simdiff_importance(layers: list[dict], alpha: float = 0.5, beta: float = 0.5,
                       norm: str = "rank", scale_free: bool = True) -> np.ndarray:
    """The fused SimDiff importance of each block (higher = keep); formula in the module docstring."""
    if not (0.0 <= alpha <= 1.0) or not (0.0 <= beta <= 1.0):
        raise ValueError("alpha and beta must lie in [0, 1]")
    suffix = "_rel" if scale_free else ""
    sim = normalise([l["bi"] for l in layers], norm)
    d_sq = normalise([l["mssd" + suffix] for l in layers], norm)
    d_ab = normalise([l["masd" + suffix] for l in layers], norm)
    return alpha * sim + (1.0 - alpha) * (beta * d_sq + (1.0 - beta) * d_ab)


def linear_importance(layers: list[dict]) -> np.ndarray:
    """The ``linear`` criterion: each block's linear replaceability (NaN where undefined: block 0, which
    has no block below to repair from, is never chosen). Raises SimDiffError when the scores have none."""
    from ..common.errors import SimDiffError

    vals = [l.get("linear") for l in layers]
    if all(v is None for v in vals):
        raise SimDiffError("these scores have no linear-replaceability curve (scored before it existed, with "
                           "linear=False, or refused for this model: see meta.linear.reason); score again")
    return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)


def importance(layers: list[dict], criterion: str, alpha: float = 0.5, beta: float = 0.5,
               norm: str = "rank", scale_free: bool = True) -> np.ndarray:
    """Importance vector for any criterion: the planner removes the lowest entries."""
    if criterion == "simdiff":
        return simdiff_importance(layers, alpha, beta, norm, scale_free)
    if criterion == "cosine":
        return -np.array([l["cosine"] for l in layers])  # similar in/out = redundant
    if criterion in ("bi", "angular", "mssd", "masd", "mssd_rel", "masd_rel"):
        return np.array([l[criterion] for l in layers], dtype=np.float64)
    if criterion == "linear":
        return linear_importance(layers)
    raise ValueError(f"unknown criterion '{criterion}'; choose from {', '.join(CRITERIA)}")
