"""Repair against an independent float64 reference on a tiny model of every supported family.

The reference captures activations with plain torch forward hooks on a private model (not the
project's run-scoped hooks), takes the site of ``M`` from a table written here from the
transformers source (not from ``repair/sites.py``), and fits with ``torch.linalg.lstsq`` on the raw
token matrices (not the accumulated normal equations). The repaired model is then checked against
the algebra the fold promises: block ``a-1`` of the repaired model outputs ``R + M·T`` exactly.
"""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from simdiff_core import make_windows, pruned_model
from simdiff_core.pruning.prune import weights_fingerprint
from simdiff_core.repair import (REPAIR_METHODS, Repair, RepairRefused, SpanAccumulator, apply_repair, fit_repair,
                                 refusal)
from tests.support.tiny import FAMILIES

# Written from the transformers modeling files: where M is read, and the factor the block applies.
REF_SITE = {"gpt2": "mlp.c_proj", "gpt-neox": "mlp.dense_4h_to_h", "opt": "fc2"}
POST_NORM_FAMILIES = {"gemma2", "gemma3"}


VOCAB = 1024  # tiny vocabulary (token ids taken modulo it): the repair never touches the embeddings


@pytest.fixture(scope="module")
def win(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=6, seq_len=40) % VOCAB  # 240 tokens > d = 64


@pytest.fixture
def tiny(tokenizer):
    from transformers import AutoModelForCausalLM

    from simdiff_core.models.load import wrap_model
    from tests.support.tiny import tiny_config

    def make(family="llama", num_layers=6, seed=0):
        torch.manual_seed(seed)
        cfg = tiny_config(family, num_layers, VOCAB)
        if (getattr(cfg, "pad_token_id", None) or 0) >= VOCAB:  # Phi-3's default pad id is 32000
            cfg.pad_token_id = 0
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        with torch.no_grad():  # as tests.support.tiny.tiny_model: make blocks differ visibly
            for i, p in enumerate(model.parameters()):
                if p.ndim == 2:
                    p.mul_(1.0 + 0.5 * ((i % 5) - 2) / 2)
        return wrap_model(model.eval(), tokenizer, source=f"tiny-{family}")

    return make


def _reference(model, a, b, site_path, scale, windows):
    """(M, Y) as float64 token matrices, from plain torch hooks and output_hidden_states."""
    blocks = model.get_submodule({"gpt2": "transformer.h", "gpt-neox": "gpt_neox.layers",
                                  "opt": "model.decoder.layers"}.get(_fam(model), "model.layers"))
    got = {}
    h1 = blocks[a - 1].get_submodule(site_path).register_forward_hook(lambda m, i, o: got.__setitem__("M", o))
    h2 = blocks[a - 1].register_forward_hook(lambda m, i, o: got.__setitem__("ha", o[0] if isinstance(o, tuple) else o))
    h3 = blocks[b - 1].register_forward_hook(lambda m, i, o: got.__setitem__("hb", o[0] if isinstance(o, tuple) else o))
    try:
        Ms, Ys = [], []
        with torch.no_grad():
            for k in range(windows.shape[0]):
                model(input_ids=windows[k:k + 1], use_cache=False)
                M = got["M"].double() * scale
                Ms.append(M.reshape(-1, M.shape[-1]))
                Ys.append((got["hb"].double() - (got["ha"].double() - M)).reshape(-1, M.shape[-1]))
    finally:
        h1.remove(), h2.remove(), h3.remove()
    return torch.cat(Ms), torch.cat(Ys)


def _fam(model):
    return {"gpt_neox": "gpt-neox"}.get(model.config.model_type, model.config.model_type)


@pytest.mark.parametrize("family", FAMILIES)
def test_repair_matches_reference_fit_and_folds_exactly(family, tiny, win):
    lm = tiny(family, num_layers=6, seed=3)
    for method in ("lstsq", "rescale"):
        _check_family_method(lm, family, method, win)


