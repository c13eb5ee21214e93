"""Shared pieces of the command line: argument groups, model/calibration loading, progress, results.

    from simdiff_core.cli.common import add_model_args, load_from_args, progress_printer

Every subcommand module (``cli/core.py``, ``cli/eval.py``, ``cli/methods.py``, ...) builds its parser
and reads its arguments with these helpers, so a flag means the same thing everywhere. This module
imports no subcommand module (only the library, lazily), so the subcommands can all depend on it
without an import circle. Cost: none beyond the imports a subcommand needs anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..common.errors import SimDiffError


def add_model_args(p: argparse.ArgumentParser, required: bool = True, several: bool = False) -> None:
    help_ = "'default' (embedded SmolLM2-135M GGUF), 'gemma3-270m', a .gguf path, a model directory, or a hub id"
    if several:
        help_ += " (repeat --model to score several models in turn, e.g. to prepare a demo gallery)"
    p.add_argument("--model", required=required, default=None if required else "default",
                   action="append" if several else "store", help=help_)
    p.add_argument("--device", default="auto", help="auto (CUDA -> MPS -> CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model repository's own Python code to run (off by default; only for code you trust)")
    p.add_argument("--device-map", default=None,
                   help="accelerate device map for models larger than one device, e.g. 'auto'")


def add_calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", default="wikitext2",
                   help="calibration text: wikitext2 (shipped validation split), shipped:code, shipped:dialogue "
                        "(short CC0 samples), a file path, text:RAW, hf:DATASET[/CONFIG]/SPLIT")
    p.add_argument("--samples", type=int, default=8, help="number of calibration windows (default 8)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window (default 256)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default: automatic)")


def add_ratio_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--ratio", type=float, help="fraction of blocks to remove, 0 < R < 1 (k = round(R * L))")
    g.add_argument("--num", type=int, help="number of blocks to remove")
    p.add_argument("--no-keep-first", dest="keep_first", action="store_false", help="allow removing block 0")
    p.add_argument("--no-keep-last", dest="keep_last", action="store_false", help="allow removing the last block")


def add_stream_args(p: argparse.ArgumentParser, what: str | None = None) -> None:
    p.add_argument("--stream", action="store_true",
                   help=what or "stream one decoder block at a time from the safetensors shards (models bigger than memory)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="with --stream: refuse to hold more than this many MB of weights at once")


def load_from_args(args):
    from ..models.load import load_model

    progress_line(f"loading {args.model} ...")
    if getattr(args, "trust_remote_code", False):
        from ..models.pretrained import TRUST_REMOTE_CODE_WARNING

        print(f"warning: {TRUST_REMOTE_CODE_WARNING}", file=sys.stderr, flush=True)
    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    trust_remote_code=getattr(args, "trust_remote_code", False),
                    device_map=getattr(args, "device_map", None))
    progress_line(f"loaded {lm.name}: {lm.num_layers} blocks on {lm.device} ({str(lm.dtype).replace('torch.', '')}) "
                  f"in {lm.load_seconds:.1f}s", end=True)
    return lm


def calib_from_args(args, lm):
    from ..data.text import load_text, make_windows

    src = load_text(args.calib, purpose="calib")
    ids = make_windows(lm.tokenizer, src, args.samples, args.seq_len)
    return ids, {"source": args.calib, "description": src.description}


def holdout_from_args(args, lm):
    """The held-out windows of the ``repaired_ppl`` objective: the next ``--holdout-samples`` windows of
    the calibration text after the ``--samples`` fit windows (same ``--seq-len``), so none is a fit window."""
    from ..data.text import load_text
    from ..evaluation.repaired_objective import holdout_windows

    n = int(args.holdout_samples)
    if n < 1:
        raise SimDiffError(f"--holdout-samples must be at least 1, got {n}")
    src = load_text(args.calib, purpose="calib")
    ids = holdout_windows(lm.tokenizer, src, args.samples, n, args.seq_len)
    return ids, {"source": args.calib, "windows": f"{args.samples}..{args.samples + n - 1}",
                 "description": f"{src.description}, the {n} windows after the {args.samples} fit windows "
                                f"({args.seq_len} tokens each)"}


def progress_line(msg: str, end: bool = False) -> None:
    sys.stderr.write("\r\033[K" + msg + ("\n" if end else "") if sys.stderr.isatty() else msg + "\n")
    sys.stderr.flush()


def progress_printer(label: str):
    """A progress(fraction, message) callback printing to stderr (every 10% when not a tty)."""
    state = {"last": -1.0, "t0": time.perf_counter()}

    def cb(frac: float, msg: str = "") -> None:
        tty = sys.stderr.isatty()
        if tty or frac >= 1.0 or frac - state["last"] >= 0.1:
            state["last"] = frac
            progress_line(f"[{label}] {100 * frac:5.1f}% {msg} ({time.perf_counter() - state['t0']:.0f}s)",
                          end=frac >= 1.0 and tty)
    return cb


def print_result(obj, as_json: bool = True) -> None:
    print(json.dumps(obj) if as_json else obj, flush=True)


def parse_alpha(value: str):
    if value == "auto":
        return "auto"
    try:
        a = float(value)
    except ValueError:
        raise SimDiffError(f"--alpha must be a number in [0, 1] or 'auto', got {value!r}") from None
    if not 0.0 <= a <= 1.0:
        raise SimDiffError(f"--alpha must lie in [0, 1], got {a}")
    return a
