"""The ``repaired_ppl`` objective: a removal set's perplexity on held-out windows *after* the lstsq repair.

    from simdiff_core.evaluation.repaired_objective import RepairedEvaluator, holdout_windows, repaired_ppl
    held = holdout_windows(lm.tokenizer, "wikitext2", after=16, n=8, seq_len=256)   # the 8 windows after the fit ones
    ev = RepairedEvaluator(lm, fit_ids, holdout_ids)   # one capture pass on fit_ids, one dense pass on holdout_ids
    ev.ppl([3, 12, 13, 14])                            # == repaired_ppl(lm, [3, 12, 13, 14], fit_ids, holdout_ids)
    ev.ppls(sets); ev.losses_bounded(sets, keep=1)     # many sets, prefix-shared; exact elimination
    ev.repair([3, 12, 13, 14])                         # the chosen set's Repair record (and maps), no new pass

Why: which blocks to drop depends on whether you repair (issue 22: the best plan after the ReplaceMe
repair is not the best plan before it). A search that means to repair should score each candidate
set *as it will be shipped*: pruned, repaired (``repair.fit_repair``, ``lstsq``, dense fit on the fit
windows), and measured on text the repair was not fitted on — the fit windows flatter a repair that
memorised them (bench/RESULTS.md: the plan with the lowest repaired fit-window perplexity is among the
worst on test text). ``holdout_ids`` must therefore be other windows than ``fit_ids``; the CLI takes
the next windows of the calibration text after the fit windows, and never the test text.

How it stays cheap: with the dense fit a span's map depends only on the dense model's activations
(``repair.span_fits.DenseSpanFits``: captured once, one solve per distinct span, the folded block
memoised). A candidate set is then a *layout* of the held-out ``PrefixEvaluator`` — every removed
position skipped and block ``a − 1`` of every span ``[a, b)`` replaced by its memoised folded copy —
so candidates share cached prefixes (two sets that agree below a position share the states entering
it, folded blocks included) and the exact elimination of ``evaluator/bounds.py`` applies unchanged.
A span starting at block 0 has no block below it and stays unrepaired, as in ``fit_repair``.

Value: equal to ``repaired_ppl`` (``fit_repair`` + ``apply_repair`` + ``evaluate.perplexity`` on the
held-out windows) up to float round-off; tests/evaluation/test_repaired_objective.py checks it, and
``search(..., cached=False)`` runs that reference loop.

Cost: construction = ``DenseSpanFits`` (one forward over the fit windows, its memory) + the
``PrefixEvaluator`` dense pass over the held-out windows; per candidate set the kept blocks from its
first difference with the cached path + the loss head, plus one span fit the first time a span occurs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..common.errors import SimDiffError
from ..common.progress import Progress
from ..repair import DenseSpanFits, apply_repair, fit_repair, removed_spans
from .evaluate import perplexity
from .evaluator import PrefixEvaluator

NAME = "repaired_ppl"
DESCRIPTION = ("held-out perplexity after the lstsq repair (ReplaceMe, dense fit on the calibration windows; "
               "measured on held-out windows, not the fit ones)")


def holdout_windows(tokenizer, source, after: int, n: int, seq_len: int) -> torch.Tensor:
    """The ``n`` windows of ``source`` (a text name or ``TextSource``) that follow its first ``after``
    windows of ``seq_len`` tokens — held out from fit windows ``make_windows(tokenizer, source, after,
    seq_len)``, which are the same text's first windows (``make_windows`` cuts them in order)."""
    from ..data.text import make_windows

    if int(n) < 1:
        raise SimDiffError(f"--holdout-samples must be at least 1, got {n}")
    return make_windows(tokenizer, source, int(after) + int(n), seq_len)[int(after):]


