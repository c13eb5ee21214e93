"""Where the app's exports go and the session's table of them (Export & evaluate, Recovery & accuracy)."""

from __future__ import annotations

import os
from pathlib import Path

from ui import state
from ui.shell import ROOT


def export_root() -> Path:
    """Where exports go: $SIMDIFF_EXPORT_DIR or ./exports under the project."""
    return Path(os.environ.get("SIMDIFF_EXPORT_DIR", ROOT / "exports"))


def plan_evaluation(plan):
    """The Export page's last ``records.Evaluation`` of ``plan`` in this session (any windows), or None."""
    found = None
    for key, ev in state.result("evals").items():
        if isinstance(key, tuple) and key and key[0] == tuple(plan.removed_layers):
            found = ev
    return found


def record_export(exports: list, out: Path, plan, evaluation=None, recovered: bool = False) -> list:
    """The session's export list with ``out`` (re)placed last: one row for the exports table."""
    zp = Path(out).with_suffix(".zip")
    ev = evaluation
    row = {"name": Path(out).name, "path": str(out), "zip": str(zp), "criterion": plan.criterion,
           "alpha": plan.alpha, "removed": plan.num_removed, "of": plan.num_layers, "blocks": plan.removed_layers,
           "ppl_dense": ev.ppl_dense if ev else None,
           "ppl_pruned": (ev.ppl_recovered if recovered else ev.ppl_pruned) if ev else None,
           "zip_MB": round(zp.stat().st_size / 2**20, 1) if zp.is_file() else None}
    return [e for e in exports if e["path"] != str(out)] + [row]
