"""The run file: a Scores plus its run metadata as one ``.npz`` (numeric arrays and a JSON header).

    from simdiff_core.runs.codec import write_run_file, read_run_file, read_scores_json
    write_run_file(path, scores, meta)           # atomic: temporary file + fsync + rename
    scores, meta = read_run_file(path)           # validated; SimDiffError (one line) for anything bad

Why this shape: every number of a Scores (per-block metrics, heatmap matrices, per-window sums for
the bands) goes into a plain numeric array, and everything else (names, calibration record, the
run's metadata) into one JSON header stored as a uint8 array. The zip is read with
``np.load(allow_pickle=False)`` after its directory has been checked (member names, declared sizes,
no compression bombs), so nothing in a run file is ever unpickled or executed.

Exactness: a list of Python floats becomes float32 when every value survives float32 exactly (the
matrices come from float32 tensors), otherwise float64; a list of ints int64. Lists that are not all
numbers of one kind stay in the JSON header as they are. ``decode(encode(x)) == x`` for every value
a Scores holds (tested), so curves, bands, heatmaps and plans from a reopened run are the original's.

Cost: one write of a few KB to a few MB per run; reading validates every array (finite, shapes).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..common.errors import SimDiffError

FORMAT = "simdiff-run"
FORMAT_VERSION = 1
HEADER = "header"
MAX_LAYERS = 4096


def max_import_bytes() -> int:
    """The size limit for imported files and for any run file's unpacked arrays ($SIMDIFF_RUNS_MAX_IMPORT_MB, default 256)."""
    try:
        mb = float(os.environ.get("SIMDIFF_RUNS_MAX_IMPORT_MB", "256"))
    except ValueError:
        mb = 256.0
    return int(mb * 1024 * 1024)


# ------------------------------------------------------------------------------------------- encode
def _kind(values: list) -> str | None:
    """'int', 'float' or None (mixed / not numbers / empty) for a flat list."""
    if not values:
        return None
    if all(type(v) is int for v in values):
        return "int"
    if all(type(v) is float for v in values):
        return "float"
    return None


def _as_array(x) -> np.ndarray | None:
    """An exact numeric array for a (nested, rectangular) list of floats or ints; None otherwise."""
    if not isinstance(x, list) or not x:
        return None
    if all(isinstance(r, list) for r in x):
        n = len(x[0])
        if n == 0 or any(len(r) != n for r in x):
            return None
        kinds = {_kind(r) for r in x}
    else:
        kinds = {_kind(x)}
    if kinds == {"int"}:
        a = np.asarray(x, dtype=np.int64)
        return a if a.tolist() == x else None  # ints beyond int64 stay in JSON
    if kinds != {"float"}:
        return None
    a = np.asarray(x, dtype=np.float64)
    f32 = a.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        same = np.array_equal(f32.astype(np.float64), a, equal_nan=True)
    return f32 if same else a


