"""One evaluator of pruned variants of a model, shared by every method that compares candidates.

    from simdiff_core.evaluation.evaluator import PrefixEvaluator
    ev = PrefixEvaluator(lm, calib_ids)                 # one dense pass per batch: inputs + kwargs of every block
    ev = PrefixEvaluator(lm, calib_ids, lazy=True)      # only the kwargs + block 0; the rest when a layout needs it
    ev.losses([(), (3,), (3, 7), (4, 7)])               # mean NLL per predicted token of each removal set
    ev.ppl((3, 7))                                      # exp(loss), as evaluate.perplexity reports it
    ev.dense_loss                                       # the unpruned model's loss
    ev.losses_bounded(candidates, keep=1)               # exact only where a candidate can be the best

What. The calibration loss (mean NLL of tokens 1..S-1 of every window, ``evaluate.perplexity``'s
definition) of the model with a set of blocks removed — or, more generally, of a *layout*: for every
block position either the original block, a replacement module (e.g. a merged block, see
``methods/slm.py``) or ``None`` (skipped). Greedy/SLEB, beam, local and evolutionary search, auto
alpha, leave-one-out damage and SLM's similarity all evaluate through it.

One idea per file:
  capture.py   how the model calls each block, recorded once per batch (dense forward or lazy stand-ins)
  head.py      the loss head: final norm, projection, LM head in tiles, logit post-processing, tail check
  prefix.py    PrefixEvaluator: cached paths shared by layouts with a common prefix; cost and memory bound
  bounds.py    exact elimination: subset-head lower bounds, and the proof that they never change a choice
"""

from .bounds import BOUND_VOCAB_SHARE
from .head import CHECK_ROWS, DEFAULT_HEAD_CHUNK_BYTES, FINAL_NORM_NAMES, VOCAB_TILE, head_chunk_rows, tail_modules
from .prefix import DEFAULT_CACHE_BYTES, PrefixEvaluator

__all__ = ["BOUND_VOCAB_SHARE", "CHECK_ROWS", "DEFAULT_CACHE_BYTES", "DEFAULT_HEAD_CHUNK_BYTES", "FINAL_NORM_NAMES",
           "PrefixEvaluator", "VOCAB_TILE", "head_chunk_rows", "tail_modules"]
