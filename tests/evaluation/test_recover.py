"""Recovery fine-tuning (LoRA, merged) and downstream accuracy (lm-eval path and offline fallback)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simdiff_core.common.errors import SimDiffError
from simdiff_core.evaluation.recover import RecoveryConfig, default_target_modules, recover
from simdiff_core.pruning.prune import weights_fingerprint


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()


def test_recovery_lowers_loss_and_merge_equals_adapters(tiny, tmp_path):
    """On a tiny Llama: training under the caller's inference_mode works, loss drops, the source is
    untouched, merged weights reproduce the adapter-applied model, and the export reloads in plain
    transformers with the same outputs."""
    from transformers import AutoModelForCausalLM

    from simdiff_core.export.checkpoint import export_pruned
    from simdiff_core.pruning.plan import Plan

    lm = tiny("llama", 4)
    lm.model.requires_grad_(False)
    before = weights_fingerprint(lm.model)
    ids = torch.randint(0, 2000, (4, 24), generator=torch.Generator().manual_seed(0))
    cfg = RecoveryConfig(steps=12, rank=4, lr=1e-2, batch_size=4)
    with torch.inference_mode():  # the app and perplexity helpers live here; training must still work
        res = recover(lm, [0, 2, 3], ids, cfg, merge=False)
    peft_model = res.model
    assert weights_fingerprint(lm.model) == before
    curve = [p["loss"] for p in res.report["loss_curve"]]
    assert len(curve) == 12 and curve[-1] < curve[0] - 0.05
    assert res.report["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # LoRA only inside the blocks: embeddings / head untouched, and nothing else trainable
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".layers." in n for n in trainable)

    probe = ids[:2]
    adapted = _logits(peft_model, probe)
    merged = peft_model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(merged, probe), adapted, atol=2e-4, rtol=1e-4)
    # and the adapters really changed the function (so the comparison above means something)
    from simdiff_core.pruning.prune import pruned_model

    assert (_logits(pruned_model(lm, [0, 2, 3]), probe) - adapted).abs().max() > 1e-3

    plan = Plan(model="tiny", num_layers=4, removed_layers=[1])
    out = export_pruned(lm, plan, tmp_path / "rec", model=merged, report={"recovery": res.report})
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == 3
    assert not any("lora" in k for k in reloaded.state_dict())
    torch.testing.assert_close(_logits(reloaded, probe), adapted, atol=2e-4, rtol=1e-4)


def test_recovery_on_embedded_model_lowers_pruned_loss(embedded_lm, calib_ids):
    """A few LoRA steps on the real (pruned) SmolLM2 lower its loss on the calibration windows."""
    before = weights_fingerprint(embedded_lm.model)
    kept = [i for i in range(embedded_lm.num_layers) if i not in (20, 21, 22, 23, 24)]
    train = calib_ids[:2, :64]
    res = recover(embedded_lm, kept, train, RecoveryConfig(steps=3, rank=4, lr=2e-3, batch_size=2),
                  eval_ids=train[:2])
    r = res.report
    assert r["train_loss_after"] < r["train_loss_before"] - 0.02
    assert r["ppl_recovered"] < r["ppl_pruned"]
    assert r["ppl_dense"] < r["ppl_pruned"]
    assert weights_fingerprint(embedded_lm.model) == before
    assert all(not p.requires_grad for p in res.model.parameters())
    assert len(res.model.model.layers) == len(kept)


def test_target_modules_detected_per_family(tiny):
    assert default_target_modules(tiny("phi3", 2).model) == ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"]
    assert "q_proj" in default_target_modules(tiny("gemma3", 2).model)
    lm = tiny("qwen2", 2)
    with pytest.raises(SimDiffError, match="not linear layers"):
        recover(lm, None, torch.zeros(2, 8, dtype=torch.long), RecoveryConfig(steps=1, target_modules=["nope"]))
    with pytest.raises(SimDiffError, match="steps"):
        recover(lm, None, torch.zeros(2, 8, dtype=torch.long), RecoveryConfig(steps=0))


def _hand_loglik(model, tok, context, continuation):
    """lm-eval's rule, written out: encode context+continuation, score the continuation tokens."""
    whole = tok(context + continuation).input_ids
    ctx = tok(context).input_ids
    cont = whole[len(ctx):]
    logp = F.log_softmax(_logits(model, torch.tensor([whole]))[0], dim=-1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def test_accuracy_agrees_with_hand_computed_loglikelihoods(tiny, tokenizer):
    from simdiff_core.evaluation.downstream import evaluate_tasks

    model = tiny("llama", 2, seed=3).model
    items = [
        {"kind": "science", "split": "test", "context": "Question: What is frozen water called?\nAnswer:",
         "choices": ["ice", "steam", "a cloud"], "gold": 0},
        {"kind": "science", "split": "test", "context": "The sky on a clear day is",
         "choices": ["blue", "green"], "gold": 1},
        {"kind": "physical", "split": "test", "context": "To open a jar,", "choices": ["twist the lid", "bake it"],
         "gold": 0},
    ]
    res = evaluate_tasks(model, tokenizer, "mc_science,mc_physical", mode="offline", items=items, samples=True)
    assert res["source"] == "offline" and res["engine"].startswith("lm-eval")
    expected = {}
    for task, kind in (("mc_science", "science"), ("mc_physical", "physical")):
        rows = [it for it in items if it["kind"] == kind]
        hits = 0
        for it, sample in zip(rows, res["samples"][task]):
            lls = [_hand_loglik(model, tokenizer, it["context"], " " + c) for c in it["choices"]]
            harness = [float(r[0]) for r in sample["filtered_resps"]]
            assert harness == pytest.approx(lls, abs=1e-3)
            hits += int(max(range(len(lls)), key=lls.__getitem__) == it["gold"])
        expected[task] = hits / len(rows)
    assert res["tasks"] == pytest.approx(expected)
    assert res["average"] == pytest.approx(sum(expected.values()) / 2)


def test_retained_and_task_parsing():
    from simdiff_core.evaluation.downstream import (OFFLINE_TASKS, STANDARD_TASKS, offline_tasks_for, parse_tasks,
                                                        retained)

    assert parse_tasks("all") == list(STANDARD_TASKS)
    assert parse_tasks("offline") == list(OFFLINE_TASKS)
    with pytest.raises(SimDiffError, match="unknown task"):
        parse_tasks("arc_easy,mmlu")
    assert offline_tasks_for(["arc_easy", "arc_challenge", "boolq", "piqa"])[0] == ["mc_science", "mc_physical"]
    with pytest.raises(SimDiffError, match="no offline stand-in"):
        offline_tasks_for(["boolq", "winogrande"])
    d = {"tasks": {"a": 0.5, "b": 0.7}, "average": 0.6, "source": "offline"}
    p = {"tasks": {"a": 0.4, "b": 0.5}, "average": 0.45, "source": "offline"}
    assert retained(d, p) == pytest.approx(75.0)
    assert retained(d, dict(p, source="lm-eval")) is None
