"""Reliability and security of the library and CLI (issue 7): bad input never breaks anything.

Every row of ``reliability_cases.CASES`` runs through the real CLI (in-process via ``cli.main`` when
nothing process-wide is involved, else in a subprocess with the case's env / resource limit) and
must end with exactly one ``error: ...`` line, no traceback, exit 2, and nothing half-written.
The other tests cover behaviour that is not an error line: OOM retry, streaming readers, export
sanitising and atomicity, remote-code refusal, and the docs/troubleshooting.md table staying in sync.

Real failures are used wherever this machine can produce them: RLIMIT_AS for "model too large",
RLIMIT_FSIZE for a write error mid-export, truncated copies of real files. The one exception is CUDA
out-of-memory (there is no GPU here): it is injected from a block hook, see that test.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

from tests.support.repo import ROOT
from tests.support.reliability_cases import BEHAVIOURS, CASES, troubleshooting_table

from simdiff_core import cli
from simdiff_core.common.errors import SimDiffError

SECRET = "secret-xyz"
CUSTOM_CODE = '''
import os, pathlib
pathlib.Path(os.environ["SIMDIFF_MARKER"]).write_text("custom code ran")
from transformers import LlamaConfig, LlamaForCausalLM

class CustomConfig(LlamaConfig):
    model_type = "simdiff_custom"

class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


# ---------------------------------------------------------------- workspace: small real files
def _save_tiny(path: Path, tokenizer, num_layers: int) -> None:
    from tests.support.tiny import tiny_model

    tiny_model("llama", num_layers).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tokenizer):
    """Placeholder -> path for every file the cases refer to (built once per module)."""
    from tests.support.tiny import tiny_lm

    from simdiff_core import make_windows, score_model
    from simdiff_core.models.sources import embedded_gguf
    from simdiff_core.pruning.plan import Plan, make_plan

    d = tmp_path_factory.mktemp("rel")
    w = {"ws": str(d)}
    tiny4 = d / "tiny4"
    _save_tiny(tiny4, tokenizer, 4)
    w["tiny4"] = str(tiny4)

    lm = tiny_lm("llama", tokenizer, 4)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=32)
    scores = score_model(lm, ids)
    scores.save(d / "scores4.json")
    w["scores4"] = str(d / "scores4.json")
    make_plan(scores, "simdiff", num=1).save(d / "plan4.json")
    w["plan4"] = str(d / "plan4.json")
    Plan(model="tiny-6", num_layers=6, removed_layers=[2]).save(d / "plan6.json")
    w["plan6"] = str(d / "plan6.json")
    for name, text in {
        "badjson": '{"removed_layers": [1', "planlist": "[1, 2]",
        "planfields": json.dumps({"model": "x", "removed_layers": [1]}),
        "planrange": json.dumps({"model": "x", "num_layers": 4, "removed_layers": [9]}),
        "planall": json.dumps({"model": "x", "num_layers": 4, "removed_layers": [0, 1, 2, 3]}),
    }.items():
        fname = "bad.json" if name == "badjson" else f"{name}.json"
        (d / fname).write_text(text)
        w[name] = str(d / fname)

    # broken models
    (d / "noconf").mkdir()
    (d / "noconf" / "notes.json").write_text("{}")
    w["noconf"] = str(d / "noconf")
    for name, cfg in {"t5": {"model_type": "t5"}, "unk": {"model_type": "nosuchfamily"}}.items():
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps(cfg))
        w[name] = str(d / name)
    weights = (tiny4 / "model.safetensors").read_bytes()
    for name, blob in {"trunc_st": weights[: len(weights) // 2], "garbage_st": os.urandom(100_000)}.items():
        (d / name).mkdir()
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (d / name / f).write_bytes((tiny4 / f).read_bytes())
        (d / name / "model.safetensors").write_bytes(blob)
        w[name] = str(d / name)
    with open(embedded_gguf("smollm2-135m"), "rb") as f:
        head = f.read(1 << 20)  # a real GGUF header, cut off inside the tensor table
    (d / "trunc.gguf").write_bytes(head)
    (d / "bad.gguf").write_bytes(b"NOTGGUF!" + head[8:4096])
    w["trunc_gguf"], w["bad_gguf"] = str(d / "trunc.gguf"), str(d / "bad.gguf")

    custom = d / "custom"
    custom.mkdir()
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (custom / f).write_bytes((tiny4 / f).read_bytes())
    cfg = json.loads((tiny4 / "config.json").read_text())
    cfg.update(model_type="simdiff_custom", architectures=["CustomForCausalLM"],
               auto_map={"AutoConfig": "custom_model.CustomConfig",
                         "AutoModelForCausalLM": "custom_model.CustomForCausalLM"})
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "custom_model.py").write_text(CUSTOM_CODE)
    w["custom"] = str(custom)

    # a 7B-parameter Llama config (28 GB in float32) with one real tensor: loading must allocate it all
    import transformers as tf
    from safetensors.torch import save_file

    huge = d / "huge"
    tf.LlamaConfig(vocab_size=49152, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8).save_pretrained(huge)
    save_file({"model.norm.weight": torch.ones(4096)}, str(huge / "model.safetensors"), metadata={"format": "pt"})
    w["huge"] = str(huge)

    # texts
    (d / "empty.txt").write_text("")
    (d / "blank.txt").write_text("  \n\n\t  \n" * 50)
    (d / "short.txt").write_text("The quick brown fox jumps over the lazy dog. " * 4)  # ~40 tokens
    (d / "binary.bin").write_bytes(b"\x7fELF\x00\x01\x02" + os.urandom(2000))
    (d / "latin1.txt").write_bytes(("Café crème à la façon de Noël. " * 40).encode("latin-1"))
    (d / "bigtext.txt").write_text(("word " * 200 + "\n") * 2100)  # ~2.1 MB
    for name in ("empty", "blank", "short", "latin1", "bigtext"):
        w[name] = str(d / f"{name}.txt")
    w["binary"] = str(d / "binary.bin")
    (d / "exists").mkdir()
    (d / "exists" / "keep.txt").write_text("user data")
    w["exists"] = str(d / "exists")
    return w


def _fill(args, w: dict, tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **w) for a in args]


def _pattern(shows: str) -> re.Pattern:
    return re.compile("^" + ".*".join(re.escape(p) for p in shows.split("…")) + "$")


def _run_sub(argv, env=None, timeout=300):
    e = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", **(env or {}))
    r = subprocess.run([sys.executable, "-m", "simdiff_core", *argv], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=e)
    return r.returncode, r.stdout, r.stderr


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))


@contextlib.contextmanager
def _rlimit(spec):
    """Lower a soft resource limit of this process for one run, then restore it.

    AS: address space = what is mapped now + the given headroom, so a big allocation fails for real
    (torch raises, as on a machine without the memory). FSIZE: files may not grow past the size;
    SIGXFSZ is ignored so writes fail with EFBIG, as on a full disk, instead of killing us."""
    if spec is None:
        yield
        return
    kind, n = spec
    res = getattr(resource, f"RLIMIT_{kind}")
    old = resource.getrlimit(res)
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN) if kind == "FSIZE" else None
    soft = _vm_size() + n if kind == "AS" else n
    resource.setrlimit(res, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(res, old)
        if old_sig is not None:
            signal.signal(signal.SIGXFSZ, old_sig)


def _run_inproc(argv, capsys, rlimit=None):
    with _rlimit(rlimit):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if re.match(r"^\..*(tmp|old)", p.name)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_cases(case, ws, tmp_path, capsys, monkeypatch):
    argv = _fill(case.args, ws, tmp_path)
    env = dict(case.env, HF_TOKEN=SECRET, HUGGING_FACE_HUB_TOKEN=SECRET, SIMDIFF_MARKER=str(tmp_path / "MARKER"))
    if case.subprocess:
        rc, out, err = _run_sub(argv, dict(env, HF_MODULES_CACHE=str(tmp_path / "mods")))
    else:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        rc, out, err = _run_inproc(argv, capsys, case.rlimit)
    errors = [l for l in err.splitlines() if l.startswith("error: ")]
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-2000:]
    assert _pattern(case.shows).match(errors[0]), f"\n{errors[0]}\n!~ {case.shows}"
    assert SECRET not in out + err  # tokens come from the environment and are never echoed
    if case.out:
        assert not Path(case.out.format(tmp=tmp_path, **ws)).exists(), "half-written output left behind"
    assert not _leftovers(tmp_path) and not _leftovers(Path(ws["ws"])), "temporary files left behind"
    assert not (tmp_path / "MARKER").exists(), "custom model code ran without --trust-remote-code"
    if case.id == "export-exists":
        assert [p.name for p in Path(ws["exists"]).iterdir()] == ["keep.txt"]


def test_trust_remote_code_runs_only_when_enabled(ws, tmp_path):
    """Enabled: a warning comes first, then the code runs (marker file) and the model loads. Refused
    (the ``remote-code`` case above, same marker): the custom module is never imported. This half
    runs in a subprocess so the custom module never enters the test process."""
    marker = tmp_path / "MARKER"
    env = {"SIMDIFF_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "mods"), "HF_HUB_OFFLINE": "1"}
    args = ["ppl", "--model", ws["custom"], "--windows", "1", "--seq-len", "32", "--json",
            "--text", "text:" + "the cat sat on the mat. " * 20, "--trust-remote-code"]
    rc, out, err = _run_sub(args, env)
    assert rc == 0, err[-2000:]
    assert "warning: trust_remote_code is ON" in err
    assert err.index("warning: trust_remote_code") < err.index("loaded ")
    assert marker.read_text() == "custom code ran"
    assert json.loads(out.strip().splitlines()[-1])["tokens"] == 31


def test_no_block_list_names_supported_families():
    from simdiff_core.models.blocks import SUPPORTED_FAMILIES, find_block_path

    class Odd(torch.nn.Module):  # blocks in a Sequential: nothing a decoder-block search can trust
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 3})()
            self.body = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])

    with pytest.raises(SimDiffError, match="no decoder-block list found; supported families: llama") as e:
        find_block_path(Odd())
    assert SUPPORTED_FAMILIES in str(e.value) and "\n" not in str(e.value)


def test_oom_during_calibration_halves_batch(tiny, tokenizer):
    """There is no GPU here, so CUDA out-of-memory is *injected*: a forward pre-hook on block 1 raises
    torch.OutOfMemoryError for any batch of more than 2 windows (as a real GPU would for big batches).
    score_model must roll back the partial batch, retry with half the batch size, and give exactly
    the scores of an uninterrupted run; with no batch small enough it explains what to do."""
    from simdiff_core import make_windows, score_model

    lm = tiny("llama", 4)
    ids = make_windows(tokenizer, "wikitext2", n=8, seq_len=32)
    clean = score_model(lm, ids, batch_size=2)
    seen = []

    def flaky(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        seen.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    h = lm.blocks[1].register_forward_pre_hook(flaky, with_kwargs=True)
    try:
        got = score_model(lm, ids, batch_size=8)
    finally:
        h.remove()
    assert seen[:3] == [8, 4, 2] and set(seen[2:]) == {2}
    assert got.meta["batch_size"] == 2 and got.calibration["tokens"] == clean.calibration["tokens"]
    for a, b in zip(got.layers, clean.layers):
        for k in ("cosine", "mssd", "masd", "mssd_rel", "masd_rel", "simdiff"):
            assert math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-7), (a["index"], k)
    assert torch.allclose(torch.tensor(got.matrices["cka"]), torch.tensor(clean.matrices["cka"]), atol=1e-5)

    h = lm.blocks[0].register_forward_pre_hook(
        lambda m, a, k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory (injected)")),
        with_kwargs=True)
    try:
        with pytest.raises(SimDiffError, match="out of GPU memory even with batch size 1: use a shorter --seq-len"):
            score_model(lm, ids[:2], batch_size=2)
    finally:
        h.remove()


def test_large_text_is_streamed(tmp_path, tokenizer):
    """A 40 MB file: the windows read only the first chunk, so Python allocations stay far below the
    file size (a whole-file read would allocate > 40 MB)."""
    from simdiff_core.data.text import load_text, make_windows

    big = tmp_path / "big.txt"
    line = ("lorem ipsum dolor sit amet consectetur " * 20 + "\n").encode()
    with open(big, "wb") as f:
        for _ in range((40 << 20) // len(line)):
            f.write(line)
    src = load_text(str(big))
    tracemalloc.start()
    try:
        ids = make_windows(tokenizer, src, n=4, seq_len=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids.shape == (4, 64)
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MB: the file was read whole"


def test_pasted_text_limit_and_binary(monkeypatch):
    from simdiff_core.data.text import text_source

    monkeypatch.setenv("SIMDIFF_MAX_TEXT_MB", "0.01")  # read at call time, like the app's uploads
    with pytest.raises(SimDiffError, match="over the 0 MB limit"):
        text_source("word " * 4000)
    monkeypatch.setenv("SIMDIFF_MAX_TEXT_MB", "1")
    assert text_source("word " * 4000).text.startswith("word")
    with pytest.raises(SimDiffError, match="upload.bin is not UTF-8 text"):
        text_source("\x00\x01ELF" * 100, "upload.bin")


def test_export_names_stay_inside_root(tmp_path, tiny):
    from simdiff_core.export.checkpoint import export_dir_under, export_pruned, safe_name
    from simdiff_core.pruning.plan import Plan

    root = tmp_path / "exports"
    root.mkdir()
    for name in ("../escape", "../../etc/passwd", "a/b/c", "/abs/path", "..\\..\\win", ".hidden",
                 "my model (v2)", "ünïcode/..", "~/home"):
        target = export_dir_under(root, name)
        assert target.parent == root.resolve(), (name, target)
        assert ".." not in target.name and "/" not in target.name and not target.name.startswith(".")
    for name in ("", "..", "....", "/", "../..", "   "):
        with pytest.raises(SimDiffError, match="no usable characters"):
            safe_name(name)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SimDiffError, match="escapes the export folder"):
        export_dir_under(root, "evil")

    lm = tiny("llama", 4)
    before = sorted(p for p in tmp_path.rglob("*"))
    out = export_pruned(lm, Plan(model="t", num_layers=4, removed_layers=[2]), export_dir_under(root, "../../pwn"))
    new = sorted(set(tmp_path.rglob("*")) - set(before))
    assert out.parent == root.resolve() and new and all(root in p.parents for p in new)
    assert not list(outside.iterdir()) and not _leftovers(tmp_path)


def test_force_replaces_atomically_and_source_untouched(tmp_path, tiny):
    from simdiff_core.export.checkpoint import export_pruned
    from simdiff_core.pruning.plan import Plan
    from simdiff_core.pruning.prune import weights_fingerprint

    lm = tiny("qwen2", 4)
    fp = weights_fingerprint(lm.model)
    out = tmp_path / "m"
    export_pruned(lm, Plan(model="t", num_layers=4, removed_layers=[1]), out)
    with pytest.raises(SimDiffError, match="already exists"):
        export_pruned(lm, Plan(model="t", num_layers=4, removed_layers=[1, 2]), out)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    export_pruned(lm, Plan(model="t", num_layers=4, removed_layers=[1, 2]), out, force=True)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no .tmp / .old leftovers
    assert weights_fingerprint(lm.model) == fp and lm.num_layers == 4


def test_zip_is_streamed(tmp_path):
    """Zipping streams file by file: Python memory stays flat however big the checkpoint is. A 384 MiB
    (sparse) weights file keeps the test quick on a shared disk; building the archive in memory would
    allocate at least that much, so a 16 MiB ceiling tells the two apart. (zipfile's zip64 handles
    archives past 4 GiB; the writer code path is the same.)"""
    import zipfile

    from simdiff_core.export.checkpoint import zip_dir

    src = tmp_path / "ckpt"
    src.mkdir()
    size = 384 << 20
    with open(src / "model.safetensors", "wb") as f:
        f.truncate(size)
    (src / "config.json").write_text("{}")
    tracemalloc.start()
    try:
        z = zip_dir(src, tmp_path / "ckpt.zip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MB while zipping {size >> 20} MiB"
    with zipfile.ZipFile(z) as zf:
        info = {i.filename: i.file_size for i in zf.infolist()}
    assert info == {"ckpt/config.json": 2, "ckpt/model.safetensors": size}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ckpt.zip"]


def test_behaviour_rows_name_real_tests():
    for b in BEHAVIOURS:
        path, name = b.test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), b.test


def test_readme_troubleshooting_table_is_generated():
    sys.path.insert(0, str(ROOT / "scripts"))
    from troubleshooting_table import extract

    readme = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert extract(readme) == troubleshooting_table(), \
        "docs/troubleshooting.md table is stale: run python scripts/troubleshooting_table.py"
