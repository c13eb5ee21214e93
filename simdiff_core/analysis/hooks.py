"""Run-scoped hooks: callbacks on modules that fire only for the forward pass that attached them.

    from simdiff_core.analysis.hooks import block_hooks, hook_pass

    with block_hooks(lm.blocks, lambda i, x, y: print(i, x.shape)) as p:   # (block index, input, output)
        lm.model(ids)                                                      # p.id identifies this pass

    with hook_pass(pre={blk: on_pre}, post={blk: on_post}, name="damage") as p:
        lm.model(ids)            # on_pre(module, args, kwargs), on_post(module, args, kwargs, output)

What: a pass is a ``with`` block. Its callbacks are seen by the forward passes the *same thread*
(more precisely, the same ``contextvars`` context: one per thread, one per asyncio task) runs
inside the ``with``, and by nothing else. A callback gets ``(module, args, kwargs[, output])``, the
torch ``with_kwargs`` signature, and may return a replacement just like a torch hook (pre:
``(args, kwargs)``, post: the output); ``block_hooks`` is the shorthand scoring uses. Passes nest:
an inner pass adds its callbacks to the outer one's. Callbacks are keyed by module object, so a
pass on a pruned view never fires on the model it was built from, and vice versa.

Why: the app keeps one loaded model for every visitor (``st.cache_resource``), and every visitor's
script runs in its own thread. A plain ``register_forward_hook`` on that shared model fires for
*every* thread's forward, so two visitors calibrating at once fed each other's activations into
their statistics (cosine off by up to 0.05), and registering or removing hooks while another thread
runs a forward is itself a race (torch reads the hook dict and its ``with_kwargs`` flags at
different moments). Instead each module gets one permanent *dispatcher* per hook kind, installed
once under a lock (flags before the hook, so a concurrent forward sees all of it or none of it) and
never removed; it looks up the current pass in a ``ContextVar``. Nothing is registered or removed
while other threads run, no lock is held during a forward, so visitors never wait for each other
and each gets bit-identical results to running alone. (transformers 5 captures
``output_hidden_states`` the same way.) Hooks the dispatcher does not know about — a plain
``register_forward_hook`` — still behave as in torch: global to every thread.

Worker threads: a ``ContextVar`` does not propagate into a ``threading.Thread``, so a forward the
pass's thread hands to a worker thread is invisible to the pass (its statistics would silently stay
empty). That is an error: each pass records its thread, a forward of one of its modules in another
thread with no pass active there is counted, and a pass that saw none of its own callbacks but had
such forwards raises ``PassThreadError`` when it closes. (A pass whose callbacks did fire is left
alone: another visitor's plain forward of the shared model, concurrently, is legitimate.) Run the
forward in the thread that opened the pass, or in the worker via ``contextvars.copy_context().run``.

Cost: after the first pass a hooked module (the decoder blocks) always takes torch's hooked call
path and one dispatcher call before and after its forward: about 3 µs per block call on a 2-core
CPU when no pass is active (0.1 ms per forward of a 30-block model, against tens of ms of compute);
callbacks cost what they do. No memory beyond the callbacks' own.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

PreHook = Callable[[nn.Module, tuple, dict], object]
PostHook = Callable[[nn.Module, tuple, dict, object], object]

_ids = itertools.count(1)
_install_lock = threading.Lock()
# The passes active in this context, innermost last. A tuple, never mutated: each ``with`` sets a
# new one and restores the old on exit, so a pass cannot leak into another thread or outlive itself.
_active: ContextVar[tuple["HookPass", ...]] = ContextVar("simdiff_hook_passes", default=())
# Every open pass in the process, any thread: replaced (never mutated) under _install_lock, so a
# dispatcher reads it without a lock.
_open: tuple["HookPass", ...] = ()


class PassThreadError(RuntimeError):
    """A pass's modules ran in another thread, where the pass is invisible (see the module docstring)."""


class HookPass:
    """One run's callbacks, by module. ``id`` is unique in the process; ``name`` is for messages."""

    def __init__(self, name: str, pre: Mapping[nn.Module, PreHook], post: Mapping[nn.Module, PostHook]):
        self.id = next(_ids)
        self.name = name
        self.pre = dict(pre)    # module (by identity) -> callback
        self.post = dict(post)
        self.calls = 0          # callbacks run so far (tests and progress use it)
        self.thread = threading.get_ident()  # the thread that opened it: the only one it sees
        self.elsewhere = 0      # calls of its modules in other threads with no pass active there

    def __repr__(self) -> str:
        return f"HookPass(id={self.id}, name={self.name!r}, modules={len(set(self.pre) | set(self.post))})"