def _encode(x, arrays: dict):
    """The JSON skeleton of ``x`` with numeric lists moved into ``arrays`` ({"$a": name} in their place)."""
    if isinstance(x, dict):
        if any(k.startswith("$") for k in x):
            raise SimDiffError("cannot store a record whose keys start with '$'")
        return {k: _encode(v, arrays) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        x = list(x)
        a = _as_array(x)
        if a is not None:
            name = f"a{len(arrays)}"
            arrays[name] = a
            return {"$a": name}
        if x and all(isinstance(r, dict) for r in x) and all(list(r) == list(x[0]) for r in x):
            # a table (one dict per block): one column per key, so the per-block metrics are arrays too
            return {"$rows": {k: _encode([r[k] for r in x], arrays) for k in x[0]}, "$n": len(x)}
        return [_encode(v, arrays) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def _json_default(o):
    return str(o)


def encode(scores_dict: dict, meta: dict) -> tuple[bytes, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    skeleton = _encode(scores_dict, arrays)
    header = {"format": FORMAT, "version": FORMAT_VERSION, "scores": skeleton, "meta": meta}
    text = json.dumps(header, default=_json_default, allow_nan=True, separators=(",", ":"))
    return text.encode("utf-8"), arrays


def run_file_bytes(scores, meta: dict) -> bytes:
    """The run file of ``scores`` (a Scores or its dict) with ``meta``, as bytes (for downloads)."""
    buf = io.BytesIO()
    _write(buf, scores, meta)
    return buf.getvalue()


def _write(f, scores, meta: dict) -> None:
    d = scores if isinstance(scores, dict) else scores.to_dict()
    head, arrays = encode(d, meta)
    np.savez(f, **{HEADER: np.frombuffer(head, dtype=np.uint8)}, **arrays)


def write_run_file(path: Path, scores, meta: dict, fsync: bool = True) -> int:
    """Write the run file atomically (temporary file in the same folder, fsync, rename); returns its size."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, scores, meta)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


# ------------------------------------------------------------------------------------------- decode
def _decode(x, arrays: dict, used: set):
    if isinstance(x, dict):
        if "$a" in x:
            name = x["$a"]
            if not isinstance(name, str) or name not in arrays or len(x) != 1:
                raise ValueError(f"the header names an array that is not in the file ({name!r})")
            used.add(name)
            return arrays[name].tolist()
        if "$rows" in x:
            cols = {k: _decode(v, arrays, used) for k, v in x["$rows"].items()}
            n = x.get("$n")
            if not isinstance(n, int) or any(not isinstance(c, list) or len(c) != n for c in cols.values()):
                raise ValueError("a table's columns do not have the length it declares")
            return [{k: cols[k][i] for k in cols} for i in range(n)]
        return {k: _decode(v, arrays, used) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v, arrays, used) for v in x]
    return x


def _check_finite(x, where: str = "scores") -> None:
    if isinstance(x, float):
        if not math.isfinite(x):
            raise SimDiffError(f"{where} holds a non-finite number ({x})")
    elif isinstance(x, dict):
        for k, v in x.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(x, list):
        for v in x:
            _check_finite(v, where)


def _square(m, n: int, name: str) -> None:
    if not isinstance(m, list) or len(m) != n or any(not isinstance(r, list) or len(r) != n for r in m):
        raise SimDiffError(f"malformed scores: matrices.{name} is not {n} x {n}")


def validate_scores(d) -> "object":
    """A Scores from a dict, with every check an import needs: schema, sizes, shapes, finite numbers."""
    from ..analysis.score import Scores

    if not isinstance(d, dict):
        raise SimDiffError("malformed scores: expected a JSON object")
    n = d.get("num_layers")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_LAYERS:
        raise SimDiffError(f"malformed scores: num_layers must be an integer in 1..{MAX_LAYERS}")
    if not isinstance(d.get("layers"), list):
        raise SimDiffError("malformed scores: 'layers' must be a list")
    for k in ("matrices", "calibration", "meta", "windows"):
        if k in d and not isinstance(d[k], dict):
            raise SimDiffError(f"malformed scores: '{k}' must be an object")
    scores = Scores.from_dict(d)
    _check_finite(scores.layers, "scores.layers")
    _check_finite(scores.windows, "scores.windows")
    mats = scores.matrices or {}
    for name in ("output_cosine", "cka"):
        if name in mats:
            _square(mats[name], n, name)
    if "angular_boundaries" in mats:
        _square(mats["angular_boundaries"], n + 1, "angular_boundaries")
    _check_finite({k: v for k, v in mats.items() if k != "method"}, "scores.matrices")
    return scores


_NPY_KINDS = set("biuf")


def read_run_file(path: Path, limit: int | None = None) -> tuple[object, dict]:
    """(Scores, run meta) from a run file; SimDiffError with one line for anything unreadable or foreign."""
    path = Path(path)
    limit = max_import_bytes() if limit is None else limit
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SimDiffError(f"run file {path.name} is missing") from None
    except OSError as e:
        raise SimDiffError(f"cannot read run file {path.name}: {e.strerror or e}") from None
    return read_run_bytes(data, path.name, limit)


def read_run_bytes(data: bytes, name: str = "run file", limit: int | None = None) -> tuple[object, dict]:
    limit = max_import_bytes() if limit is None else limit
    if len(data) > limit:
        raise SimDiffError(f"{name} is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise SimDiffError(f"{name} is not a SimDiff run file (not a readable .npz archive)") from None
    names = [i.filename for i in infos]
    if f"{HEADER}.npy" not in names:
        raise SimDiffError(f"{name} is not a SimDiff run file (no header)")
    if len(set(names)) != len(names) or any(not n.endswith(".npy") or "/" in n or "\\" in n for n in names):
        raise SimDiffError(f"{name} is not a SimDiff run file (unexpected members)")
    if sum(i.file_size for i in infos) > limit:
        raise SimDiffError(f"{name} unpacks to more than {limit / 2**20:.0f} MB")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {}
            for k in z.files:
                a = z[k]
                if a.dtype.kind not in _NPY_KINDS:
                    raise SimDiffError(f"{name} holds a non-numeric array ({k}: {a.dtype})")
                arrays[k] = a
    except SimDiffError:
        raise
    except Exception as e:  # truncated members, bad .npy headers, object arrays (pickle refused) ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise SimDiffError(f"{name} is corrupt: {first}") from None
    head = arrays.pop(HEADER)
    try:
        header = json.loads(head.astype(np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError):
        raise SimDiffError(f"{name} is corrupt: its header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SimDiffError(f"{name} is not a SimDiff run file (format {header.get('format') if isinstance(header, dict) else '?'!r})")
    if not isinstance(header.get("version"), int) or header["version"] > FORMAT_VERSION:
        raise SimDiffError(f"{name} was written by a newer version (run format {header.get('version')}); upgrade to open it")
    meta = header.get("meta") or {}
    if not isinstance(meta, dict):
        raise SimDiffError(f"{name} is corrupt: its metadata is not an object")
    for k, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise SimDiffError(f"{name} holds non-finite numbers (array {k})")
    used: set = set()
    try:
        d = _decode(header.get("scores"), arrays, used)
    except (ValueError, TypeError, AttributeError) as e:
        raise SimDiffError(f"{name} is corrupt: {e}") from None
    scores = validate_scores(d)
    return scores, meta


def read_scores_json(data: bytes, name: str = "scores.json", limit: int | None = None):
    """A validated Scores from a plain ``scores.json`` (what ``simdiff score --out`` writes)."""
    limit = max_import_bytes() if limit is None else limit
    if len(data) > limit:
        raise SimDiffError(f"{name} is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit")

    def no_constants(c):
        raise ValueError(f"non-finite number {c}")

    try:
        d = json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
        raise SimDiffError(f"{name} is not valid scores JSON: {str(e).splitlines()[0][:160]}") from None
    return validate_scores(d)
