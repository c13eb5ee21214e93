"""The repair fitted on a checkpoint bigger than memory, one decoder block at a time (engine: models/streaming.py).

    from simdiff_core.repair.streaming import stream_fit_repair, stream_fold
    rep, sm = stream_fit_repair("./llama-8b", plan.removed_layers, calib_ids, memory_budget_mb=4000)
    stream_prune("./llama-8b", plan.kept_layers, OUT, transform=stream_fold(rep, sm), transformed=set(rep_sites(rep)))
    # CLI: python -m simdiff_core prune --model ./llama-8b --plan P --out OUT --stream --repair lstsq

The same fit as ``repair.fit_repair(fit="dense")`` (same sites, same ``SpanAccumulator`` sums in
float64, same solve, same "never worse than T = I" guard), but the dense model is streamed: block 0's
inputs are captured once, then block i is loaded, every calibration batch runs through it, and
block i is released. For a span ``[a, b)`` the fold block ``a-1``'s site output ``M`` and its output
``h_a`` are kept (float32, N x S x d each) until block ``b-1`` has produced ``h_b``; then the span's
sums are accumulated, solved at once and freed. Blocks after the last span's end are never read.

Memory beyond one block's weights: per open span 2 x N x S x d float32 activations; while a span is
solved its two d x d float64 sums (268 MB at d = 4096, 8 MB at d = 576) and the solve's copy; each
fitted T is kept (d x d float64, 134 MB at d = 4096) until the export folds it. The fold
(``stream_fold``) reads the one projection it rewrites, in the checkpoint's dtype, folds in float64
exactly as ``apply_repair`` does, and hands the result to the streamed prune.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..models.streaming import StreamedModel, batch_ranges, capture_inputs
from .accumulate import SpanAccumulator, check_fit_tokens, cv_record, hidden_size, new_accumulator, solve_span
from .repair import REPAIR_METHODS, Repair, folded_copy, removed_spans, span_records
from .sites import RepairRefused, family_of, refusal, repair_site


def stream_fit_repair(model_dir: str | Path, removed_layers, windows: torch.Tensor, method: str = "lstsq",
                      memory_budget_mb: float | None = None, device="cpu", dtype="float32",
                      batch_size: int | None = None, progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      calibration: dict | None = None) -> tuple[Repair, StreamedModel]:
    """Fit ``method`` for removing ``removed_layers`` from the checkpoint in ``model_dir``, streamed."""
    if method not in REPAIR_METHODS or method == "none":
        raise SimDiffError(f"streamed repair fits 'lstsq', 'ridge' or 'rescale', got '{method}'")
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[0] == 0:
        raise SimDiffError("repair calibration must be a non-empty (N, S) tensor of token ids")
    t0 = time.perf_counter()
    sm = StreamedModel(model_dir, device, dtype, memory_budget_mb)
    why = refusal(sm.model, method)
    if why:
        raise RepairRefused(why)
    sm.check_budget(head=False)
    L = len(sm.blocks)
    removed = sorted({int(i) for i in removed_layers})
    if len(removed) >= L:
        raise SimDiffError("cannot repair a model with every block removed")
    fam = family_of(sm.model)
    N, S = windows.shape
    check_fit_tokens(method, int(N * S), hidden_size(sm.model))
    rep = Repair(method=method, num_layers=L, removed_layers=removed, family=fam, fit="dense",
                 calibration=dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(N * S)))
    rep.spans = records = span_records(removed_spans(removed, L))
    todo = [(r["start"], r["end"]) for r in records if "fold_block" in r]
    if not todo:
        rep.note = "nothing to repair (only a span starting at block 0)"
        return rep, sm
    sites = {a - 1: repair_site(sm.blocks[a - 1], fam, method) for a, _ in todo}
    bs = batch_size or min(N, 4)
    xs, calls = capture_inputs(sm, windows, None, bs)
    nb = len(xs)
    opened: dict[int, tuple[int, int]] = {a - 1: (a, b) for a, b in todo}   # fold block -> span
    closing: dict[int, tuple[int, int]] = {b - 1: (a, b) for a, b in todo}  # block producing h_b -> span
    held: dict[tuple[int, int], list] = {}  # span -> per batch (M, h_a)
    last = max(b for _, b in todo)
    for i in range(last):
        names = sm.block_names(i)
        sm.load(names, f"block {i}")
        handle, caught = None, {}
        if i in opened:
            site = sites[i]
            mod = sm.blocks[i].get_submodule(site.path)

            def grab(_m, _args, output, _s=site.scale):
                y = output[0] if isinstance(output, (tuple, list)) else output
                caught["M"] = y * _s if _s != 1.0 else y
            handle = mod.register_forward_hook(grab)  # the skeleton belongs to this call alone
        acc = None
        try:
            with torch.inference_mode():
                for bi in range(nb):
                    if should_stop is not None and should_stop():
                        raise Cancelled()
                    args, kwargs = calls[bi][i]
                    out = sm.blocks[i](xs[bi], *args, **kwargs)
                    xs[bi] = out[0] if isinstance(out, (tuple, list)) else out
                    if i in opened:
                        held.setdefault(opened[i], []).append((caught.pop("M").reshape(xs[bi].shape), xs[bi]))
                    if i in closing:
                        span = closing[i]
                        M, h_a = held[span][bi]
                        if acc is None:
                            acc = new_accumulator(method, M.shape[-1])
                        # Y = h_b - R = h_b - h_a + M, in float64 (repair.py's _target)
                        acc.add(M, xs[bi].double() - h_a.double() + M.double())
                    if progress is not None:
                        progress((i * nb + bi + 1) / (last * nb), f"repair fit: block {i + 1}/{last} (streamed)")
        finally:
            if handle is not None:
                handle.remove()
            sm.release(names)
        if i in closing:
            span = closing[i]
            held.pop(span, None)
            _solve(rep, records, span, acc, sites[span[0] - 1], sm.block_path)
            del acc
    rep.seconds = time.perf_counter() - t0
    rep.note = f"{fam}: fitted on the streamed dense model (block by block), folded as in apply_repair"
    return rep, sm


def _solve(rep: Repair, records, span, acc: SpanAccumulator, site, path: str) -> None:
    a, b = span
    T, before, after = solve_span(acc)  # never a map worse than T = I
    rep.maps[a - 1] = T.cpu()
    rec = next(r for r in records if r["start"] == a)
    rec.update(site=f"{path}.{a - 1}.{site.path}", fold=site.fold, status="repaired", tokens=acc.tokens,
               residual_before=before, residual_after=after, ratio=(after / before) if before > 0 else 1.0,
               **cv_record(acc))


def fold_sources(rep: Repair, sm: StreamedModel) -> dict[str, tuple[int, str]]:
    """Checkpoint tensor names the fold rewrites -> (fold block, site path)."""
    out = {}
    fam = family_of(sm.model)
    for blk in rep.maps:
        site = repair_site(sm.blocks[blk], fam, rep.method)
        mod = sm.blocks[blk].get_submodule(site.path)
        for pname, _ in mod.named_parameters(recurse=False):
            out[f"{sm.block_path}.{blk}.{site.path}.{pname}"] = (blk, site.path)
    return out


def stream_fold(rep: Repair, sm: StreamedModel):
    """``transform(name, tensor)`` for ``export.streamed.stream_prune``: the folded weight or bias.

    Loads the one module a span rewrites into the skeleton, folds with ``repair.folded_copy`` (the
    in-memory code, float64), returns the tensor asked for and releases the module.
    """
    fam = family_of(sm.model)
    where = fold_sources(rep, sm)

    def transform(name: str, tensor: torch.Tensor) -> torch.Tensor:
        blk, path = where[name]
        site = repair_site(sm.blocks[blk], fam, rep.method)
        mod = sm.blocks[blk].get_submodule(path)
        prefix = f"{sm.block_path}.{blk}.{path}."
        names = [prefix + p for p, _ in mod.named_parameters(recurse=False)]
        src_dtype = tensor.dtype
        sm.load(names, f"block {blk} {path}")
        try:
            new = folded_copy(site, mod, rep.maps[blk])
            out = getattr(new, name[len(prefix):]).detach().clone()
        finally:
            sm.release(names)
        return out.to(src_dtype) if out.dtype != src_dtype else out

    return transform
