"""Scale paths: block streaming under a memory budget, accelerate device maps, the benchmark smoke.

No timing assertions here (speed targets live in bench/run.py); these check that the scale paths
give the same numbers as the plain in-memory path.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support.builders import save_model as _save_model
from tests.support.repo import ROOT

METRICS = ("cosine", "bi", "mssd", "masd", "mssd_rel", "masd_rel", "max_abs_diff", "input_rms", "simdiff")


def _assert_same_scores(a, b, tol=0.0):
    assert a.num_layers == b.num_layers and a.calibration["tokens"] == b.calibration["tokens"]
    for la, lb in zip(a.layers, b.layers):
        for k in METRICS:
            assert la[k] == pytest.approx(lb[k], rel=tol, abs=tol), (la["index"], k)
    for k in ("output_cosine", "cka", "angular_boundaries"):
        np.testing.assert_allclose(np.array(a.matrices[k]), np.array(b.matrices[k]), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """A 12-block, hidden-128 llama saved as safetensors (~13 MB fp32; embeddings and head 0.5 MB each)."""
    d = tmp_path_factory.mktemp("stream-model")
    model = _save_model(d)
    return d, model


def test_streaming_equals_in_memory_under_a_quarter_budget(big_dir):
    from simdiff_core.analysis.score import score_model
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.evaluation.evaluate import perplexity
    from simdiff_core.evaluation.streaming import stream_perplexity
    from simdiff_core.models.blocks import count_parameters
    from simdiff_core.models.load import wrap_model

    d, model = big_dir
    model_mb = count_parameters(model) * 4 / 2**20
    budget = model_mb / 4
    ids = torch.randint(0, 1024, (5, 48), generator=torch.Generator().manual_seed(1))
    ref = score_model(wrap_model(model, None, str(d)), ids, batch_size=2, matrix_tokens=64)
    got = stream_score(d, ids, memory_budget_mb=budget, device="cpu", dtype="float32", batch_size=2, matrix_tokens=64)
    _assert_same_scores(ref, got, tol=0.0)  # same ops, same batches, same summation order: bit-equal
    meta = got.meta["stream"]
    assert meta["model_mb"] == pytest.approx(model_mb, rel=0.01)
    # what was actually held (measured parameter bytes), not just what was planned
    assert 0 < meta["peak_weights_mb"] <= budget
    assert meta["peak_weights_mb"] < model_mb / 4

    ppl_ref = perplexity(model, ids, batch_size=2)
    ppl = stream_perplexity(d, ids, memory_budget_mb=budget, device="cpu", dtype="float32", batch_size=2)
    assert ppl["ppl"] == pytest.approx(ppl_ref["ppl"], rel=1e-6) and ppl["tokens"] == ppl_ref["tokens"]
    assert ppl["stream"]["peak_weights_mb"] <= budget


def test_streaming_budget_too_small_is_one_line_error(big_dir):
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.common.errors import SimDiffError

    d, _ = big_dir
    with pytest.raises(SimDiffError, match="memory budget 1.0 MB is too small.*minimum for this model"):
        stream_score(d, torch.zeros(1, 16, dtype=torch.long), memory_budget_mb=1.0, device="cpu")
    with pytest.raises(SimDiffError, match="streaming needs a model directory"):
        stream_score(d / "nope", torch.zeros(1, 16, dtype=torch.long))


def test_streaming_tied_gemma3_family(tmp_path):
    """Sliding-window masks and per-layer-type rotary tables reach every block; tied head shared."""
    import transformers as tf

    from simdiff_core.analysis.score import score_model
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.evaluation.evaluate import perplexity
    from simdiff_core.evaluation.streaming import stream_perplexity
    from simdiff_core.models.load import wrap_model
    from tests.support.tiny import tiny_config

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(tiny_config("gemma3", 6, vocab_size=1024), dtype=torch.float32).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 1024, (3, 40), generator=torch.Generator().manual_seed(2))
    ref = score_model(wrap_model(model, None, "x"), ids, batch_size=2)
    got = stream_score(tmp_path, ids, device="cpu", dtype="float32", batch_size=2)
    _assert_same_scores(ref, got, tol=0.0)
    ppl = stream_perplexity(tmp_path, ids, device="cpu", dtype="float32", batch_size=2)
    assert ppl["ppl"] == pytest.approx(perplexity(model, ids, batch_size=2)["ppl"], rel=1e-6)


def test_cli_stream_score_and_ppl(tmp_path, tokenizer, capsys):
    from simdiff_core.analysis.score import Scores, score_model
    from simdiff_core.cli import main
    from simdiff_core.data.text import make_windows
    from simdiff_core.models.load import load_model

    d = tmp_path / "m"
    _save_model(d, num_layers=4, hidden=64, inter=128, vocab=49152, tie=True, tokenizer=tokenizer)
    out = tmp_path / "s.json"
    args = ["--model", str(d), "--device", "cpu", "--dtype", "float32", "--samples", "3", "--seq-len", "32"]
    assert main(["score", *args, "--batch-size", "2", "--stream", "--memory-budget-mb", "20", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["stream"]["peak_weights_mb"] <= 20
    lm = load_model(str(d), device="cpu", dtype="float32")
    ref = score_model(lm, make_windows(lm.tokenizer, "wikitext2", 3, 32), batch_size=2)
    _assert_same_scores(ref, Scores.load(out), tol=1e-12)

    assert main(["ppl", "--model", str(d), "--device", "cpu", "--dtype", "float32", "--windows", "2",
                 "--seq-len", "32", "--stream", "--json"]) == 0
    ppl = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["ppl", "--model", str(d), "--device", "cpu", "--dtype", "float32", "--windows", "2",
                 "--seq-len", "32", "--json"]) == 0
    assert ppl["ppl"] == pytest.approx(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ppl"], rel=1e-6)

    assert main(["score", *args, "--stream", "--memory-budget-mb", "0.1", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: memory budget 0.1 MB is too small") and not (tmp_path / "x.json").exists()


def test_device_map_split_with_disk_offload_equals_plain(tmp_path, tokenizer):
    """A real accelerate dispatch (blocks 2-3 offloaded to disk) gives the plain path's scores."""
    from transformers import AutoModelForCausalLM

    from simdiff_core.analysis.score import score_model
    from simdiff_core.models.load import load_model, wrap_model

    d = tmp_path / "m"
    model = _save_model(d, num_layers=4, hidden=64, inter=128, vocab=49152, tie=True, tokenizer=tokenizer)
    ids = torch.randint(0, 49152, (3, 24), generator=torch.Generator().manual_seed(3))
    ref = score_model(wrap_model(model, tokenizer, "plain"), ids, batch_size=2)

    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
            "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    split = AutoModelForCausalLM.from_pretrained(d, device_map=dmap, offload_folder=str(tmp_path / "off"),
                                                 dtype=torch.float32)
    # really dispatched: offloaded blocks hold meta weights and run through accelerate's hooks
    assert split.model.layers[3].mlp.up_proj.weight.device.type == "meta"
    assert type(split.model.layers[3]._hf_hook).__name__ == "AlignDevicesHook"
    from simdiff_core.analysis.hooks import user_hooks

    before = [user_hooks(b) for b in split.model.layers]
    _assert_same_scores(ref, score_model(wrap_model(split, tokenizer, "split"), ids, batch_size=2), tol=1e-6)
    assert [user_hooks(b) for b in split.model.layers] == before  # no scoring hooks left behind

    # and the load_model plumbing with an explicit per-block map
    lm = load_model(str(d), device="cpu", dtype="float32",
                    device_map={"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                                "model.layers.1": "cpu", "model.layers.2": "cpu", "model.layers.3": "cpu",
                                "model.norm": "cpu", "lm_head": "cpu"})
    assert lm.device.type == "cpu"
    _assert_same_scores(ref, score_model(lm, ids, batch_size=2), tol=1e-6)


