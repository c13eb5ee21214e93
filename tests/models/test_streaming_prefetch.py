"""Read-ahead of the next block while one computes (models/streaming.BlockPrefetch): same bytes, same results.

The overlap itself is a speed matter (bench/real_size.py --prefetch-only measures it); these check that it
changes no number, stays inside the memory budget, and that a read error in the reader thread reaches
the caller as the usual one-line error.
"""

from __future__ import annotations

import threading
import traceback

import pytest
import torch

from tests.support.builders import save_model


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """An 8-block llama saved in several shards (the layout real checkpoints have)."""
    d = tmp_path_factory.mktemp("prefetch")
    model = save_model(d / "one", num_layers=8, hidden=64, inter=256, vocab=512)
    model.save_pretrained(d / "m", max_shard_size="300KB")
    assert (d / "m" / "model.safetensors.index.json").is_file()
    return d / "m", model


def test_prefetch_is_bit_identical_to_no_prefetch(sharded):
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.evaluation.streaming import stream_perplexity

    d, _ = sharded
    ids = torch.randint(0, 512, (3, 40), generator=torch.Generator().manual_seed(4))
    kw = dict(device="cpu", dtype="float32", batch_size=2, linear=True)
    on, off = stream_score(d, ids, prefetch=True, **kw), stream_score(d, ids, prefetch=False, **kw)
    assert on.layers == off.layers and on.matrices == off.matrices and on.windows == off.windows
    assert on.meta["stream"]["read_mb"] == off.meta["stream"]["read_mb"]  # each tensor read once either way
    p_on = stream_perplexity(d, ids, device="cpu", dtype="float32", prefetch=True)
    p_off = stream_perplexity(d, ids, device="cpu", dtype="float32", prefetch=False)
    assert p_on["nll"] == p_off["nll"] and p_on["ppl"] == p_off["ppl"]
    assert not [t for t in threading.enumerate() if t.name.startswith("simdiff-prefetch")]


def test_prefetch_counts_in_the_budget(sharded):
    """Two blocks held only where the budget has room for them; otherwise one, as without prefetch."""
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.models.streaming import StreamedModel

    d, _ = sharded
    sm = StreamedModel(d, "cpu", "float32")
    block_mb = sm.nbytes(sm.block_names(0)) / 2**20
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(5))
    roomy = stream_score(d, ids, memory_budget_mb=3 * block_mb, device="cpu", dtype="float32")
    assert roomy.meta["stream"]["peak_weights_mb"] == pytest.approx(2 * block_mb, rel=1e-3)  # block i + i+1
    tight = stream_score(d, ids, memory_budget_mb=1.5 * block_mb, device="cpu", dtype="float32")
    assert tight.meta["stream"]["peak_weights_mb"] <= 1.5 * block_mb
    assert tight.layers == roomy.layers


def test_a_read_error_in_the_reader_thread_reaches_the_caller(sharded, tmp_path):
    import shutil

    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.common.errors import SimDiffError
    from simdiff_core.models.safetensors_io import read_header

    d, _ = sharded
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    import json

    wmap = json.loads((bad / "model.safetensors.index.json").read_text())["weight_map"]
    shard = wmap["model.layers.5.mlp.down_proj.weight"]  # read ahead while block 4 computes
    header, start = read_header(bad / shard)
    a, _ = header["model.layers.5.mlp.down_proj.weight"]["data_offsets"]
    with open(bad / shard, "r+b") as f:
        f.truncate(start + a + 8)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(6))
    with pytest.raises(SimDiffError, match="ended early") as err:
        stream_score(bad, ids, device="cpu", dtype="float32")
    frames = [f.name for f in traceback.extract_tb(err.value.__traceback__)]
    assert "read_tensors" in frames  # raised in the reader thread, re-raised by take()
    assert not [t for t in threading.enumerate() if t.name.startswith("simdiff-prefetch")]
