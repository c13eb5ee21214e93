"""The loss head: the calibration loss from the hidden state leaving the last block.

The loss is the mean NLL of tokens 1..S-1 of every window (``evaluate.perplexity``'s definition). The
model's tail runs as the model runs it: final norm, OPT's ``project_out``, the LM head and the model's
own logit post-processing (Gemma2/3 final soft-capping, Granite ``logits_scaling``, Cohere
``logit_scale``), never on the last position of a window (it predicts nothing).

A linear head computes each row's NLL in two parts, every log-sum-exp in float64 from the float32
logits: ``a`` over a vocabulary subset S plus the row's target (S: 1/8 of the vocabulary by default,
the entries with the most probability mass under the first state this head evaluates, then fixed),
and ``c`` over the rest; the row's NLL is ``logaddexp(a, c) - z_target``. Why two parts: ``a - z_target``
alone is the lower bound that exact elimination uses (``bounds.py``), and an exact value assembled from
the very numbers of its bound can never fall below it in floating point; and every exact value, from
``losses`` or from ``losses_bounded``, comes from this one computation, so equal states give equal
values bit for bit (ties stay ties). The rest runs over the full head in tiles of rows x
``VOCAB_TILE`` vocabulary entries (S and the target masked), each block of rows reading the head weight
once, whose float64 logits stay under ``head_chunk_bytes``: never the whole (B, S, V) tensor. Why tiles
rather than row chunks: a row chunk of a large vocabulary (Gemma3: 262144 entries) holds only a few
dozen rows, and each chunk re-reads the whole head weight (671 MB for Gemma3-270M); the tiles stay in
cache (measured: ``bench/RESULTS.md``, evaluation section). Cost: 1 + |S|/V of a head per row (1.125 by
default). Any other head runs in row chunks of float32 cross-entropy (no bounds).

``LossHead.check`` compares the tail's logits with the model's own on a few positions and refuses
(SimDiffError) a model whose logits it does not reproduce, instead of returning silently different
numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...common.errors import SimDiffError
from ...models.blocks import get_attr_path, text_config

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")
DEFAULT_HEAD_CHUNK_BYTES = 32 * 2 ** 20
CHECK_ROWS = 8  # positions whose logits the capture asks the model for (the tail check)
VOCAB_TILE = 2048  # vocabulary entries per head tile in the loss (see LossHead.complement_rows)


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

    def __init__(self, lm, head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES, stats: dict | None = None,
                 subset_size: int = 1):
        self.name, self.dtype = lm.name, lm.dtype
        self.norm, self.proj, self.head, self.post = tail_modules(lm)
        self.head_chunk_bytes = int(head_chunk_bytes)
        self.subset_size = int(subset_size)  # entries of the vocabulary subset S (linear heads)
        self.subset: dict | None = None  # S, fixed on first use (pick_subset)
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

    def predicted(self, last: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden state of every predicting position, its target token): positions 0..S-2 of each window."""
        return last[:, :-1].reshape(-1, last.shape[-1]), ids[:, 1:].reshape(-1)

    def nll_sum(self, last: torch.Tensor, ids: torch.Tensor) -> float:
        """Summed NLL of tokens 1..S-1 from the last block's output. A linear head: the subset part and
        the complement part (``subset_rows``, ``complement_rows``, ``assemble``; the subset is picked
        from this state's probability mass on first use); any other head: row-chunked cross-entropy."""
        h, tgt = self.predicted(last, ids)
        if self.is_linear():
            a, zt = self.subset_rows(h, tgt)
            return self.assemble(a, zt, self.complement_rows(h, tgt))
        rows = head_chunk_rows(self.vocab, self.head_chunk_bytes)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            logits = self.logits(h[s:s + rows]).float()
            total += F.cross_entropy(logits, tgt[s:s + rows], reduction="sum").double()
        self.stats["head_rows"] += h.shape[0]
        return float(total)

    # ------------------------------------------------------------- the two parts of a linear head's loss
    def pick_subset(self, h: torch.Tensor) -> None:
        """Fix the vocabulary subset S: the ``subset_size`` entries with the most probability mass over
        the predicting rows ``h``, with its slice of the head weight and bias (kept for this head's life)."""
        W, b = self.head.weight, self.head.bias
        V = int(W.shape[0])
        mass = self.column_mass(h)
        S = torch.topk(mass, max(1, min(V, self.subset_size))).indices.sort().values.to(W.device)
        inside = torch.zeros(V, dtype=torch.bool, device=W.device)
        inside[S] = True
        self.subset = {"S": S, "inside": inside, "W": W[S].contiguous(), "b": None if b is None else b[S].contiguous()}

    def subset_rows(self, h: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per predicting row (float64): a = logsumexp of the logits over S and the row's target, zt = the
        target's logit. ``a - zt`` is a lower bound of the row's NLL (dropping terms lowers a logsumexp)."""
        if self.subset is None:
            self.pick_subset(h)
        W, b, S = self.subset["W"], self.subset["b"], self.subset["S"]
        rows = head_chunk_rows(W.shape[0] + 1, self.head_chunk_bytes)
        a_out, z_out = [], []
        inside = self.subset["inside"][tgt]
        for s in range(0, h.shape[0], rows):
            hn = self.normed(h[s:s + rows])
            t = tgt[s:s + rows]
            zs = self.post(F.linear(hn, W, b)).double()
            zt = (hn * self.head.weight[t]).sum(-1)
            if b is not None:
                zt = zt + self.head.bias[t]
            zt = self.post(zt).double()
            a = torch.logsumexp(zs, dim=-1)
            a_out.append(torch.where(inside[s:s + rows], a, torch.logaddexp(a, zt)))
            z_out.append(zt)
        self.stats["subset_rows"] = self.stats.get("subset_rows", 0) + h.shape[0]
        return torch.cat(a_out), torch.cat(z_out)

    def complement_rows(self, h: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Per predicting row (float64): logsumexp of the logits outside S and the row's target (-inf when
        there are none), over the full head in tiles of rows x ``VOCAB_TILE`` entries, S and target masked."""
        W, b = self.head.weight, self.head.bias
        V = int(W.shape[0])
        vt = min(V, VOCAB_TILE)
        rows = max(1, self.head_chunk_bytes // (8 * vt))  # float64 logits of one tile
        inside = self.subset["inside"]
        out = []
        for s in range(0, h.shape[0], rows):
            hn = self.normed(h[s:s + rows])
            t = tgt[s:s + rows]
            c = None
            for v0 in range(0, V, vt):
                z = self.post(F.linear(hn, W[v0:v0 + vt], None if b is None else b[v0:v0 + vt])).double()
                z.masked_fill_(inside[v0:v0 + vt][None, :], float("-inf"))
                idx = t - v0
                own = (idx >= 0) & (idx < z.shape[1])
                z[own.nonzero()[:, 0], idx[own]] = float("-inf")
                lse = torch.logsumexp(z, dim=-1)
                c = lse if c is None else torch.logaddexp(c, lse)
            out.append(c)
        self.stats["head_rows"] += h.shape[0]
        return torch.cat(out)

    @staticmethod
    def assemble(a: torch.Tensor, zt: torch.Tensor, c: torch.Tensor) -> float:
        """The summed NLL of the rows: ``logaddexp(a, c) - zt`` per row, computed as
        ``max(a, c) + log1p(exp(-|a - c|))`` (never below ``a``: see ``bounds.py``), summed by ``math.fsum``."""
        hi = torch.maximum(a, c)
        lae = torch.where(torch.isneginf(c), a, hi + torch.log1p(torch.exp(-(a - c).abs())))
        return math.fsum((lae - zt).tolist())

    @staticmethod
    def lower_bound(a: torch.Tensor, zt: torch.Tensor) -> float:
        """The summed lower bound of the rows' NLL, ``a - zt``, summed by ``math.fsum``."""
        return math.fsum((a - zt).tolist())

    def column_mass(self, h: torch.Tensor) -> torch.Tensor:
        """Summed softmax probability of every vocabulary entry over predicting rows ``h`` (``predicted``)."""
        V = int(self.head.weight.shape[0])
        rows = head_chunk_rows(V, self.head_chunk_bytes)
        mass = torch.zeros(V, dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            z = self.logits(h[s:s + rows]).float()
            mass += torch.softmax(z, dim=-1).sum(0).double()
        self.stats["head_rows"] += h.shape[0]
        return mass
