"""One evaluator of pruned variants of a model, shared by every method that compares candidates.

    from simdiff_core.evaluation.evaluator import PrefixEvaluator
    ev = PrefixEvaluator(lm, calib_ids)                 # one dense pass per batch: inputs + kwargs of every block
    ev = PrefixEvaluator(lm, calib_ids, lazy=True)      # only the kwargs + block 0; the rest when a layout needs it
    ev.losses([(), (3,), (3, 7), (4, 7)])               # mean NLL per predicted token of each removal set
    ev.ppl((3, 7))                                      # exp(loss), as evaluate.perplexity reports it
    ev.dense_loss                                       # the unpruned model's loss

What. The calibration loss (mean NLL of tokens 1..S-1 of every window, float32 cross-entropy,
exactly ``evaluate.perplexity``'s definition) of the model with a set of blocks removed — or, more
generally, of a *layout*: for every block position either the original block, a replacement module
(e.g. a merged block, see ``methods/slm.py``) or ``None`` (skipped). Greedy/SLEB, beam, local and
evolutionary search, auto alpha, leave-one-out damage and SLM's similarity all evaluate through it.

Why it is cheaper. Two layouts that agree on blocks 0..i-1 give the same hidden state entering
position i. The evaluator keeps, per batch of windows, the hidden states entering every position
under the last layout it evaluated (the "path"); a new layout that first differs from it at position
i starts from that cached state and runs only positions i..L-1, the final norm and the LM head.
``losses(layouts)`` sorts its layouts lexicographically by membership (kept before skipped), so a
greedy step's candidates, auto alpha's plans or damage's single removals share their prefixes
(depth-first order of the prefix trie), and processes the windows one batch at a time. Blocks are
called directly with the positional and keyword arguments the model passed them in one recorded
dense forward per batch (per block: sliding-window families give local and global layers different
masks and rotary tables), so no hooks are active while candidates run. The loss's LM head runs in
tiles of rows x ``VOCAB_TILE`` vocabulary entries (running max and sum of exponentials per row), each
block of rows reading the head weight once, whose float32 logits stay under ``head_chunk_bytes``: never
the whole (B, S, V) tensor, and without the last position of each window (it predicts nothing). The model's own logit
post-processing is applied (Gemma2/3 final soft-capping, Granite ``logits_scaling``, Cohere
``logit_scale``, OPT's ``project_out``); the construction checks the cached tail against the
model's own logits on the first batch and refuses (SimDiffError) a model whose logits it does not
reproduce, instead of returning silently different numbers.

Exact elimination. ``losses_bounded(specs, keep=w)`` (greedy, beam; ``below=`` for local and
evolutionary acceptance) returns exact losses only for the specs that can be among the w best: every
spec gets a proven lower bound from its blocks plus a *subset head* (logits of 1/8 of the vocabulary,
the entries with the most probability mass under a reference layout, plus each row's target:
logsumexp over a subset <= logsumexp over all, and the logit post-processing is elementwise), and
specs are evaluated exactly in increasing bound order only while their bound does not exceed the
w-th best exact loss so far. The exact value is assembled from the same per-row subset logsumexp plus
the complement's, so by monotone rounding (and ``math.fsum``) an eliminated spec's computed loss is
provably >= its computed bound: no tolerance, ties included. On SmolLM2 (greedy 7/30) about one
candidate in seven needs the full head; a tiny random-weight model's near-uniform distributions
eliminate nothing (the bound is then pure overhead, 1/8 of a head per spec).

Cost. Per batch, construction runs one dense forward (the model returns logits for only
``CHECK_ROWS`` positions; the dense loss comes from the chunked tail). A layout first differing from the cached path
at position i costs the kept blocks among i..L-1 plus the head; ``stats`` counts block calls.
``lazy=True`` (auto alpha, where no layout is the dense model) skips the dense pass: one forward of a
view of the model whose block positions hold stand-ins (``_Recorder``: they record how the model calls
each block and pass the hidden state on; only block 0 runs) gives every block's call arguments, the
input of block 0 and its output (the tail check runs on that), for about one block's compute; the
path then grows only where layouts need it and ``dense_loss`` is computed on first use. A set of
layouts evaluated in one ``losses`` call then costs exactly the edges of their prefix trie plus one
head each (``stats["capture_block_calls"] + stats["block_calls"]``), the floor of any exact evaluator.

Memory bound. Per batch: its token ids, its recorded kwargs (shared tensors: rotary tables, masks)
and the hidden state entering block 0. Paths (L+1 hidden states of (B, S, H) each, about
(L+1) * B * S * H * itemsize bytes per batch: 30 blocks, 4 x 256 tokens, H=576, fp32 = 73 MB) are
kept across calls for as many batches as fit in ``cache_bytes`` (default 256 MiB); the other
batches recompute their path from block 0 on each call (one working path at a time). Peak extra
memory is therefore <= cache_bytes + one path + one head tile (``head_chunk_bytes``, default
32 MiB of float32 logits) + the kwargs — bounded by the batch size, not the number of windows or
candidates. No model or weight copies are made. ``losses_bounded`` adds, during one call, the final
hidden states of its specs while they fit in another ``cache_bytes`` (the rest re-run their blocks
if they need the exact value), two float64 numbers per predicted row per spec, and the head rows of
its vocabulary subsets (at most 4 cached: 4 x V/8 x hidden, 14 MB each on SmolLM2).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.hooks import block_io, hook_pass
from ..common.errors import Cancelled, SimDiffError
from ..models.blocks import get_attr_path, text_config
from ..analysis.score import auto_batch_size  # the one batch rule (re-exported: damage imports it from here)

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")
DEFAULT_CACHE_BYTES = 256 * 2 ** 20
DEFAULT_HEAD_CHUNK_BYTES = 32 * 2 ** 20
Progress = Callable[[float, str], None]
CHECK_ROWS = 8  # positions whose logits the dense pass asks the model for (the tail check)
VOCAB_TILE = 2048  # vocabulary entries per head tile in the loss (see PrefixEvaluator._nll_sum_tiled)
BOUND_VOCAB_SHARE = 8  # losses_bounded's vocabulary subset: 1/8 of the vocabulary (1/8 of the head's cost)


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
        self.norm, self.proj, self.head, self.post = tail_modules(lm)
        self.should_stop = should_stop
        N, S = input_ids.shape
        # the scoring rule at half the tokens: this pass caches every block's input (see score.auto_batch_size)
        self.bs = max(1, int(batch_size or auto_batch_size(lm.device, S, share=0.5)))
        self.tokens = N * (S - 1)
        self.shape = (N, S)
        self.head_chunk_bytes = int(head_chunk_bytes)
        self._cache_bytes = int(cache_bytes)
        self.bound_vocab = bound_vocab  # losses_bounded's subset size; None: V // BOUND_VOCAB_SHARE
        self._vocab_cache: dict[tuple, dict] = {}  # losses_bounded: S per reference layout
        self._mass_cache: dict[tuple, torch.Tensor] = {}  # column mass of the last bounded call's exact specs
        self.stats = {"block_calls": 0, "head_rows": 0, "layouts": 0}
        self._memo: dict[tuple, float] = {}
        self._batches: list[dict] = []
        self.lazy = bool(lazy)
        self.stats["capture_block_calls"] = 0
        hidden = None
        dense_nll = 0.0
        view = self._recording_view() if self.lazy else None
        with torch.inference_mode():
            for b, start in enumerate(range(0, N, self.bs)):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                ids = input_ids[start:start + self.bs].to(lm.device)
                calls, states, logits = self._capture_calls(view, ids) if self.lazy else self._capture(ids)
                last = next(s for s in reversed(states) if s is not None)
                self.stats["capture_block_calls"] += sum(1 for s in states[1:] if s is not None)
                if check_logits and b == 0:
                    self._check_tail(last, logits)
                del logits
                if not self.lazy:
                    dense_nll += self._nll_sum(last, ids)
                hidden = states[0].shape[-1]
                self._batches.append({"ids": ids, "calls": calls, "x0": states[0],
                                      "path": (self._dense_key(), tuple(self.blocks), states)})
        if not self.lazy:
            self._memo[self._dense_key()] = dense_nll / self.tokens
        itemsize = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
        self.path_bytes = (self.L + 1) * min(self.bs, N) * S * int(hidden) * itemsize
        self.persistent = max(0, min(len(self._batches), int(cache_bytes) // max(1, self.path_bytes)))
        for bt in self._batches[self.persistent:]:
            bt["path"] = None  # recomputed from x0 on every call (memory bound)

    # ----------------------------------------------------------------- capture
    def _dense_key(self) -> tuple:
        return tuple(id(b) for b in self.blocks)

    def _capture(self, ids):
        """One dense forward: every block's call arguments and input, and the model's logits."""
        L = self.L
        states: list[torch.Tensor | None] = [None] * (L + 1)
        calls: list[tuple | None] = [None] * L
        index = {blk: i for i, blk in enumerate(self.blocks)}
        if len(index) != L:
            raise SimDiffError(f"{self.lm.name}: the same block object appears twice in the block list")

        def pre(module, args, kwargs):
            calls[index[module]] = _call_record(args, kwargs)

        def post(module, args, kwargs, output):
            i = index[module]
            x, y = block_io(args, kwargs, output)
            states[i] = x
            states[i + 1] = y

        with hook_pass(pre={b: pre for b in self.blocks}, post={b: post for b in self.blocks}, name="evaluator"):
            try:  # the loss comes from the chunked tail; the model's logits only for the check
                out = self.lm.model(input_ids=ids, use_cache=False, logits_to_keep=CHECK_ROWS)
            except TypeError:  # model code without logits_to_keep
                out = self.lm.model(input_ids=ids, use_cache=False)
        if any(s is None for s in states) or any(c is None for c in calls):
            raise SimDiffError(f"{self.lm.name}: not every block ran in the forward pass; cannot evaluate prunings")
        return calls, states, out.logits

    def _recording_view(self) -> nn.Module:
        """A view of the model (``pruning.prune``'s shallow path copies; the loaded model is untouched)
        whose block list holds stand-ins: position 0 runs the real block, every later position only
        records the arguments the model calls it with and passes its input on. One forward of the
        view gives every block's call arguments for the cost of the embeddings and one block."""
        from ..pruning.prune import with_block_list

        form: dict = {}
        top = with_block_list(self.lm.model, self.lm.block_path,
                              nn.ModuleList([_Recorder(b, j, real=(j == 0), form=form)
                                             for j, b in enumerate(self.blocks)]))
        return top

    def _capture_calls(self, view: nn.Module, ids):
        """Lazy capture (``lazy=True``): every block's call arguments, the input of block 0 and its output,
        and the model's logits of the state the stand-ins passed on (block 0's output; the tail check)."""
        L = self.L
        recorders = list(get_attr_path(view, self.lm.block_path))
        for r in recorders:
            r.reset()
        try:
            out = view(input_ids=ids, use_cache=False, logits_to_keep=CHECK_ROWS)
        except TypeError:  # model code without logits_to_keep
            out = view(input_ids=ids, use_cache=False)
        calls = [r.call for r in recorders]
        if any(c is None for c in calls):
            raise SimDiffError(f"{self.lm.name}: not every block ran in the forward pass; cannot evaluate prunings")
        states: list[torch.Tensor | None] = [recorders[0].x, recorders[0].y] + [None] * (L - 1)
        for r in recorders:
            r.reset()
        recorders[0]._form.clear()
        return calls, states, out.logits

    def _check_tail(self, last: torch.Tensor, logits: torch.Tensor) -> None:
        """Refuse a model whose logits the cached tail (norm, head, post-processing) does not reproduce."""
        rows = min(CHECK_ROWS, last.shape[1], logits.shape[1])
        mine = self._logits(last[:1, -rows:]).float()
        ref = logits[:1, -rows:].float()
        tol = 1e-3 if self.lm.dtype == torch.float32 else 5e-2
        err = float((mine - ref).abs().max())
        if not err <= tol * max(1.0, float(ref.abs().max())):
            raise SimDiffError(f"{self.lm.name}: the cached evaluation cannot reproduce this model's logits "
                               f"(max difference {err:.3g}); its family post-processes logits in a way "
                               f"this tool does not know")

    # ----------------------------------------------------------------- pieces
    def _run(self, block, h, call):
        positional, rest, kw = call
        out = block(h, *rest, **kw) if positional else block(hidden_states=h, **kw)
        self.stats["block_calls"] += 1
        return out[0] if isinstance(out, (tuple, list)) else out

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        if self.proj is not None:
            h = self.proj(h)
        return self.post(self.head(h))

    def _nll_sum(self, last: torch.Tensor, ids: torch.Tensor) -> float:
        """Summed NLL of tokens 1..S-1 from the last block's output: the head in tiles of rows x
        ``VOCAB_TILE`` vocabulary entries (a linear head), else in row chunks."""
        h = last[:, :-1].reshape(-1, last.shape[-1])
        tgt = ids[:, 1:].reshape(-1)
        w = getattr(self.head, "weight", None)
        if isinstance(self.head, nn.Linear) and isinstance(w, torch.Tensor) and w.ndim == 2:
            return self._nll_sum_tiled(h, tgt)
        V = int(getattr(self.head, "out_features", 0) or self.head.weight.shape[0])
        rows = head_chunk_rows(V, self.head_chunk_bytes)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            logits = self._logits(h[s:s + rows]).float()
            total += F.cross_entropy(logits, tgt[s:s + rows], reduction="sum").double()
        self.stats["head_rows"] += h.shape[0]
        return float(total)

    def _nll_sum_tiled(self, h: torch.Tensor, tgt: torch.Tensor) -> float:
        """``_nll_sum`` for a linear head: each block of rows reads the head weight once, in slices of
        ``VOCAB_TILE`` entries, keeping a running max and sum of exponentials (float64) per row, and the
        target's logit from the slice that holds it. Why: a row chunk of a large vocabulary (Gemma3:
        262144 entries, 1 MiB of float32 logits per row) holds only a few dozen rows, and each chunk
        re-reads the whole head weight (671 MB for Gemma3-270M): the head ran 2.6x slower than these
        tiles, which stay in cache. Same loss to float rounding (the sums are more accurate)."""
        W, b = self.head.weight, self.head.bias
        V = int(W.shape[0])
        vt = min(V, VOCAB_TILE)
        rows = max(1, self.head_chunk_bytes // (4 * vt))
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            hn = self.norm(h[s:s + rows])
            if self.proj is not None:
                hn = self.proj(hn)
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

    def _plain(self, layout) -> bool:
        """True when the layout uses only the model's own blocks (then its key is stable and memoised)."""
        return all(m is None or m is b for m, b in zip(layout, self.blocks))

    @staticmethod
    def _key(layout) -> tuple:
        return tuple(0 if m is None else id(m) for m in layout)

    def _advance(self, bt: dict, layout: tuple, key: tuple) -> torch.Tensor:
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

    # ----------------------------------------------------------------- public
    @staticmethod
    def order(keys: Sequence[tuple]) -> list[int]:
        """Indices of ``keys`` in depth-first prefix order (kept before skipped at each position)."""
        return sorted(range(len(keys)), key=lambda n: tuple((0, k) if k else (1, 0) for k in keys[n]))

    @torch.inference_mode()
    def losses(self, specs: Iterable, progress: Progress | None = None) -> list[float]:
        """Mean NLL per predicted token of each removal set / layout in ``specs`` (memoised)."""
        layouts = [self.layout(s) for s in specs]
        keys = [self._key(lay) for lay in layouts]
        todo, seen = [], set()
        for n, k in enumerate(keys):
            if k not in self._memo and k not in seen:
                seen.add(k)
                todo.append(n)
        todo = [todo[j] for j in self.order([keys[n] for n in todo])]
        nll = {keys[n]: 0.0 for n in todo}
        steps = max(1, len(todo) * len(self._batches))
        done = 0
        for b, bt in enumerate(self._batches):
            for c, n in enumerate(todo):
                if self.should_stop is not None and self.should_stop():
                    raise Cancelled()
                last = self._advance(bt, layouts[n], keys[n])
                nll[keys[n]] += self._nll_sum(last, bt["ids"])
                done += 1
                if progress is not None:
                    progress(done / steps, f"batch {b + 1}/{len(self._batches)}: candidate {c + 1}/{len(todo)}")
            if b >= self.persistent:
                bt["path"] = None
        out = {}
        for n in todo:
            out[keys[n]] = nll[keys[n]] / self.tokens
            if self._plain(layouts[n]):
                self._memo[keys[n]] = out[keys[n]]
        self.stats["layouts"] += len(todo)
        return [out[k] if k in out else self._memo[k] for k in keys]

    def loss(self, spec) -> float:
        return self.losses([spec])[0]

    @property
    def dense_loss(self) -> float:
        """The unpruned model's loss (memoised; computed on first use when built with ``lazy=True``)."""
        return self.loss(())

    def ppl(self, spec) -> float:
        return math.exp(min(self.loss(spec), 700.0))

    def ppls(self, specs: Iterable, progress: Progress | None = None) -> list[float]:
        return [math.exp(min(v, 700.0)) for v in self.losses(specs, progress)]

    @torch.inference_mode()
    def final_states(self, spec) -> list[torch.Tensor]:
        """Per batch, the final-normed hidden states (float32) under a layout (SLM's similarity): the
        model's ``last_hidden_state`` (OPT: after ``project_out``)."""
        layout = self.layout(spec)
        key = self._key(layout)
        out = []
        for n, bt in enumerate(self._batches):
            if self.should_stop is not None and self.should_stop():
                raise Cancelled()
            h = self.norm(self._advance(bt, layout, key))
            out.append((self.proj(h) if self.proj is not None else h).float())
            if n >= self.persistent:
                bt["path"] = None
        return out


    # ----------------------------------------------------------------- single blocks (iterative)
    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def batch_input(self, b: int) -> torch.Tensor:
        """The hidden state entering block 0 for batch ``b`` (kept for the evaluator's lifetime)."""
        return self._batches[b]["x0"]

    @torch.inference_mode()
    def run_block(self, b: int, j: int, h: torch.Tensor) -> torch.Tensor:
        """Block ``j`` on hidden state ``h`` of batch ``b``, called as the model called it (``_run``)."""
        return self._run(self.blocks[j], h, self._batches[b]["calls"][j])

    # ----------------------------------------------------------------- bounds (exact elimination)
    def bounds_supported(self) -> bool:
        """True when the LM head is a plain linear layer (the subset head is a slice of its rows)."""
        w = getattr(self.head, "weight", None)
        return isinstance(self.head, nn.Linear) and isinstance(w, torch.Tensor) and w.ndim == 2 \
            and w.shape[0] >= 2

    def bound_vocab_size(self) -> int:
        """Entries in the bound's vocabulary subset S (``bound_vocab``, default 1/8 of the vocabulary)."""
        V = int(self.head.weight.shape[0])
        want = self.bound_vocab if self.bound_vocab is not None else V // BOUND_VOCAB_SHARE
        return max(1, min(V - 1, int(want)))

    def _column_mass(self, h: torch.Tensor) -> torch.Tensor:
        """Summed softmax probability of every vocabulary entry over the predicted rows of one final state."""
        h = h[:, :-1].reshape(-1, h.shape[-1])
        V = int(self.head.weight.shape[0])
        rows = head_chunk_rows(V, self.head_chunk_bytes)
        mass = torch.zeros(V, dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            z = self._logits(h[s:s + rows]).float()
            mass += torch.softmax(z, dim=-1).sum(0).double()
        self.stats["head_rows"] += h.shape[0]
        return mass

    def _bound_vocab(self, ref) -> dict:
        """The bound's vocabulary subset S: the ``bound_vocab_size()`` entries with the most probability
        mass summed over the calibration rows under layout ``ref`` (cached per ref; costs one evaluation
        of ``ref`` the first time), with its slice of the head weight and bias."""
        layout = self.layout(() if ref is None else ref)
        key = self._key(layout)
        cache = self._vocab_cache
        if key in cache:
            return cache[key]
        mass = self._mass_cache.get(key)
        if mass is None:
            mass = 0.0
            for n, bt in enumerate(self._batches):
                mass = mass + self._column_mass(self._advance(bt, layout, key))
                if n >= self.persistent:
                    bt["path"] = None
        S = torch.topk(mass, self.bound_vocab_size()).indices.sort().values.to(self.head.weight.device)
        bias = getattr(self.head, "bias", None)
        entry = {"S": S, "W": self.head.weight[S].contiguous(), "b": None if bias is None else bias[S].contiguous()}
        while len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[key] = entry
        return entry

    def _subset_rows(self, last: torch.Tensor, ids: torch.Tensor, voc: dict):
        """Per predicted row (float64): a = logsumexp of the logits over S and the row's target, zt =
        the target's logit. a - zt <= the row's NLL (dropping positive terms lowers a logsumexp)."""
        h = last[:, :-1].reshape(-1, last.shape[-1])
        tgt = ids[:, 1:].reshape(-1)
        W, b, S = voc["W"], voc["b"], voc["S"]
        rows = head_chunk_rows(W.shape[0] + 1, self.head_chunk_bytes)
        a_out, z_out = [], []
        inside = torch.isin(tgt, S)
        for s in range(0, h.shape[0], rows):
            hn = self.norm(h[s:s + rows])
            if self.proj is not None:
                hn = self.proj(hn)
            t = tgt[s:s + rows]
            zs = self.post(F.linear(hn, W, b)).float()
            wt = self.head.weight[t]
            zt = (hn * wt).sum(-1)
            if b is not None:
                zt = zt + self.head.bias[t]
            zt = self.post(zt).float()
            a = torch.logsumexp(zs, dim=-1)
            a = torch.where(inside[s:s + rows], a, torch.logaddexp(a, zt))
            a_out.append(a.double())
            z_out.append(zt.double())
        self.stats["bound_rows"] = self.stats.get("bound_rows", 0) + h.shape[0]
        return torch.cat(a_out), torch.cat(z_out)

    def _complement_rows(self, last: torch.Tensor, ids: torch.Tensor, voc: dict, mass: bool):
        """Per predicted row (float64): logsumexp of the logits outside S and the row's target (full head
        in row chunks, those columns masked); with ``mass`` also the summed softmax column mass."""
        h = last[:, :-1].reshape(-1, last.shape[-1])
        tgt = ids[:, 1:].reshape(-1)
        V = int(self.head.weight.shape[0])
        rows = head_chunk_rows(V, self.head_chunk_bytes)
        S = voc["S"]
        out = []
        col = torch.zeros(V, dtype=torch.float64, device=h.device) if mass else None
        for s in range(0, h.shape[0], rows):
            z = self._logits(h[s:s + rows]).float()
            if mass:
                col += torch.softmax(z, dim=-1).sum(0).double()
            z[:, S] = float("-inf")
            z[torch.arange(z.shape[0], device=z.device), tgt[s:s + rows]] = float("-inf")
            out.append(torch.logsumexp(z, dim=-1).double())
        self.stats["head_rows"] += h.shape[0]
        return torch.cat(out), col

    @torch.inference_mode()
    def losses_bounded(self, specs: Iterable, keep: int = 1, below: float | None = None, ref=None,
                       progress: Progress | None = None) -> list[tuple[float | None, float | None]]:
        """Exact losses only where they can matter: per spec ``(loss or None, lower bound or None)``.

        Guarantee: every spec whose exact loss could be among the ``keep`` smallest of ``specs`` (ties
        included), or could be strictly below ``below``, gets its exact loss; the others get only a
        lower bound and are provably worse (their loss, as this evaluator would compute it, exceeds the
        ``keep``-th smallest exact loss, or is >= ``below``). Memoised specs return ``(loss, None)``.

        How. Each spec runs its blocks (prefix-cached as in ``losses``) and a *subset head*: the logits
        of a vocabulary subset S (``bound_vocab_size()`` entries, those with the most probability mass
        under layout ``ref``; default the dense model) plus each row's target. Per row,
        ``a = logsumexp(S and target)`` and the bound is ``a - z_target`` (dropping positive exp terms
        lowers a logsumexp; the model's logit post-processing is elementwise, so it is applied to the
        subset logits as to the full ones). Specs are then taken in increasing bound order and
        evaluated exactly while their bound does not exceed the ``keep``-th smallest exact loss found
        so far (or is below ``below``); the first one that does ends the pass, since the rest bound
        higher. The exact loss reuses the row's stored ``a`` and ``z_target`` and adds the
        complement: ``logaddexp(a, logsumexp(other logits)) - z_target``. Floating-point rounding is
        monotone, so the computed exact value of each row is >= its computed bound, and both are
        summed with ``math.fsum`` (correctly rounded, hence monotone): an eliminated spec's computed
        loss is provably >= its computed bound, with no tolerance needed. The exact value equals
        ``losses`` to float rounding (the same terms, summed in another order).

        Cost. Per spec: its blocks plus ``bound_vocab_size() / V`` of the head (1/8); the specs
        evaluated exactly add one full head each. S for a new ``ref`` costs one evaluation of ``ref``
        (free when ``ref`` was evaluated exactly by an earlier call: its column mass is kept).
        Memory: per spec and batch two float64 numbers per predicted row, and the final hidden state
        (batch x seq x hidden) of each spec while they fit in ``cache_bytes`` (default 256 MiB;
        the others re-run their blocks if evaluated exactly); S's head rows (S x hidden).
        """
        layouts = [self.layout(s) for s in specs]
        keys = [self._key(lay) for lay in layouts]
        if not self.bounds_supported():  # a head that is not a plain linear layer: everything exact
            return [(v, None) for v in self.losses(layouts, progress)]
        known = {k: self._memo[k] for k in keys if k in self._memo}
        todo, seen = [], set()
        for n, k in enumerate(keys):
            if k not in known and k not in seen:
                seen.add(k)
                todo.append(n)
        todo = [todo[j] for j in self.order([keys[n] for n in todo])]
        out_exact: dict[tuple, float] = dict(known)
        out_bound: dict[tuple, float] = {}
        if todo:
            voc = self._bound_vocab(ref)
            rows = {keys[n]: [] for n in todo}
            states: dict[tuple, list] = {keys[n]: [] for n in todo}
            room = self._cache_bytes
            steps = max(1, len(todo) * len(self._batches))
            done = 0
            for b, bt in enumerate(self._batches):
                for c, n in enumerate(todo):
                    if self.should_stop is not None and self.should_stop():
                        raise Cancelled()
                    last = self._advance(bt, layouts[n], keys[n])
                    rows[keys[n]].append(self._subset_rows(last, bt["ids"], voc))
                    size = last.numel() * last.element_size()
                    if size <= room:
                        room -= size
                        states[keys[n]].append(last)
                    else:
                        states[keys[n]].append(None)
                    done += 1
                    if progress is not None:
                        progress(0.5 * done / steps, f"bounds: batch {b + 1}/{len(self._batches)}: "
                                 f"candidate {c + 1}/{len(todo)}")
                if b >= self.persistent:
                    bt["path"] = None
            for n in todo:
                k = keys[n]
                lb = math.fsum(math.fsum((a - zt).tolist()) for a, zt in rows[k]) / self.tokens
                out_bound[k] = -math.inf if math.isnan(lb) else lb
            self.stats["bounded"] = self.stats.get("bounded", 0) + len(todo)
            masses = {}
            exact_vals = sorted(v if not math.isnan(v) else math.inf for v in known.values())
            ranked = sorted(todo, key=lambda n: out_bound[keys[n]])
            for i, n in enumerate(ranked):
                k = keys[n]
                kth = exact_vals[keep - 1] if 0 < keep <= len(exact_vals) else (math.inf if keep > 0 else -math.inf)
                if not (out_bound[k] <= kth or (below is not None and out_bound[k] < below)):
                    break  # every later spec bounds at least as high: provably not needed
                if self.should_stop is not None and self.should_stop():
                    raise Cancelled()
                total, col = [], None
                for b, bt in enumerate(self._batches):
                    last = states[k][b]
                    if last is None:
                        last = self._advance(bt, layouts[n], k)
                        if b >= self.persistent:
                            bt["path"] = None
                    a, zt = rows[k][b]
                    c_, m = self._complement_rows(last, bt["ids"], voc, mass=keep > 0)
                    hi = torch.maximum(a, c_)
                    lae = hi + torch.log1p(torch.exp(-(a - c_).abs()))
                    lae = torch.where(torch.isneginf(c_), a, lae)  # empty complement: exactly a
                    total.append(math.fsum((lae - zt).tolist()))
                    if m is not None:
                        col = m if col is None else col + m
                    states[k][b] = None
                v = math.fsum(total) / self.tokens
                out_exact[k] = v
                if col is not None:
                    masses[k] = col
                exact_vals.append(v if not math.isnan(v) else math.inf)
                exact_vals.sort()
                if self._plain(layouts[n]):
                    self._memo[k] = v
                if progress is not None:
                    progress(0.5 + 0.5 * (i + 1) / len(ranked), f"exact: candidate {i + 1} in bound order")
            self.stats["layouts"] += sum(1 for n in todo if keys[n] in out_exact)
            self.stats["bound_eliminated"] = self.stats.get("bound_eliminated", 0) + \
                sum(1 for n in todo if keys[n] not in out_exact)
            if masses:  # the column mass of this call's exact specs: the next call's ref is usually one
                self._mass_cache = masses
        return [(out_exact[k], None) if k in known else (out_exact.get(k), out_bound.get(k)) for k in keys]


def _call_record(args: tuple, kwargs: dict) -> tuple:
    """(positional?, the other positional args, keyword args) of a block call, minus its hidden state
    and any KV cache (candidates run without one)."""
    kw = dict(kwargs)
    positional = bool(args)
    if not positional:
        kw.pop("hidden_states", None)
    rest = tuple(None if _is_cache(a) else a for a in args[1:])
    if "past_key_values" in kw:
        kw["past_key_values"] = None
    if "use_cache" in kw:
        kw["use_cache"] = False
    return positional, rest, kw


class _Recorder(nn.Module):
    """Stand-in for one block in ``PrefixEvaluator._recording_view``: records how the model calls it;
    runs the real block only when ``real`` (its output's form is what the others hand back). Other
    attributes (``attention_type``, ``layer_idx``, ...) read through to the real block."""

    def __init__(self, block: nn.Module, index: int, real: bool, form: dict):
        super().__init__()
        self.__dict__["_block"] = block  # not a registered child: the view owns no parameters
        self.__dict__["_form"] = form    # shared by one view's stand-ins: the real block's last output
        self.index, self.real = index, real
        self.call = self.x = self.y = None

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            block = self.__dict__.get("_block")
            if block is None:
                raise
            return getattr(block, name)

    def reset(self) -> None:
        self.call = self.x = self.y = None

    def forward(self, *args, **kwargs):
        self.call = _call_record(args, kwargs)
        x = args[0] if args else kwargs.get("hidden_states")
        if self.real:
            out = self._block(*args, **kwargs)
            self.x, self.y = block_io(args, kwargs, out)
            self._form["out"] = out
            return out
        prev = self._form.get("out")
        if isinstance(prev, (tuple, list)):  # older block APIs: (hidden, attn weights / cache, ...)
            return type(prev)((x,) + tuple(prev[1:]))
        return x


def _is_cache(obj) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Cache)
