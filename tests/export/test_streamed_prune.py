"""The streamed prune (export/streamed.py) against the in-memory export, on tiny sharded checkpoints.

Reference: ``export_pruned`` of the in-memory pruned view (``save_pretrained``), an independent
writer; the streamed prune never loads the model. Tensors must be bit-identical, configs equal.
"""

from __future__ import annotations

import json

import pytest
import torch

from simdiff_core.common.errors import SimDiffError
from tests.support.builders import checkpoint_tensors as _tensors


def _config(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("transformers_version", None)
    return cfg


def _in_memory(model, tokenizer, removed, out, dtype):
    from simdiff_core.export.checkpoint import export_pruned
    from simdiff_core.models.load import wrap_model
    from simdiff_core.pruning.plan import Plan

    lm = wrap_model(model, tokenizer, "tiny")
    plan = Plan(model="tiny", num_layers=lm.num_layers, removed_layers=removed, method="manual")
    return export_pruned(lm, plan, out, dtype=dtype), plan


def _same_side_files(ref, got):
    """What the in-memory export writes beside the weights, the streamed prune writes too, with equal content
    (the report: every key of the in-memory one, equal but for its creation time; streamed facts extra)."""
    side = {"simdiff_report.json", "plan.json", "mergekit.yaml", "README.md", "config.json"}
    assert side <= {f.name for f in got.iterdir()}
    assert (got / "plan.json").read_text() == (ref / "plan.json").read_text()
    assert (got / "mergekit.yaml").read_text() == (ref / "mergekit.yaml").read_text()
    assert (got / "README.md").read_text() == (ref / "README.md").read_text()
    want, have = (json.loads((d / "simdiff_report.json").read_text()) for d in (ref, got))
    for k, v in want.items():
        if k != "created":
            assert have.get(k) == v, k
    assert have["streamed"] is True and have["bytes_written"] > 0


@pytest.mark.parametrize("family,dtype", [("llama", torch.bfloat16), ("gemma3", None)])
def test_streamed_prune_equals_in_memory_prune(tmp_path, tokenizer, family, dtype):
    """Sharded source, removed blocks with gaps (0-based 1, 3, 4 of 7): same tensors bit for bit, same config.

    llama is saved untied (a separate head tensor) and converted to bfloat16; gemma3 ties its head to
    the embeddings and has per-layer ``layer_types`` that must be sliced like the blocks.
    """
    from transformers import AutoModelForCausalLM

    from simdiff_core.export.streamed import stream_prune
    from tests.support.tiny import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(family, 7)
    if family == "llama":
        cfg.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="2MB")  # several shards and an index
    tokenizer.save_pretrained(src)
    assert (src / "model.safetensors.index.json").is_file()
    removed = [1, 3, 4]
    ref, plan = _in_memory(model, tokenizer, removed, tmp_path / "mem", dtype)
    res = stream_prune(src, plan.kept_layers, tmp_path / "stream", out_dtype=dtype, shard_bytes=1_500_000, plan=plan,
                       source="tiny")
    got_dir = tmp_path / "stream"
    _same_side_files(ref, got_dir)
    assert res["shards"] > 1 and (got_dir / "model.safetensors.index.json").is_file()

    want, got = _tensors(ref), _tensors(got_dir)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    # renumbered: kept source blocks 0, 2, 5, 6 -> 0, 1, 2, 3, values from the right source block
    sd = model.state_dict()
    name = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(got[name], sd["model.layers.5.mlp.down_proj.weight"].to(dtype or torch.float32))
    assert not any(k.startswith("model.layers.4.") for k in got)
    assert _config(got_dir) == _config(ref)
    cfg_out = _config(got_dir)
    assert cfg_out["num_hidden_layers"] == 4
    if family == "gemma3":
        assert "lm_head.weight" not in got  # tied: stored once, as the embeddings
        assert cfg_out["layer_types"] == [cfg.layer_types[i] for i in plan.kept_layers]
    # bytes written = the kept tensors plus the shard headers (a few hundred bytes each)
    assert res["kept_bytes"] == sum(t.numel() * t.element_size() for t in got.values())
    assert res["kept_bytes"] <= res["bytes_written"] <= res["kept_bytes"] + 20_000 * res["shards"]

    # the result loads in plain transformers and computes what the in-memory pruned model computes
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(1))
    a = AutoModelForCausalLM.from_pretrained(got_dir, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()
    assert a.config.num_hidden_layers == 4 and len(a.model.layers) == 4
    if family == "gemma3":
        assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_streamed_prune_budget_below_one_block_fails_before_any_work(tmp_path, tokenizer, capsys):
    from simdiff_core.cli import main
    from simdiff_core.export.streamed import stream_prune
    from tests.support.tiny import tiny_model

    model = tiny_model("llama", 4)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    block_mb = sum(p.numel() for p in model.model.layers[0].parameters()) * 4 / 2**20
    with pytest.raises(SimDiffError, match="too small: the streamed prune works one block at a time"):
        stream_prune(src, [0, 2, 3], tmp_path / "out", memory_budget_mb=block_mb / 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written, not even a temp dir

    plan = tmp_path / "plan.json"
    from simdiff_core.pruning.plan import Plan

    Plan(model=str(src), num_layers=4, removed_layers=[1], method="manual").save(plan)
    rc = main(["prune", "--model", str(src), "--plan", str(plan), "--out", str(tmp_path / "out"), "--stream",
               "--memory-budget-mb", f"{block_mb / 2:.3f}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: memory budget") and "one block at a time" in err[-1]
    assert not (tmp_path / "out").exists()

    # and with a budget of one block it streams and loads with 3 blocks
    rc = main(["prune", "--model", str(src), "--plan", str(plan), "--out", str(tmp_path / "out"), "--stream",
               "--memory-budget-mb", f"{block_mb * 1.01:.3f}"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["num_layers"] == 3 and res["bytes_written"] >= res["kept_bytes"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 3
