# over 400 lines: RunStore is one class over one SQLite index and its files (one lock, one schema)
"""The run library: every calibration saved once, found again by its content key, opened without the model.

    from simdiff_core.runs import RunStore
    store = RunStore()                         # $SIMDIFF_HOME/runs (default ~/.cache/simdiff/runs)
    run_id = store.save(scores, meta=run_meta(scores, settings), key=key)   # the existing id if key is stored
    info = store.lookup(key)                   # RunInfo of the complete run with that key, or None
    run = store.open(run_id)                   # run.scores == the saved Scores; run.info
    for info in store.list(): ...              # unreadable runs carry a one-line .error; the others open
    with store.opened(run_id): ...             # held open: never evicted while held

Layout: ``runs/index.sqlite`` (stdlib sqlite3, WAL mode) indexes ``runs/files/<id>-<8 hex>.npz`` (one
run file each, see codec.py; a fresh name per write, so replacing a run never overwrites the file its
row still names). Why this way round and what a crash can do:

* A save writes the run file under a temporary name (fsync), then, inside one ``BEGIN IMMEDIATE``
  transaction (the database's write lock), checks the key, renames the file into place and inserts
  its row. ``kill -9`` before the rename leaves a ``.tmp-*`` file (swept later); between the rename
  and the commit a file without a row (adopted by the next writable ``list()``); the index itself
  is SQLite's own crash-safe transaction. A delete renames the file to ``.del-*`` inside the
  transaction that deletes the row, so a crash never brings a deleted run back. Either way every
  other run still opens.
* Two writers of one key (threads or processes on one ``$SIMDIFF_HOME``) serialise on that lock:
  the second sees the first's row and returns its id, so one key has one complete run.
* A file that is missing, of the wrong size, fails its SHA-256 or does not decode gives a one-line
  ``RunInfo.error`` (and ``open`` raises SimDiffError with it); the other runs are untouched.
* Size cap ($SIMDIFF_RUNS_MAX_MB, default 1024): after a save the least recently used runs are
  removed until the library fits, never a pinned run, the run just saved, or one held open by a
  live process (``opened``/``hold``).
* ``SIMDIFF_RUNS_READONLY=1`` (or ``readonly=True``): list/lookup/open/export work; save, import,
  rename, pin and delete raise SimDiffError; nothing is written (not even last-used times).

Cost: a save is one file write plus one small transaction (milliseconds); ``list`` is one query and
one ``stat`` per run; ``open`` reads and validates one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common.errors import SimDiffError
from ..common.fileio import atomic_write_bytes
from . import codec
from .keys import content_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
  id TEXT PRIMARY KEY, key TEXT NOT NULL, partial INTEGER NOT NULL DEFAULT 0, name TEXT, model TEXT,
  text TEXT, samples INTEGER, seq_len INTEGER, tokens INTEGER, blocks INTEGER, created TEXT, seconds REAL,
  size INTEGER, sha256 TEXT, pinned INTEGER NOT NULL DEFAULT 0, last_used REAL, error TEXT, meta TEXT, file TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS runs_complete_key ON runs(key) WHERE partial = 0;
CREATE TABLE IF NOT EXISTS holds(token TEXT PRIMARY KEY, run_id TEXT NOT NULL, pid INTEGER, host TEXT, since REAL);
"""
_COLS = ("id", "key", "partial", "name", "model", "text", "samples", "seq_len", "tokens", "blocks", "created",
         "seconds", "size", "sha256", "pinned", "last_used", "error", "meta", "file")
_FILE = "COALESCE(file, id || '.npz')"  # rows written before the file column named <id>.npz

# Holds of this process, shared by every RunStore object on the same folder: {(folder, run_id): count}.
_LOCAL_HOLDS: dict[tuple[str, str], int] = {}
_LOCAL_LOCK = threading.Lock()


