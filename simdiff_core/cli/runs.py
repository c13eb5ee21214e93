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


def cmd_rename(args) -> int:
    store = _store()
    store.rename(args.id, args.name)
    print_result({"run_id": store.resolve(args.id), "name": args.name})
    return 0


def cmd_pin(args) -> int:
    store = _store()
    store.pin(args.id, not args.off)
    print_result({"run_id": store.resolve(args.id), "pinned": not args.off})
    return 0


def register(sub) -> None:
    p = sub.add_parser("runs", help="the run library: list, show, rm, export, import, rename, pin saved runs",
                       description="Runs saved by 'score' and by the app, in $SIMDIFF_HOME/runs (default "
                                   "~/.cache/simdiff/runs). IDs may be shortened to a unique prefix (>= 4 characters). "
                                   "SIMDIFF_RUNS_READONLY=1 refuses every change.")
    rs = p.add_subparsers(dest="runs_command", metavar="ACTION")
    rs.required = True
    s = rs.add_parser("list", help="every run (unreadable ones flagged with their error)")
    s.add_argument("--json", action="store_true", help="print the list as JSON")
    s.set_defaults(func=cmd_list)
    s = rs.add_parser("show", help="one run's metadata (opens and validates it)")
    s.add_argument("id")
    s.add_argument("--json", action="store_true", help="one JSON line")
    s.set_defaults(func=cmd_show)
    s = rs.add_parser("rm", help="delete runs")
    s.add_argument("ids", nargs="+", metavar="ID")
    s.set_defaults(func=cmd_rm)
    s = rs.add_parser("export", help="write a run as one file (.json: its plain scores.json; else the run file)")
    s.add_argument("id")
    s.add_argument("file")
    s.set_defaults(func=cmd_export)
    s = rs.add_parser("import", help="add a run file or a scores.json (validated, size-limited)")
    s.add_argument("file")
    s.add_argument("--name", default=None, help="a name for the imported run")
    s.set_defaults(func=cmd_import)
    s = rs.add_parser("rename", help="name a run")
    s.add_argument("id")
    s.add_argument("name")
    s.set_defaults(func=cmd_rename)
    s = rs.add_parser("pin", help="pin a run (never evicted by the size cap); --off to unpin")
    s.add_argument("id")
    s.add_argument("--off", action="store_true")
    s.set_defaults(func=cmd_pin)
