"""``PrefixEvaluator``: the calibration loss of many layouts of one model, sharing their common prefixes.

Why it is cheaper. Two layouts that agree on blocks 0..i-1 give the same hidden state entering
position i. The evaluator keeps, per batch of windows, the hidden states entering every position
under the last layout it evaluated (the "path"); a new layout that first differs from it at position
i starts from that cached state and runs only positions i..L-1 and the loss head (``head.py``).
``losses(layouts)`` sorts its layouts lexicographically by membership (kept before skipped), so a
greedy step's candidates, auto alpha's plans or damage's single removals share their prefixes
(depth-first order of the prefix trie), and processes the windows one batch at a time. Blocks are
called with the arguments the model passed them in the recorded forward (``capture.py``).

Cost. Per batch, construction runs one dense forward (the model returns logits for only
``CHECK_ROWS`` positions; the dense loss comes from the loss head). A layout first differing from
the cached path at position i costs the kept blocks among i..L-1 plus the head; ``stats`` counts
block calls. ``lazy=True`` (auto alpha, where no layout is the dense model) skips the dense pass: the
lazy capture gives every block's call arguments and block 0's input and output for about one
block's compute; the path then grows only where layouts need it and ``dense_loss`` is computed on
first use. A set of layouts evaluated in one ``losses`` call then costs exactly the edges of their
prefix trie plus one head each (``stats["capture_block_calls"] + stats["block_calls"]``), the floor
of any exact evaluator.

Memory bound. Per batch: its token ids, its recorded kwargs (shared tensors: rotary tables, masks)
and the hidden state entering block 0. Paths (L+1 hidden states of (B, S, H) each, about
(L+1) * B * S * H * itemsize bytes per batch: 30 blocks, 4 x 256 tokens, H=576, fp32 = 73 MB) are
kept across calls for as many batches as fit in ``cache_bytes`` (default 256 MiB); the other
batches recompute their path from block 0 on each call (one working path at a time). Peak extra
memory is therefore <= cache_bytes + one path + one head tile (``head_chunk_bytes``, default
32 MiB of float32 logits) + the kwargs — bounded by the batch size, not the number of windows or
candidates. No model or weight copies are made. ``losses_bounded`` adds what ``bounds.py`` says.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ...analysis.score import auto_batch_size
from ...common.errors import Cancelled, SimDiffError
from ...common.progress import Progress
from ..evaluate import ppl_from_loss
from . import bounds
from .capture import capture_dense, capture_lazy, recording_view, run_recorded
from .head import DEFAULT_HEAD_CHUNK_BYTES, LossHead

DEFAULT_CACHE_BYTES = 256 * 2 ** 20


class PrefixEvaluator:
    """Calibration loss of layouts of ``lm`` from cached block inputs (see the module docstring).

    A layout is a removal set (iterable of block indices) or a tuple of length L whose entries are
    a module (the block, or a replacement) or None (position skipped). ``should_stop()`` is polled
    between candidates and raises ``Cancelled``.
    """

    def __init__(self, lm, input_ids: torch.Tensor, batch_size: int | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES,
                 should_stop: Callable[[], bool] | None = None, check_logits: bool = True,
                 bound_vocab: int | None = None, lazy: bool = False):
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0 \
                or input_ids.shape[1] < 2:
            raise SimDiffError("calibration input must be a non-empty (N, S) tensor of token ids with S >= 2")
        self.lm = lm
        self.blocks = list(lm.blocks)
        self.L = len(self.blocks)
        self.stats = {"block_calls": 0, "head_rows": 0, "layouts": 0}
        self.loss_head = LossHead(lm, head_chunk_bytes, self.stats)
        self.norm, self.proj, self.head, self.post = (self.loss_head.norm, self.loss_head.proj,
                                                      self.loss_head.head, self.loss_head.post)
        self.should_stop = should_stop
        N, S = input_ids.shape
        # the scoring rule at half the tokens: this pass caches every block's input (see score.auto_batch_size)
        self.bs = max(1, int(batch_size or auto_batch_size(lm.device, S, share=0.5)))
        self.tokens = N * (S - 1)
        self.shape = (N, S)
        self.head_chunk_bytes = int(head_chunk_bytes)
        self.cache_bytes = int(cache_bytes)
        self.bound_vocab = bound_vocab  # the vocabulary subset's size; None: V // bounds.BOUND_VOCAB_SHARE
        if self.loss_head.is_linear():
            self.loss_head.subset_size = self.bound_vocab_size()
        self.memo: dict[tuple, float] = {}  # loss per key of every plain layout evaluated
        self.batches: list[dict] = []  # per batch: ids, calls (per block), x0 (input of block 0), path
        self.lazy = bool(lazy)
        self.stats["capture_block_calls"] = 0
        hidden = None
        dense_nll = []
        view = recording_view(lm, self.blocks) if self.lazy else None
        with torch.inference_mode():
            for b, start in enumerate(range(0, N, self.bs)):
                self.poll()
                ids = input_ids[start:start + self.bs].to(lm.device)
                calls, states, logits = capture_lazy(lm, view, ids) if self.lazy else capture_dense(lm, self.blocks, ids)
                last = next(s for s in reversed(states) if s is not None)
                self.stats["capture_block_calls"] += sum(1 for s in states[1:] if s is not None)
                if check_logits and b == 0:
                    self.loss_head.check(last, logits)
                del logits
                if not self.lazy:
                    dense_nll.append(self.loss_head.nll_sum(last, ids))
                hidden = states[0].shape[-1]
                self.batches.append({"ids": ids, "calls": calls, "x0": states[0],
                                     "path": (self.dense_key(), tuple(self.blocks), states)})
        if not self.lazy:
            self.memo[self.dense_key()] = self.mean(dense_nll)
        itemsize = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
        self.path_bytes = (self.L + 1) * min(self.bs, N) * S * int(hidden) * itemsize
        self.persistent = max(0, min(len(self.batches), int(cache_bytes) // max(1, self.path_bytes)))
        for bt in self.batches[self.persistent:]:
            bt["path"] = None  # recomputed from x0 on every call (memory bound)

    # ----------------------------------------------------------------- layouts and paths
    def dense_key(self) -> tuple:
        return tuple(id(b) for b in self.blocks)

    def layout(self, spec) -> tuple:
        """A removal set or a layout -> the layout tuple (module or None per position)."""
        if isinstance(spec, tuple) and len(spec) == self.L and any(isinstance(s, nn.Module) for s in spec):
            if not all(s is None or isinstance(s, nn.Module) for s in spec):
                raise SimDiffError("a layout holds a module or None at every block position")
            return spec
        removed = set()
        for i in spec:
            i = int(i)
            if not 0 <= i < self.L:
                raise SimDiffError(f"block index {i} is out of range 0..{self.L - 1}")
            removed.add(i)
        if len(removed) >= self.L:
            raise SimDiffError("cannot evaluate a model with no blocks")
        return tuple(None if j in removed else self.blocks[j] for j in range(self.L))

    def is_plain(self, layout) -> bool:
        """True when the layout uses only the model's own blocks (then its key is stable and memoised)."""
        return all(m is None or m is b for m, b in zip(layout, self.blocks))

    @staticmethod
    def key(layout) -> tuple:
        return tuple(0 if m is None else id(m) for m in layout)

    def advance(self, bt: dict, layout: tuple, key: tuple) -> torch.Tensor:
        """Hidden state after the last position under ``layout`` for batch ``bt``, reusing its path."""
        L = self.L
        path = bt["path"]
        if path is None:
            states = [bt["x0"]] + [None] * L
            start = 0
        else:
            pkey, _, states = path
            # the first position where the layouts differ, or past which the path is not computed yet
            start = next((j for j in range(L) if pkey[j] != key[j] or states[j + 1] is None), L)
            states = list(states[:start + 1]) + [None] * (L - start)
        h = states[start]
        for j in range(start, L):
            m = layout[j]
            if m is not None:
                h = self._run(m, h, bt["calls"][j])
            states[j + 1] = h
        bt["path"] = (key, layout, states)
        return h

    def _run(self, block, h, call):
        self.stats["block_calls"] += 1
        return run_recorded(block, h, call)

    def poll(self) -> None:
        """Raise ``Cancelled`` when ``should_stop()`` says so."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()

    def each_batch(self) -> Iterator[tuple[int, dict]]:
        """(index, batch) in order; after each, a batch beyond the ``persistent`` ones drops its path
        (the memory bound: it is recomputed from x0 next time)."""
        for b, bt in enumerate(self.batches):
            yield b, bt
            if b >= self.persistent:
                bt["path"] = None

    def pending(self, keys: Sequence[tuple], skip) -> list[int]:
        """Indices of the distinct ``keys`` not in ``skip``, in depth-first prefix order."""
        todo, seen = [], set()
        for n, k in enumerate(keys):
            if k not in skip and k not in seen:
                seen.add(k)
                todo.append(n)
        return [todo[j] for j in self.order([keys[n] for n in todo])]

    def mean(self, batch_sums: list[float]) -> float:
        """The loss from per-batch NLL sums: ``math.fsum`` (correctly rounded, independent of the order
        the batches were summed in) over the predicted tokens. Every loss goes through here."""
        return math.fsum(batch_sums) / self.tokens

    def sweep(self, todo: list[int], layouts, keys, progress: Progress | None = None, share: float = 1.0,
              label: str = "") -> Iterator[tuple[int, dict, int, torch.Tensor]]:
        """(batch index, batch, spec index, its last hidden state) for every batch x spec of ``todo``,
        batch by batch (one working path per batch), polling ``should_stop`` and reporting progress
        (``share`` of the whole, messages prefixed with ``label``)."""
        steps = max(1, len(todo) * len(self.batches))
        done = 0
        for b, bt in self.each_batch():
            for c, n in enumerate(todo):
                self.poll()
                yield b, bt, n, self.advance(bt, layouts[n], keys[n])
                done += 1
                if progress is not None:
                    progress(share * done / steps, f"{label}batch {b + 1}/{len(self.batches)}: "
                             f"candidate {c + 1}/{len(todo)}")

    # ----------------------------------------------------------------- public
    @staticmethod
    def order(keys: Sequence[tuple]) -> list[int]:
        """Indices of ``keys`` in depth-first prefix order (kept before skipped at each position)."""
        return sorted(range(len(keys)), key=lambda n: tuple((0, k) if k else (1, 0) for k in keys[n]))

    @torch.inference_mode()
    def losses(self, specs: Iterable, progress: Progress | None = None) -> list[float]:
        """Mean NLL per predicted token of each removal set / layout in ``specs`` (memoised)."""
        layouts = [self.layout(s) for s in specs]
        keys = [self.key(lay) for lay in layouts]
        todo = self.pending(keys, skip=self.memo)
        nll: dict[tuple, list[float]] = {keys[n]: [] for n in todo}
        for _, bt, n, last in self.sweep(todo, layouts, keys, progress):
            nll[keys[n]].append(self.loss_head.nll_sum(last, bt["ids"]))
        out = {}
        for n in todo:
            out[keys[n]] = self.mean(nll[keys[n]])
            if self.is_plain(layouts[n]):
                self.memo[keys[n]] = out[keys[n]]
        self.stats["layouts"] += len(todo)
        return [out[k] if k in out else self.memo[k] for k in keys]

    def loss(self, spec) -> float:
        return self.losses([spec])[0]

    @property
    def dense_loss(self) -> float:
        """The unpruned model's loss (memoised; computed on first use when built with ``lazy=True``)."""
        return self.loss(())

    def ppl(self, spec) -> float:
        return ppl_from_loss(self.loss(spec))

    def ppls(self, specs: Iterable, progress: Progress | None = None) -> list[float]:
        return [ppl_from_loss(v) for v in self.losses(specs, progress)]

    @torch.inference_mode()
    def final_states(self, spec) -> list[torch.Tensor]:
        """Per batch, the final-normed hidden states (float32) under a layout (SLM's similarity): the
        model's ``last_hidden_state`` (OPT: after ``project_out``)."""
        layout = self.layout(spec)
        key = self.key(layout)
        out = []
        for _, bt in self.each_batch():
            self.poll()
            out.append(self.loss_head.normed(self.advance(bt, layout, key)).float())
        return out

    # ----------------------------------------------------------------- single blocks (iterative)
    @property
    def num_batches(self) -> int:
        return len(self.batches)

    def batch_input(self, b: int) -> torch.Tensor:
        """The hidden state entering block 0 for batch ``b`` (kept for the evaluator's lifetime)."""
        return self.batches[b]["x0"]

    @torch.inference_mode()
    def run_block(self, b: int, j: int, h: torch.Tensor) -> torch.Tensor:
        """Block ``j`` on hidden state ``h`` of batch ``b``, called as the model called it."""
        return self._run(self.blocks[j], h, self.batches[b]["calls"][j])

    # ----------------------------------------------------------------- exact elimination (bounds.py)
    def bounds_supported(self) -> bool:
        """True when the LM head is a plain linear layer (the subset head is a slice of its rows)."""
        return self.loss_head.is_linear() and self.head.weight.shape[0] >= 2

    def bound_vocab_size(self) -> int:
        """Entries in the bound's vocabulary subset S (``bound_vocab``, default 1/8 of the vocabulary)."""
        return bounds.bound_vocab_size(int(self.head.weight.shape[0]), self.bound_vocab)

    @torch.inference_mode()
    def losses_bounded(self, specs: Iterable, keep: int = 1, below: float | None = None, ref=None,
                       progress: Progress | None = None) -> list[tuple[float | None, float | None]]:
        """Exact losses only where they can matter: per spec ``(loss or None, lower bound or None)``.

        Every spec whose exact loss could be among the ``keep`` smallest of ``specs`` (ties included),
        or could be strictly below ``below``, gets its exact loss; the others get only a lower bound
        and are provably worse. ``ref``: the layout whose probability mass picks the vocabulary subset
        when none is fixed yet (a lazy evaluator; otherwise the dense model's). How, the proof and the
        cost: ``bounds.py``.
        """
        return bounds.losses_bounded(self, specs, keep=keep, below=below, ref=ref, progress=progress)
