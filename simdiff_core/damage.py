"""Leave-one-out damage: the calibration loss of the model with exactly one block removed.

    from simdiff_core.damage import measure_damage
    dmg = measure_damage(lm, calib_ids)            # Damage: dense loss + per-block loss/ppl without block i
    dmg.deltas()                                   # loss increase per block (the "ground truth" curve)
    scores = dmg.attach(scores)                    # copies damage_loss/damage_ppl into scores.layers
    dmg.save("damage.json")

Cosine, MSSD and MASD are proxies for how much a block matters; this is the thing they proxy.

How (cached prefix). Removing block i does not change anything *before* block i, so the hidden
state entering block i is the same as in the dense model. One dense forward per batch of windows
records every block's input ``x_i`` (run-scoped forward hooks, ``hooks.hook_pass``) and the
keyword arguments every block was called with (pre-hooks: position embeddings, masks, position ids;
per block, because sliding-window families such as Gemma3 pass a different mask and rotary table to
local and global layers). Then, for each i, we start from ``x_i``, skip block i, run blocks
i+1..L-1 with their recorded kwargs, the final norm and the LM head, and accumulate the NLL exactly
as ``evaluate.perplexity`` does (float32 cross-entropy of tokens 1..S-1 of each window).

Cost in block executions per batch: naive (dense baseline + L pruned forwards of L-1 blocks) is
L + L(L-1) = L²; cached is L + L(L-1)/2, i.e. about half (30 blocks: 900 vs 465). The LM head still
runs L+1 times either way; ``benchmark_damage`` times both paths.

Memory (``memory_estimate``): the cache holds L+1 hidden-state tensors of (batch, S, H) for the
current batch, and each loss computation holds the (batch, S, V) logits in the model's dtype plus two
float32 (batch, S-1, V) copies (the shifted slice and cross-entropy's log-softmax). The logits
dominate for small models with large vocabularies: the default 8 x 256 calibration of a 30-block,
H=576, V=49152 model with batch 4 in float32 needs 31 x 4 x 256 x 576 x 4 B ≈ 73 MB of cache and
4 x 256 x 49152 x 4 B + 2 x 4 x 255 x 49152 x 4 B ≈ 602 MB for the logits, ≈ 675 MB in all. Windows are processed ``batch_size`` at a time, so memory is bounded by the batch size, not
the number of windows; keep the calibration small (default 8 windows of 256 tokens).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import Cancelled, SimDiffError
from .hooks import block_io, hook_pass
from .load import get_attr_path, text_config
from .records import JsonRecord
from .score import auto_batch_size

Progress = Callable[[float, str], None]
DEFAULT_SAMPLES = 8
DEFAULT_SEQ_LEN = 256
FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")


@dataclass
class Damage(JsonRecord):
    """Measured leave-one-out damage of every block on one calibration set."""

    KIND = "damage"

    model: str
    num_layers: int
    dense_loss: float          # mean NLL per predicted token of the full model
    dense_ppl: float
    layers: list[dict]         # [{index, loss, ppl, delta_loss, delta_ppl}] with block `index` removed
    calibration: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def deltas(self) -> list[float]:
        """Loss increase caused by removing each block (higher = the block matters more)."""
        return [float(l["delta_loss"]) for l in self.layers]

    def losses(self) -> list[float]:
        return [float(l["loss"]) for l in self.layers]

    def ppls(self) -> list[float]:
        return [float(l["ppl"]) for l in self.layers]

    def attach(self, scores):
        """A copy of ``scores`` whose layers carry ``damage_loss``, ``damage_ppl``, ``damage_delta``."""
        from .score import Scores

        if scores.num_layers != self.num_layers:
            raise SimDiffError(f"damage is for {self.num_layers} blocks but the scores have {scores.num_layers}")
        layers = [dict(s, damage_loss=d["loss"], damage_ppl=d["ppl"], damage_delta=d["delta_loss"])
                  for s, d in zip(scores.layers, self.layers)]
        meta = dict(scores.meta, damage={"dense_loss": self.dense_loss, "dense_ppl": self.dense_ppl,
                                         "calibration": self.calibration})
        return Scores(scores.model, scores.num_layers, layers, scores.matrices, scores.calibration, meta)

    @classmethod
    def from_scores(cls, scores) -> "Damage | None":
        """The damage stored in ``scores`` by ``attach`` (None when there is none)."""
        if not scores.layers or "damage_loss" not in scores.layers[0]:
            return None
        info = scores.meta.get("damage", {})
        dense = float(info.get("dense_loss", float("nan")))
        layers = [{"index": l["index"], "loss": float(l["damage_loss"]), "ppl": float(l["damage_ppl"]),
                   "delta_loss": float(l.get("damage_delta", float(l["damage_loss"]) - dense)),
                   "delta_ppl": float(l["damage_ppl"]) - float(info.get("dense_ppl", float("nan")))}
                  for l in scores.layers]
        return cls(scores.model, scores.num_layers, dense, float(info.get("dense_ppl", float("nan"))), layers,
                   info.get("calibration", {}), {})

    @classmethod
    def from_dict(cls, d: dict) -> "Damage":
        try:
            n = int(d["num_layers"])
            layers = [dict(l) for l in d["layers"]]
            if len(layers) != n or any(int(l["index"]) != i for i, l in enumerate(layers)):
                raise SimDiffError("damage file is inconsistent: layer list does not match num_layers")
            for l in layers:
                for k in ("loss", "ppl", "delta_loss"):
                    l[k] = float(l[k])
            return cls(d.get("model", "?"), n, float(d["dense_loss"]), float(d["dense_ppl"]), layers,
                       d.get("calibration", {}), d.get("meta", {}))
        except SimDiffError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise SimDiffError(f"malformed damage file: missing or bad field {e}") from None


def _tail_modules(lm):
    """(final norm or None, LM head, logit softcap or None) of a LoadedModel."""
    model = lm.model
    owner_path = lm.block_path.rsplit(".", 1)[0] if "." in lm.block_path else ""
    owner = get_attr_path(model, owner_path) if owner_path else model
    norm = None
    for name in FINAL_NORM_NAMES:
        m = getattr(owner, name, None)
        if isinstance(m, torch.nn.Module):
            norm = m
            break
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise SimDiffError(f"{lm.name}: no LM head found (get_output_embeddings() is None); damage needs logits")
    if norm is None:
        raise SimDiffError(f"{lm.name}: no final norm found on '{owner_path or 'model'}' "
                           f"(looked for {', '.join(FINAL_NORM_NAMES)})")
    cap = getattr(text_config(model.config), "final_logit_softcapping", None)
    return norm, head, cap


def _nll_sum(norm, head, cap, h: torch.Tensor, ids: torch.Tensor) -> float:
    logits = head(norm(h))
    if cap:
        logits = torch.tanh(logits / cap) * cap
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                          reduction="sum")
    return float(nll)


def _run_block(block, h, kwargs):
    out = block(h, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _capture(lm, ids: torch.Tensor):
    """Dense forward of one batch: inputs of every block, their kwargs, and the last block's output."""
    blocks = lm.blocks
    L = len(blocks)
    xs: list[torch.Tensor | None] = [None] * (L + 1)
    kws: list[dict | None] = [None] * L

    def pre(module, args, kwargs, _i):
        # hidden states arrive positionally or as a kwarg; keep every other kwarg as the block saw it
        kw = dict(kwargs)
        kw.pop("hidden_states", None)
        kw["past_key_values"] = None
        kw["use_cache"] = False
        kws[_i] = kw
        if len(args) > 1:
            raise SimDiffError(f"{lm.name}: block {_i} takes extra positional arguments; damage cannot replay it")

    def post(module, args, kwargs, output, _i):
        x, y = block_io(args, kwargs, output)
        xs[_i] = x
        xs[_i + 1] = y

    # run-scoped (hooks.py): other sessions' forwards on the shared model never reach these callbacks
    with hook_pass(pre={b: (lambda m, a, k, _i=i: pre(m, a, k, _i)) for i, b in enumerate(blocks)},
                   post={b: (lambda m, a, k, o, _i=i: post(m, a, k, o, _i)) for i, b in enumerate(blocks)},
                   name="damage"):
        out = lm.model(input_ids=ids, use_cache=False)
    if any(x is None for x in xs) or any(k is None for k in kws):
        raise SimDiffError(f"{lm.name}: not every block ran in the forward pass; cannot measure damage")
    return xs, kws, out.logits


