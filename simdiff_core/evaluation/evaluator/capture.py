"""How the model calls each block: recorded once per batch of windows, replayed for every candidate.

Blocks are later called directly with the positional and keyword arguments the model passed them
(per block: sliding-window families give local and global layers different masks and rotary tables;
GPT-2 passes some positionally), so no hooks are active while candidates run. Two ways to record:

- ``capture_dense``: one dense forward under a run-scoped hook pass gives every block's call
  arguments, every block's input and output, and the model's logits for ``CHECK_ROWS`` positions
  (the tail check).
- ``capture_lazy`` on a ``recording_view``: a view of the model whose block positions hold
  ``Recorder`` stand-ins. Position 0 runs the real block; every later one only records how the model
  calls it and passes its input on. One forward of the view gives every block's call arguments, the
  input and output of block 0 and the model's logits of the state the stand-ins passed on, for about
  one block's compute (``PrefixEvaluator(lazy=True)``: no dense pass).

Cost: ``capture_dense`` is one forward; ``capture_lazy`` the embeddings plus block 0. Memory: the
recorded arguments hold no KV cache (candidates run without one); tensors such as rotary tables and
masks are shared, not copied.
"""

from __future__ import annotations

import torch
from torch import nn

from ...analysis.hooks import block_io, hook_pass
from ...common.errors import SimDiffError
from ...models.blocks import get_attr_path
from .head import CHECK_ROWS


def call_record(args: tuple, kwargs: dict) -> tuple:
    """(positional?, the other positional args, keyword args) of a block call, minus its hidden state
    and any KV cache (candidates run without one)."""
    kw = dict(kwargs)
    positional = bool(args)
    if not positional:
        kw.pop("hidden_states", None)
    rest = tuple(None if is_cache(a) else a for a in args[1:])
    if "past_key_values" in kw:
        kw["past_key_values"] = None
    if "use_cache" in kw:
        kw["use_cache"] = False
    return positional, rest, kw


def run_recorded(block: nn.Module, h: torch.Tensor, call: tuple) -> torch.Tensor:
    """``block`` on hidden state ``h``, called as the model called it (``call_record``)."""
    positional, rest, kw = call
    out = block(h, *rest, **kw) if positional else block(hidden_states=h, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


def _forward(model: nn.Module, ids: torch.Tensor):
    try:  # the loss comes from the chunked tail; the model's logits only for the check
        return model(input_ids=ids, use_cache=False, logits_to_keep=CHECK_ROWS)
    except TypeError:  # model code without logits_to_keep
        return model(input_ids=ids, use_cache=False)


def capture_dense(lm, blocks: list, ids: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """One dense forward: (every block's call record, the L+1 hidden states, the model's logits)."""
    L = len(blocks)
    states: list[torch.Tensor | None] = [None] * (L + 1)
    calls: list[tuple | None] = [None] * L
    index = {blk: i for i, blk in enumerate(blocks)}
    if len(index) != L:
        raise SimDiffError(f"{lm.name}: the same block object appears twice in the block list")

    def pre(module, args, kwargs):
        calls[index[module]] = call_record(args, kwargs)

    def post(module, args, kwargs, output):
        i = index[module]
        x, y = block_io(args, kwargs, output)
        states[i] = x
        states[i + 1] = y

    with hook_pass(pre={b: pre for b in blocks}, post={b: post for b in blocks}, name="evaluator"):
        out = _forward(lm.model, ids)
    if any(s is None for s in states) or any(c is None for c in calls):
        raise SimDiffError(f"{lm.name}: not every block ran in the forward pass; cannot evaluate prunings")
    return calls, states, out.logits


class Recorder(nn.Module):
    """Stand-in for one block in a ``recording_view``: records how the model calls it; runs the real
    block only when ``real`` (its output's form is what the others hand back). Other attributes
    (``attention_type``, ``layer_idx``, ...) read through to the real block."""

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
        self.call = call_record(args, kwargs)
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


def recording_view(lm, blocks: list) -> nn.Module:
    """A view of the model (``pruning.prune``'s shallow path copies; the loaded model is untouched)
    whose block list holds ``Recorder`` stand-ins; only position 0 runs its real block."""
    from ...pruning.prune import with_block_list

    form: dict = {}
    return with_block_list(lm.model, lm.block_path,
                           nn.ModuleList([Recorder(b, j, real=(j == 0), form=form) for j, b in enumerate(blocks)]))


def capture_lazy(lm, view: nn.Module, ids: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """Lazy capture: (every block's call record, [input of block 0, its output, None...], the model's
    logits of the state the stand-ins passed on, i.e. block 0's output: the tail check)."""
    recorders = list(get_attr_path(view, lm.block_path))
    L = len(recorders)
    for r in recorders:
        r.reset()
    out = _forward(view, ids)
    calls = [r.call for r in recorders]
    if any(c is None for c in calls):
        raise SimDiffError(f"{lm.name}: not every block ran in the forward pass; cannot evaluate prunings")
    states: list[torch.Tensor | None] = [recorders[0].x, recorders[0].y] + [None] * (L - 1)
    for r in recorders:
        r.reset()
    recorders[0]._form.clear()
    return calls, states, out.logits


def is_cache(obj) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Cache)