def test_bench_smoke_prints_all_keys(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "SIMDIFF_BENCH_OUT": str(tmp_path / "RESULTS.md"), "TOKENIZERS_PARALLELISM": "false"}
    import os

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=dict(os.environ, **env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in ("scoring_overhead", "scoring_peak_extra_mb", "preview_ms", "preview_forward_passes",
              "prefill_speedup_over_ideal", "decode_speedup_over_ideal", "streaming_max_abs_diff",
              "streaming_peak_mb", "streaming_model_mb", "model", "store_overhead", "store_bytes_per_block"):
        assert k in res, k
    assert res["preview_forward_passes"] == 0
    assert res["streaming_max_abs_diff"] == 0.0
    assert res["streaming_peak_mb"] <= res["streaming_model_mb"] / 4
    assert len(res["scoring_peak_extra_mb"]) == 2
    assert (tmp_path / "RESULTS.md").read_text().startswith("# SimDiff Explorer benchmarks")


def test_streamed_scores_keep_the_same_per_window_sums_as_in_memory(tmp_path):
    """Bootstrap bands and plan stability of streamed scores rest on their per-window sums."""
    import torch

    from simdiff_core.analysis.score import score_model
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.models.load import wrap_model
    from tests.support.tiny import tiny_model

    model = tiny_model("llama", num_layers=3, seed=2).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 1024, (5, 16), generator=torch.Generator().manual_seed(0))
    ref = score_model(wrap_model(model, None, str(tmp_path)), ids, batch_size=2, matrix_tokens=16)
    got = stream_score(tmp_path, ids, device="cpu", dtype="float32", batch_size=2, matrix_tokens=16)
    assert len(ref.windows["tokens"]) == 5 and got.windows == ref.windows


def test_streaming_a_bfloat16_checkpoint_in_float32(tmp_path):
    """The skeleton is built in the compute dtype: a bf16 checkpoint streamed in float32 runs in float32
    and gives the perplexity of the same checkpoint loaded whole in float32."""
    from transformers import AutoModelForCausalLM

    from simdiff_core.evaluation.evaluate import perplexity
    from simdiff_core.evaluation.streaming import stream_perplexity
    from tests.support.tiny import tiny_model

    tiny_model("llama", 3, seed=1).to(torch.bfloat16).save_pretrained(tmp_path)
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(5))
    ref = perplexity(AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval(), ids, batch_size=2)
    got = stream_perplexity(tmp_path, ids, device="cpu", dtype="float32", batch_size=2)
    assert got["ppl"] == pytest.approx(ref["ppl"], rel=1e-6)
