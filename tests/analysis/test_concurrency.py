"""Several visitors on one shared model: every concurrent result equals the solo result exactly.

The app keeps one model for all sessions and runs each session's script in its own thread. These
tests run ≥ 3 threads on one model at once, forced to overlap (a barrier inside the first block
callback holds every thread *inside* its forward pass until all are there), and compare each
thread's result with the same call run alone, bit for bit.
"""

from __future__ import annotations

import threading

import pytest
import torch

from simdiff_core.analysis.hooks import block_hooks, hook_pass, user_hooks
from simdiff_core.analysis.score import score_model
from simdiff_core.evaluation.damage import measure_damage
from simdiff_core.evaluation.evaluate import perplexity
from simdiff_core.pruning.prune import pruned_model

THREADS = 3
TIMEOUT = 120


def _ids(seed: int, n: int = 3, s: int = 24) -> torch.Tensor:
    return torch.randint(0, 49152, (n, s), generator=torch.Generator().manual_seed(seed))


def _same_scores(a, b) -> None:
    assert a.layers == b.layers  # every per-block float, exactly
    assert a.matrices == b.matrices
    assert a.calibration == b.calibration


def _run_together(jobs):
    """Run the callables in threads at once; return their results (re-raising the first error)."""
    out, errors = [None] * len(jobs), []

    def run(k):
        try:
            out[k] = jobs[k]()
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return out


def _overlapping(barrier):
    """A progress callback that waits, once, for every thread to be inside its forward pass."""
    seen = []

    def progress(frac, msg):
        if not seen:
            seen.append(1)
            barrier.wait(TIMEOUT)

    return progress


def test_concurrent_scoring_equals_solo_runs_exactly(tiny):
    lm = tiny("llama", num_layers=5)
    texts = [_ids(s) for s in range(THREADS)]  # different calibration text per visitor
    settings = [dict(batch_size=1, matrix_tokens=16), dict(batch_size=2, matrix_tokens=32), dict(batch_size=3)]
    solo = [score_model(lm, t, **kw) for t, kw in zip(texts, settings)]
    barrier = threading.Barrier(THREADS)
    together = _run_together([
        (lambda t=t, kw=kw: score_model(lm, t, progress=_overlapping(barrier), **kw)) for t, kw in zip(texts, settings)
    ])
    for a, b in zip(solo, together):
        _same_scores(a, b)
    assert all(not user_hooks(b) for b in lm.blocks)  # nothing left behind on the shared model


def test_concurrent_scoring_and_evaluation_of_a_view_equal_solo(tiny):
    """Scoring the shared model while another visitor evaluates a pruned view of it."""
    lm = tiny("qwen2", num_layers=5)
    view = pruned_model(lm, [0, 2, 4])
    texts = [_ids(10 + s) for s in range(THREADS)]
    solo_scores = [score_model(lm, t, batch_size=1) for t in texts[:2]]
    solo_ppl = perplexity(view, texts[2], batch_size=1)
    barrier = threading.Barrier(THREADS)

    waited = []

    def wait_once(module, args, kwargs):
        if not waited:
            waited.append(1)
            barrier.wait(TIMEOUT)

    def evaluate():
        # hold this visitor inside a forward of the view until the scoring threads are inside theirs
        with hook_pass(pre={view.model.layers[0]: wait_once}):
            return perplexity(view, texts[2], batch_size=1)

    out = _run_together([lambda t=t: score_model(lm, t, batch_size=1, progress=_overlapping(barrier))
                         for t in texts[:2]] + [evaluate])
    for a, b in zip(solo_scores, out[:2]):
        _same_scores(a, b)
    assert out[2] == solo_ppl


def test_a_pass_sees_only_its_own_thread_and_its_own_modules(tiny, tokenizer):
    lm = tiny("llama", num_layers=3)
    ids = _ids(1, n=1, s=8)
    seen = []
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        with block_hooks(lm.blocks, lambda i, x, y: seen.append(("other", i))):
            inside.set()
            release.wait(TIMEOUT)  # its pass is open, but it runs no forward

    t = threading.Thread(target=other_thread)
    t.start()
    inside.wait(TIMEOUT)
    with torch.no_grad(), block_hooks(lm.blocks, lambda i, x, y: seen.append(("mine", i))) as p:
        lm.model(ids)
        view = pruned_model(lm, [0, 2])
        view(ids)  # the view's blocks are other module objects: my pass is not attached to them
    release.set()
    t.join(TIMEOUT)
    assert seen == [("mine", 0), ("mine", 1), ("mine", 2)]
    assert p.calls == 3
    with torch.no_grad():
        lm.model(ids)  # after the pass: nothing fires
    assert len(seen) == 3