def _check_family_method(lm, family, method, win):
    before_fp = weights_fingerprint(lm.model)
    removed = [2, 3]  # one span [2, 4): fold into block 1
    if method == "lstsq" and family in POST_NORM_FAMILIES:
        with pytest.raises(RepairRefused) as e:
            fit_repair(lm, removed, win, method=method)
        msg = str(e.value)
        assert "\n" not in msg and "post_feedforward_layernorm" in msg and refusal(lm.model, method) == msg
        return
    rep = fit_repair(lm, removed, win, method=method, calibration={"source": "wikitext2 valid"})
    assert weights_fingerprint(lm.model) == before_fp
    post = family in POST_NORM_FAMILIES
    site = "post_feedforward_layernorm" if post else REF_SITE.get(family, "mlp.down_proj")
    scale = float(lm.model.config.residual_multiplier) if family == "granite" else 1.0
    M, Y = _reference(lm.model, 2, 4, site, scale, win)
    if method == "lstsq":
        T_ref = torch.linalg.lstsq(M, Y, driver="gelsd").solution
    else:
        T_ref = (M * Y).sum(0) / (M * M).sum(0)
    T = rep.maps[1]
    assert T.shape == T_ref.shape
    assert torch.allclose(T, T_ref, rtol=1e-4, atol=1e-6 * float(T_ref.abs().max())), float((T - T_ref).abs().max())
    full = torch.diag(T_ref) if T_ref.ndim == 1 else T_ref
    res_before = float(((M - Y) ** 2).sum())
    res_after = float(((M @ full - Y) ** 2).sum())
    (span,) = rep.spans
    assert span["status"] == "repaired" and (span["start"], span["end"]) == (2, 4)
    assert span["residual_before"] == pytest.approx(res_before, rel=1e-6)
    assert span["residual_after"] == pytest.approx(res_after, rel=1e-4, abs=1e-9 * res_before)
    assert span["residual_after"] <= span["residual_before"] and span["tokens"] == win.numel()

    # the fold is exact: block 1 of the repaired model outputs R + M·T where the dense block output R + M
    view = pruned_model(lm, [0, 1, 4, 5])
    repaired = apply_repair(view, rep)
    assert weights_fingerprint(lm.model) == before_fp
    with torch.no_grad():
        hs_d = lm.model(input_ids=win[:2], output_hidden_states=True, use_cache=False).hidden_states
        hs_r = repaired(input_ids=win[:2], output_hidden_states=True, use_cache=False).hidden_states
    Md, _ = _reference(lm.model, 2, 4, site, scale, win[:2])
    want = hs_d[2].double().reshape(-1, Md.shape[-1]) + Md @ (full - torch.eye(full.shape[0], dtype=torch.float64))
    got = hs_r[2].double().reshape(-1, Md.shape[-1])
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())), float((got - want).abs().max())
    # and the repaired model is not the pruned one (the map was folded somewhere that runs)
    with torch.no_grad():
        assert not torch.equal(view(input_ids=win[:1]).logits, repaired(input_ids=win[:1]).logits)


def test_record_round_trip_spans_and_none(tiny, win):
    lm = tiny("llama", num_layers=8, seed=1)
    rep = fit_repair(lm, [0, 3, 4, 6], win, method="lstsq", calibration={"source": "wikitext2 valid"})
    spans = [(s["start"], s["end"], s["status"]) for s in rep.spans]
    assert spans[0][:2] == (0, 1) and spans[0][2].startswith("not repaired")
    assert [s[:2] for s in spans[1:]] == [(3, 5), (6, 7)] and all(s[2] == "repaired" for s in spans[1:])
    d = rep.to_dict()
    assert d["calibration"] == {"source": "wikitext2 valid", "samples": 6, "seq_len": 40, "tokens": 240}
    assert "mergekit" in d["export_note"]
    back = Repair.from_dict(d)
    assert back.to_dict() == d and not back.applicable
    with pytest.raises(Exception, match="no fitted maps"):
        apply_repair(pruned_model(lm, back.kept_layers), back)
    with pytest.raises(Exception, match="pruned model with 4 blocks"):
        apply_repair(lm, rep)
    none = fit_repair(lm, [3, 4], win, method="none")
    view = pruned_model(lm, none.kept_layers)
    assert apply_repair(view, none) is view and REPAIR_METHODS == ("none", "lstsq", "ridge", "rescale")
    with pytest.raises(Exception, match="unknown repair method"):
        fit_repair(lm, [3], win, method="bogus")


