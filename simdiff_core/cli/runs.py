"""``simdiff runs``: the run library from the command line (the same RunStore the app's Runs page uses).

    python -m simdiff_core runs list [--json]
    python -m simdiff_core runs show ID [--json]
    python -m simdiff_core runs rm ID [ID ...]
    python -m simdiff_core runs export ID FILE        # FILE.npz: the run file; FILE.json: its plain scores.json
    python -m simdiff_core runs import FILE [--name NAME]   # a run file or a scores.json from anywhere
    python -m simdiff_core runs rename ID NAME
    python -m simdiff_core runs pin ID [--off]

IDs may be abbreviated to any unique prefix of at least 4 characters. The library lives in
$SIMDIFF_HOME/runs (default ~/.cache/simdiff/runs); SIMDIFF_RUNS_READONLY=1 refuses every change.
Cost: no model is loaded by any of these commands.
"""

from __future__ import annotations

import json

from .common import print_result


def _store():
    from ..runs import RunStore

    return RunStore()


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def _row(i) -> dict:
    return {"id": i.id, "name": i.name, "model": i.model, "text": i.text, "samples": i.samples, "seq_len": i.seq_len,
            "tokens": i.tokens, "blocks": i.blocks, "created": i.created, "size": i.size, "partial": i.partial,
            "pinned": i.pinned, "error": i.error}


def cmd_list(args) -> int:
    store = _store()
    runs = store.list()
    if args.json:
        print_result([_row(i) for i in runs])
        return 0
    if not runs:
        print(f"no runs in {store.root}")
        return 0
    print(f"{'id':16}  {'blocks':>6}  {'tokens':>7}  {'size':>9}  {'created':20}  flags  model / text")
    for i in runs:
        flags = ("P" if i.pinned else "-") + ("p" if i.partial else "-") + ("!" if i.error else "-")
        what = i.name or f"{i.model} · {i.text} · {i.samples} x {i.seq_len}"
        print(f"{i.id:16}  {i.blocks or '?':>6}  {i.tokens or '?':>7}  {_mb(i.size):>9}  {i.created or '?':20}  "
              f"{flags:5}  {what}" + (f"  UNREADABLE: {i.error}" if i.error else ""))
    print(f"{len(runs)} runs, {_mb(sum(i.size for i in runs))} in {store.root}  (flags: P pinned, p partial, "
          "! unreadable)")
    return 0


def cmd_show(args) -> int:
    from ..analysis.score import protocol

    store = _store()
    info = store.info(args.id)
    run = store.open(info.id)  # validates; one-line error if unreadable
    d = {**_row(run.info), "protocol": protocol(run.scores.calibration), "meta": run.info.meta}
    if args.json:
        print_result(d)
    else:
        print(json.dumps(d, indent=1, default=str))
    return 0


def cmd_rm(args) -> int:
    store = _store()
    ids = [store.resolve(i) for i in args.ids]
    for rid in ids:
        store.delete(rid)
    print_result({"removed": ids})
    return 0


def cmd_export(args) -> int:
    path = _store().export(args.id, args.file)
    print_result({"out": str(path)})
    return 0


def cmd_import(args) -> int:
    store = _store()
    run_id = store.import_file(args.file, name=args.name)
    info = store.info(run_id)
    print_result({"run_id": run_id, "model": info.model, "blocks": info.blocks, "partial": info.partial})
    return 0


def _set(args, field: str, value) -> int:
    """rename / pin: change one field of a run, print its id and the new value."""
    store = _store()
    (store.rename if field == "name" else store.pin)(args.id, value)
    print_result({"run_id": store.resolve(args.id), field: value})
    return 0


def cmd_rename(args) -> int:
    return _set(args, "name", args.name)


def cmd_pin(args) -> int:
    return _set(args, "pinned", not args.off)


STORE_TRUE = {"action": "store_true"}
# (action, its help, handler, its arguments as (name or flag, add_argument keywords)), in the help's order
ACTIONS = (
    ("list", "every run (unreadable ones flagged with their error)", cmd_list,
     [("--json", {**STORE_TRUE, "help": "print the list as JSON"})]),
    ("show", "one run's metadata (opens and validates it)", cmd_show,
     [("id", {}), ("--json", {**STORE_TRUE, "help": "one JSON line"})]),
    ("rm", "delete runs", cmd_rm, [("ids", {"nargs": "+", "metavar": "ID"})]),
    ("export", "write a run as one file (.json: its plain scores.json; else the run file)", cmd_export,
     [("id", {}), ("file", {})]),
    ("import", "add a run file or a scores.json (validated, size-limited)", cmd_import,
     [("file", {}), ("--name", {"default": None, "help": "a name for the imported run"})]),
    ("rename", "name a run", cmd_rename, [("id", {}), ("name", {})]),
    ("pin", "pin a run (never evicted by the size cap); --off to unpin", cmd_pin, [("id", {}), ("--off", STORE_TRUE)]),
)


def register(sub) -> None:
    p = sub.add_parser("runs", help="the run library: list, show, rm, export, import, rename, pin saved runs",
                       description="Runs saved by 'score' and by the app, in $SIMDIFF_HOME/runs (default "
                                   "~/.cache/simdiff/runs). IDs may be shortened to a unique prefix (>= 4 characters). "
                                   "SIMDIFF_RUNS_READONLY=1 refuses every change.")
    rs = p.add_subparsers(dest="runs_command", metavar="ACTION")
    rs.required = True
    for name, help_, func, arguments in ACTIONS:
        s = rs.add_parser(name, help=help_)
        for arg, kw in arguments:
            s.add_argument(arg, **kw)
        s.set_defaults(func=func)