def default_home() -> Path:
    return Path(os.environ.get("SIMDIFF_HOME") or Path.home() / ".cache" / "simdiff")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class RunInfo:
    """One row of the library: what the Runs table and ``simdiff runs list`` show."""

    id: str
    key: str
    name: str | None = None
    model: str | None = None
    text: str | None = None
    samples: int | None = None
    seq_len: int | None = None
    tokens: int | None = None
    blocks: int | None = None
    created: str | None = None
    seconds: float | None = None
    size: int = 0
    partial: bool = False
    pinned: bool = False
    last_used: float | None = None
    error: str | None = None      # one line when the run cannot be opened; None otherwise
    meta: dict = field(default_factory=dict)
    file: str | None = None       # the run file's name under runs/files/

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        """A short human name: the given name, else model · text · samples x seq_len."""
        if self.name:
            return self.name
        return f"{self.model or '?'} · {self.text or '?'} · {self.samples or '?'} x {self.seq_len or '?'}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Run:
    """An opened run: its Scores (everything the score-only views need), its RunInfo and the SHA-256 of the
    run file they were decoded from (checked on open: equal hashes, equal scores)."""

    info: RunInfo
    scores: object
    sha256: str | None = None

    @property
    def id(self) -> str:
        return self.info.id


def run_meta(scores, settings: dict | None = None, extra: dict | None = None) -> dict:
    """The run metadata of ``scores`` (and the key ``settings`` from calibration_key, when known)."""
    from .keys import versions

    c, m = scores.calibration or {}, scores.meta or {}
    meta = {"model": scores.model, "family": m.get("family"), "blocks": scores.num_layers,
            "text": c.get("description") or c.get("source"), "text_source": c.get("source"),
            "samples": c.get("samples"), "seq_len": c.get("seq_len"), "tokens": c.get("tokens"),
            "first_token": c.get("first_token"), "device": m.get("device"), "dtype": m.get("dtype"),
            "seconds": m.get("seconds"), "batch_size": m.get("batch_size"), "versions": versions()}
    if settings:
        meta.update({"key": run_key_of(settings), "weights_fingerprint": settings.get("weights"),
                     "tokens_hash": settings.get("tokens"), "options": settings.get("options")})
    meta.update(extra or {})
    return meta


def run_key_of(settings: dict) -> str:
    from .keys import run_key

    return run_key(settings["weights"], settings["tokens"], settings["options"])


