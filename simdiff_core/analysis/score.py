"""Score every decoder block in one streaming calibration pass.

    from simdiff_core import load_model, make_windows, score_model
    lm = load_model("default")
    ids = make_windows(lm.tokenizer, "wikitext2", n=8, seq_len=256)
    scores = score_model(lm, ids)                 # Scores: per-block metrics + cross-layer matrices
    scores.save("scores.json")

One forward pass of the *base* model (no LM head: its logits are not needed) runs per batch with
hooks on every block (``hooks.py``). Per-block metrics are exact running sums over all tokens
(``metrics.BlockStats``). The cross-layer matrices cannot be exact without keeping every block's
activations for every token, so they are estimated as follows, and ``Scores.matrices["method"]``
says so:

* ``output_cosine[i][j]``: mean over a token subsample of cos(out_i, out_j). The subsample is
  ``matrix_tokens`` positions in total, spread evenly over the batches and, inside each window,
  evenly over positions 1..S-1 (position 0 carries the massive attention-sink activation).
* ``cka[i][j]``: linear CKA between block outputs i and j on the same token subsample.
* ``angular_boundaries[a][b]``: Gromov/PruneMe angular distance arccos(cos)/pi between the hidden
  state at boundary a (input of block a) and boundary b (output of block b-1), on the last token of
  every calibration window (all windows, accumulated per batch). An n-block window starting at
  block l is ``[l][l+n]``.

Extra memory is O(L * matrix_tokens * H) for the subsample and O(L * batch * H) for the last-token
states of the current batch: it does not grow with the number of calibration tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..common.records import JsonRecord
from .hooks import block_hooks, hook_pass
from .linear import write_hooks
from .metrics import BlockStats, importance, simdiff_importance


@dataclass
class Scores(JsonRecord):
    """Per-block metrics and cross-layer matrices for one model and one calibration set."""

    KIND = "scores"

    model: str
    num_layers: int
    layers: list[dict]
    matrices: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    # Per-window sums of the per-block metrics, for bootstrap bands (uncertainty.py); {} in old files.
    windows: dict = field(default_factory=dict)

    def importance(self, criterion: str, alpha: float = 0.5, **kw) -> np.ndarray:
        return importance(self.layers, criterion, alpha=alpha, **kw)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.layers).set_index("index")

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        try:
            layers = d["layers"]
            n = int(d["num_layers"])
            if len(layers) != n or any(int(l["index"]) != i for i, l in enumerate(layers)):
                raise SimDiffError("scores file is inconsistent: layer list does not match num_layers")
            for l in layers:
                for k in ("cosine", "mssd", "masd"):
                    float(l[k])
        except (KeyError, TypeError, ValueError) as e:
            raise SimDiffError(f"malformed scores file: missing or bad field {e}") from None
        windows = d.get("windows") or {}
        if windows:
            from .uncertainty import check_windows

            check_windows(windows, n)
        return cls(d.get("model", "?"), n, layers, d.get("matrices", {}), d.get("calibration", {}), d.get("meta", {}),
                   windows)


class MatrixSampler:
    """Collects the token subsample for the output-cosine/CKA matrices and last-token states."""

    def __init__(self, L: int, per_batch: int, seq_len: int):
        self.L = L
        self.pos = torch.linspace(1, seq_len - 1, steps=min(per_batch, max(seq_len - 1, 1))).round().long().unique() \
            if seq_len > 1 else torch.zeros(1, dtype=torch.long)
        self.sub: list[list[torch.Tensor]] = [[] for _ in range(L)]  # per block: (n, H) float32 on CPU
        self.ang_sum = torch.zeros(L + 1, L + 1, dtype=torch.float64)
        self.ang_count = 0
        self._last: list[torch.Tensor | None] = [None] * (L + 1)
        self._batch_sub: list[torch.Tensor | None] = [None] * L

    def observe(self, i: int, x: torch.Tensor, y: torch.Tensor, take: int) -> None:
        if i == 0:
            self._last[0] = x[:, -1, :].float()
        self._last[i + 1] = y[:, -1, :].float()
        if take > 0:
            # take windows' worth of evenly spaced positions from each sequence in the batch
            pos = self.pos.to(y.device)
            rows = y[:, pos, :].float().reshape(-1, y.shape[-1])
            self._batch_sub[i] = rows[:take].cpu()

    def commit(self) -> None:
        states = torch.stack([s.to(self._last[0].device) for s in self._last])  # (L+1, B, H)
        n = torch.nn.functional.normalize(states, dim=-1)
        cos = torch.einsum("abh,cbh->bac", n, n).clamp(-1, 1)  # (B, L+1, L+1)
        self.ang_sum += (torch.arccos(cos) / math.pi).sum(0).double().cpu()
        self.ang_count += states.shape[1]
        for i, t in enumerate(self._batch_sub):
            if t is not None:
                self.sub[i].append(t)
        self.rollback()

    def rollback(self) -> None:
        self._last = [None] * (self.L + 1)
        self._batch_sub = [None] * self.L

    def matrices(self) -> dict:
        out = {"angular_boundaries": (self.ang_sum / max(self.ang_count, 1)).tolist()}
        if self.sub[0]:
            Y = torch.stack([torch.cat(s) for s in self.sub])  # (L, T, H)
            Yn = torch.nn.functional.normalize(Y, dim=-1)
            out["output_cosine"] = (torch.einsum("ith,jth->ij", Yn, Yn) / Y.shape[1]).tolist()
            out["cka"] = linear_cka_matrix(Y).tolist()
            out["matrix_tokens"] = int(Y.shape[1])
        return out


def finish_scores(stats: BlockStats, sampler: "MatrixSampler") -> tuple[list[dict], dict]:
    """Per-block metrics (with the default-alpha SimDiff column) and the matrices, from the accumulators."""
    layers = stats.layers()
    for l, v in zip(layers, simdiff_importance(layers, alpha=0.5)):
        l["simdiff"] = float(v)
    mats = sampler.matrices()
    mats["method"] = (
        f"output_cosine and cka: subsample of {mats.get('matrix_tokens', 0)} tokens (evenly spaced positions "
        "1..S-1 of each window); angular_boundaries: last token of every window"
    )
    return layers, mats


def linear_cka_matrix(Y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between every pair of (T, H) representations in Y (L, T, H), via T x T Grams."""
    Yc = Y.double() - Y.double().mean(dim=1, keepdim=True)
    K = torch.einsum("ith,ish->its", Yc, Yc)  # (L, T, T) centred Gram matrices
    hsic = torch.einsum("its,jts->ij", K, K)
    norms = torch.sqrt(torch.diagonal(hsic)).clamp_min(1e-12)
    return (hsic / norms[:, None] / norms[None, :]).float()