def test_sequential_fit_first_span_equals_dense_fit(tiny, win):
    lm = tiny("qwen2", num_layers=8, seed=2)
    dense = fit_repair(lm, [2, 5], win, method="lstsq")
    seq = fit_repair(lm, [2, 5], win, method="lstsq", fit="sequential")
    # span 1 sees an unrepaired model below it in both fits: same sums, same map
    assert torch.allclose(seq.maps[1], dense.maps[1], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(seq.maps[4], dense.maps[4])  # span 2 is fitted on the repaired pruned model
    assert all(s["residual_after"] <= s["residual_before"] for s in seq.spans)


def test_accumulator_batches_equal_one_shot_and_merge():
    g = torch.Generator().manual_seed(0)
    M, Y = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    a, b, c = SpanAccumulator(16), SpanAccumulator(16), SpanAccumulator(16)
    a.add(M, Y)
    b.add(M[:100], Y[:100]), c.add(M[100:], Y[100:])
    b.merge(c)
    assert torch.allclose(a.solve(), b.solve(), rtol=1e-10) and b.tokens == 300
    ref = torch.linalg.lstsq(M.double(), Y.double()).solution
    assert torch.allclose(a.solve(), ref, rtol=1e-6, atol=1e-9)
    assert a.residual() == pytest.approx(float(((M.double() - Y.double()) ** 2).sum()), rel=1e-10)


def test_export_of_repaired_model_reloads_with_equal_logits(tiny, win, tmp_path):
    from simdiff_core.export.checkpoint import export_pruned
    from simdiff_core.pruning.plan import Plan

    for family, method in (("llama", "lstsq"), ("gpt2", "lstsq"), ("gemma3", "rescale"), ("granite", "lstsq")):
        lm = tiny(family, num_layers=6, seed=4)
        rep = fit_repair(lm, [3, 4], win, method=method)
        plan = Plan(model=lm.source, num_layers=6, removed_layers=[3, 4], kept_layers=[0, 1, 2, 5])
        repaired = apply_repair(pruned_model(lm, plan.kept_layers), rep)
        out = export_pruned(lm, plan, tmp_path / family, model=repaired)
        back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            want = repaired(input_ids=win[:2], use_cache=False).logits
            got = back(input_ids=win[:2], use_cache=False).logits
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), family


def test_concurrent_repairs_are_bit_identical_to_solo_and_leave_the_model_alone(tiny, tokenizer):
    lm = tiny("llama", num_layers=6, seed=5)
    fp = weights_fingerprint(lm.model)
    texts = [make_windows(tokenizer, src, n=4, seq_len=32) % VOCAB for src in ("wikitext2", "shipped:code", "shipped:dialogue")]
    solo = [fit_repair(lm, [2, 3], ids, method="lstsq").maps[1] for ids in texts]
    results = [None] * 6
    barrier = threading.Barrier(6)

    def run(k):
        barrier.wait()
        results[k] = fit_repair(lm, [2, 3], texts[k % 3], method="lstsq").maps[1]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(6):
        assert torch.equal(results[k], solo[k % 3])
    assert weights_fingerprint(lm.model) == fp


