"""``simdiff score`` through the run library and ``simdiff runs ...`` end to end.

The first test runs real CLI processes (a second process finds the first one's run); the others call
the same ``main(argv)`` in-process (each interpreter start costs ~20 s on the 2-core CI box). Each test
points $SIMDIFF_HOME at its own tmp folder, so counts are exact.
"""

from __future__ import annotations

import json

import pytest

from tests.support.repo import run_cli


def _last(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    from tests.support.tiny import tiny_model

    d = tmp_path_factory.mktemp("models")
    out = []
    for seed in (0, 1):
        p = d / f"tiny{seed}"
        tiny_model("llama", 3, seed=seed).save_pretrained(p)
        tokenizer.save_pretrained(p)
        out.append(str(p))
    return out


SMALL = ["--samples", "2", "--seq-len", "24"]


def test_score_saves_reuses_and_recomputes(tmp_path, models, cli):
    env = {"SIMDIFF_HOME": str(tmp_path / "home")}
    r1 = run_cli("score", "--model", models[0], *SMALL, "--out", tmp_path / "a.json", env=env)
    assert r1.returncode == 0, r1.stderr
    res1 = _last(r1.stdout)
    assert res1["run_id"] and res1["from_library"] is None and res1["num_layers"] == 3
    r2 = run_cli("score", "--model", models[0], *SMALL, "--out", tmp_path / "b.json", env=env)
    res2 = _last(r2.stdout)
    assert r2.returncode == 0 and "from the run library, computed" in r2.stderr and "[score]" not in r2.stderr
    assert res2["run_id"] == res1["run_id"] and res2["from_library"]
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    r3 = cli("score", "--model", models[0], *SMALL, "--recompute", env=env)
    assert r3.returncode == 0 and "[score]" in r3.stderr and _last(r3.stdout)["run_id"] == res1["run_id"]
    r4 = cli("score", "--model", models[0], "--samples", "3", "--seq-len", "24", "--no-save",
                 "--out", tmp_path / "c.json", env=env)
    assert r4.returncode == 0 and _last(r4.stdout)["run_id"] is None
    lst = _last(cli("runs", "list", "--json", env=env).stdout)
    assert [r["id"] for r in lst] == [res1["run_id"]]


def test_gallery_list_show_export_import_rename_pin_rm(tmp_path, models, cli):
    env = {"SIMDIFF_HOME": str(tmp_path / "home")}
    r = cli("score", "--model", models[0], "--model", models[1], *SMALL, "--pin", env=env)
    assert r.returncode == 0, r.stderr
    gallery = _last(r.stdout)["gallery"]
    assert [g["model"] for g in gallery] == models and len({g["run_id"] for g in gallery}) == 2
    lst = _last(cli("runs", "list", "--json", env=env).stdout)
    assert len(lst) == 2 and all(x["pinned"] and x["blocks"] == 3 and not x["error"] for x in lst)
    text = cli("runs", "list", env=env).stdout
    assert "2 runs" in text and gallery[0]["run_id"] in text
    rid = gallery[0]["run_id"]
    show = _last(cli("runs", "show", rid[:6], "--json", env=env).stdout)
    assert show["id"] == rid and "x 24 tokens" in show["protocol"]
    assert cli("runs", "rename", rid[:6], "demo one", env=env).returncode == 0
    assert cli("runs", "pin", rid, "--off", env=env).returncode == 0
    assert cli("runs", "export", rid, tmp_path / "r.npz", env=env).returncode == 0
    assert cli("runs", "export", rid, tmp_path / "r.json", env=env).returncode == 0
    other = {"SIMDIFF_HOME": str(tmp_path / "other")}
    imp = cli("runs", "import", tmp_path / "r.npz", env=other)
    assert imp.returncode == 0, imp.stderr
    assert _last(imp.stdout)["run_id"] == rid  # the same id on another server
    imp2 = _last(cli("runs", "import", tmp_path / "r.json", "--name", "plain", env=other).stdout)
    assert imp2["run_id"] != rid and imp2["blocks"] == 3
    lst = {x["id"]: x for x in _last(cli("runs", "list", "--json", env=env).stdout)}
    assert lst[rid]["name"] == "demo one" and not lst[rid]["pinned"]
    assert cli("runs", "rm", rid, env=env).returncode == 0
    assert [x["id"] for x in _last(cli("runs", "list", "--json", env=env).stdout)] == [gallery[1]["run_id"]]


@pytest.mark.parametrize("args, env, shows", [
    (["runs", "show", "nosuchrun"], {}, "error: no run 'nosuchrun' in the run library"),
    (["runs", "import", "{tmp}/missing.json"], {}, "error: no such file: "),
    (["runs", "import", "{tmp}/garbage.json"], {}, "error: garbage.json is not valid scores JSON"),
    (["runs", "rm", "{rid}"], {"SIMDIFF_RUNS_READONLY": "1"},
     "error: the run library is read-only (SIMDIFF_RUNS_READONLY=1): cannot delete runs"),
    (["runs", "import", "{tmp}/garbage.json"], {"SIMDIFF_RUNS_READONLY": "1"},
     "error: the run library is read-only (SIMDIFF_RUNS_READONLY=1): cannot import runs"),
    (["score", "--model", "{m0}", "--model", "{m1}", "--out", "{tmp}/x.json"], {}, "error: --out takes one model"),
    (["score", "--model", "{m0}", "--no-save"], {}, "error: nothing would be kept"),
])
def test_runs_bad_input_is_one_line(tmp_path, models, args, env, shows, cli):
    home = {"SIMDIFF_HOME": str(tmp_path / "home")}
    (tmp_path / "garbage.json").write_text("{not json")
    from simdiff_core.runs import RunStore

    from tests.support.builders import constructed_scores

    rid = RunStore(tmp_path / "home", readonly=False).save(constructed_scores([[0.5, 0.6], [0.7, 0.8]]))
    fill = {"{tmp}": str(tmp_path), "{rid}": rid, "{m0}": models[0], "{m1}": models[1]}
    argv = []
    for a in args:
        for k, v in fill.items():
            a = a.replace(k, v)
        argv.append(a)
    r = cli(*argv, env={**home, **env})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(shows) and "Traceback" not in r.stderr
    assert [i.id for i in RunStore(tmp_path / "home", readonly=False).list()] == [rid]  # nothing changed