def _note_elsewhere(module) -> None:
    """A hooked module runs with no pass active in this thread: count it for the open passes of
    other threads that hook it (the check in ``hook_pass`` turns that into an error)."""
    me = threading.get_ident()
    for p in _open:
        if p.thread != me and (module in p.pre or module in p.post):
            p.elsewhere += 1


def _pre_dispatch(module, args, kwargs):
    passes = _active.get()
    if not passes:
        if _open:
            _note_elsewhere(module)
        return None
    for p in passes:
        fn = p.pre.get(module)
        if fn is not None:
            p.calls += 1
            r = fn(module, args, kwargs)
            if r is not None:
                args, kwargs = r
    return args, kwargs


def _post_dispatch(module, args, kwargs, output):
    passes = _active.get()
    if not passes:
        return None
    for p in passes:
        fn = p.post.get(module)
        if fn is not None:
            p.calls += 1
            r = fn(module, args, kwargs, output)
            if r is not None:
                output = r
    return output


def is_dispatcher(hook) -> bool:
    return hook is _pre_dispatch or hook is _post_dispatch


def user_hooks(module: nn.Module) -> list:
    """The forward (pre-)hooks of ``module`` other than this module's dispatchers."""
    return [h for d in (module._forward_pre_hooks, module._forward_hooks) for h in d.values() if not is_dispatcher(h)]


def install(module: nn.Module) -> None:
    """Put the two dispatchers on ``module`` once (idempotent, thread-safe, never removed)."""
    if _pre_dispatch in module._forward_pre_hooks.values() and _post_dispatch in module._forward_hooks.values():
        return
    with _install_lock:
        if _pre_dispatch not in module._forward_pre_hooks.values():
            h = RemovableHandle(module._forward_pre_hooks, extra_dict=module._forward_pre_hooks_with_kwargs)
            module._forward_pre_hooks_with_kwargs[h.id] = True  # flag first: never seen half-registered
            module._forward_pre_hooks[h.id] = _pre_dispatch
        if _post_dispatch not in module._forward_hooks.values():
            h = RemovableHandle(module._forward_hooks, extra_dict=module._forward_hooks_with_kwargs)
            module._forward_hooks_with_kwargs[h.id] = True
            module._forward_hooks[h.id] = _post_dispatch


def current_passes() -> tuple[HookPass, ...]:
    """The passes active in this thread/context, outermost first."""
    return _active.get()


@contextmanager
def hook_pass(pre: Mapping[nn.Module, PreHook] | None = None, post: Mapping[nn.Module, PostHook] | None = None,
              name: str = "pass") -> Iterator[HookPass]:
    """Attach ``pre``/``post`` callbacks for forwards run inside this ``with`` in this context only."""
    global _open
    p = HookPass(name, pre or {}, post or {})
    for m in set(p.pre) | set(p.post):
        install(m)
    with _install_lock:
        _open = _open + (p,)
    token = _active.set(_active.get() + (p,))
    failed = True
    try:
        yield p
        failed = False
    finally:
        _active.reset(token)
        with _install_lock:
            _open = tuple(q for q in _open if q is not p)
    if not failed and p.calls == 0 and p.elsewhere:
        raise PassThreadError(f"hook pass '{p.name}' saw none of its forwards: its modules ran {p.elsewhere} "
                              f"time(s) in another thread, where it is invisible (a ContextVar does not "
                              f"propagate into threading.Thread); run the forward in the thread that opened "
                              f"the pass, or in contextvars.copy_context().run(...)")


def block_io(args, kwargs, output) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) hidden states of a decoder block call, across transformers versions."""
    x = args[0] if args else kwargs.get("hidden_states")
    y = output[0] if isinstance(output, (tuple, list)) else output
    return x, y


@contextmanager
def block_hooks(blocks, fn: Callable[[int, torch.Tensor, torch.Tensor], None], name: str = "blocks"):
    """A pass calling ``fn(i, x, y)`` after block ``i`` runs, with its input and output hidden states.

    ``blocks`` is a block list (``i`` = position) or a mapping ``{i: block}``.
    """
    post = {}
    for i, block in (blocks.items() if isinstance(blocks, Mapping) else enumerate(blocks)):
        def on_post(module, args, kwargs, output, _i=i):
            x, y = block_io(args, kwargs, output)
            fn(_i, x, y)

        post[block] = on_post
    with hook_pass(post=post, name=name) as p:
        yield p