def block_executions(num_layers: int, batches: int = 1) -> dict:
    """Block forward calls of the naive and the cached leave-one-out computation."""
    L = num_layers
    naive = L + L * (L - 1)             # dense baseline + L pruned models of L-1 blocks
    cached = L + L * (L - 1) // 2       # dense capture + tails i+1..L-1
    return {"naive": naive * batches, "cached": cached * batches,
            "saving": 1.0 - cached / naive if naive else 0.0}


def memory_estimate(lm, batch: int, seq_len: int) -> dict:
    """Peak extra memory of one damage batch in bytes: ``cache_bytes`` (L+1 block inputs/outputs of
    (batch, S, H)), ``logits_bytes`` ((batch, S, V) logits in the model dtype plus two float32
    (batch, S-1, V) copies for the loss) and ``total_bytes``; see the module docstring."""
    cfg = lm.model.config.get_text_config()
    hidden = int(cfg.hidden_size)
    vocab = int(getattr(cfg, "vocab_size", 0) or lm.model.get_output_embeddings().weight.shape[0])
    elt = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
    cache = (lm.num_layers + 1) * batch * seq_len * hidden * elt
    logits = batch * seq_len * vocab * elt + 2 * batch * (seq_len - 1) * vocab * 4
    return {"cache_bytes": cache, "logits_bytes": logits, "total_bytes": cache + logits}