def forward_base(model, ids, mask=None):
    """Run the model without its LM head when possible (scores only need the blocks)."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    runner = base if isinstance(base, torch.nn.Module) and base is not model else model
    return runner(input_ids=ids, attention_mask=mask, use_cache=False)


def auto_batch_size(device: torch.device, seq_len: int, share: float = 1.0) -> int:
    """Windows per forward batch, the one rule for every pass: about 16k tokens on CUDA (at most 16
    windows) and 2k on CPU (at most 4), times ``share`` for passes that hold more per token (damage
    keeps every block's input: ``share=0.5``)."""
    seq_len = max(int(seq_len), 1)
    if torch.device(device).type == "cuda":
        return max(1, min(int(16 * share), int(16384 * share) // seq_len))
    return max(1, min(4, int(2048 * share) // seq_len))


def score_model(
    lm,
    input_ids: torch.Tensor,
    batch_size: int | None = None,
    attention_mask: torch.Tensor | None = None,
    matrix_tokens: int = 256,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    calibration: dict | None = None,
    window_stats: bool = True,
    first_token: bool = True,
    on_batch: Callable[["Scores"], None] | None = None,
    linear: bool = True,
    linear_max_mb: float | None = None,
    linear_bands: bool = False,
) -> Scores:
    """Score every block of ``lm`` (a LoadedModel) on ``input_ids`` (N, S) in one pass.

    ``progress(fraction, message)`` is called after every block of every batch; ``should_stop()``
    is polled at the same points and raises ``Cancelled``. On CUDA out-of-memory the batch is
    retried with half the batch size, down to 1. ``window_stats`` keeps per-window sums of the
    per-block metrics (``Scores.windows``, O(L x N) numbers) for bootstrap bands.

    ``first_token``: whether position 0 of each window (BOS, where the massive "attention sink"
    activation sits) counts in the per-block metrics. Default True: ShortGPT's Block Influence, which
    SimDiff's similarity term reuses, averages over every token of the calibration sequences. The
    heatmap subsample always uses positions 1..S-1. ``protocol(scores.calibration)`` states both.

    ``on_batch(partial)`` (live curves) is called after every committed batch with the per-block
    metrics of the windows scored so far (``partial_scores``: exactly what scoring only those windows
    gives; no matrices, ``meta["partial"]`` says how far). Cost: O(L) per batch.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise SimDiffError("calibration input must be a non-empty (N, S) tensor of token ids")
    blocks = lm.blocks
    L = len(blocks)
    N, S = input_ids.shape
    bs = batch_size or auto_batch_size(lm.device, S)
    stats = BlockStats(L, windows=window_stats)
    sampler = MatrixSampler(L, per_batch=max(1, math.ceil(matrix_tokens / N)), seq_len=S)
    taken = 0
    state = {"done": 0, "take": 0, "mask": None, "metric_mask": None}
    t0 = time.perf_counter()
    lin = _linear_accumulator(lm, L, linear, linear_max_mb)

    def on_block(i, x, y):
        if x.device != y.device:  # accelerate device maps: the block ran where its weights live
            x = x.to(y.device)
        stats.observe(i, x, y, state["metric_mask"])
        sampler.observe(i, x, y, state["take"])
        lin.observe_block(i, x, y, state["metric_mask"])
        if progress is not None:
            frac = (state["done"] + (i + 1) / L * state["rows"]) / N
            progress(min(frac, 1.0), f"block {i + 1}/{L}, windows {state['done'] + state['rows']}/{N}")
        if should_stop is not None and should_stop():
            raise Cancelled()

    start = 0
    with torch.inference_mode(), block_hooks(blocks, on_block, name="score"), \
            hook_pass(post=write_hooks(blocks, lin.observe_write) if lin.active else {}, name="score-linear"):
        while start < N:
            end = min(start + bs, N)
            ids = input_ids[start:end].to(lm.device)
            mask = attention_mask[start:end].to(lm.device) if attention_mask is not None else None
            state["mask"] = mask
            state["metric_mask"] = metric_mask(mask, end - start, S, ids.device, first_token)
            state["rows"] = end - start
            state["take"] = max(0, min(matrix_tokens - taken, len(sampler.pos) * (end - start)))
            try:
                forward_base(lm.model, ids, mask)
            except torch.OutOfMemoryError:
                stats.rollback()
                sampler.rollback()
                lin.rollback()
                if bs == 1:
                    raise SimDiffError(
                        "out of GPU memory even with batch size 1: use a shorter --seq-len, --dtype "
                        "bfloat16, or --device cpu") from None
                bs = max(1, bs // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            except BaseException:
                stats.rollback()
                sampler.rollback()
                lin.rollback()
                raise
            stats.commit()
            lin.commit()
            taken += state["take"]
            sampler.commit()
            state["done"] = end
            start = end
            if on_batch is not None:
                on_batch(partial_scores(lm, stats, N, S, end, calibration, first_token))
    layers, mats = finish_scores(stats, sampler)
    windows = stats.windows()
    lin_meta = None
    if linear:
        vals, deltas, lin_meta = lin.finish()
        if linear_bands and window_stats and deltas and N >= 2:
            windows.update(_linear_window_pass(lm, input_ids, attention_mask, bs, deltas, first_token, should_stop))
        add_linear(layers, vals)
    return Scores(
        model=lm.source, num_layers=L, layers=layers, matrices=mats,
        calibration=dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(stats.tokens),
                         first_token="included" if first_token else "excluded"),
        meta={"seconds": round(time.perf_counter() - t0, 3), "batch_size": bs, "device": str(lm.device),
              "dtype": str(lm.dtype).replace("torch.", ""), "simdiff_alpha": 0.5,
              "family": lm.family, "version": _version(), **({"linear": lin_meta} if lin_meta else {})},
        windows=windows,
    )


def add_linear(layers: list[dict], vals: list) -> None:
    """Put the linear-replaceability curve into the per-layer dicts (None: undefined for that block)."""
    for l, v in zip(layers, vals):
        l["linear"] = None if v is None else float(v)


def model_hidden_size(model) -> int | None:
    """The width of the residual stream (``hidden_size``, or GPT-2's ``n_embd``); None if the config has neither."""
    from ..models.blocks import text_config

    cfg = text_config(model.config)
    return getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)


def _linear_accumulator(lm, L: int, on: bool, max_mb: float | None, deltas: dict | None = None):
    from .linear import DEFAULT_MAX_MB, LinearAccumulator

    acc = LinearAccumulator(L, lm.blocks, DEFAULT_MAX_MB if max_mb is None else max_mb, model_hidden_size(lm.model),
                            deltas=deltas)
    if not on:
        acc.reason = "not requested"
    return acc


def _linear_window_pass(lm, input_ids, attention_mask, bs: int, deltas: dict, first_token: bool,
                        should_stop) -> dict:
    """Second pass: per-window residuals at the fitted maps (and ‖h_b − h_a‖²) for the bootstrap."""
    from .linear import write_hooks

    L = len(lm.blocks)
    N, S = input_ids.shape
    acc = _linear_accumulator(lm, L, True, None, deltas=deltas)
    state = {}

    def on_block(i, x, y):
        if x.device != y.device:
            x = x.to(y.device)
        acc.observe_block(i, x, y, state["mask"])
        if should_stop is not None and should_stop():
            raise Cancelled()

    with torch.inference_mode(), block_hooks(lm.blocks, on_block, name="score-linear-windows"), \
            hook_pass(post=write_hooks(lm.blocks, acc.observe_write), name="score-linear-windows-write"):
        for start in range(0, N, bs):
            end = min(start + bs, N)
            ids = input_ids[start:end].to(lm.device)
            mask = attention_mask[start:end].to(lm.device) if attention_mask is not None else None
            state["mask"] = metric_mask(mask, end - start, S, ids.device, first_token)
            try:
                forward_base(lm.model, ids, mask)
            except BaseException:
                acc.rollback()
                raise
            acc.commit()
    return acc.windows()


def partial_scores(lm, stats: BlockStats, N: int, S: int, done: int, calibration: dict | None,
                   first_token: bool = True) -> Scores:
    """The per-block metrics of the first ``done`` of ``N`` windows, from a scoring pass in progress.

    Same means (and default-α SimDiff column) as the final Scores would hold for those windows alone;
    no cross-layer matrices (they need the whole pass). ``meta["partial"] = {"windows": done, "of": N}``.
    """
    layers = stats.layers()
    for l, v in zip(layers, simdiff_importance(layers, alpha=0.5)):
        l["simdiff"] = float(v)
    return Scores(
        model=lm.source, num_layers=stats.L, layers=layers, matrices={},
        calibration=dict(calibration or {}, samples=int(done), seq_len=int(S), tokens=int(stats.tokens),
                         first_token="included" if first_token else "excluded"),
        meta={"partial": {"windows": int(done), "of": int(N)}, "device": str(lm.device),
              "dtype": str(lm.dtype).replace("torch.", ""), "simdiff_alpha": 0.5, "family": lm.family,
              "version": _version()},
    )


def metric_mask(mask, B: int, S: int, device, first_token: bool):
    """The token mask for the per-block metrics: the attention mask, minus position 0 if asked."""
    if first_token or S < 2:
        return mask
    m = torch.ones(B, S, device=device) if mask is None else mask.to(device=device, dtype=torch.float32).clone()
    m[:, 0] = 0
    return m


def counts_first_token(calibration: dict | None) -> bool:
    """Whether scores with this ``calibration`` record counted position 0 (older scores did)."""
    return (calibration or {}).get("first_token", "included") == "included"


def protocol(calibration: dict) -> str:
    """One line saying what the scores were measured on (shown by the app and the CLI)."""
    c = calibration or {}
    first = "included" if counts_first_token(c) else "excluded"  # older scores and the streamed path include it
    src = c.get("source") or c.get("description") or "?"
    return (f"{c.get('samples', '?')} x {c.get('seq_len', '?')} tokens of {src}; per-block metrics over "
            f"positions {'0' if first == 'included' else '1'}..S-1 (position 0 / BOS {first}); "
            "heatmaps on a subsample of positions 1..S-1")


def _version() -> str:
    from .. import __version__

    return __version__