def test_passes_nest_and_callbacks_can_edit(tiny):
    lm = tiny("llama", num_layers=3)
    ids = _ids(2, n=1, s=8)
    order = []

    def identity(module, args, kwargs, output):  # block 1 returns its input: as if it were removed
        x = args[0] if args else kwargs["hidden_states"]
        return (x,) + tuple(output[1:]) if isinstance(output, tuple) else x

    with torch.no_grad():
        ref = lm.model(ids).logits
        with hook_pass(post={lm.blocks[1]: lambda m, a, k, o: order.append("outer")}):
            with block_hooks(lm.blocks, lambda i, x, y: order.append(i)):
                lm.model(ids)
        with hook_pass(post={lm.blocks[1]: identity}):
            edited = lm.model(ids).logits
        skipped = pruned_model(lm, [0, 2])(ids).logits
        after = lm.model(ids).logits
    assert order == [0, "outer", 1, 2]  # outer pass first, then the inner one
    assert torch.allclose(edited, skipped, atol=1e-5) and not torch.allclose(edited, ref, atol=1e-3)
    assert torch.equal(after, ref)


def _held_inside_forward(block, barrier, fn):
    """Run ``fn()`` with this thread held, once, inside its first forward of ``block`` until all arrive."""
    waited = []

    def wait_once(module, args, kwargs):
        if not waited:
            waited.append(1)
            barrier.wait(TIMEOUT)

    with hook_pass(pre={block: wait_once}, name="barrier"):
        return fn()


def test_concurrent_damage_equals_solo_runs_exactly(tiny):
    lm = tiny("llama", num_layers=4)
    texts = [_ids(20 + s, n=2, s=16) for s in range(THREADS)]
    solo = [measure_damage(lm, t, batch_size=1) for t in texts]
    barrier = threading.Barrier(THREADS)
    out = _run_together([lambda t=t: _held_inside_forward(lm.blocks[0], barrier, lambda: measure_damage(lm, t, batch_size=1))
                         for t in texts])
    for a, b in zip(solo, out):
        assert (a.dense_loss, a.layers) == (b.dense_loss, b.layers)


def test_hooks_on_a_view_never_fire_on_the_original_and_vice_versa(tiny):
    lm = tiny("llama", num_layers=4)
    view = pruned_model(lm, [0, 1, 3])
    ids = _ids(3, n=1, s=8)
    fired = []

    def add(module, tag):  # every kind torch keeps in a separate dict: plain, with kwargs, pre, always-called
        return [module.register_forward_hook(lambda m, a, o: fired.append(tag)),
                module.register_forward_hook(lambda m, a, k, o: fired.append(tag + "+kw"), with_kwargs=True),
                module.register_forward_pre_hook(lambda m, a, k: fired.append(tag + "-pre"), with_kwargs=True),
                module.register_forward_hook(lambda m, a, o: fired.append(tag + "!"), always_call=True)]

    def run(model):
        fired.clear()
        with torch.no_grad():
            model(ids)
        return sorted(set(fired))

    on_view = add(view.model.layers[2], "view") + add(view.model, "view-base") + add(view.model.layers[1].self_attn, "view-attn")
    assert run(lm.model) == []
    assert len(run(view)) == 12
    on_orig = add(lm.blocks[3], "orig") + add(lm.model.model, "orig-base") + add(lm.blocks[1].self_attn, "orig-attn")
    assert all(not t.startswith("orig") for t in run(view))
    assert len(run(lm.model)) == 12 and all(t.startswith("orig") for t in run(lm.model))
    for h in on_view + on_orig:
        h.remove()
    assert run(lm.model) == [] and run(view) == []


def test_a_forward_handed_to_a_worker_thread_is_an_error_not_an_empty_pass(tiny):
    """A ContextVar does not reach a threading.Thread: the worker's forward is invisible to the pass.
    The pass must fail when it closes instead of leaving its statistics silently empty; run in a copy
    of the context, the same worker is seen; another visitor's plain forward next to a pass that saw
    its own forward is no error."""
    import contextvars

    from simdiff_core.analysis.hooks import PassThreadError

    lm = tiny("llama", num_layers=3)
    ids = _ids(4, n=1, s=8)
    seen = []

    def forward():
        with torch.no_grad():
            lm.model(ids)

    def in_worker(fn):
        t = threading.Thread(target=fn)
        t.start()
        t.join(TIMEOUT)

    with pytest.raises(PassThreadError, match="another thread"):
        with block_hooks(lm.blocks, lambda i, x, y: seen.append(i), name="worker"):
            in_worker(forward)
    assert seen == []  # what the error prevents: a pass that silently saw nothing
    with block_hooks(lm.blocks, lambda i, x, y: seen.append(i)) as p:
        ctx = contextvars.copy_context()
        in_worker(lambda: ctx.run(forward))
    assert seen == [0, 1, 2] and p.calls == 3
    with block_hooks(lm.blocks, lambda i, x, y: seen.append(i)) as p:
        forward()             # the pass's own forward ...
        in_worker(forward)    # ... and another visitor's plain forward of the shared model meanwhile
    assert p.calls == 3 and p.elsewhere == 3
    assert all(not user_hooks(b) for b in lm.blocks)