@torch.inference_mode()
def measure_damage(lm, input_ids: torch.Tensor, batch_size: int | None = None,
                   progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                   calibration: dict | None = None) -> Damage:
    """Leave-one-out damage of every block of ``lm`` (a LoadedModel) on windows ``input_ids`` (N, S).

    ``progress(fraction, message)`` is called after every leave-one-out tail; ``should_stop()`` is
    polled at the same points and raises ``Cancelled``. Memory: see ``memory_estimate``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0 \
            or input_ids.shape[1] < 2:
        raise SimDiffError("calibration input must be a non-empty (N, S) tensor of token ids with S >= 2")
    blocks = lm.blocks
    L = len(blocks)
    if L < 2:
        raise SimDiffError("leave-one-out damage needs a model with at least 2 blocks")
    norm, head, cap = _tail_modules(lm)
    N, S = input_ids.shape
    # half the tokens of a scoring batch: this pass caches every block's input
    bs = max(1, int(batch_size or auto_batch_size(lm.device, S, share=0.5)))
    dense_nll, nll = 0.0, [0.0] * L
    steps_per_batch = L + 1
    n_batches = math.ceil(N / bs)
    done_steps, total_steps = 0, n_batches * steps_per_batch
    execs = 0
    t0 = time.perf_counter()

    def tick(msg: str) -> None:
        nonlocal done_steps
        done_steps += 1
        if progress is not None:
            progress(min(done_steps / total_steps, 1.0), msg)
        if should_stop is not None and should_stop():
            raise Cancelled()

    for b, start in enumerate(range(0, N, bs)):
        ids = input_ids[start:start + bs].to(lm.device)
        xs, kws, logits = _capture(lm, ids)
        execs += L
        dense_nll += float(F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                           ids[:, 1:].reshape(-1), reduction="sum"))
        del logits
        tick(f"batch {b + 1}/{n_batches}: dense pass")
        for i in range(L):
            h = xs[i]  # (B, S, H) input of block i == what block i+1 receives once block i is gone
            for j in range(i + 1, L):
                h = _run_block(blocks[j], h, kws[j])
                execs += 1
            nll[i] += _nll_sum(norm, head, cap, h, ids)
            tick(f"batch {b + 1}/{n_batches}: without block {i}")
        del xs, kws
    tokens = N * (S - 1)
    dense_loss = dense_nll / tokens
    dense_ppl = math.exp(min(dense_loss, 700.0))
    layers = []
    for i in range(L):
        loss = nll[i] / tokens
        ppl = math.exp(min(loss, 700.0))
        layers.append({"index": i, "loss": loss, "ppl": ppl, "delta_loss": loss - dense_loss,
                       "delta_ppl": ppl - dense_ppl})
    counts = block_executions(L, n_batches)
    mem = memory_estimate(lm, min(bs, N), S)
    return Damage(
        model=lm.source, num_layers=L, dense_loss=dense_loss, dense_ppl=dense_ppl, layers=layers,
        calibration=dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(tokens)),
        meta={"seconds": round(time.perf_counter() - t0, 3), "batch_size": bs, "device": str(lm.device),
              "dtype": str(lm.dtype).replace("torch.", ""), "block_executions": execs,
              "naive_block_executions": counts["naive"], "saving": round(counts["saving"], 4),
              "cache_bytes_per_batch": mem["cache_bytes"], "logits_bytes_per_batch": mem["logits_bytes"],
              "memory_bytes_per_batch": mem["total_bytes"],
              "method": "cached block inputs: one dense pass per batch, then blocks i+1..L-1 for each i"},
    )


@torch.inference_mode()
def naive_damage(lm, input_ids: torch.Tensor, batch_size: int = 2) -> dict:
    """Reference: remove each block with ``prune.pruned_model`` and run ``evaluate.perplexity``."""
    from .evaluate import perplexity
    from .prune import pruned_model

    L = lm.num_layers
    dense = perplexity(lm.model, input_ids, batch_size=batch_size, device=lm.device)
    per = [perplexity(pruned_model(lm, [j for j in range(L) if j != i]), input_ids, batch_size=batch_size,
                      device=lm.device) for i in range(L)]
    return {"dense_loss": dense["nll"], "losses": [p["nll"] for p in per], "ppls": [p["ppl"] for p in per]}


def benchmark_damage(lm, input_ids: torch.Tensor, batch_size: int | None = None) -> dict:
    """Time the cached implementation against the naive one and check they agree.

    A benchmark, not a test: run it from ``bench/bench_damage.py`` (it does ~2x the work of one
    damage measurement).
    """
    def sync():
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)

    sync()
    t0 = time.perf_counter()
    dmg = measure_damage(lm, input_ids, batch_size=batch_size)
    sync()
    t_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = naive_damage(lm, input_ids, batch_size=dmg.meta["batch_size"])
    sync()
    t_naive = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(dmg.losses(), ref["losses"]))
    return {"model": lm.name, "num_layers": lm.num_layers, "windows": int(input_ids.shape[0]),
            "seq_len": int(input_ids.shape[1]), "cached_s": round(t_cached, 3), "naive_s": round(t_naive, 3),
            "speedup": round(t_naive / t_cached, 2) if t_cached > 0 else None,
            "block_executions_cached": dmg.meta["block_executions"],
            "block_executions_naive": dmg.meta["naive_block_executions"],
            "max_abs_loss_diff": diff}
