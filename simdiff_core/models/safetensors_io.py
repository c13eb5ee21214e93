"""Read and write safetensors files piece by piece, with plain file reads (no mmap).

    from simdiff_core.models.safetensors_io import ShardReader, write_shard
    r = ShardReader("model-00001-of-00004.safetensors")
    w = r.read("model.embed_tokens.weight", rows=(0, 1000))     # only those rows leave the disk
    write_shard(out, [("a", torch.float32, (4, 2))], lambda name: iter([torch.zeros(4, 2)]))

Why not ``safetensors.safe_open``: it memory-maps the shard, and every page a read touches counts in
the process's resident set (VmRSS / ru_maxrss) for as long as the handle is open — streaming a 32 GB
checkpoint through mmap handles reports tens of GB of RSS on a machine with 24 GiB, although the
weights held are one block. ``pread`` into a fresh tensor holds exactly the bytes asked for (the page
cache still speeds up repeated reads; it is not counted against the process). Row slices of the first
dimension are contiguous in the file, so an embedding's rows or a vocabulary chunk of the LM head
can be read without the rest of the tensor.

The writer emits the header first (every tensor's dtype, shape and offsets are known up front) and
then each tensor's bytes from an iterator of row chunks, so a shard is written without ever holding
more than one chunk; the file is byte-compatible with ``safetensors.torch.save_file`` readers.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..common.errors import SimDiffError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
CODES = {v: k for k, v in DTYPES.items()}


def read_header(path: str | Path) -> tuple[dict, int]:
    """({name: {"dtype", "shape", "data_offsets"}, "__metadata__": ...}, byte offset of the data)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SimDiffError(f"'{path}' is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
            raise SimDiffError(f"'{path}' is not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SimDiffError(f"'{path}' has a malformed safetensors header: {e}") from None
    return header, 8 + n


class ShardReader:
    """One safetensors file: tensors (or row ranges of them) read with ``pread`` on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header, self.start = read_header(self.path)
        self.entries = {k: v for k, v in self.header.items() if k != "__metadata__"}
        self._fd: int | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.entries[name]["dtype"]]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def nbytes(self, name: str) -> int:
        a, b = self.entries[name]["data_offsets"]
        return b - a

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor ``name`` (or its rows ``[r0, r1)`` along dimension 0), freshly allocated."""
        e = self.entries[name]
        dtype, shape = DTYPES[e["dtype"]], list(e["shape"])
        a, b = e["data_offsets"]
        if rows is not None:
            if not shape:
                raise SimDiffError(f"cannot slice rows of the scalar '{name}'")
            r0, r1 = max(0, int(rows[0])), min(shape[0], int(rows[1]))
            row_bytes = (b - a) // shape[0] if shape[0] else 0
            a, b = a + r0 * row_bytes, a + r1 * row_bytes
            shape[0] = max(0, r1 - r0)
        buf = torch.empty(b - a, dtype=torch.uint8)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        view, done = memoryview(buf.numpy()), 0
        while done < b - a:  # preadv may return short reads for large requests
            got = os.preadv(self._fd, [view[done:]], self.start + a + done)
            if got <= 0:
                raise SimDiffError(f"'{self.path}' ended early while reading '{name}' (truncated file?)")
            done += got
        return buf.view(dtype).reshape(shape)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def tensor_nbytes(dtype: torch.dtype, shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def shard_groups(items: list, nbytes: Callable[[object], int], limit: int) -> list[list]:
    """``items`` in order, cut into shards of at most ``limit`` bytes by ``nbytes(item)`` (an item larger
    than ``limit`` is a shard of its own)."""
    groups, cur, size = [], [], 0
    for item in items:
        n = nbytes(item)
        if cur and size + n > limit:
            groups.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += n
    groups.append(cur)
    return groups


def write_shard(path: str | Path, specs: list[tuple[str, torch.dtype, tuple]],
                chunks: Callable[[str], Iterable[torch.Tensor]], metadata: dict | None = None) -> int:
    """Write one safetensors file whose tensors come as row chunks; returns the bytes written.

    ``specs`` lists (name, dtype, shape) in file order; ``chunks(name)`` yields that tensor's rows in
    order (any split). A chunk of the wrong dtype or a wrong total size is an error, not a bad file.
    """
    header, off = {}, 0
    for name, dtype, shape in specs:
        n = tensor_nbytes(dtype, shape)
        header[name] = {"dtype": CODES[dtype], "shape": [int(s) for s in shape], "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as safetensors writes it
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        written += 8 + len(raw)
        for name, dtype, shape in specs:
            want = tensor_nbytes(dtype, shape)
            got = 0
            for c in chunks(name):
                if c.dtype != dtype:
                    raise SimDiffError(f"internal: chunk of '{name}' is {c.dtype}, expected {dtype}")
                b = c.contiguous().reshape(-1).view(torch.uint8).numpy()
                f.write(memoryview(b))
                got += b.nbytes
            if got != want:
                raise SimDiffError(f"internal: wrote {got} bytes for '{name}', expected {want}")
            written += got
    return written
