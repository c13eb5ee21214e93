"""Block drill-down: which tokens does one block change most, and by how much?

    from simdiff_core.analysis.drilldown import drill_down
    d = drill_down(lm, ids, block=11, windows=4, top=20)
    d.top            # [{"window", "position", "token", "value", "before", "after", "x_norm"}, ...]
    d.values         # (windows, S) relative change of every token

For block ``b`` with input hidden state ``x_t`` and output ``y_t`` at token ``t``, the relative
change is ``r_t = ||y_t - x_t||_2 / ||x_t||_2`` (the square root of the per-token quantity whose
mean is ``mssd_rel``). The tokens with the largest ``r_t`` are where a block does its work — and
where massive activations and BOS/attention-sink tokens show up, the evidence behind an MSSD spike.

Cost: a second, bounded forward pass over the first ``windows`` calibration windows (default 4) that
stops right after block ``b`` (the later blocks never run); memory is one (windows, S, H) input and
output of that block. Nothing is kept on the model (run-scoped hooks, ``hooks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..common.errors import SimDiffError
from .hooks import block_hooks

MAX_WINDOWS = 16


class _Enough(Exception):
    """Raised inside the hook once the block has run: the later blocks are not needed."""


@dataclass
class DrillDown:
    block: int
    values: np.ndarray          # (W, S) relative change r_t
    x_norm: np.ndarray          # (W, S) ||x_t||
    top: list[dict]             # the top tokens, largest r_t first

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.top)

    def summary(self) -> dict:
        v = self.values.ravel()
        return {"block": self.block, "tokens": int(v.size), "median": float(np.median(v)), "max": float(v.max()),
                "share_top": float(np.sort(v)[::-1][:len(self.top)].sum() / max(v.sum(), 1e-30))}


def _forward_until(model, block_module, ids, mask=None):
    from .score import forward_base

    captured = {}

    def on_block(i, x, y):
        captured["x"], captured["y"] = x.detach().float().cpu(), y.detach().float().cpu()
        raise _Enough()

    try:
        with torch.inference_mode(), block_hooks({0: block_module}, on_block, name="drill-down"):
            forward_base(model, ids, mask)
    except _Enough:
        pass
    if "x" not in captured:
        raise SimDiffError("the block never ran during the drill-down pass")
    return captured["x"], captured["y"]


def drill_down(lm, input_ids: torch.Tensor, block: int, windows: int = 4, top: int = 20, context: int = 8) -> DrillDown:
    """The ``top`` tokens of the first ``windows`` calibration windows that block ``block`` changes most."""
    L = len(lm.blocks)
    if not 0 <= int(block) < L:
        raise SimDiffError(f"block {block} does not exist: the model has blocks 0..{L - 1}")
    if input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise SimDiffError("drill-down needs calibration windows: calibrate first")
    w = max(1, min(int(windows), MAX_WINDOWS, input_ids.shape[0]))
    ids = input_ids[:w].to(lm.device)
    x, y = _forward_until(lm.model, lm.blocks[int(block)], ids)
    xn = torch.linalg.vector_norm(x, dim=-1)
    r = (torch.linalg.vector_norm(y - x, dim=-1) / xn.clamp_min(1e-12)).numpy()
    xn = xn.numpy()
    flat = np.argsort(-r, axis=None, kind="stable")[: max(1, int(top))]
    tok = lm.tokenizer
    ids_cpu = input_ids[:w].cpu()
    rows = []
    for f in flat:
        win, pos = divmod(int(f), r.shape[1])
        seq = ids_cpu[win].tolist()
        rows.append({
            "window": win, "position": pos, "value": float(r[win, pos]), "x_norm": float(xn[win, pos]),
            "token": _decode(tok, seq[pos:pos + 1]),
            "before": _decode(tok, seq[max(0, pos - context):pos]),
            "after": _decode(tok, seq[pos + 1:pos + 1 + max(1, context // 2)]),
            "special": bool(tok is not None and seq[pos] in set(getattr(tok, "all_special_ids", []) or [])),
        })
    return DrillDown(int(block), r, xn, rows)


def _decode(tok, ids: list[int]) -> str:
    if tok is None:
        return " ".join(map(str, ids))
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
