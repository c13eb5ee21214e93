"""The HTML report opened in headless Chromium: every figure is drawn (no network)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from simdiff_core import make_windows
from simdiff_core.evaluation.agreement import set_damage
from simdiff_core.export.report import write_report
from simdiff_core.pruning.plan import make_plan

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=24)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_every_figure_in_headless_chromium(tiny_bundle, ids, tmp_path):
    lm, scores, dmg = tiny_bundle
    plan = make_plan(scores, "simdiff", num=2)
    sets = set_damage(lm, ids, {"simdiff": plan.removed_layers}, dmg)
    out = tmp_path / "report.html"
    res = write_report(out, scores, damage=dmg, plan=plan, sets=sets)
    assert res["figures"] == 6
    # --virtual-time-budget lets plotly finish drawing before the DOM is dumped; no network is used
    # its own profile folder: another Chromium of the suite may run at the same time (pytest -n 2)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                          out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    drawn = re.findall(r'class="[^"]*js-plotly-plot[^"]*"', dom)
    assert len(drawn) == 6, f"{len(drawn)} of 6 figures drawn"
    assert dom.count('class="main-svg"') >= 6
