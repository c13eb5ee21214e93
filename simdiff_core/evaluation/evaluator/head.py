"""The loss head: the calibration loss from the hidden state leaving the last block.

The loss is the mean NLL of tokens 1..S-1 of every window (``evaluate.perplexity``'s definition). The
model's tail runs as the model runs it: final norm, OPT's ``project_out``, the LM head and the model's
own logit post-processing (Gemma2/3 final soft-capping, Granite ``logits_scaling``, Cohere
``logit_scale``). A linear head runs in tiles of rows x ``VOCAB_TILE`` vocabulary entries (running
max and sum of exponentials per row, float64 sums), each block of rows reading the head weight once,
whose float32 logits stay under ``head_chunk_bytes``: never the whole (B, S, V) tensor, and without
the last position of each window (it predicts nothing). Why tiles rather than row chunks: a row
chunk of a large vocabulary (Gemma3: 262144 entries, 1 MiB of float32 logits per row) holds only a
few dozen rows, and each chunk re-reads the whole head weight (671 MB for Gemma3-270M); the tiles
stay in cache (measured: ``bench/RESULTS.md``, evaluation section). Any other head runs in row chunks.

``LossHead.check`` compares the tail's logits with the model's own on a few positions and refuses
(SimDiffError) a model whose logits it does not reproduce, instead of returning silently different
numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...common.errors import SimDiffError
from ...models.blocks import get_attr_path, text_config

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")
DEFAULT_HEAD_CHUNK_BYTES = 32 * 2 ** 20
CHECK_ROWS = 8  # positions whose logits the capture asks the model for (the tail check)
VOCAB_TILE = 2048  # vocabulary entries per head tile in the loss (see LossHead.nll_sum_tiled)


def head_chunk_rows(vocab: int, head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES) -> int:
    """Rows of the LM head computed at once: their float32 logits stay under ``head_chunk_bytes``."""
    return max(1, int(head_chunk_bytes) // (4 * max(1, int(vocab))))


def tail_modules(lm):
    """(final norm, projection after the norm or None, LM head, post-processing fn) of a LoadedModel."""
    model = lm.model
    owner_path = lm.block_path.rsplit(".", 1)[0] if "." in lm.block_path else ""
    owner = get_attr_path(model, owner_path) if owner_path else model
    norm = None
    for name in FINAL_NORM_NAMES:
        m = getattr(owner, name, None)
        if isinstance(m, nn.Module):
            norm = m
            break
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise SimDiffError(f"{lm.name}: no LM head found (get_output_embeddings() is None); the loss needs logits")
    if norm is None:
        raise SimDiffError(f"{lm.name}: no final norm found on '{owner_path or 'model'}' "
                           f"(looked for {', '.join(FINAL_NORM_NAMES)})")
    proj = getattr(owner, "project_out", None)  # OPT: hidden -> word_embed_proj_dim after the final norm
    proj = proj if isinstance(proj, nn.Module) else None
    cfg = text_config(model.config)
    cap = getattr(cfg, "final_logit_softcapping", None)
    scaling = getattr(cfg, "logits_scaling", None)      # Granite: logits / logits_scaling
    scale = getattr(cfg, "logit_scale", None)           # Cohere: logits * logit_scale

    def post(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if scaling is not None:
            logits = logits / scaling
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return norm, proj, head, post


class LossHead:
    """The tail of ``lm`` (``tail_modules``) and the loss computed from a last block's output.
    ``stats["head_rows"]`` counts the rows that went through the full head."""

    def __init__(self, lm, head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES, stats: dict | None = None):
        self.name, self.dtype = lm.name, lm.dtype
        self.norm, self.proj, self.head, self.post = tail_modules(lm)
        self.head_chunk_bytes = int(head_chunk_bytes)
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("head_rows", 0)

    @property
    def vocab(self) -> int:
        return int(getattr(self.head, "out_features", 0) or self.head.weight.shape[0])

    def is_linear(self) -> bool:
        """True when the LM head is a plain linear layer (tiles and vocabulary subsets are slices of its rows)."""
        w = getattr(self.head, "weight", None)
        return isinstance(self.head, nn.Linear) and isinstance(w, torch.Tensor) and w.ndim == 2

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm (and OPT's projection) of hidden states: what the LM head reads."""
        h = self.norm(h)
        return self.proj(h) if self.proj is not None else h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.post(self.head(self.normed(h)))

    def check(self, last: torch.Tensor, logits: torch.Tensor) -> None:
        """Refuse a model whose logits the tail (norm, head, post-processing) does not reproduce."""
        rows = min(CHECK_ROWS, last.shape[1], logits.shape[1])
        mine = self.logits(last[:1, -rows:]).float()
        ref = logits[:1, -rows:].float()
        tol = 1e-3 if self.dtype == torch.float32 else 5e-2
        err = float((mine - ref).abs().max())
        if not err <= tol * max(1.0, float(ref.abs().max())):
            raise SimDiffError(f"{self.name}: the cached evaluation cannot reproduce this model's logits "
                               f"(max difference {err:.3g}); its family post-processes logits in a way "
                               f"this tool does not know")

    def nll_sum(self, last: torch.Tensor, ids: torch.Tensor) -> float:
        """Summed NLL of tokens 1..S-1 from the last block's output: the head in tiles of rows x
        ``VOCAB_TILE`` vocabulary entries (a linear head), else in row chunks."""
        h = last[:, :-1].reshape(-1, last.shape[-1])
        tgt = ids[:, 1:].reshape(-1)
        if self.is_linear():
            return self.nll_sum_tiled(h, tgt)
        rows = head_chunk_rows(self.vocab, self.head_chunk_bytes)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            logits = self.logits(h[s:s + rows]).float()
            total += F.cross_entropy(logits, tgt[s:s + rows], reduction="sum").double()
        self.stats["head_rows"] += h.shape[0]
        return float(total)

    def nll_sum_tiled(self, h: torch.Tensor, tgt: torch.Tensor) -> float:
        """``nll_sum`` for a linear head: each block of rows reads the head weight once, in slices of
        ``VOCAB_TILE`` entries, keeping a running max and sum of exponentials (float64) per row, and the
        target's logit from the slice that holds it. Same loss as a row-chunked cross-entropy to float
        rounding (the sums are more accurate)."""
        W, b = self.head.weight, self.head.bias
        V = int(W.shape[0])
        vt = min(V, VOCAB_TILE)
        rows = max(1, self.head_chunk_bytes // (4 * vt))
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            hn = self.normed(h[s:s + rows])
            t = tgt[s:s + rows]
            m = se = zt = None
            for v0 in range(0, V, vt):
                z = self.post(F.linear(hn, W[v0:v0 + vt], None if b is None else b[v0:v0 + vt])).float()
                idx = t - v0
                inside = (idx >= 0) & (idx < z.shape[1])
                picked = z.gather(1, idx.clamp(0, z.shape[1] - 1)[:, None])[:, 0]
                zt = picked if zt is None else torch.where(inside, picked, zt)
                cm = z.amax(1)
                if m is None:
                    m = cm
                    se = torch.exp(z.sub_(m[:, None])).sum(1, dtype=torch.float64)
                else:
                    nm = torch.maximum(m, cm)
                    se = se * torch.exp((m - nm).double()) + torch.exp(z.sub_(nm[:, None])).sum(1, dtype=torch.float64)
                    m = nm
            total += (m.double() + torch.log(se) - zt.double()).sum()
        self.stats["head_rows"] += h.shape[0]
        return float(total)

    def column_mass(self, h: torch.Tensor) -> torch.Tensor:
        """Summed softmax probability of every vocabulary entry over the predicted rows of one final state."""
        h = h[:, :-1].reshape(-1, h.shape[-1])
        V = int(self.head.weight.shape[0])
        rows = head_chunk_rows(V, self.head_chunk_bytes)
        mass = torch.zeros(V, dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            z = self.logits(h[s:s + rows]).float()
            mass += torch.softmax(z, dim=-1).sum(0).double()
        self.stats["head_rows"] += h.shape[0]
        return mass