class RunStore:
    """The run library under ``home`` (default $SIMDIFF_HOME or ~/.cache/simdiff); see the module docstring."""

    def __init__(self, home: str | Path | None = None, readonly: bool | None = None, max_mb: float | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.root = self.home / "runs"
        self.files = self.root / "files"
        self.db_path = self.root / "index.sqlite"
        self.readonly = _env_flag("SIMDIFF_RUNS_READONLY") if readonly is None else bool(readonly)
        if max_mb is None:
            try:
                max_mb = float(os.environ.get("SIMDIFF_RUNS_MAX_MB", "1024"))
            except ValueError:
                raise SimDiffError("SIMDIFF_RUNS_MAX_MB must be a number of megabytes") from None
        self.max_bytes = int(max_mb * 1024 * 1024)
        self._ready = False

    # ------------------------------------------------------------------------------ plumbing
    def _refuse(self, what: str) -> None:
        if self.readonly:
            raise SimDiffError(f"the run library is read-only (SIMDIFF_RUNS_READONLY=1): cannot {what}")

    def _connect(self) -> sqlite3.Connection | None:
        """A connection (None: read-only and no library yet). Writable: creates the folders and schema."""
        if self.readonly:
            if not self.db_path.exists():
                return None
            con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=60, isolation_level=None)
        else:
            if not self._ready:
                try:
                    self.files.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise SimDiffError(f"cannot create the run library in {self.root}: {e.strerror or e}") from None
            try:
                con = sqlite3.connect(str(self.db_path), timeout=60, isolation_level=None)
            except sqlite3.Error as e:
                raise SimDiffError(f"cannot open the run index {self.db_path}: {e}") from None
            if not self._ready:
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                    con.executescript(_SCHEMA)
                    if "file" not in {r[1] for r in con.execute("PRAGMA table_info(runs)")}:
                        with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                            con.execute("ALTER TABLE runs ADD COLUMN file TEXT")
                except sqlite3.DatabaseError as e:
                    con.close()
                    raise SimDiffError(f"the run index {self.db_path} is unreadable ({e}); move it away and "
                                       "run 'simdiff runs list' to rebuild it from the run files") from None
                self._ready = True
        con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process crash never loses a commit
        return con

    @contextlib.contextmanager
    def _db(self, write: bool = False):
        con = self._connect()
        try:
            if write:
                con.execute("BEGIN IMMEDIATE")
            yield con
            if write:
                con.execute("COMMIT")
        except BaseException:
            if con is not None and write and con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            if con is not None:
                con.close()

    def _path(self, info: RunInfo) -> Path:
        return self.files / (info.file or f"{info.id}.npz")

    def _info(self, row) -> RunInfo:
        d = dict(zip(_COLS, row))
        try:
            meta = json.loads(d["meta"] or "{}")
        except json.JSONDecodeError:
            meta = {}
        info = RunInfo(id=d["id"], key=d["key"], name=d["name"], model=d["model"], text=d["text"],
                       samples=d["samples"], seq_len=d["seq_len"], tokens=d["tokens"], blocks=d["blocks"],
                       created=d["created"], seconds=d["seconds"], size=d["size"] or 0, partial=bool(d["partial"]),
                       pinned=bool(d["pinned"]), last_used=d["last_used"], error=d["error"], meta=meta,
                       file=d["file"] or f"{d['id']}.npz")
        if info.error is None:
            info.error = self._file_problem(info)
        return info

    def _file_problem(self, info: RunInfo) -> str | None:
        try:
            st = self._path(info).stat()
        except FileNotFoundError:
            return "its run file is missing"
        except OSError as e:
            return f"its run file cannot be read ({e.strerror or e})"
        if st.st_size != info.size:
            return f"its run file has changed size ({st.st_size} bytes, {info.size} saved): truncated or replaced"
        return None

    def _rows(self, con, where: str = "", args=()) -> list[RunInfo]:
        if con is None:
            return []
        cur = con.execute(f"SELECT {', '.join(_COLS)} FROM runs {where}", args)
        return [self._info(r) for r in cur.fetchall()]

    def resolve(self, run_id: str) -> str:
        """The full id of ``run_id`` or of the one run whose id starts with it (at least 4 characters)."""
        run_id = str(run_id).strip()
        with self._db() as con:
            if con is not None:
                if con.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                    return run_id
                if len(run_id) >= 4 and run_id.replace("-", "").isalnum():
                    hits = [r[0] for r in con.execute("SELECT id FROM runs WHERE id LIKE ?", (run_id + "%",))]
                    if len(hits) == 1:
                        return hits[0]
                    if len(hits) > 1:
                        raise SimDiffError(f"run id '{run_id}' is ambiguous ({len(hits)} runs start with it)")
        raise SimDiffError(f"no run '{run_id}' in the run library ({self.root}); see 'simdiff runs list'")

    # ------------------------------------------------------------------------------ reading
    def list(self) -> list[RunInfo]:
        """Every run, newest first; unreadable ones with ``.error`` set (a writable store adopts orphan files first)."""
        if not self.readonly and self.files.exists():
            self._adopt_orphans()
        with self._db() as con:
            return self._rows(con, "ORDER BY created DESC, id")

    def info(self, run_id: str) -> RunInfo:
        rid = self.resolve(run_id)
        with self._db() as con:
            return self._rows(con, "WHERE id = ?", (rid,))[0]

    def lookup(self, key: str) -> RunInfo | None:
        """The complete run stored under ``key`` (None when there is none, or its file is unreadable)."""
        with self._db() as con:
            rows = self._rows(con, "WHERE key = ? AND partial = 0", (key,))
        return rows[0] if rows and rows[0].ok else None

    def open(self, run_id: str) -> Run:
        """The run's Scores (validated) and RunInfo; SimDiffError with one line when it cannot be read."""
        return self._open(run_id)[0]

    def _open(self, run_id: str) -> tuple[Run, bytes]:
        for attempt in range(3):
            info = self.info(run_id)
            if info.error:
                if attempt < 2 and self._moved(info):
                    continue  # replaced (recomputed) while we looked: read the new file
                raise SimDiffError(f"run {info.id} is unreadable: {info.error}")
            try:
                data = self._path(info).read_bytes()
                sha = self._sha(info.id)
                if hashlib.sha256(data).hexdigest() != sha:
                    raise SimDiffError(f"{info.file} is corrupt: its checksum does not match the one saved")
                scores, _ = codec.read_run_bytes(data, info.file)
            except (SimDiffError, OSError) as e:
                if attempt < 2 and self._moved(info):
                    continue
                msg = str(e) if isinstance(e, SimDiffError) else f"cannot read {info.file}: {e.strerror or e}"
                self._mark(info, msg)
                raise SimDiffError(f"run {info.id} is unreadable: {msg}") from None
            if not self.readonly:
                with contextlib.suppress(sqlite3.Error, SimDiffError), self._db(write=True) as con:
                    con.execute("UPDATE runs SET last_used = ? WHERE id = ?", (time.time(), info.id))
            return Run(info=info, scores=scores, sha256=sha), data
        raise SimDiffError(f"run {run_id} keeps changing while it is read; try again")  # pragma: no cover

    def _moved(self, info: RunInfo) -> bool:
        """Whether the row now names another file than ``info`` did (a concurrent recompute replaced it)."""
        with self._db() as con:
            r = con.execute(f"SELECT {_FILE} FROM runs WHERE id = ?", (info.id,)).fetchone()
        return r is not None and r[0] != info.file

    def _sha(self, run_id: str) -> str | None:
        with self._db() as con:
            r = con.execute("SELECT sha256 FROM runs WHERE id = ?", (run_id,)).fetchone()
        return r[0] if r else None

    def _mark(self, info: RunInfo, error: str) -> None:
        """Record a run's one-line error (only if its row still names the file that failed)."""
        if self.readonly:
            return
        with contextlib.suppress(sqlite3.Error, SimDiffError), self._db(write=True) as con:
            con.execute(f"UPDATE runs SET error = ? WHERE id = ? AND {_FILE} = ?",
                        (error.splitlines()[0][:300], info.id, info.file))

    # ------------------------------------------------------------------------------ writing
    def save(self, scores, meta: dict | None = None, partial: bool = False, key: str | None = None,
             name: str | None = None, replace: bool = False) -> str:
        """Store ``scores`` as a run; returns its id (the existing run's id when ``key`` is already stored complete).

        ``key``: the content key (``calibration_key``); default ``meta["key"]``, else a hash of the scores
        themselves. ``partial``: scores of a cancelled calibration (never returned by ``lookup``). Partial
        scores (``scores.meta["partial"]``) are always saved as partial. ``replace``: a recomputation
        replaces the stored complete run of the same key (same id, its name and pin kept).
        """
        self._refuse("save runs")
        d = scores.to_dict() if not isinstance(scores, dict) else scores
        scores = codec.validate_scores(d)  # never store what could not be opened again
        partial = bool(partial or (scores.meta or {}).get("partial"))
        meta = dict(meta or {})
        key = key or meta.get("key") or content_key(d)
        if not partial and not replace and (hit := self.lookup(key)) is not None:
            return hit.id
        meta.setdefault("created", _now_iso())
        meta.update(key=key, partial=partial)
        for k, v in run_meta(scores).items():
            meta.setdefault(k, v)
        data = codec.run_file_bytes(d, meta)
        run_id = key[:16] if not partial else "p" + uuid.uuid4().hex[:15]
        tmp = self._write_temp(data)
        try:
            with self._db(write=True) as con:
                row = con.execute("SELECT id, name, pinned FROM runs WHERE key = ? AND partial = 0", (key,)).fetchone()
                pinned, old_file = 0, None
                if row is not None and not partial:
                    old = self._one(con, row[0])
                    if not replace and self._file_problem(old) is None:
                        return row[0]
                    con.execute("DELETE FROM runs WHERE id = ?", (row[0],))  # replaced (or a broken copy)
                    run_id, name, pinned, old_file = row[0], name or row[1], row[2], old.file
                # a fresh file name per write: a replacement never overwrites the file its row still names
                fname = f"{run_id}-{uuid.uuid4().hex[:8]}.npz"
                self._install(tmp, fname)
                con.execute(f"INSERT OR REPLACE INTO runs({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})",
                            (run_id, key, int(partial), name or meta.get("name"), meta.get("model"), meta.get("text"),
                             meta.get("samples"), meta.get("seq_len"), meta.get("tokens"), meta.get("blocks"),
                             meta["created"], meta.get("seconds"), len(data), hashlib.sha256(data).hexdigest(),
                             pinned, time.time(), None, json.dumps(meta, default=str), fname))
        finally:
            Path(tmp).unlink(missing_ok=True)
        if old_file:
            (self.files / old_file).unlink(missing_ok=True)  # after the commit: a crash leaves a stale file, swept later
        self._evict(keep=run_id)
        return run_id

    def _one(self, con, run_id: str) -> RunInfo:
        return self._rows(con, "WHERE id = ?", (run_id,))[0]

    def _write_temp(self, data: bytes) -> str:
        self._connect().close()  # creates the folders on first use
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.files)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise SimDiffError(f"cannot write to the run library {self.files}: {e.strerror or e}") from None
        return tmp

    def _install(self, tmp: str, fname: str) -> None:
        os.replace(tmp, self.files / fname)

    def rename(self, run_id: str, name: str | None) -> None:
        self._refuse("rename runs")
        rid = self.resolve(run_id)
        with self._db(write=True) as con:
            con.execute("UPDATE runs SET name = ? WHERE id = ?", ((name or "").strip()[:200] or None, rid))

    def pin(self, run_id: str, pinned: bool = True) -> None:
        """Pinned runs are never evicted by the size cap."""
        self._refuse("pin runs")
        rid = self.resolve(run_id)
        with self._db(write=True) as con:
            con.execute("UPDATE runs SET pinned = ? WHERE id = ?", (int(bool(pinned)), rid))

    def delete(self, run_id: str) -> None:
        """Remove a run: its file is renamed to ``.del-*`` inside the transaction that deletes its row, then
        removed; a crash in between is finished by the next ``list()`` (the run never comes back)."""
        self._refuse("delete runs")
        rid = self.resolve(run_id)
        with self._db(write=True) as con:
            trash = self._trash(con, rid)
            con.execute("DELETE FROM holds WHERE run_id = ?", (rid,))
        self._empty(trash)

    def _trash(self, con, rid: str) -> list[Path]:
        """Inside a write transaction: move the run's file to ``.del-<file>`` and delete its row."""
        out = []
        r = con.execute(f"SELECT {_FILE} FROM runs WHERE id = ?", (rid,)).fetchone()
        if r is not None:
            src, dst = self.files / r[0], self.files / f".del-{r[0]}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(src, dst)
            out.append(dst)
        con.execute("DELETE FROM runs WHERE id = ?", (rid,))
        return out

    @staticmethod
    def _empty(trash: list[Path]) -> None:
        for p in trash:
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------ files in and out
    def export(self, run_id: str, path: str | Path) -> Path:
        """Write the run as one file: a run file (.npz, any other name) or, for a ``.json`` path, its plain scores.json."""
        run, data = self._open(run_id)  # validates before anything is written
        path = Path(path)
        if path.suffix.lower() == ".json":
            data = run.scores.to_json().encode("utf-8")
        atomic_write_bytes(path, data)
        return path

    def export_bytes(self, run_id: str) -> bytes:
        """The run file's bytes (for a download button), after validating it."""
        return self._open(run_id)[1]

    def import_file(self, path: str | Path, name: str | None = None) -> str:
        """Import a run file or a plain scores.json (validated, size-limited); returns the run id."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise SimDiffError(f"no such file: {path}") from None
        except OSError as e:
            raise SimDiffError(f"cannot read {path}: {e.strerror or e}") from None
        limit = codec.max_import_bytes()
        if size > limit:
            raise SimDiffError(f"{path.name} is {size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB import limit "
                               "(SIMDIFF_RUNS_MAX_IMPORT_MB)")
        if path.is_dir():
            raise SimDiffError(f"{path} is a directory, not a run file or scores.json")
        return self.import_bytes(path.read_bytes(), path.name, name=name)

    def import_bytes(self, data: bytes, filename: str = "upload", name: str | None = None) -> str:
        """``import_file`` for bytes already in memory (an upload)."""
        self._refuse("import runs")
        if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
            scores, meta = codec.read_run_bytes(data, filename)
            partial = bool(meta.pop("partial", False) or (scores.meta or {}).get("partial"))
        else:
            scores = codec.read_scores_json(data, filename)
            meta, partial = {}, bool((scores.meta or {}).get("partial"))
        meta["imported_from"] = filename
        meta["imported"] = _now_iso()
        key = meta.pop("key", None)
        if not isinstance(key, str) or not key.isalnum() or len(key) != 64:
            key = content_key(scores.to_dict())
        return self.save(scores, meta=meta, partial=partial, key=key, name=name)

    # ------------------------------------------------------------------------------ holds and eviction
    def hold(self, run_id: str) -> str:
        """Mark a run open (never evicted) until ``release(token)`` or this process ends; returns the token."""
        rid = self.resolve(run_id)
        token = uuid.uuid4().hex
        with _LOCAL_LOCK:
            _LOCAL_HOLDS[(str(self.root), rid)] = _LOCAL_HOLDS.get((str(self.root), rid), 0) + 1
        if not self.readonly:
            with contextlib.suppress(sqlite3.Error), self._db(write=True) as con:
                con.execute("INSERT INTO holds VALUES (?, ?, ?, ?, ?)",
                            (token, rid, os.getpid(), socket.gethostname(), time.time()))
        return f"{rid}:{token}"

    def release(self, token: str) -> None:
        rid, _, tok = token.partition(":")
        with _LOCAL_LOCK:
            k = (str(self.root), rid)
            if _LOCAL_HOLDS.get(k, 0) > 1:
                _LOCAL_HOLDS[k] -= 1
            else:
                _LOCAL_HOLDS.pop(k, None)
        if not self.readonly:
            with contextlib.suppress(sqlite3.Error, SimDiffError), self._db(write=True) as con:
                con.execute("DELETE FROM holds WHERE token = ?", (tok,))

    @contextlib.contextmanager
    def opened(self, run_id: str):
        """``with store.opened(run_id) as run:`` the opened Run, held (never evicted) inside the block."""
        token = self.hold(run_id)
        try:
            yield self.open(run_id)
        finally:
            self.release(token)

    def _held(self, con) -> set[str]:
        host = socket.gethostname()
        held = {rid for (root, rid), n in _LOCAL_HOLDS.items() if root == str(self.root) and n > 0}
        for token, rid, pid, h in con.execute("SELECT token, run_id, pid, host FROM holds").fetchall():
            if h != host or _alive(pid):
                held.add(rid)
            else:
                con.execute("DELETE FROM holds WHERE token = ?", (token,))  # its process is gone
        return held

    def total_bytes(self) -> int:
        with self._db() as con:
            return 0 if con is None else int(con.execute("SELECT COALESCE(SUM(size), 0) FROM runs").fetchone()[0])

    def _evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used runs until the library fits the cap (never pinned, held or ``keep``)."""
        removed, trash = [], []
        with self._db(write=True) as con:
            total = int(con.execute("SELECT COALESCE(SUM(size), 0) FROM runs").fetchone()[0])
            if total <= self.max_bytes:
                return removed
            held = self._held(con)
            for rid, size in con.execute("SELECT id, size FROM runs WHERE pinned = 0 ORDER BY "
                                         "COALESCE(last_used, 0), created").fetchall():
                if total <= self.max_bytes:
                    break
                if rid in held or rid == keep:
                    continue
                trash += self._trash(con, rid)
                con.execute("DELETE FROM holds WHERE run_id = ?", (rid,))
                total -= size or 0
                removed.append(rid)
        self._empty(trash)
        return removed

    # ------------------------------------------------------------------------------ recovery
    def _adopt_orphans(self) -> None:
        """Repair what a killed writer can leave (all under the write lock, so never a live writer's files):
        run files no row names are indexed (killed between rename and commit) or, when their run has a
        row already, removed (the old file of a replaced run); ``.del-*`` files finish their deletion;
        ``.tmp-*`` files older than an hour are removed. Unreadable orphans are indexed with their error."""
        try:
            files = [p for p in self.files.glob("*.npz") if not p.name.startswith(".")]
            trash = list(self.files.glob(".del-*"))
            temps = list(self.files.glob(".tmp-*"))
        except OSError:
            return
        for p in temps:
            with contextlib.suppress(OSError):
                if time.time() - p.stat().st_mtime > 3600:
                    p.unlink()
        if not files and not trash:
            return
        with self._db() as con:
            named = {r[0] for r in con.execute(f"SELECT {_FILE} FROM runs")}
        if not trash and all(p.name in named for p in files):
            return
        with self._db(write=True) as con:
            named = {r[0]: r[1] for r in con.execute(f"SELECT {_FILE}, id FROM runs")}
            for p in trash:  # a delete or eviction killed before it finished
                orig = p.name[len(".del-"):]
                if orig in named:
                    con.execute("DELETE FROM runs WHERE id = ?", (named.pop(orig),))
                with contextlib.suppress(OSError):
                    p.unlink()
            ids = set(named.values())
            for p in files:
                if p.name in named or not p.exists():
                    continue
                rid = p.stem.split("-")[0]
                if rid in ids:
                    with contextlib.suppress(OSError):
                        p.unlink()  # the replaced file of a run that has a newer one
                    continue
                self._adopt(con, rid, p)
                ids.add(rid)

    def _adopt(self, con, rid: str, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError:
            return
        error, meta, scores = None, {}, None
        try:
            scores, meta = codec.read_run_bytes(data, path.name)
        except SimDiffError as e:
            error = str(e).splitlines()[0][:300]
        key = meta.get("key") if isinstance(meta.get("key"), str) else None
        partial = bool(meta.get("partial")) or rid.startswith("p") or key is None
        key = key or f"orphan-{rid}"
        if scores is not None:
            for k, v in run_meta(scores).items():
                meta.setdefault(k, v)
        if not partial and con.execute("SELECT 1 FROM runs WHERE key = ? AND partial = 0", (key,)).fetchone():
            partial = True  # the key is already stored: keep this copy, but never as the key's run
        con.execute(f"INSERT INTO runs({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})",
                    (rid, key, int(partial), None, meta.get("model"), meta.get("text"), meta.get("samples"),
                     meta.get("seq_len"), meta.get("tokens"), meta.get("blocks"),
                     meta.get("created") or _now_iso(), meta.get("seconds"), len(data),
                     hashlib.sha256(data).hexdigest(), 0, None, error, json.dumps(meta, default=str), path.name))


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


def scores_from_upload(data: bytes, filename: str = "upload"):
    """A validated Scores from uploaded bytes (run file or scores.json) without storing it (read-only servers)."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return codec.read_run_bytes(data, filename)[0]
    return codec.read_scores_json(data, filename)
