"""Repair stage (between pruning and evaluation): training-free fixes folded into a pruned model's weights.

    from simdiff_core.repair import fit_repair, apply_repair, Repair, REPAIR_METHODS
    rep = fit_repair(lm, removed_layers, calib_ids, method="lstsq")   # dense model, never mutated
    repaired = apply_repair(pruned_view, rep)                         # new model; shares all but the folded weights

``repair.py`` fits and applies, ``accumulate.py`` holds the per-span least-squares sums (reusable by
a block-streaming pass), ``sites.py`` says per family where the fold is exact or refuses in one line,
``span_fits.py`` gives the dense-fit repair of *any* span from one capture (the repair-aware search).
"""

from .accumulate import SpanAccumulator
from .repair import EXPORT_NOTE, FIT_MODES, REPAIR_METHODS, Repair, apply_repair, fit_repair, removed_spans
from .sites import RepairRefused, refusal
from .span_fits import DenseSpanFits

__all__ = ["DenseSpanFits", "EXPORT_NOTE", "FIT_MODES", "REPAIR_METHODS", "Repair", "RepairRefused", "SpanAccumulator",
           "apply_repair", "fit_repair", "refusal", "removed_spans"]
