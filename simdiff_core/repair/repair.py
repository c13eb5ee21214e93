"""Training-free repair of a depth-pruned model: one fitted map per removed span, folded into a kept weight.

    from simdiff_core.repair import fit_repair, apply_repair
    rep = fit_repair(lm, plan.removed_layers, calib_ids, method="lstsq")   # lm: the dense model, never mutated
    small = apply_repair(pruned_model(lm, plan.kept_layers), rep)          # a new model; copies 1 weight per span
    rep.to_dict()                                                          # spans, fit residuals, calibration

What: for every maximal run ``[a, b)`` of removed blocks with ``a > 0``, block ``a-1`` ends with
``h_a = R + M`` (R: its post-attention residual, M: its MLP output, see ``sites.py``). The pruned
model feeds ``h_a`` where the dense one fed ``h_b``. ``lstsq`` (ReplaceMe, arXiv 2505.02819) fits
``T = argmin ‖M·T − (h_b − R)‖²`` over every calibration token and folds it into the down
projection (``W_down ← Tᵀ·W_down``, bias ``← b·T``); ``rescale`` (Prune&Comp-style magnitude
compensation, arXiv 2507.18212, restricted to the one exact place) fits a per-channel scale ``t``
(``T = diag(t)``) and folds it into the same weight, or into the post-feedforward norm's gain where
the family has one. ``ridge`` is ``lstsq`` regularised towards ``T = I`` with a strength chosen by
two-fold cross-validation over the calibration windows (``accumulate.py``): the plain fit has ``d²``
numbers and overfits the calibration text when the tokens are few (``lstsq`` refuses fewer fit
tokens than ``d``). ``T = I`` is the unrepaired model, so the fit residual never exceeds it.

``fit="dense"`` (default) fits every span on the dense model's activations in one pass.
``fit="sequential"`` fits spans bottom-up on the already-repaired pruned model (dense model as
teacher): one dense + one pruned pass per span. On the embedded SmolLM2 at 8/30 the dense fit was
as good or better (docs/repair.md), so it is the default.

Why this shape: the loaded model is shared by every app visitor. Activations are captured with
run-scoped hooks (``analysis.hooks``: a concurrent visitor's forward never feeds this fit), and
``apply_repair`` shallow-copies the path down to each touched projection and gives only that
projection a new weight: everything else stays shared, nothing is written into the shared model.

Cost: one forward of the base model over the calibration windows (no LM head) plus ``2·n·d²``
float64 flops per span per ``n`` tokens, one ``d x d`` solve per span; memory two ``d x d`` float64
matrices per span (see ``accumulate.py``). ``apply_repair``: one new weight per span.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..analysis.hooks import block_io, hook_pass
from ..analysis.score import auto_batch_size, forward_base
from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..models.blocks import find_block_path, get_attr_path
from ..models.load import LoadedModel
from ..pruning.prune import is_dispatched, pruned_model, shallow_copy, with_block_list
from .accumulate import SpanAccumulator, check_fit_tokens, cv_record, hidden_size, new_accumulator, solve_span
from .sites import RepairRefused, RepairSite, family_of, fold_note, refusal, repair_site

REPAIR_METHODS = ("none", "lstsq", "ridge", "rescale")
FIT_MODES = ("dense", "sequential")

EXPORT_NOTE = ("the plan JSON and mergekit YAML describe only which blocks were removed: they cannot express the "
               "repaired weights, so they reproduce the unrepaired pruning; the checkpoint, zip and GGUF carry the "
               "repaired weights")


def removed_spans(removed_layers, num_layers: int) -> list[tuple[int, int]]:
    """Maximal runs of removed blocks as half-open ``[a, b)``, bottom to top."""
    rem = sorted({int(i) for i in removed_layers})
    if rem and (rem[0] < 0 or rem[-1] >= num_layers):
        raise SimDiffError(f"removed blocks must be indices in 0..{num_layers - 1}")
    spans: list[tuple[int, int]] = []
    for i in rem:
        if spans and spans[-1][1] == i:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


@dataclass
class Repair:
    """A fitted repair: what was fitted, on what, how well; ``maps`` holds the fitted tensors (not in JSON)."""

    method: str
    num_layers: int
    removed_layers: list[int]
    family: str
    spans: list[dict] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    fit: str = "dense"
    note: str = ""
    seconds: float = 0.0
    evaluation: dict | None = None   # set by evaluation.repaired.evaluate_repair (calibration + held-out ppl)
    # fold block (original index) -> fitted map: T (d, d) for lstsq, t (d,) for rescale; float64, CPU
    maps: dict = field(default_factory=dict, repr=False)

    @property
    def kept_layers(self) -> list[int]:
        rem = set(self.removed_layers)
        return [i for i in range(self.num_layers) if i not in rem]

    @property
    def applicable(self) -> bool:
        """True when ``apply_repair`` can build the repaired model (fitted maps present)."""
        return self.method == "none" or bool(self.maps)

    def to_dict(self) -> dict:
        d = {"method": self.method, "fit": self.fit, "family": self.family, "num_layers": self.num_layers,
             "removed_layers": list(self.removed_layers), "spans": self.spans, "calibration": self.calibration,
             "note": self.note, "seconds": round(float(self.seconds), 3), "export_note": EXPORT_NOTE}
        if self.evaluation is not None:
            d["evaluation"] = self.evaluation
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Repair":
        """The record back (without the fitted maps: ``apply_repair`` needs a fresh ``fit_repair``)."""
        try:
            method = str(d["method"])
            if method not in REPAIR_METHODS:
                raise ValueError(f"unknown method {method!r}")
            return cls(method=method, num_layers=int(d["num_layers"]),
                       removed_layers=[int(i) for i in d["removed_layers"]], family=str(d.get("family", "?")),
                       spans=list(d.get("spans") or []), calibration=dict(d.get("calibration") or {}),
                       fit=str(d.get("fit", "dense")), note=str(d.get("note", "")),
                       seconds=float(d.get("seconds", 0.0)), evaluation=d.get("evaluation"))
        except (KeyError, TypeError, ValueError) as e:
            raise SimDiffError(f"malformed repair record: {e}") from None

    def summary(self) -> str:
        """One line: method, spans, mean residual ratio."""
        done = [s for s in self.spans if s.get("status") == "repaired"]
        if self.method == "none":
            return "no repair"
        ratios = ", ".join(f"[{s['start']},{s['end']}) {s['ratio']:.3f}" for s in done)
        return f"{self.method} ({self.fit} fit) on {len(done)}/{len(self.spans)} spans; residual after/before: {ratios}"


def _model_of(source) -> nn.Module:
    return source.model if isinstance(source, LoadedModel) else source


def _check_windows(windows) -> torch.Tensor:
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[0] == 0:
        raise SimDiffError("repair calibration must be a non-empty (N, S) tensor of token ids")
    return windows



def span_records(spans) -> list[dict]:
    """The record of each removed span [a, b): its blocks and the block below it that the repair folds
    into, or why it is not repaired (a span starting at block 0 has no block below)."""
    records = []
    for a, b in spans:
        rec = {"start": a, "end": b, "blocks": list(range(a, b))}
        if a == 0:
            rec["status"] = "not repaired: no block before block 0 to fold into"
        else:
            rec["fold_block"] = a - 1
        records.append(rec)
    return records

def fit_repair(model, removed_layers, windows: torch.Tensor, method: str = "lstsq",
               progress: Progress | None = None, calibration: dict | None = None, batch_size: int | None = None,
               fit: str = "dense", should_stop: Callable[[], bool] | None = None) -> Repair:
    """Fit ``method`` for removing ``removed_layers`` from ``model`` (dense; LoadedModel or nn.Module).

    ``windows``: (N, S) calibration token ids (as ``make_windows`` returns them). ``calibration``:
    a description recorded as is (e.g. ``{"source": "WikiText-2 valid"}``); samples, seq_len and
    tokens are added. Raises ``RepairRefused`` (one line) where the method does not fold exactly
    into this family. ``model`` is never mutated.
    """
    if method not in REPAIR_METHODS:
        raise SimDiffError(f"unknown repair method '{method}': choose one of {', '.join(REPAIR_METHODS)}")
    if fit not in FIT_MODES:
        raise SimDiffError(f"unknown repair fit '{fit}': choose one of {', '.join(FIT_MODES)}")
    m = _model_of(model)
    why = refusal(m, method)
    if why:
        raise RepairRefused(why)
    windows = _check_windows(windows)
    path = model.block_path if isinstance(model, LoadedModel) else find_block_path(m)
    blocks = get_attr_path(m, path)
    L = len(blocks)
    spans = removed_spans(removed_layers, L)
    removed = sorted({int(i) for i in removed_layers})
    if len(removed) >= L:
        raise SimDiffError("cannot repair a model with every block removed")
    fam = family_of(m)
    N, S = windows.shape
    check_fit_tokens(method, int(N * S), hidden_size(m))
    calib = dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(N * S))
    rep = Repair(method=method, num_layers=L, removed_layers=removed, family=fam, calibration=calib, fit=fit)
    t0 = time.perf_counter()
    rep.spans = records = span_records(spans)
    if method == "none":
        rep.note = "no repair: the pruned model as is"
        return rep
    if is_dispatched(m):
        raise RepairRefused("repair does not support accelerate-dispatched models (--device-map): load the model "
                            "on one device")
    todo = [(r["start"], r["end"]) for r in records if "fold_block" in r]
    sites = {a - 1: repair_site(blocks[a - 1], fam, method) for a, _ in todo}
    bs = batch_size or auto_batch_size(next(m.parameters()).device, S)
    if fit == "dense" or len(todo) <= 1:
        accs = _fit_dense(m, blocks, todo, sites, windows, bs, method, progress, should_stop)
    else:
        accs = _fit_sequential(model, m, blocks, todo, sites, windows, bs, method, removed, progress, should_stop,
                               rep)
    for rec in records:
        if "fold_block" not in rec:
            continue
        a, b = rec["start"], rec["end"]
        acc = accs[(a, b)]
        T, before, after = solve_span(acc)
        site = sites[a - 1]
        rep.maps[a - 1] = T.cpu()
        rec.update(site=f"{path}.{a - 1}.{site.path}", fold=site.fold, status="repaired", tokens=acc.tokens,
                   residual_before=before, residual_after=after, ratio=(after / before) if before > 0 else 1.0,
                   **cv_record(acc))
    rep.seconds = time.perf_counter() - t0
    rep.note = fold_note(fam, list(sites.values()))
    return rep


def _capture_pass(m, blocks, wanted_out: set[int], site_mods: dict[int, tuple[nn.Module, float]]):
    """Callbacks storing block outputs (``outs[i]``) and scaled site outputs (``Ms[i]``) of one forward."""
    outs, Ms, post = {}, {}, {}
    for i in wanted_out:
        def on_block(module, args, kwargs, output, _i=i):
            outs[_i] = block_io(args, kwargs, output)[1]
        post[blocks[i]] = on_block
    for i, (mod, scale) in site_mods.items():
        def on_site(module, args, kwargs, output, _i=i, _s=scale):
            y = output[0] if isinstance(output, (tuple, list)) else output
            Ms[_i] = y * _s if _s != 1.0 else y
        post[mod] = on_site
    return outs, Ms, post


def batch_ranges(windows, bs, device):
    for start in range(0, windows.shape[0], bs):
        yield start, windows[start:start + bs].to(device)


def _fit_dense(m, blocks, todo, sites: dict[int, RepairSite], windows, bs, method, progress, should_stop):
    d = None
    wanted = {a - 1 for a, _ in todo} | {b - 1 for _, b in todo}
    site_mods = {a - 1: (blocks[a - 1].get_submodule(sites[a - 1].path), sites[a - 1].scale) for a, _ in todo}
    outs, Ms, post = _capture_pass(m, blocks, wanted, site_mods)
    accs: dict = {}
    device = next(m.parameters()).device
    N = windows.shape[0]
    with torch.inference_mode(), hook_pass(post=post, name="repair") as _:
        for start, ids in batch_ranges(windows, bs, device):
            if should_stop is not None and should_stop():
                raise Cancelled()
            outs.clear(), Ms.clear()
            forward_base(m, ids)
            for a, b in todo:
                M, h_a, h_b = Ms[a - 1], outs[a - 1], outs[b - 1]
                d = M.shape[-1]
                acc = accs.get((a, b))
                if acc is None:
                    acc = accs[(a, b)] = new_accumulator(method, d, _acc_device(M))
                acc.add(M.reshape(h_a.shape), _target(M, h_a, h_b))
            if progress is not None:
                progress(min(1.0, (start + ids.shape[0]) / N), f"repair fit: windows {start + ids.shape[0]}/{N}")
    return accs


def _acc_device(t: torch.Tensor):
    # float64 matmuls: on CUDA where the activations are (fast), else CPU; MPS has no float64
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def _target(M, h_a, h_b):
    """``Y = h_b − R`` with ``R = h_a − M``, in float64 (the difference of two near-equal states)."""
    M = M.reshape(h_a.shape)  # OPT runs its MLP on (B·S, d)
    return h_b.double() - h_a.double() + M.double()


def _fit_sequential(source, m, blocks, todo, sites, windows, bs, method, removed, progress, should_stop, rep):
    """Bottom-up: span k is fitted on the pruned model already repaired for spans < k (dense = teacher)."""
    kept = [i for i in range(len(blocks)) if i not in set(removed)]
    pos = {orig: j for j, orig in enumerate(kept)}
    device = next(m.parameters()).device
    N = windows.shape[0]
    accs: dict = {}
    for k, (a, b) in enumerate(todo):
        view = pruned_model(source, kept)
        cur = apply_repair(view, rep, upto=a - 1) if rep.maps else view
        cur_blocks = get_attr_path(cur, find_block_path(cur))
        j = pos[a - 1]
        t_outs, _, t_post = _capture_pass(m, blocks, {b - 1}, {})
        s_outs, s_Ms, s_post = _capture_pass(cur, cur_blocks, {j},
                                             {j: (cur_blocks[j].get_submodule(sites[a - 1].path), sites[a - 1].scale)})
        acc = None
        with torch.inference_mode():
            for start, ids in batch_ranges(windows, bs, device):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                with hook_pass(post=t_post, name="repair-teacher"):
                    forward_base(m, ids)
                with hook_pass(post=s_post, name="repair-student"):
                    forward_base(cur, ids)
                M = s_Ms[j]
                if acc is None:
                    acc = new_accumulator(method, M.shape[-1], _acc_device(M))
                acc.add(M.reshape(s_outs[j].shape), _target(M, s_outs[j], t_outs[b - 1]))
                if progress is not None:
                    done = (k + (start + ids.shape[0]) / N) / len(todo)
                    progress(done, f"repair fit: span {k + 1}/{len(todo)}, windows {start + ids.shape[0]}/{N}")
        accs[(a, b)] = acc
        rep.maps[a - 1] = acc.solve().cpu()  # so the next span sees this one repaired
    rep.maps.clear()
    return accs


@torch.no_grad()
def folded_copy(site: RepairSite, mod: nn.Module, T: torch.Tensor) -> nn.Module:
    """A shallow copy of ``mod`` with ``T`` folded into its weight (and bias); ``mod`` is untouched."""
    new = shallow_copy(mod)
    W = mod.weight
    T = T.to(W.device, torch.float64)
    if site.fold == "norm_gain":
        g = W.double() + 1.0 if site.gemma_gain else W.double()
        g = g * T
        new._parameters["weight"] = nn.Parameter((g - 1.0 if site.gemma_gain else g).to(W.dtype), requires_grad=False)
        return new
    if T.ndim == 1:
        T = torch.diag(T)
    if site.fold == "conv1d":  # y = x·W + b, W (in, out)
        new._parameters["weight"] = nn.Parameter((W.double() @ T).to(W.dtype), requires_grad=False)
    else:  # nn.Linear: y = x·Wᵀ + b, W (out, in):  (x·Wᵀ)·T = x·(Tᵀ·W)ᵀ
        new._parameters["weight"] = nn.Parameter((T.T @ W.double()).to(W.dtype), requires_grad=False)
    bias = getattr(mod, "bias", None)
    if bias is not None:
        new._parameters["bias"] = nn.Parameter((bias.double() @ T).to(bias.dtype), requires_grad=False)
    return new


def replace_path(block: nn.Module, path: str, fn) -> nn.Module:
    """A shallow copy of ``block`` whose submodule at ``path`` is ``fn(submodule)`` (copies on the way)."""
    parts = path.split(".")
    top = shallow_copy(block)
    parent_new, parent_old = top, block
    for part in parts[:-1]:
        child = shallow_copy(getattr(parent_old, part))
        parent_new._modules[part] = child
        parent_new, parent_old = child, getattr(parent_old, part)
    parent_new._modules[parts[-1]] = fn(getattr(parent_old, parts[-1]))
    return top


def apply_repair(pruned, rep: Repair, upto: int | None = None) -> nn.Module:
    """The repaired model: a new object built from ``pruned`` (the plan's pruned model or view; a
    LoadedModel or nn.Module) with one projection per repaired span replaced by a folded copy.

    Shares every other module and tensor with ``pruned``; ``pruned`` itself is untouched.
    ``upto``: only spans whose fold block is ``<= upto`` (used by the sequential fit).
    """
    m = _model_of(pruned)
    if rep.method == "none":
        return m
    if not rep.maps:
        raise SimDiffError("this repair record carries no fitted maps (read from JSON?): fit it again with "
                           "fit_repair")
    path = find_block_path(m)
    blocks = get_attr_path(m, path)
    kept = rep.kept_layers
    if len(blocks) != len(kept):
        raise SimDiffError(f"apply_repair needs the pruned model with {len(kept)} blocks (the repair removes "
                           f"{len(rep.removed_layers)} of {rep.num_layers}); got {len(blocks)}")
    if is_dispatched(m):
        raise RepairRefused("repair does not support accelerate-dispatched models (--device-map)")
    pos = {orig: j for j, orig in enumerate(kept)}
    fam = family_of(m)
    new_list = nn.ModuleList(list(blocks))
    for fold_block, T in sorted(rep.maps.items()):
        if upto is not None and fold_block > upto:
            continue
        j = pos[fold_block]
        site = repair_site(blocks[j], fam, rep.method)
        new_list[j] = replace_path(blocks[j], site.path, lambda mod, _s=site, _T=T: folded_copy(_s, mod, _T))
    return with_block_list(m, path, new_list)
