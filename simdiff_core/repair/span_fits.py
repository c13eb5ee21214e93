"""Every removed span's dense-fit repair from one capture of the dense model: what a repair-aware search needs.

    from simdiff_core.repair.span_fits import DenseSpanFits
    fits = DenseSpanFits(lm, fit_ids, method="lstsq")   # one dense forward over the fit windows (lm: never mutated)
    T, before, after = fits.solve(12, 18)              # the map of the removed span [12, 18) and its fit residuals
    blk = fits.folded_block(12, 18)                    # block 11 with T folded into its down projection (memoised)
    rep = fits.repair([3, 12, 13, 14])                 # the Repair that fit_repair(..., fit="dense") returns

Why: with the dense fit (``fit_repair(fit="dense")``, the default) the map of a removed span ``[a, b)``
depends only on the *dense* model's activations on the fit windows — block ``a-1``'s MLP output ``M``,
its output ``h_a`` (so ``R = h_a − M``) and ``h_b`` — never on which other spans a plan removes. A
search that scores hundreds of removal sets after repair therefore needs one capture pass, not one
fit per set: a span's sums ``MᵀM`` and ``MᵀY`` (``Y = h_b − R``) are formed from the stored
activations the first time a set contains that span, solved once, and its folded block is reused by
every later set (``evaluation/repaired_objective.py``).

Same numbers as ``fit_repair``: the same products over the same tokens in float64 (summed in other
chunks: equal up to float64 round-off), the same ridge towards ``I`` and the same never-worse-than-
``T = I`` rule (``accumulate.solve_span``), the same fold (``repair.folded_copy``). Tested against
``fit_repair`` in tests/repair/test_span_fits.py.

Cost. Capture: one forward of the base model over the fit windows. Memory: every block's output and
every fold site's MLP output for every fit token, in the model's dtype, on the CPU:
``(2L − 1)·N·S·d`` values — SmolLM2-135M (L = 30, d = 576), 16 x 256 windows, float32: 0.55 GB;
a 32-block d = 4096 model: 4.2 GB (``max_mb`` refuses more, default 2048 MB). Per new span: ``MᵀY``
(``2·n·d²`` float64 flops; ``MᵀM`` is formed once per fold block and shared by its spans), one
``d x d`` solve; per memoised folded block one copy of the down projection's weight (3.5 MB on
SmolLM2, at most one per span a search touches).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..analysis.hooks import block_io, hook_pass
from ..analysis.score import auto_batch_size, forward_base
from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..models.blocks import find_block_path, get_attr_path
from ..models.load import LoadedModel
from ..pruning.prune import is_dispatched
from .accumulate import SpanAccumulator, check_fit_tokens, cv_record, hidden_size, new_accumulator, solve_span
from .repair import Repair, batch_ranges, folded_copy, removed_spans, replace_path, span_records
from .sites import RepairRefused, family_of, fold_note, refusal, repair_site

DEFAULT_MAX_MB = 2048
CHUNK_ROWS = 8192  # tokens per float64 product (bounds the float64 temporaries: 3 x 38 MB at d = 576)


class DenseSpanFits:
    """The dense-fit repair of any removed span of ``model``, from one capture of its activations."""

    def __init__(self, model, windows: torch.Tensor, method: str = "lstsq", batch_size: int | None = None,
                 progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                 max_mb: float = DEFAULT_MAX_MB, calibration: dict | None = None):
        if method not in ("lstsq", "ridge", "rescale"):
            raise SimDiffError(f"unknown span repair method '{method}': choose lstsq, ridge or rescale")
        m = model.model if isinstance(model, LoadedModel) else model
        why = refusal(m, method)
        if why:
            raise RepairRefused(why)
        if is_dispatched(m):
            raise RepairRefused("repair does not support accelerate-dispatched models (--device-map): load the model "
                                "on one device")
        if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[0] == 0:
            raise SimDiffError("repair fit windows must be a non-empty (N, S) tensor of token ids")
        self.method = method
        self.path = model.block_path if isinstance(model, LoadedModel) else find_block_path(m)
        self.blocks = list(get_attr_path(m, self.path))
        self.L = L = len(self.blocks)
        if L < 2:
            raise SimDiffError("a span repair needs at least 2 blocks")
        self.family = family_of(m)
        # the fold site of every block that can sit below a span (block L-1 never does)
        self.sites = {j: repair_site(self.blocks[j], self.family, method) for j in range(L - 1)}
        N, S = windows.shape
        p = next(m.parameters())
        d = hidden_size(m)
        itemsize = p.element_size() if p.dtype.is_floating_point else 4
        if d is not None:
            need = (2 * L - 1) * N * S * d * itemsize / 2 ** 20
            if need > max_mb:
                raise SimDiffError(f"the repair-aware objective stores the dense activations of every block on the fit "
                                   f"windows: {need:.0f} MB for {N} x {S} tokens (limit {max_mb:.0f} MB); use fewer or "
                                   "shorter fit windows")
        check_fit_tokens(method, int(N * S), d)
        self.S = int(S)
        self.calibration = dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(N * S))
        t0 = time.perf_counter()
        self.out, self.M = self._capture(m, windows, batch_size or auto_batch_size(p.device, S), progress, should_stop)
        self.capture_seconds = time.perf_counter() - t0
        self.d = int(self.out[0].shape[-1])
        self.tokens = int(self.out[0].shape[0])
        self._gram: dict[int, list] = {}                # fold block -> [MᵀM] (ridge: + the even windows'), float64
        self._stats: dict[tuple[int, int], dict] = {}   # span -> fit residuals
        self._folded: dict[tuple[int, int], nn.Module] = {}
        self._folded_ids: set[int] = set()  # ids of the blocks in _folded: alive as long as self, so stable
        self.stats = {"solves": 0, "fit_seconds": 0.0}

    # ------------------------------------------------------------------ capture
    def _capture(self, m, windows, bs, progress, should_stop):
        L, blocks = self.L, self.blocks
        cur_out: dict[int, torch.Tensor] = {}
        cur_M: dict[int, torch.Tensor] = {}
        post = {}
        for i in range(L):
            def on_block(module, args, kwargs, output, _i=i):
                cur_out[_i] = block_io(args, kwargs, output)[1]
            post[blocks[i]] = on_block
        for j, site in self.sites.items():
            def on_site(module, args, kwargs, output, _j=j, _s=site.scale):
                y = output[0] if isinstance(output, (tuple, list)) else output
                cur_M[_j] = y * _s if _s != 1.0 else y
            post[blocks[j].get_submodule(site.path)] = on_site
        out: list[torch.Tensor] = []  # per block: (N·S, d), filled batch by batch (no second copy)
        M: list[torch.Tensor] = []
        device = next(m.parameters()).device
        N, S = windows.shape
        row = 0
        with torch.inference_mode(), hook_pass(post=post, name="span-fits"):
            for start, ids in batch_ranges(windows, bs, device):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                cur_out.clear(), cur_M.clear()
                forward_base(m, ids)
                n = ids.shape[0] * S
                for i in range(L):
                    h = cur_out[i].reshape(n, -1)
                    if not out:
                        out = [torch.empty((N * S, h.shape[-1]), dtype=h.dtype) for _ in range(L)]
                        M = [torch.empty((N * S, h.shape[-1]), dtype=h.dtype) for _ in range(L - 1)]
                    out[i][row:row + n] = h
                for j in range(L - 1):
                    M[j][row:row + n] = cur_M[j].reshape(n, -1)  # OPT's MLP runs on (B·S, d)
                row += n
                if progress is not None:
                    progress(min(1.0, (start + ids.shape[0]) / N),
                             f"repair capture: windows {start + ids.shape[0]}/{N}")
        return out, M

    # ------------------------------------------------------------------ fits
    def _check_span(self, a: int, b: int) -> None:
        if not (1 <= a < b <= self.L):
            raise SimDiffError(f"span [{a}, {b}) cannot be repaired: need 1 <= a < b <= {self.L}")

    def _sums(self, a: int, b: int) -> SpanAccumulator:
        """The span's least-squares sums, as ``fit_repair``'s accumulator holds them after its pass."""
        j, diagonal = a - 1, self.method == "rescale"
        M, h_a, h_b = self.M[j], self.out[a - 1], self.out[b - 1]
        acc = new_accumulator(self.method, self.d)
        parts = [acc] if acc.even is None else [acc, acc.even]  # ridge: the even-numbered windows' sums too
        grams = self._gram.get(j)
        for s in range(0, self.tokens, CHUNK_ROWS):
            Mc = M[s:s + CHUNK_ROWS].double()
            Y = h_b[s:s + CHUNK_ROWS].double() - h_a[s:s + CHUNK_ROWS].double() + Mc  # Y = h_b − R, R = h_a − M
            rows = [(Mc, Y)]
            if acc.even is not None:  # rows are window-major: window w is rows [w·S, (w+1)·S)
                keep = (torch.arange(s, s + Mc.shape[0]) // self.S) % 2 == 0
                rows.append((Mc[keep], Y[keep]))
            for part, (Mp, Yp) in zip(parts, rows):
                if diagonal:
                    part.MtY += (Mp * Yp).sum(0)
                    if grams is None:
                        part.MtM += (Mp * Mp).sum(0)
                else:
                    part.MtY += Mp.T @ Yp
                    if grams is None:
                        part.MtM += Mp.T @ Mp
                part.trMtY += float((Mp * Yp).sum())
                part.YtY += float((Yp * Yp).sum())
                part.tokens += int(Mp.shape[0])
        if grams is None:
            grams = self._gram[j] = [p.MtM.clone() for p in parts]
        else:
            for p, g in zip(parts, grams):
                p.MtM.copy_(g)
        for p, g in zip(parts, grams):
            p.trMtM = float(g.sum()) if diagonal else float(torch.diagonal(g).sum())
        acc.windows = self.tokens // self.S
        return acc

    def solve(self, a: int, b: int) -> tuple[torch.Tensor, float, float]:
        """``(T, residual before, residual after)`` of the removed span ``[a, b)`` (``a >= 1``): ``T``
        (d, d) float64 for lstsq, the per-channel scale (d,) for rescale. Solved again on every call (a
        d x d map per span would cost more memory than the fold it makes; ``folded_block`` memoises that)."""
        self._check_span(a, b)
        t0 = time.perf_counter()
        acc = self._sums(a, b)
        T, before, after = solve_span(acc)
        self._stats[(a, b)] = {"residual_before": before, "residual_after": after,
                               "ratio": (after / before) if before > 0 else 1.0, **cv_record(acc)}
        self.stats["solves"] += 1
        self.stats["fit_seconds"] += time.perf_counter() - t0
        return T, before, after

    def folded_block(self, a: int, b: int) -> nn.Module:
        """Block ``a − 1`` with the span's map folded into its fold site: a shallow copy sharing every
        other module and tensor with the dense block (memoised: one object per span for this object's
        lifetime, so its identity is a stable cache key)."""
        blk = self._folded.get((a, b))
        if blk is None:
            T, _, _ = self.solve(a, b)
            site = self.sites[a - 1]
            blk = replace_path(self.blocks[a - 1], site.path, lambda mod: folded_copy(site, mod, T))
            self._folded[(a, b)] = blk
            self._folded_ids.add(id(blk))
        return blk

    @property
    def spans_folded(self) -> int:
        """How many spans have a memoised folded block (one down-projection copy each)."""
        return len(self._folded)

    def is_folded(self, module) -> bool:
        """True when ``module`` is one of the folded blocks this object made (and keeps alive)."""
        return id(module) in self._folded_ids

    def span_stats(self, a: int, b: int) -> dict:
        """``{"residual_before", "residual_after", "ratio"}`` of a span (fitted on first use)."""
        if (a, b) not in self._stats:
            self.solve(a, b)
        return dict(self._stats[(a, b)])

    def repair(self, removed_layers, calibration: dict | None = None) -> Repair:
        """The ``Repair`` (record and maps) of removing ``removed_layers``: what ``fit_repair(model,
        removed_layers, windows, method, fit="dense")`` returns, without another pass."""
        t0 = time.perf_counter()
        removed = sorted({int(i) for i in removed_layers})
        if len(removed) >= self.L:
            raise SimDiffError("cannot repair a model with every block removed")
        calib = dict(self.calibration, **(calibration or {}))
        rep = Repair(method=self.method, num_layers=self.L, removed_layers=removed, family=self.family,
                     calibration=calib, fit="dense")
        rep.spans = records = span_records(removed_spans(removed, self.L))
        used = []
        for rec in records:
            if "fold_block" not in rec:
                continue
            a, b = rec["start"], rec["end"]
            T, before, after = self.solve(a, b)
            site = self.sites[a - 1]
            used.append(site)
            rep.maps[a - 1] = T
            rec.update(site=f"{self.path}.{a - 1}.{site.path}", fold=site.fold, status="repaired", tokens=self.tokens,
                       residual_before=before, residual_after=after, ratio=(after / before) if before > 0 else 1.0,
                       **{k: v for k, v in self._stats[(a, b)].items() if k == "ridge"})
        rep.note = fold_note(self.family, used)
        rep.seconds = time.perf_counter() - t0
        return rep
