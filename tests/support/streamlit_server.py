"""Shared by the browser tests: start ``streamlit run serve.py`` (the app plus the run view route, as
``bash scripts/setup.sh app`` does) on a free loopback port, wait for health.

The flags are the ones Streamlit's own end-to-end suite uses (headless, no usage stats); the file
watcher is left to the shipped ``.streamlit/config.toml`` (off), so the browser tests run the server
exactly as ``bash scripts/setup.sh app`` does. Every wait is bounded and the server is always stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> None:
    if CHROMIUM is None:
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(log_path: Path, env_extra: dict, extra_args=(), script: str = "serve.py", launcher=None):
    """Yield (url, process) of a running app (``script``, run from the project root so the shipped
    config applies); stop it afterwards whatever happened. ``launcher`` replaces ``python -m
    streamlit`` (e.g. ``tests/support/leak_probe.py``, which adds a probe)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", **env_extra)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [*(launcher or [sys.executable, "-m", "streamlit"]), "run", str(script), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         *extra_args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not become healthy in 60 s")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


WATCHER_NOISE = ("Inotify", "inotify", "reconciling recursive watches", "watchdog")


def watcher_lines(log_path: Path) -> list[str]:
    """Lines of a server log that come from a file watcher (there must be none: the config turns it off)."""
    text = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    return [line for line in text.splitlines() if any(w in line for w in WATCHER_NOISE)]


def idle(page, timeout=240_000) -> None:
    """Wait until the script run finished and no skeleton placeholders remain."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=timeout)
    page.wait_for_selector("[data-testid=stSkeleton]", state="detached", timeout=timeout)
    page.wait_for_timeout(300)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    idle(page)


def calibrate_in_browser(page, samples: int, seq_len: int) -> None:
    """On Load & calibrate: set the window count and length, click Load & calibrate (no wait)."""
    set_number(page, "Samples", samples)
    set_number(page, "Seq. length", seq_len)
    page.get_by_role("button", name="Load & calibrate").click()
