"""The live component's JavaScript (ui/live_component/live_core.js) against the Python side, in Node.

The browser repaints a slider move from the payload with its own copies of ``live_slider.removed`` /
``assemble``, ``figures.contiguous_runs`` and Python's ``round``. This test writes what the Python side
gives (the planner's removed sets, the figure builders' specs, ``plan.count_from_ratio``'s counts) to a
fixture file and runs ``node --test tests/app/live_component.test.mjs`` on it, so the README's test
command (pytest) runs the Node test too. Skipped, saying so, where ``node`` is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from simdiff_core import make_plan, make_windows, score_model
from simdiff_core.export import figures
from simdiff_core.pruning.plan import count_from_ratio

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node (Node.js >= 18) is not installed: the live "
                                "component's JavaScript is not tested here")


def _j(x):
    return json.loads(json.dumps(x))


@pytest.fixture(scope="module")
def scores(tokenizer):
    from tests.support.tiny import tiny_lm

    return score_model(tiny_lm("llama", tokenizer, 9, 0), make_windows(tokenizer, "wikitext2", n=6, seq_len=16))


def _fixtures(scores) -> dict:
    from ui import live_slider

    L = scores.num_layers
    rng = np.random.default_rng(0)
    drops = [[], [0], [3, 4, 5], [0, 2, 3, 7, 8]] + [sorted(rng.choice(30, size=int(rng.integers(1, 29)),
                                                                        replace=False).tolist()) for _ in range(40)]
    runs = [{"drop": d, "runs": figures.contiguous_runs(d)} for d in drops]
    # the ratio slider's values as its <input> shows them (the shortest repr, as JavaScript's String)
    counts = [{"L": n, "value": repr(round(i * 0.01, 2)), "k": count_from_ratio(n, round(i * 0.01, 2))}
              for n in (5, 9, 10, 30, 80) for i in range(1, 101)]
    alphas = [{"value": repr(round(i * 0.05, 2)), "a": live_slider.akey(round(i * 0.05, 2))} for i in range(21)]

    fusion = {"beta": 0.5, "scale_free": True}
    others = ["cosine", "mssd_rel"]
    pre = live_slider.preview_payload(scores, "simdiff", 0.35, True, False, fusion, others, True)
    cases = []
    for k in range(0, L + 1):
        if not 1 <= k <= L - 1:
            cases.append({"k": k, "a": "", "removed": None})
            continue
        sets = {c: make_plan(scores, c, num=k, alpha=0.35, keep_first=True, keep_last=False,
                             **(fusion if c == "simdiff" else {})).removed_layers for c in ["simdiff"] + others}
        cases.append({"k": k, "a": "", "removed": sets["simdiff"], "charts": {
            "stability": figures.stability_spec(live_slider.frequency(pre, k), sets["simdiff"]),
            "overlap": figures.overlap_spec(sets, L)}})
    base = figures.curves_base(scores.layers, scale_free=True)
    cur = live_slider.curves_payload(scores, "simdiff", True, True, fusion, base)
    curve_cases = []
    for a in ("0.00", "0.35", "1.00"):
        imp = scores.importance("simdiff", alpha=float(a), **fusion)
        for k in (1, 3, L - 2):
            drop = make_plan(scores, "simdiff", num=k, alpha=float(a), **fusion).removed_layers
            curve_cases.append({"k": k, "a": a, "removed": drop, "charts": {
                "curves": figures.curves_spec(base, drop, markers=False),
                "simdiff": figures.bars_spec(imp, drop, title=f"SimDiff importance, α = {float(a):.2f} (higher = keep)",
                                             shapes=True)}})
    return _j({"runs": runs, "counts": counts, "alphas": alphas,
               "payloads": [{"payload": live_slider.public(pre), "cases": cases},
                            {"payload": live_slider.public(cur), "cases": curve_cases}]})


def test_the_component_javascript_agrees_with_the_python_side(scores, tmp_path):
    fx = tmp_path / "live_fixtures.json"
    fx.write_text(json.dumps(_fixtures(scores)), encoding="utf-8")
    r = subprocess.run([NODE, "--test", str(HERE / "live_component.test.mjs")], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "SD_LIVE_FIXTURES": str(fx)})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "# fail 0" in r.stdout and "# pass 0" not in r.stdout, r.stdout[-2000:]


def test_the_registered_module_is_valid_javascript(tmp_path):
    """What Streamlit gets (live_chart.js with live_core.js inlined) parses as one ES module."""
    from ui.live_chart import component_js

    js = component_js()
    assert "from './live_core.js'" not in js and "export default function" in js
    mod = tmp_path / "component.mjs"
    mod.write_text(js, encoding="utf-8")
    r = subprocess.run([NODE, "--check", str(mod)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("static", [True, False])
def test_plotly_js_travels_by_url_or_once_inline(static):
    """With static serving (the shipped config) the charts carry plotly.js's URL, never the bundle, and
    ``preload`` puts the same URL first in the page; without it the bundle goes inline once per session
    (the fallback) and ``preload`` adds nothing."""
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    from ui import live_chart

    old = config.get_option("server.enableStaticServing")
    config.set_option("server.enableStaticServing", static)
    live_chart.plotly_url.cache_clear()
    try:
        at = AppTest.from_string(
            "from ui.live_chart import plotly_live, preload\n"
            "preload()\n"
            "for i in range(2):\n"
            "    plotly_live({'data': [], 'layout': {}}, key=f'g{i}')\n", default_timeout=30).run()
        assert not at.exception
        data = [json.loads(e.proto.json) for e in at.get("bidi_component")]
        if static:
            url = f"/app/static/{live_chart.served_name()}"
            assert data[0] == {"preload": url} and len(data) == 3
            assert all(d["plotly_src"] == url for d in data[1:])
            assert not any("plotly_js" in d for d in data)
            served = live_chart.STATIC / live_chart.served_name()
            assert served.read_bytes() == live_chart.plotly_file().read_bytes()
        else:
            assert len(data) == 2
            assert ["plotly_js" in d for d in data] == [True, False] and "plotly_src" not in data[0]
            assert data[0]["plotly_js"] == live_chart.plotly_file().read_text(encoding="utf-8")
    finally:
        config.set_option("server.enableStaticServing", old)
        live_chart.plotly_url.cache_clear()


def test_the_vendored_plotly_is_the_cartesian_bundle_of_the_installed_plotlys_version():
    """The charts get the vendored 1.5 MB cartesian bundle (ui/live_component/vendor/README.md), not the
    package's 4.8 MB one; it must be the plotly.js the installed ``plotly`` writes its figure JSON for. After
    a ``plotly`` upgrade this fails until the vendored file is updated (the app meanwhile serves the
    package's full bundle, correct but slower)."""
    from ui import live_chart

    full = live_chart.package_plotly_file()
    want = live_chart.plotly_js_version(full)
    head = live_chart.VENDORED.read_bytes()[:200].decode()
    assert want and re.match(r"/\*\*\n\* plotly\.js \(cartesian - minified\) v" + re.escape(want) + r"\n", head), (want, head)
    assert "Licensed under the MIT license" in head and (live_chart.VENDORED.parent / "LICENSE").is_file()
    assert live_chart.plotly_file() == live_chart.VENDORED
    assert live_chart.served_name() == f"plotly-cartesian-{want}.min.js"
    assert live_chart.VENDORED.stat().st_size < full.stat().st_size / 2
    # the quick view's bundle (scatter and bar only): the same version, smaller again
    head = live_chart.VENDORED_BASIC.read_bytes()[:200].decode()
    assert re.match(r"/\*\*\n\* plotly\.js \(basic - minified\) v" + re.escape(want) + r"\n", head), (want, head)
    assert live_chart.plotly_file("basic") == live_chart.VENDORED_BASIC
    assert live_chart.served_name("basic") == f"plotly-basic-{want}.min.js"
    assert live_chart.VENDORED_BASIC.stat().st_size < live_chart.VENDORED.stat().st_size


def test_a_vendored_bundle_of_another_plotly_js_version_is_not_served(tmp_path, monkeypatch):
    """After a ``plotly`` upgrade the vendored bundle is stale: the package's own full bundle is served (its
    own name, so no browser keeps the stale one), never a plotly.js the figure JSON was not written for."""
    from ui import live_chart

    stale = tmp_path / "plotly-cartesian.min.js"
    stale.write_text("/**\n* plotly.js (cartesian - minified) v0.0.1\n*/\nvar Plotly = {};\n", encoding="utf-8")
    monkeypatch.setattr(live_chart, "VENDORED", stale)
    live_chart.plotly_file.cache_clear()
    try:
        assert live_chart.plotly_js_version(stale) == "0.0.1"
        assert live_chart.plotly_file() == live_chart.package_plotly_file()
        assert live_chart.served_name() == f"plotly-{live_chart.plotly_js_version(live_chart.package_plotly_file())}.min.js"
    finally:
        live_chart.plotly_file.cache_clear()
