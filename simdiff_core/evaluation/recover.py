"""Heal a pruned model with a short LoRA fine-tune on calibration text, then merge the adapters.

    from simdiff_core.evaluation.recover import RecoveryConfig, recover
    train = make_windows(lm.tokenizer, "wikitext2", n=32, seq_len=128)        # calibration split
    held_out = eval_windows(lm.tokenizer, seq_len=256, windows=4)              # test split
    res = recover(lm, plan.kept_layers, train, RecoveryConfig(steps=40, rank=8),
                  eval_ids=held_out, progress=lambda step, total, loss: ...)
    res.model                          # plain transformers model, adapters merged into the weights
    res.report["ppl_pruned"], res.report["ppl_recovered"], res.report["loss_curve"]

What it does, and why:

* The loaded model is shared (the app caches one copy for every session) and lives with
  ``requires_grad=False``; so training runs on a *materialised* private copy
  (``prune.pruned_model(..., materialize=True)``) and never touches ``lm.model``.
* LoRA (``peft``) on the linear projections inside the decoder blocks — by default every linear
  leaf of a block (q/k/v/o + gate/up/down on Llama-likes, qkv_proj/gate_up_proj on Phi3, c_attn/c_fc
  on GPT-2, ...), detected from the model rather than a per-family table. Embeddings, norms and the
  LM head stay frozen: with tied embeddings a head update would also move the input embedding.
* Training: AdamW on the adapter weights only, linear warm-up then cosine decay, next-token
  cross-entropy in float32 on the calibration windows (cycled in a fixed shuffled order, seeded).
  On a GPU the base weights stay in the loaded dtype (bf16 by default) and peft keeps the adapter
  weights in float32.
* Finally ``merge_and_unload`` folds ``B @ A * scale`` into the base weights: the result is a plain
  transformers model that ``save_pretrained`` / ``export.export_pruned(..., model=res.model)`` write
  as an ordinary checkpoint (no peft needed to load it).

Perplexities in the report (dense / pruned / recovered) are measured on ``eval_ids``, which should
be held-out text (the WikiText-2 *test* split), not the calibration windows trained on. Held-out is
not enough when both are splits of one corpus: the dense model given the same 40 steps on WikiText-2
valid goes 25.1 -> 16.0 on its test split, so ``dense_reference=True`` trains that reference and
``second_ids`` adds a text of another domain (``evaluation/honest.py`` turns them into flags).
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import Cancelled, SimDiffError
from ..models.blocks import find_block_path, get_attr_path
from ..models.load import LoadedModel

# Linear-like module classes by name: transformers' GPT-2 style Conv1D is a linear layer with a
# transposed weight, and peft supports it under the same target names.
_LINEAR_CLASSES = ("Linear", "Conv1D")


@dataclass
class RecoveryConfig:
    steps: int = 40  # optimizer steps; each sees `batch_size` windows
    rank: int = 8  # LoRA rank r
    lora_alpha: float | None = None  # LoRA scale numerator (scale = alpha / r); default 2 * rank
    lr: float = 1e-3  # peak learning rate; short runs want a larger one than the usual 2e-4
    batch_size: int = 2  # windows per step
    warmup_frac: float = 0.1  # linear warm-up share of the steps, then cosine decay to 10% of lr
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # clip to keep the first high-lr steps from blowing up
    target_modules: list[str] | None = None  # leaf names inside blocks; None = every linear leaf
    seed: int = 0  # LoRA init and batch order
    eval_batch_size: int = 2

    def validate(self) -> None:
        if int(self.steps) < 1:
            raise SimDiffError(f"recovery steps must be >= 1 (got {self.steps})")
        if int(self.rank) < 1:
            raise SimDiffError(f"LoRA rank must be >= 1 (got {self.rank})")
        if not (0 < float(self.lr) < 1):
            raise SimDiffError(f"learning rate must lie in (0, 1) (got {self.lr})")
        if int(self.batch_size) < 1:
            raise SimDiffError(f"batch size must be >= 1 (got {self.batch_size})")
        if not 0 <= float(self.warmup_frac) < 1:
            raise SimDiffError(f"warm-up fraction must lie in [0, 1) (got {self.warmup_frac})")


@dataclass
class Recovery:
    """The merged, recovered model plus a JSON-able report."""

    model: nn.Module
    report: dict = field(default_factory=dict)

    @property
    def loss_curve(self) -> list[dict]:
        return self.report.get("loss_curve", [])


def default_target_modules(model: nn.Module, block_path: str | None = None) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (e.g. q_proj ... down_proj)."""
    blocks = get_attr_path(model, block_path or find_block_path(model))
    names: list[str] = []
    for name, mod in blocks[0].named_modules():
        if name and type(mod).__name__ in _LINEAR_CLASSES and not list(mod.children()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    if not names:
        raise SimDiffError("found no linear layers inside the decoder blocks to attach LoRA adapters to")
    return names


def trainable_copy(source, kept_layers=None, model: nn.Module | None = None) -> nn.Module:
    """A private, grad-capable copy to fine-tune: never shares a tensor with ``source``.

    ``model`` (an already-built pruned or merged view) wins over ``kept_layers``; with neither, the
    whole loaded model is copied (e.g. when it already is a pruned export).
    """
    from ..pruning.prune import pruned_model

    if model is not None:
        new = copy.deepcopy(model)
    elif kept_layers is not None:
        new = pruned_model(source, kept_layers, materialize=True)
    else:
        base = source.model if isinstance(source, LoadedModel) else source
        new = copy.deepcopy(base)
    scrub_inference_tensors(new)
    new.requires_grad_(False)
    return new


def scrub_inference_tensors(module: nn.Module) -> nn.Module:
    """Replace inference-mode tensors (e.g. copied or cached under ``torch.inference_mode``) in place.

    They cannot join an autograd graph; a clone made outside inference mode is a normal tensor with
    the same values.
    """
    with torch.inference_mode(False), torch.no_grad():
        for mod in module.modules():
            for store in (mod._parameters, mod._buffers):
                for k, t in list(store.items()):
                    if t is not None and t.is_inference():
                        fresh = t.clone()
                        store[k] = nn.Parameter(fresh, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else fresh
    return module


def _lr_at(step: int, cfg: RecoveryConfig) -> float:
    warm = max(1, int(round(cfg.warmup_frac * cfg.steps)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False).logits
    # float32 NLL whatever the model dtype, same as evaluate.perplexity
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def attach_lora(model: nn.Module, cfg: RecoveryConfig, block_path: str | None = None):
    """Wrap ``model`` with fresh LoRA adapters (peft); only adapter weights are trainable."""
    from peft import LoraConfig, get_peft_model

    path = block_path or find_block_path(model)
    targets = list(cfg.target_modules or default_target_modules(model, path))
    present = set()
    for name, mod in get_attr_path(model, path).named_modules():
        if type(mod).__name__ in _LINEAR_CLASSES:
            present.add(name.rsplit(".", 1)[-1])
    missing = [t for t in targets if t not in present]
    if missing:
        raise SimDiffError(f"target modules {missing} are not linear layers of this model's blocks; "
                           f"available: {sorted(present)}")
    torch.manual_seed(cfg.seed)
    # A regex (peft full-matches it against module names) so only linears *inside the blocks* get
    # adapters: an lm_head or projector elsewhere with a matching leaf name stays frozen.
    pattern = rf"(.*\.)?{re.escape(path)}\.\d+\.(.*\.)?({'|'.join(map(re.escape, targets))})"
    lcfg = LoraConfig(r=int(cfg.rank), lora_alpha=float(cfg.lora_alpha or 2 * cfg.rank), lora_dropout=0.0,
                      target_modules=pattern, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lcfg)
    return peft_model, targets


def train_lora(peft_model, train_ids: torch.Tensor, cfg: RecoveryConfig, device=None,
               progress: Callable[[int, int, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Run ``cfg.steps`` AdamW steps on the adapters; returns the loss curve [{step, loss, lr}]."""
    device = device or next(peft_model.parameters()).device
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        raise SimDiffError("no trainable LoRA parameters were created")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    curve = []
    peft_model.train()
    # The caller may sit inside no_grad/inference_mode (the app, perplexity helpers): training
    # needs a real autograd graph regardless.
    # Denormal floats in the backward pass make CPU training several times slower (measured 5x on
    # the forward with grad of the embedded model); flushing them to zero is harmless for training.
    torch.set_flush_denormal(True)
    try:
        _train_steps(peft_model, train_ids, cfg, device, progress, should_stop, opt, params, rng, order, curve)
    finally:
        torch.set_flush_denormal(False)
    peft_model.eval()
    return curve


def _train_steps(peft_model, train_ids, cfg, device, progress, should_stop, opt, params, rng, order, curve):
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(cfg.steps):
            if should_stop is not None and should_stop():
                raise Cancelled()
            if len(order) < cfg.batch_size:
                perm = list(range(train_ids.shape[0]))
                rng.shuffle(perm)
                order.extend(perm)
            idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
            ids = train_ids[idx].clone().to(device)
            lr = _lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = _lm_loss(peft_model, ids)
            if not torch.isfinite(loss):
                raise SimDiffError(f"recovery diverged at step {step + 1} (loss {float(loss)}): lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            curve.append({"step": step + 1, "loss": float(loss.detach()), "lr": lr})
            if progress is not None:
                progress(step + 1, cfg.steps, curve[-1]["loss"])


@torch.inference_mode()
def mean_loss(model: nn.Module, ids: torch.Tensor, batch_size: int = 2, device=None) -> float:
    """Mean next-token NLL of ``model`` over windows ``ids`` (token-weighted)."""
    device = device or next(model.parameters()).device
    total, n = 0.0, 0
    for s in range(0, ids.shape[0], batch_size):
        b = ids[s:s + batch_size].to(device)
        total += float(_lm_loss(model, b)) * b[:, 1:].numel()
        n += b[:, 1:].numel()
    return total / max(n, 1)


def recover(source, kept_layers=None, train_ids: torch.Tensor | None = None, config: RecoveryConfig | None = None,
            *, model: nn.Module | None = None, eval_ids: torch.Tensor | None = None,
            dense_model: nn.Module | None = None, eval_protocol: str | None = None,
            progress: Callable[[int, int, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None, merge: bool = True,
            second_ids: torch.Tensor | None = None, second_protocol: str | None = None,
            dense_reference: bool = False, dense_progress: Callable[[int, int, float], None] | None = None,
            measure_before: bool = True) -> Recovery:
    """LoRA-recover a pruned model and merge the adapters (see module docstring).

    ``source``: LoadedModel (or nn.Module) the pruned model comes from. ``kept_layers`` /
    ``model``: what to recover (see ``trainable_copy``). ``train_ids`` (N, S): calibration windows.
    ``eval_ids``: held-out windows for the ppl report; ``dense_model`` (default: ``source``'s model
    when ``kept_layers`` or ``model`` is given) adds the dense ppl. ``progress(step, total, loss)``
    is called after every step. With ``merge=False`` the peft-wrapped model is returned (tests).

    Honest comparison (``evaluation/honest.py``): ``second_ids`` (windows of a text from another
    domain) adds ``report["second_domain"]`` with the same perplexities on that text;
    ``dense_reference=True`` also gives the *dense* model (every block of ``source``) the same LoRA
    run on the same windows with the same config and seed, and reports it as ``ppl_dense_lora`` (and
    ``second_domain["ppl_dense_lora"]``) with its loss curve under ``dense_reference``; it costs a
    second training run of the full-depth model (``dense_progress`` follows it).
    ``measure_before=False`` skips the perplexities before training (the reference run: they are the
    dense ones already measured).
    """
    from .evaluate import perplexity

    cfg = config or RecoveryConfig()
    cfg.validate()
    if train_ids is None or not isinstance(train_ids, torch.Tensor) or train_ids.ndim != 2 or train_ids.shape[0] < 1:
        raise SimDiffError("recovery needs calibration windows: a token tensor of shape (N, S)")
    if train_ids.shape[1] < 2:
        raise SimDiffError("calibration windows must be at least 2 tokens long")
    t0 = time.perf_counter()
    base = source.model if isinstance(source, LoadedModel) else source
    device = next(base.parameters()).device
    with torch.inference_mode(False):  # the caller may be inside inference_mode: copies must be normal tensors
        work = trainable_copy(source, kept_layers, model)
    block_path = find_block_path(work)
    report: dict = {"config": asdict(cfg), "num_layers": len(get_attr_path(work, block_path)),
                    "train_windows": list(train_ids.shape), "device": str(device),
                    "dtype": str(next(work.parameters()).dtype).replace("torch.", "")}
    if dense_model is None and (kept_layers is not None or model is not None):
        dense_model = base
    if dense_reference and dense_model is not base:
        raise SimDiffError("a dense reference needs the dense source model: give kept_layers or model")
    evals = {}  # name -> (windows, report dict its perplexities go into)
    if eval_ids is not None:
        report["eval_protocol"] = eval_protocol or f"{eval_ids.shape[0]} windows x {eval_ids.shape[1]} tokens"
        evals["eval"] = (eval_ids, report)
    if second_ids is not None:
        report["second_domain"] = {"protocol": second_protocol or
                                   f"{second_ids.shape[0]} windows x {second_ids.shape[1]} tokens"}
        evals["second"] = (second_ids, report["second_domain"])
    if measure_before:
        for ids_, into in evals.values():
            if dense_model is not None:
                into["ppl_dense"] = perplexity(dense_model, ids_, cfg.eval_batch_size, device)["ppl"]
            into["ppl_pruned"] = perplexity(work, ids_, cfg.eval_batch_size, device)["ppl"]
    # Loss on (up to 8 of) the training windows, before and after: the "did it learn" check.
    probe = train_ids[:8]
    report["train_loss_windows"] = int(probe.shape[0])
    report["train_loss_before"] = mean_loss(work, probe, cfg.eval_batch_size, device)

    with torch.inference_mode(False):
        scrub_inference_tensors(work)  # the evaluation passes above may have cached buffers
        peft_model, targets = attach_lora(work, cfg, block_path)
    report["target_modules"] = targets
    report["trainable_params"] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    try:
        curve = train_lora(peft_model, train_ids, cfg, device, progress, should_stop)
    except torch.OutOfMemoryError:
        raise SimDiffError("out of memory during recovery: lower the batch size or sequence length") from None
    report["loss_curve"] = curve
    if not merge:
        report["seconds"] = time.perf_counter() - t0
        return Recovery(peft_model, report)
    with torch.inference_mode(False), torch.no_grad():
        merged = peft_model.merge_and_unload()
    merged.requires_grad_(False)
    merged.eval()
    report["train_loss_after"] = mean_loss(merged, probe, cfg.eval_batch_size, device)
    for ids_, into in evals.values():
        into["ppl_recovered"] = perplexity(merged, ids_, cfg.eval_batch_size, device)["ppl"]
    report["seconds"] = time.perf_counter() - t0  # the pruned model's run; the reference adds its own
    if dense_reference:
        # The same treatment for the dense model: every block of the source, materialised through the
        # same path as the pruned copy, trained with the same config (seed: adapter init and batch order)
        # on the same windows. Only its numbers are kept; the trained dense copy is dropped.
        n_all = len(get_attr_path(base, find_block_path(base)))
        ref = recover(source, list(range(n_all)), train_ids, cfg, eval_ids=eval_ids, eval_protocol=eval_protocol,
                      second_ids=second_ids, second_protocol=second_protocol, progress=dense_progress,
                      should_stop=should_stop, measure_before=False)
        if eval_ids is not None:
            report["ppl_dense_lora"] = ref.report["ppl_recovered"]
        if second_ids is not None:
            report["second_domain"]["ppl_dense_lora"] = ref.report["second_domain"]["ppl_recovered"]
        report["dense_reference"] = {k: ref.report[k] for k in ("num_layers", "trainable_params", "loss_curve",
                                                                "train_loss_before", "train_loss_after", "seconds")}
        del ref
    return Recovery(merged, report)