def _ridge_reference(M, Y, S: int):
    """Two-fold cross-validated ridge towards I, written out from the raw token matrices (rows window-major,
    ``S`` per window): for every strength s, solve on the even-numbered windows and measure the squared
    residual on the odd ones and the other way round; solve on all tokens with the best s."""
    from simdiff_core.repair.accumulate import CV_GRID, RIDGE

    d = M.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    win = torch.arange(M.shape[0]) // S
    folds = [win % 2 == 0, win % 2 == 1]

    def solve(rows, s):
        if s == float("inf"):
            return eye
        Mf, Yf = M[rows], Y[rows]
        lam = max(s, RIDGE) * float((Mf * Mf).sum()) / d
        return torch.linalg.solve(Mf.T @ Mf + lam * eye, Mf.T @ Yf + lam * eye)

    held = [sum(float(((M[folds[1 - k]] @ solve(folds[k], s) - Y[folds[1 - k]]) ** 2).sum()) for k in (0, 1))
            for s in CV_GRID]
    best = CV_GRID[min(range(len(held)), key=held.__getitem__)]
    return solve(torch.ones(M.shape[0], dtype=torch.bool), best), best, held


@pytest.mark.parametrize("family", ["llama", "gpt2", "granite"])
def test_ridge_matches_a_written_out_cross_validation(family, tiny, win):
    lm = tiny(family, num_layers=6, seed=3)
    site = REF_SITE.get(family, "mlp.down_proj")
    scale = float(lm.model.config.residual_multiplier) if family == "granite" else 1.0
    for ids in (win, win[:3, :16]):  # 240 tokens (> d = 64) and 48 (< d: lstsq refuses, ridge still fits)
        rep = fit_repair(lm, [2, 3], ids, method="ridge", batch_size=2)
        M, Y = _reference(lm.model, 2, 4, site, scale, ids)
        T_ref, best, held = _ridge_reference(M, Y, ids.shape[1])
        (span,) = rep.spans
        assert span["ridge"]["strength"] == (None if best == float("inf") else best)
        assert span["ridge"]["kept_identity"] == (best == float("inf"))
        for s, r in zip(span["ridge"]["held_out"].values(), held):
            assert s == pytest.approx(r, rel=1e-6, abs=1e-9 * max(held))
        T = rep.maps[1]
        assert torch.allclose(T, T_ref, rtol=1e-5, atol=1e-7 * float(T_ref.abs().max())), float((T - T_ref).abs().max())
        assert span["residual_after"] <= span["residual_before"]
    # lstsq with no more fit tokens than channels: one line, before any pass
    with pytest.raises(Exception) as e:
        fit_repair(lm, [2, 3], win[:1, :40], method="lstsq")
    assert "\n" not in str(e.value) and "40 <= 64" in str(e.value) and "ridge" in str(e.value)


def test_ridge_accumulator_numbers_windows_across_batches():
    """Window parity runs on across add() calls and batch shapes: one 6-window batch, six 1-window batches
    and a 4 + 2 split give the same folds, the same chosen strength and the same map."""
    g = torch.Generator().manual_seed(1)
    d, S = 10, 7
    M = torch.randn(6, S, d, generator=g) * torch.logspace(-1, 1, d)
    Y = M @ torch.randn(d, d, generator=g) + 0.3 * torch.randn(6, S, d, generator=g)
    accs = [SpanAccumulator(d, cv=True) for _ in range(3)]
    accs[0].add(M, Y)
    for k in range(6):
        accs[1].add(M[k:k + 1], Y[k:k + 1])
    accs[2].add(M[:4], Y[:4]), accs[2].add(M[4:], Y[4:])
    Ts = [a.solve() for a in accs]
    T_ref, best, _ = _ridge_reference(M.double().reshape(-1, d), Y.double().reshape(-1, d), S)
    for a, T in zip(accs, Ts):
        assert a.cv["strength"] == best and a.even.tokens == 3 * S
        assert torch.allclose(T, T_ref, rtol=1e-8, atol=1e-10)
    # the choice is made once per set of sums: a second solve reuses it, new tokens clear it
    chosen = accs[0].cv
    assert torch.equal(accs[0].solve(), Ts[0]) and accs[0].cv is chosen
    accs[0].add(M[:1], Y[:1])
    assert accs[0].cv is None