def check_holdout(fit_ids: torch.Tensor, holdout_ids) -> torch.Tensor:
    """``holdout_ids`` as a checked (N, S) tensor that shares no window with ``fit_ids``."""
    if holdout_ids is None:
        raise SimDiffError(f"the {NAME} objective needs held-out windows (holdout_ids; CLI --holdout-samples), other "
                           "than the calibration windows the repair is fitted on")
    if not isinstance(holdout_ids, torch.Tensor) or holdout_ids.ndim != 2 or holdout_ids.shape[0] == 0 \
            or holdout_ids.shape[1] < 2:
        raise SimDiffError("held-out windows must be a non-empty (N, S) tensor of token ids with S >= 2")
    if holdout_ids.shape[1] == fit_ids.shape[1]:
        same = (holdout_ids[:, None, :] == fit_ids[None, :, :]).all(-1).any()
        if bool(same):
            raise SimDiffError(f"the {NAME} objective's held-out windows repeat a calibration (fit) window: a repair "
                               "judged on its own fit text looks better than it is; give other windows")
    return holdout_ids


def repaired_ppl(lm, removed, fit_ids: torch.Tensor, holdout_ids: torch.Tensor, method: str = "lstsq",
                 should_stop: Callable[[], bool] | None = None) -> float:
    """The reference value: ``fit_repair`` (dense fit on ``fit_ids``), ``apply_repair`` to the pruned
    model, ``perplexity`` on ``holdout_ids`` — one fit pass and one full forward per set."""
    from ..pruning.prune import pruned_model

    removed = sorted({int(i) for i in removed})
    kept = [i for i in range(lm.num_layers) if i not in set(removed)]
    rep = fit_repair(lm, removed, fit_ids, method=method, fit="dense", should_stop=should_stop)
    model = pruned_model(lm, kept)
    if rep.maps:  # none when no span has a block below it (only a span at block 0, or nothing removed)
        model = apply_repair(model, rep)
    return float(perplexity(model, holdout_ids, device=lm.device, should_stop=should_stop)["ppl"])


class RepairedEvaluator(PrefixEvaluator):
    """``PrefixEvaluator`` on the held-out windows whose removal sets are evaluated repaired.

    A removal set maps to the layout with its blocks skipped and each span's fold block replaced by
    the memoised folded copy (``layout``); an explicit layout (modules per position) is evaluated as
    given. Losses of removal sets are memoised (the folded blocks live as long as this object, so
    their identities are stable keys). ``fits``: a ``DenseSpanFits`` on the fit windows to share.
    """

    def __init__(self, lm, fit_ids: torch.Tensor, holdout_ids: torch.Tensor, method: str = "lstsq",
                 fits: DenseSpanFits | None = None, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None, **kw):
        holdout_ids = check_holdout(fit_ids, holdout_ids)
        if fits is not None and (fits.method != method or fits.L != lm.num_layers
                                 or fits.tokens != fit_ids.numel()):
            raise SimDiffError("the shared span fits were made for another method, model or fit windows")
        self.fits = fits or DenseSpanFits(lm, fit_ids, method=method, progress=progress, should_stop=should_stop)
        self.method = method
        self.fit_shape = tuple(fit_ids.shape)
        self.holdout_ids = holdout_ids
        super().__init__(lm, holdout_ids, should_stop=should_stop, **kw)

    def layout(self, spec) -> tuple:
        if isinstance(spec, tuple) and len(spec) == self.L and any(isinstance(s, nn.Module) for s in spec):
            return super().layout(spec)
        lay = list(super().layout(spec))
        removed = [j for j, m in enumerate(lay) if m is None]
        for a, b in removed_spans(removed, self.L):
            if a > 0:
                lay[a - 1] = self.fits.folded_block(a, b)
        return tuple(lay)

    def is_plain(self, layout) -> bool:
        return all(m is None or m is b or self.fits.is_folded(m) for m, b in zip(layout, self.blocks))

    def repair(self, removed, calibration: dict | None = None):
        """The ``Repair`` of a removal set (as ``fit_repair(..., fit="dense")`` on the fit windows)."""
        return self.fits.repair(removed, calibration)

    def describe(self) -> dict:
        """What the objective measured, for a plan's details."""
        return {"objective": NAME, "repair": self.method, "fit": "dense",
                "fit_windows": list(self.fit_shape), "holdout_windows": list(self.shape),
                "holdout_note": "held-out windows: none of them is a fit window",
                "spans_folded": self.fits.spans_folded,
                "capture_seconds": round(self.fits.capture_seconds, 3),
                "fit_seconds": round(self.fits.stats["fit_seconds"], 3)}
