"""Command line: ``python -m simdiff_core {score,plan,prune,ppl,...} --help``.

    python -m simdiff_core score --model default --out scores.json
    python -m simdiff_core plan  --scores scores.json --criterion simdiff --ratio 0.25 --out plan.json
    python -m simdiff_core prune --model default --plan plan.json --out pruned/ --zip
    python -m simdiff_core ppl   --model pruned/ --json

Each subcommand is a thin wrapper over library functions the app uses too. Progress goes to
stderr; bad input ends with ``error: <one line>`` on stderr and exit status 2 (no traceback; set
SIMDIFF_DEBUG=1 to see one). Results (JSON with ``--json``) are the last line of stdout.

Other modules add subcommands by defining ``register(subparsers)`` and being listed in
``COMMAND_MODULES``; they take their shared argument helpers from ``cli/common.py`` (never from this
module), so no subcommand module imports another. The core commands (score, plan, prune,
ppl) are in ``cli/core.py``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..common.errors import SimDiffError


COMMAND_MODULES: list[str] = ["simdiff_core.cli.core", "simdiff_core.cli.ground_truth", "simdiff_core.cli.ecosystem",
                              "simdiff_core.cli.eval", "simdiff_core.cli.methods", "simdiff_core.cli.insight",
                              "simdiff_core.cli.runs", "simdiff_core.cli.linear"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simdiff_core",
                                description="SimDiff Explorer: score, plan, prune and evaluate transformer blocks.")
    from .. import __version__

    p.add_argument("--version", action="version", version=f"simdiff_core {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:
        pass


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except SimDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback for users; SIMDIFF_DEBUG=1 shows it
        if os.environ.get("SIMDIFF_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"error: unexpected {type(e).__name__}: {first} (set SIMDIFF_DEBUG=1 for details)", file=sys.stderr)
        return 1
