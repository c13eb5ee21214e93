# over 400 lines: StreamedModel and the prefetch and capture that drive it are one engine
"""Weights streamed from safetensors shards one decoder block at a time (the engine; see analysis/streaming.py).

    from simdiff_core.models.streaming import StreamedModel, resolve_stream_dir
    sm = StreamedModel(resolve_stream_dir("./big-model"), "cpu", "float32", memory_budget_mb=2000)
    xs, calls = capture_inputs(sm, ids, None, bs=2)        # block 0's inputs and every block's kwargs

The skeleton is built on the ``meta`` device; tensors are materialised from the shard the index
names and released again, so resident weights never exceed max(one block, norm + head) plus the embedding rows the input
uses (the embedding table is read as row ranges, never whole).
Recorders/replayers stand in for the blocks while the model's own forward runs the embeddings or
the head. Why a separate module: streamed scoring (analysis) and streamed perplexity (evaluation)
share this engine. Cost: one read of each shard tensor per pass; no weights kept between blocks.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..common.errors import SimDiffError
from .blocks import find_block_path, get_attr_path
from .device import pick_device, pick_dtype
from .pretrained import custom_code_error, names_custom_code


HEAD_MIN_ROWS = 1024  # smallest vocabulary slice of the LM head the budget must hold (perplexity)


class _Stop(Exception):
    """Raised by the last recorder: nothing after the blocks is needed while capturing."""


class _Recorder(nn.Module):
    """Stands in for block i during capture: records its call, passes hidden states through."""

    def __init__(self, inner: nn.Module, index: int, sink: dict, last: bool):
        super().__init__()
        object.__setattr__(self, "_inner", inner)  # not a submodule: keeps it out of .modules()
        self.index, self.sink, self.last = index, sink, last

    def __getattr__(self, name):  # families read e.g. ``decoder_layer.attention_type``
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_inner"), name)

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.sink["x"] = hidden_states
        self.sink["calls"][self.index] = (args, kwargs)
        if self.last:
            raise _Stop()
        return hidden_states


class Replayer(nn.Module):
    """Stands in for every block in the head phase: returns the streamed final hidden states."""

    def __init__(self, inner: nn.Module, box: dict):
        super().__init__()
        object.__setattr__(self, "_inner", inner)
        self.box = box

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_inner"), name)

    def forward(self, hidden_states, *args, **kwargs):
        return self.box["y"]


class StreamedModel:
    """A meta-device skeleton of a safetensors checkpoint that materialises tensors on demand."""

    def __init__(self, model_dir: str | Path, device="auto", dtype="auto", memory_budget_mb: float | None = None):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.dir = Path(model_dir)
        if names_custom_code(self.dir):  # before transformers reads the config: it could prompt or run code
            raise custom_code_error(str(model_dir), stream=True)
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.dtype = pick_dtype(dtype, self.device)
        self.weight_map = _weight_map(self.dir)
        try:
            config = AutoConfig.from_pretrained(str(self.dir), trust_remote_code=False)
            with init_empty_weights():
                # the skeleton in the compute dtype: accelerate casts each loaded tensor to its placeholder's dtype
                self.model = AutoModelForCausalLM.from_config(config, dtype=self.dtype, trust_remote_code=False)
        except (ValueError, OSError) as e:
            if "trust_remote_code" in str(e):
                raise custom_code_error(str(model_dir), stream=True) from None
            raise SimDiffError(f"cannot build '{model_dir}' for streaming: {str(e).splitlines()[0][:200]}") from None
        self.model.eval()
        self.model.requires_grad_(False)
        self.block_path = find_block_path(self.model)
        self.blocks: nn.ModuleList = get_attr_path(self.model, self.block_path)
        self.budget = None if memory_budget_mb is None else float(memory_budget_mb) * 2**20
        if self.budget is not None and self.budget <= 0:
            raise SimDiffError("--memory-budget-mb must be positive")
        self._handles: dict[str, object] = {}
        self.held = 0  # bytes of parameters currently materialised
        self.pending = 0  # bytes read ahead by the prefetch thread, not yet in the model
        self.peak = 0
        self.bytes_read = 0
        self.read_wait_s = 0.0  # seconds the computing thread waited for weight reads (its own or the read-ahead)
        self._lock = threading.Lock()  # the prefetch thread opens readers and counts bytes too

    # ------------------------------------------------------------------ tensor bookkeeping
    def _param_names(self, prefix: str = "", module: nn.Module | None = None) -> list[str]:
        module = module if module is not None else self.model
        names = [prefix + n for n, _ in module.named_parameters(remove_duplicate=False)]
        names += [prefix + n for n, b in module.named_buffers(remove_duplicate=False) if b.device.type == "meta"]
        return names

    def block_names(self, i: int) -> list[str]:
        return self._param_names(f"{self.block_path}.{i}.", self.blocks[i])

    def outer_names(self) -> list[str]:
        """Every meta tensor outside the block list (embeddings, final norm, LM head)."""
        inside = self.block_path + "."
        return [n for n in self._param_names() if not n.startswith(inside)]

    def nbytes(self, names) -> int:
        el = torch.empty((), dtype=self.dtype).element_size()
        total, seen = 0, set()
        for n in names:
            t = get_attr_path(self.model, n)
            try:
                key = self._source_key(n)  # tied tensors are one checkpoint entry, held once
            except SimDiffError:
                key = id(t)
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * (el if t.is_floating_point() else t.element_size())
        return total

    def _source_key(self, name: str) -> str:
        if name in self.weight_map:
            return name
        tied = getattr(self.model, "_tied_weights_keys", None) or {}
        if isinstance(tied, dict) and name in tied and tied[name] in self.weight_map:
            return tied[name]  # tied LM head stored once, as the embeddings
        if name.endswith("lm_head.weight"):
            for key in self.weight_map:
                if key.endswith("embed_tokens.weight"):
                    return key
        raise SimDiffError(f"checkpoint in '{self.dir}' has no tensor '{name}': streaming needs a "
                           "save_pretrained safetensors directory whose names match the model")

    def _reader(self, key: str):
        from .safetensors_io import ShardReader

        shard = self.weight_map[key]
        with self._lock:
            if shard not in self._handles:
                self._handles[shard] = ShardReader(self.dir / shard)
            return self._handles[shard]

    def _read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        # pread, not safe_open's mmap: mapped pages would count in the RSS for the whole run
        # (pread takes an explicit offset, so two threads may read one shard's descriptor at once)
        t = self._reader(key).read(key, rows=rows)
        with self._lock:
            self.bytes_read += t.numel() * t.element_size()
        return t

    def read_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The source tensors of ``names`` read from disk and cast to the compute dtype, keyed by checkpoint
        name (tied names once). Touches no module: safe in the prefetch thread while a block computes."""
        out: dict[str, torch.Tensor] = {}
        for n in names:
            key = self._source_key(n)
            if key not in out:
                t = self._read(key)
                out[key] = t.to(self.dtype) if t.is_floating_point() else t
        return out

    def read_rows(self, name: str, rows: tuple[int, int]) -> torch.Tensor:
        """Rows [r0, r1) of parameter ``name`` (e.g. a vocabulary slice of the LM head) read from disk, in
        the compute dtype on the compute device; tied names resolve to the tensor stored once."""
        return self._read(self._source_key(name), rows=rows).to(self.dtype).to(self.device)

    # ------------------------------------------------------------------ phases
    def _names_of(self, module: nn.Module | None) -> list[str]:
        if module is None:
            return []
        return [f"{name}.{p}" if name else p for name, m in self.model.named_modules(remove_duplicate=False)
                if m is module for p, _ in m.named_parameters(recurse=False)]

    def embed_names(self) -> list[str]:
        """Parameter names of the input embedding (read as rows of the tokens used, never whole)."""
        return self._names_of(self.model.get_input_embeddings())

    def head_names(self) -> list[str]:
        return self._names_of(self.model.get_output_embeddings())

    def capture_names(self) -> list[str]:
        """Outer tensors the embeddings phase needs: all but the (row-read) embedding and the LM head."""
        skip = set(self.embed_names()) | set(self.head_names())
        return [n for n in self.outer_names() if n not in skip]

    def head_phase_names(self) -> list[str]:
        """Outer tensors the head phase needs (final norm, LM head; the embedding is row-read)."""
        skip = set(self.embed_names())
        return [n for n in self.outer_names() if n not in skip]

    @contextmanager
    def compact_embedding(self, input_ids: torch.Tensor):
        """Materialise only the embedding rows ``input_ids`` use; yields the ids renumbered into them.

        The embedding module's own forward still runs (scaled embeddings stay the family's code); its
        weight is the (unique ids x H) rows, read as row ranges from the shard, and ``padding_idx``
        (which only affects gradients) is lifted for the call. A 128k x 4096 float32 table is 2 GB;
        the rows of 4 x 128 tokens are a few MB.
        """
        emb = self.model.get_input_embeddings()
        (name,) = [n for n in self.embed_names() if n.endswith("weight")] or [None]
        if name is None or not isinstance(getattr(emb, "weight", None), torch.Tensor):
            raise SimDiffError("streaming needs a model whose input embedding has a weight table")
        key = self._source_key(name)
        uniq = torch.unique(input_ids.reshape(-1).cpu())
        H = emb.weight.shape[-1]
        el = torch.empty((), dtype=self.dtype).element_size()
        need = len(uniq) * H * el
        if self.budget is not None and self.held + need > self.budget:
            raise SimDiffError(f"memory budget {self.budget / 2**20:.1f} MB is too small for the embedding rows "
                               f"({need / 2**20:.1f} MB); the minimum for this model is {self.min_budget_mb():.1f} MB")
        parts, u = [], uniq.tolist()
        s = 0
        while s < len(u):  # runs of consecutive ids are one read each
            e = s + 1
            while e < len(u) and u[e] == u[e - 1] + 1:
                e += 1
            parts.append(self._read(key, rows=(u[s], u[e - 1] + 1)))
            s = e
        rows = torch.cat(parts).to(self.dtype).to(self.device)
        original, pad = emb.weight, getattr(emb, "padding_idx", None)
        emb._parameters["weight"] = nn.Parameter(rows, requires_grad=False)
        if pad is not None:
            emb.padding_idx = None
        self.held = self.measured_bytes()
        self.peak = max(self.peak, self.held)
        try:
            yield torch.searchsorted(uniq, input_ids.cpu()).to(input_ids.device)
        finally:
            emb._parameters["weight"] = original
            if pad is not None:
                emb.padding_idx = pad
            self.held = self.measured_bytes()

    def check_budget(self, head: bool) -> None:
        """Refuse before any work when the budget cannot hold the largest phase (one line, with the minimum)."""
        if self.budget is None:
            return
        need = self.min_budget_mb(head) * 2**20
        if need > self.budget:
            raise SimDiffError(f"memory budget {self.budget / 2**20:.1f} MB is too small: streaming this model holds "
                               f"one block or the {'LM head' if head else 'outer tensors'} at a time; the minimum "
                               f"for this model is {need / 2**20:.1f} MB")

    def load(self, names: list[str], what: str, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Materialise ``names``; ``tensors`` (from ``read_tensors``, e.g. read ahead) instead of reading them."""
        from accelerate.utils import set_module_tensor_to_device

        need = 0 if tensors is not None else self.nbytes(names)  # read-ahead bytes were budgeted when read
        if self.budget is not None and self.held + need > self.budget:
            raise SimDiffError(
                f"memory budget {self.budget / 2**20:.1f} MB is too small for the {what} "
                f"({need / 2**20:.1f} MB); the minimum for this model is {self.min_budget_mb():.1f} MB")
        loaded: dict[str, str] = {}  # source key -> first name it was loaded into
        for n in names:
            key = self._source_key(n)
            if key in loaded:  # tied weights (LM head = embeddings): share, do not load twice
                owner, attr = n.rsplit(".", 1) if "." in n else ("", n)
                module = get_attr_path(self.model, owner) if owner else self.model
                setattr(module, attr, get_attr_path(self.model, loaded[key]))
                continue
            if tensors is not None:
                t = tensors.pop(key)
            else:
                w0 = time.perf_counter()
                t = self._read(key)
                self.read_wait_s += time.perf_counter() - w0
                if t.is_floating_point():
                    t = t.to(self.dtype)
            set_module_tensor_to_device(self.model, n, self.device, value=t)
            loaded[key] = n
        # What we hold, measured (each storage once), not what we planned to hold.
        self.held = self.measured_bytes()
        self.peak = max(self.peak, self.held + self.pending)

    def release(self, names: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for n in names:
            set_module_tensor_to_device(self.model, n, "meta")
        self.held = self.measured_bytes()

    def measured_bytes(self) -> int:
        """Bytes of parameters actually materialised (not on meta), each storage counted once."""
        seen, total = set(), 0
        for p in list(self.model.parameters()) + list(self.model.buffers()):
            if p.device.type == "meta" or p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
        return total

    def head_sliceable(self) -> bool:
        """True when the LM head is one weight (+ bias) whose rows are vocabulary entries (nn.Linear):
        perplexity then reads it in vocabulary slices (evaluation/streaming.py) instead of whole."""
        head = self.model.get_output_embeddings()
        return isinstance(head, nn.Linear) and bool(self.head_names())

    def head_row_bytes(self) -> int:
        """Bytes of one vocabulary row of the LM head (weight row + bias entry) in the compute dtype."""
        head = self.model.get_output_embeddings()
        el = torch.empty((), dtype=self.dtype).element_size()
        return (head.in_features + (1 if head.bias is not None else 0)) * el

    def min_budget_mb(self, head: bool = True) -> float:
        """Largest phase in MB: one block, the outer tensors of the embeddings phase, or (``head``) the
        final norm + LM head — with a sliceable head, the final norm + one minimal slice of
        ``HEAD_MIN_ROWS`` vocabulary rows. Embedding rows (a few MB for calibration-sized inputs) come on top."""
        if not head:
            outer = self.nbytes(self.capture_names())
        elif self.head_sliceable():
            rows = min(HEAD_MIN_ROWS, self.model.get_output_embeddings().out_features)
            outer = self.nbytes(self.head_rest_names()) + rows * self.head_row_bytes()
        else:
            outer = self.nbytes(self.head_phase_names())
        worst = max([outer] + [self.nbytes(self.block_names(i)) for i in range(len(self.blocks))])
        return worst / 2**20

    def head_rest_names(self) -> list[str]:
        """Head-phase tensors other than the LM head itself (the final norm)."""
        skip = set(self.head_names())
        return [n for n in self.head_phase_names() if n not in skip]

    def model_mb(self) -> float:
        return self.nbytes(self._param_names()) / 2**20

    @contextmanager
    def swapped_blocks(self, make):
        """Temporarily replace every block with ``make(i, block)`` (the skeleton is private)."""
        original = list(self.blocks)
        try:
            for i, b in enumerate(original):
                self.blocks[i] = make(i, b)
            yield
        finally:
            for i, b in enumerate(original):
                self.blocks[i] = b

    def base(self) -> nn.Module:
        base = getattr(self.model, getattr(self.model, "base_model_prefix", "model"), None)
        return base if isinstance(base, nn.Module) and base is not self.model else self.model


class BlockPrefetch:
    """Read block i+1's tensors in one background thread while block i computes (bounded: one block ahead).

    Why: a streamed pass that reads, then computes, takes compute + I/O per block; overlapped it takes
    about max(compute, I/O). ``safetensors`` reads here are ``pread`` calls and torch's kernels release
    the GIL, so the two really run together. The read-ahead bytes count in ``sm.pending`` (and so in the
    recorded peak) and a read is only started when held + pending fits the memory budget; otherwise that
    block is read in the foreground as before. The same bytes reach the same modules either way, so the
    results are bit-identical to no prefetch. A reader exception is re-raised by ``take`` in the caller.
    """

    def __init__(self, sm: StreamedModel):
        self.sm = sm
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simdiff-prefetch")
        self.fut, self.index = None, None

    def start(self, i: int) -> bool:
        sm, names = self.sm, self.sm.block_names(i)
        need = sm.nbytes(names)
        if sm.budget is not None and sm.held + sm.pending + need > sm.budget:
            return False  # no room for two blocks: this one is read when it is loaded
        sm.pending += need
        sm.peak = max(sm.peak, sm.held + sm.pending)
        self.index, self.fut = i, self.pool.submit(sm.read_tensors, names)
        return True

    def take(self, i: int) -> dict[str, torch.Tensor] | None:
        """Block i's tensors if they were read ahead (waits for the read; re-raises its error), else None."""
        if self.fut is None or self.index != i:
            return None
        fut, self.fut = self.fut, None
        try:
            w0 = time.perf_counter()
            got = fut.result()
            self.sm.read_wait_s += time.perf_counter() - w0  # what the overlap did not hide
            return got
        finally:
            self.sm.pending = 0

    def close(self) -> None:
        if self.fut is not None:  # an error or Cancel in the caller: wait for the read, drop its tensors
            self.fut.cancel()
            self.fut = None
        self.pool.shutdown(wait=True)
        self.sm.pending = 0


def _weight_map(model_dir: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        raise SimDiffError(f"streaming needs a model directory with config.json and safetensors shards: {model_dir}")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            return dict(json.loads(index.read_text())["weight_map"])
        except (KeyError, json.JSONDecodeError) as e:
            raise SimDiffError(f"malformed shard index {index}: {e}") from None
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SimDiffError(f"no .safetensors weights in '{model_dir}' (streaming reads safetensors only)")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as h:  # reads the header only
            for k in h.keys():
                out[k] = f.name
    return out


def resolve_stream_dir(spec: str) -> Path:
    """The safetensors directory to stream for a model spec (embedded GGUFs: their dequantised cache)."""
    from .gguf import gguf_cache_dir
    from .sources import DEFAULT_MODEL, embedded_gguf, resolve_spec

    kind, path = resolve_spec(spec or "default")
    if kind == "dir":
        if names_custom_code(path):
            raise custom_code_error(spec, stream=True)
        return path
    if kind in ("embedded", "gguf"):
        gguf = embedded_gguf(DEFAULT_MODEL if spec in (None, "", "default") else spec) if kind == "embedded" else path
        cache = gguf_cache_dir(gguf)
        if not (cache / "config.json").is_file():
            raise SimDiffError(f"--stream reads safetensors: load '{spec}' once without --stream to cache "
                               "its dequantised weights, then retry")
        return cache
    raise SimDiffError(f"--stream needs a local model directory; download '{spec}' first "
                       "(huggingface-cli download) and pass its path")


def batch_ranges(N: int, bs: int):
    """The ``[start, end)`` row ranges of ``N`` windows in batches of ``bs`` (the last may be shorter)."""
    return [(s, min(s + bs, N)) for s in range(0, N, bs)]


def capture_inputs(sm: StreamedModel, input_ids, attention_mask, bs, runner_kw=None):
    """Embeddings phase: block 0 inputs and every block's call kwargs, per batch."""
    L = len(sm.blocks)
    outer = sm.capture_names()  # the LM head is not needed here, the embedding is read as rows
    sm.load(outer, "embeddings phase")
    xs, calls = [], []
    try:
        with torch.inference_mode(), sm.compact_embedding(input_ids) as compact:
            for s, e in batch_ranges(input_ids.shape[0], bs):
                sink = {"x": None, "calls": [None] * L}
                with sm.swapped_blocks(lambda i, b: _Recorder(b, i, sink, last=i == L - 1)):
                    ids = compact[s:e].to(sm.device)
                    mask = attention_mask[s:e].to(sm.device) if attention_mask is not None else None
                    try:
                        sm.base()(input_ids=ids, attention_mask=mask, use_cache=False)
                    except _Stop:
                        pass
                xs.append(sink["x"])
                calls.append(sink["calls"])
    finally:
        sm.release(outer)
    return xs, calls


def stream_meta(sm: StreamedModel, head: bool = True) -> dict:
    return {"peak_weights_mb": round(sm.peak / 2**20, 3), "model_mb": round(sm.model_mb(), 3),
            "budget_mb": None if sm.budget is None else round(sm.budget / 2**20, 3),
            "min_budget_mb": round(sm.min_budget_mb(head), 3), "read_mb": round(sm.bytes_read / 2**20, 3),
            "read_wait_s": round(sm.read_wait_s, 3)}
