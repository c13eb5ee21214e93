"""Leave-one-out damage: the calibration loss of the model with exactly one block removed.

    from simdiff_core.evaluation.damage import measure_damage
    dmg = measure_damage(lm, calib_ids)            # Damage: dense loss + per-block loss/ppl without block i
    dmg.deltas()                                   # loss increase per block (the "ground truth" curve)
    scores = dmg.attach(scores)                    # copies damage_loss/damage_ppl into scores.layers
    dmg.save("damage.json")

Cosine, MSSD and MASD are proxies for how much a block matters; this is the thing they proxy.

How (cached prefix). Removing block i does not change anything *before* block i, so the hidden
state entering block i is the same as in the dense model. ``evaluator.PrefixEvaluator`` records,
in one dense forward per batch of windows, every block's input and the arguments the model called it
with (per block: sliding-window families such as Gemma3 pass local and global layers different masks
and rotary tables; GPT-2 passes some positionally). Then for each i it starts from the cached input
of block i, skips block i, runs blocks i+1..L-1, the final norm and the LM head (with the model's
own logit post-processing: Gemma soft-capping, Granite ``logits_scaling``, ...), and accumulates the
NLL exactly as ``evaluate.perplexity`` defines it (float32 cross-entropy of tokens 1..S-1 of each
window). The single removals are run from the deepest block down, so each tail reuses the previous
tail's states: block i+1's input without block i is block i's input.

Cost in block executions per batch: naive (dense baseline + L pruned forwards of L-1 blocks) is
L + L(L-1) = L^2; cached is L + L(L-1)/2, about half (30 blocks: 900 vs 465). The LM head runs L+1
times either way, in row chunks (never the whole (B, S, V) float32 logits at once). Measured against
L+1 plain forwards of the same tokens (``bench/run.py``: ``damage_vs_floor``) it is below 1.

Memory: see ``evaluator.py`` — per batch (L+1) x batch x S x H activations (default 8 x 256 windows,
30 blocks, H=576, batch 4, fp32: 31 x 4 x 256 x 576 x 4 B ~ 73 MB), kept for as many batches as fit
in 256 MiB, plus one chunk of logits (<= 32 MiB). It does not grow with the number of windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..common.errors import SimDiffError
from .evaluator import PrefixEvaluator, auto_batch_size  # noqa: F401  (auto_batch_size: public here too)
from ..common.records import JsonRecord

Progress = Callable[[float, str], None]
DEFAULT_SAMPLES = 8
DEFAULT_SEQ_LEN = 256


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
        from ..analysis.score import Scores

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


def block_executions(num_layers: int, batches: int = 1) -> dict:
    """Block forward calls of the naive and the cached leave-one-out computation."""
    L = num_layers
    naive = L + L * (L - 1)             # dense baseline + L pruned models of L-1 blocks
    cached = L + L * (L - 1) // 2       # dense capture + tails i+1..L-1
    return {"naive": naive * batches, "cached": cached * batches,
            "saving": 1.0 - cached / naive if naive else 0.0}


def memory_estimate(lm, batch: int, seq_len: int) -> dict:
    """Peak extra memory of one damage batch in bytes: ``cache_bytes`` (the L+1 hidden states of
    (batch, S, H) the evaluator keeps per batch), ``logits_bytes`` (the largest head call: one row
    chunk of the batch's B x (S-1) predicted positions, ``evaluator.head_chunk_rows``, as the head
    returns it plus the float32 log-softmax of the cross-entropy, and a float32 copy when the model
    dtype is not float32) and ``total_bytes``. The dense pass asks the model for the logits of only
    a few positions (``logits_to_keep``), so no (B, S, V) tensor exists at any time."""
    from .evaluator import DEFAULT_HEAD_CHUNK_BYTES, head_chunk_rows  # noqa: I001

    cfg = lm.model.config.get_text_config()
    hidden = int(cfg.hidden_size)
    vocab = int(getattr(cfg, "vocab_size", 0) or lm.model.get_output_embeddings().weight.shape[0])
    elt = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
    cache = (lm.num_layers + 1) * batch * seq_len * hidden * elt
    rows = min(batch * (seq_len - 1), head_chunk_rows(vocab, DEFAULT_HEAD_CHUNK_BYTES))
    logits = rows * vocab * (elt + 4 + (4 if elt != 4 else 0))
    return {"cache_bytes": cache, "logits_bytes": logits, "total_bytes": cache + logits}


def measure_damage(lm, input_ids: torch.Tensor, batch_size: int | None = None,
                   progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                   calibration: dict | None = None, evaluator=None) -> Damage:
    """Leave-one-out damage of every block of ``lm`` (a LoadedModel) on windows ``input_ids`` (N, S).

    ``progress(fraction, message)`` is called after every leave-one-out tail; ``should_stop()`` is
    polled at the same points and raises ``Cancelled``. Memory: ``memory_estimate``. Runs through ``evaluator.PrefixEvaluator``
    (pass one built on the same windows to share its cache); memory: see that module.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0 \
            or input_ids.shape[1] < 2:
        raise SimDiffError("calibration input must be a non-empty (N, S) tensor of token ids with S >= 2")
    L = lm.num_layers
    if L < 2:
        raise SimDiffError("leave-one-out damage needs a model with at least 2 blocks")
    t0 = time.perf_counter()
    if progress is not None:
        progress(0.0, "dense pass: recording every block's input")
    ev = evaluator if evaluator is not None else PrefixEvaluator(lm, input_ids, batch_size=batch_size,
                                                                 should_stop=should_stop)
    if tuple(ev.shape) != tuple(input_ids.shape):
        raise SimDiffError("the evaluator was built on other calibration windows")
    calls0 = ev.stats["block_calls"]
    losses = ev.losses([(i,) for i in range(L)],
                       progress=None if progress is None else lambda f, m: progress(f, f"without one block: {m}"))
    N, S = input_ids.shape
    tokens = N * (S - 1)
    dense_loss = ev.dense_loss
    dense_ppl = math.exp(min(dense_loss, 700.0))
    layers = []
    for i in range(L):
        loss = losses[i]
        ppl = math.exp(min(loss, 700.0))
        layers.append({"index": i, "loss": loss, "ppl": ppl, "delta_loss": loss - dense_loss,
                       "delta_ppl": ppl - dense_ppl})
    n_batches = math.ceil(N / ev.bs)
    counts = block_executions(L, n_batches)
    mem = memory_estimate(lm, min(ev.bs, N), S)
    return Damage(
        model=lm.source, num_layers=L, dense_loss=dense_loss, dense_ppl=dense_ppl, layers=layers,
        calibration=dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(tokens)),
        meta={"seconds": round(time.perf_counter() - t0, 3), "batch_size": ev.bs, "device": str(lm.device),
              "dtype": str(lm.dtype).replace("torch.", ""),
              "block_executions": L * n_batches + ev.stats["block_calls"] - calls0,
              "naive_block_executions": counts["naive"], "saving": round(counts["saving"], 4),
              "cache_bytes_per_batch": mem["cache_bytes"], "logits_bytes_per_batch": mem["logits_bytes"],
              "memory_bytes_per_batch": mem["total_bytes"],
              "method": "prefix-cached evaluator: one dense pass per batch, then blocks i+1..L-1 for each i "
                        "(reusing the previous tail's states), LM head in row chunks"},
    )


@torch.inference_mode()
def naive_damage(lm, input_ids: torch.Tensor, batch_size: int = 2) -> dict:
    """Reference: remove each block with ``prune.pruned_model`` and run ``evaluate.perplexity``."""
    from ..pruning.prune import pruned_model
    from .evaluate import perplexity

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
