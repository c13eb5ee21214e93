"""Checkpoint export: a pruned model saved with save_pretrained reloads in plain transformers with the
same logits; export names are sanitised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from simdiff_core import SimDiffError, make_windows, pruned_model
from simdiff_core.export.checkpoint import export_dir_under, export_pruned, safe_name
from simdiff_core.pruning.plan import Plan
from tests.support.tiny import CORE_FAMILIES as FAMILIES


def _ids(tokenizer, n=2, s=32):
    return make_windows(tokenizer, "wikitext2", n=n, seq_len=s)


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_in_plain_transformers(tiny, tokenizer, family, tmp_path):
    lm = tiny(family, num_layers=6)
    plan = Plan(model=lm.source, num_layers=6, removed_layers=[1, 4])
    out = export_pruned(lm, plan, tmp_path / family, make_zip=True)
    assert (out / "simdiff_report.json").is_file() and out.with_suffix(".zip").is_file()
    re = AutoModelForCausalLM.from_pretrained(out)
    assert re.config.num_hidden_layers == 4
    ids = _ids(tokenizer, 1, 16)
    with torch.no_grad():
        assert torch.allclose(re(ids).logits, pruned_model(lm, plan.kept_layers)(ids).logits, atol=1e-5)
    re.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    report = json.loads((out / "simdiff_report.json").read_text())
    assert report["plan"]["removed_layers"] == [1, 4]
    with pytest.raises(SimDiffError, match="already exists"):
        export_pruned(lm, plan, out)
    export_pruned(lm, plan, out, force=True)  # --force replaces atomically
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_export_names_are_sanitised(tmp_path):
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert export_dir_under(tmp_path, "../x").parent == tmp_path.resolve()
    with pytest.raises(SimDiffError):
        safe_name("../..")


# ------------------------------------------------------------------ item 8d: export --force keeps the old export on failure
def test_export_force_restores_the_previous_export_when_the_final_rename_fails(tiny, tmp_path, monkeypatch):
    import errno
    import os

    from simdiff_core.export import checkpoint as export_mod

    lm = tiny("llama", 4)
    out = tmp_path / "model"
    first = Plan(model=lm.source, num_layers=4, removed_layers=[1])
    export_mod.export_pruned(lm, first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_rename = os.rename

    def failing_rename(src, dst):  # simulates the OS refusing the rename of the new export into place
        if Path(src).name.startswith(f".{out.name}.tmp-") and Path(dst) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(export_mod.os, "rename", failing_rename)
    second = Plan(model=lm.source, num_layers=4, removed_layers=[2])
    with pytest.raises(SimDiffError, match="export failed"):
        export_mod.export_pruned(lm, second, out, force=True)
    assert out.is_dir() and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / "plan.json").read_text())["removed_layers"] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no hidden .old-/.tmp- folders left
    monkeypatch.setattr(export_mod.os, "rename", real_rename)
    export_mod.export_pruned(lm, second, out, force=True)  # and a later --force works
    assert json.loads((out / "plan.json").read_text())["removed_layers"] == [2]
