"""Prune a checkpoint bigger than memory: copy the kept blocks' tensors shard by shard, never loading the model.

    from simdiff_core.export.streamed import stream_prune
    res = stream_prune("./llama-8b", plan, "./llama-8b-pruned", out_dtype=torch.bfloat16, memory_budget_mb=4000)
    # CLI: python -m simdiff_core prune --model ./llama-8b --plan plan.json --out OUT --stream --out-dtype bfloat16

What it does: reads the source's shard headers (``model.safetensors.index.json`` or the shards
themselves), keeps every tensor outside the block list as it is, drops the removed blocks' tensors,
renames ``<blocks>.<i>.*`` of kept block i to its new index, and writes the output shards (at most
``shard_bytes`` each) with the header first and the tensor bytes after, copying each tensor in row
chunks of at most 64 MB (read with ``pread``, converted to ``out_dtype``, written). Tied embeddings
stay tied: a head tensor the source stores although the config ties it is dropped, as
``save_pretrained`` does. The config goes through ``pruning.prune.pruned_config`` (the in-memory
view's own fix: ``num_hidden_layers``, ``layer_types`` and the other per-layer arrays), so the
streamed and the in-memory exports write equal configs and bit-identical tensors.

Everything is written into a temporary sibling directory; the shard index is written last and the
directory is renamed into place, so a crash never leaves a half-written checkpoint under the target
name. Memory: one 64 MB chunk in flight (plus, with ``transform``, the one tensor it rewrites, e.g.
a repaired ``down_proj``); ``memory_budget_mb`` below one block of the checkpoint is refused in one
line before anything is read, since one block is the unit every streamed stage works in.
Not streamed: plans with merged groups (merging needs the blocks' weights in memory) — refused.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ..common.errors import SimDiffError
from ..common.fileio import staged_dir
from ..common.progress import Progress
from ..models.safetensors_io import ShardReader, shard_groups, tensor_nbytes, write_shard

CHUNK_BYTES = 64 * 2**20
SKIP_FILES = {"config.json", "model.safetensors.index.json", "README.md", "simdiff_report.json", "plan.json",
              "mergekit.yaml"}


@contextmanager
def _closing(readers: dict):
    """Close every shard reader opened for the prune when the write ends, however it ends."""
    try:
        yield
    finally:
        for r in readers.values():
            r.close()


def _source_tensors(src: Path, weight_map: dict[str, str]) -> list[tuple[str, str]]:
    """(name, shard) of every source tensor, in shard order and file order within each shard."""
    shards = sorted(set(weight_map.values()))
    out = []
    for sh in shards:
        hdr = ShardReader(src / sh)
        names = sorted((k for k in hdr.entries if weight_map.get(k) == sh), key=lambda k: hdr.entries[k]["data_offsets"][0])
        out += [(k, sh) for k in names]
    return out


def _side_files(tmp: Path, plan, meta: dict, source: str, cfg) -> None:
    """What ``checkpoint.export_pruned`` writes beside the weights: report, plan, mergekit YAML, model card."""
    from types import SimpleNamespace

    from ..common.records import ExportReport, read_report
    from .checkpoint import REPORT_NAME
    from .modelcard import model_card

    parts = read_report(dict(meta, plan=plan.to_dict()))  # evaluation/scores/recovery keys, if the caller had any
    extra = {k: v for k, v in parts.extra.items() if k != "plan"}
    lm = SimpleNamespace(source=source, gguf_file=None)  # all the report and the card read of the model
    rep = ExportReport.build(lm, plan, evaluation=parts.evaluation, scores=parts.scores, recovery=parts.recovery,
                             extra=extra)
    (tmp / REPORT_NAME).write_text(rep.to_json())
    (tmp / "plan.json").write_text(plan.to_json())
    dtype = str(getattr(cfg, "torch_dtype", None) or getattr(cfg, "dtype", None) or "float32").replace("torch.", "")
    (tmp / "mergekit.yaml").write_text(plan.to_mergekit_yaml(source, dtype))
    (tmp / "README.md").write_text(model_card(plan, rep, lm), encoding="utf-8")


def stream_prune(model_dir: str | Path, kept_layers, out_dir: str | Path, out_dtype: torch.dtype | None = None,
                 memory_budget_mb: float | None = None, force: bool = False, shard_bytes: int = 5 * 10**9,
                 transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                 transformed: set[str] | None = None, plan=None, report: dict | None = None,
                 progress: Progress | None = None, source: str | None = None) -> dict:
    """Write the checkpoint keeping ``kept_layers`` of ``model_dir`` to ``out_dir`` (see module docstring).

    ``transform(source_name, tensor)`` rewrites the whole tensors named in ``transformed`` (float64
    math is the caller's; the result is cast to ``out_dtype``). With ``plan``, the files the in-memory
    export writes beside the weights are written too (``simdiff_report.json`` as an ``ExportReport`` with
    the streamed facts as extra keys, ``plan.json``, ``mergekit.yaml``, the model card ``README.md``);
    ``source`` names the model in them (default: ``model_dir``). Returns {out, num_layers,
    bytes_written, kept_bytes, seconds, shards}.
    """
    from transformers import AutoConfig

    from ..models.blocks import text_config
    from ..models.streaming import StreamedModel
    from ..pruning.prune import pruned_config

    t0 = time.perf_counter()
    src = Path(model_dir)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not force:
        raise SimDiffError(f"'{out}' already exists; choose another name or use --force to replace it")
    if out_dtype is not None and not out_dtype.is_floating_point:
        raise SimDiffError(f"--out-dtype must be a floating-point type, got {out_dtype}")
    sm = StreamedModel(src, "cpu", "float32", memory_budget_mb)  # meta skeleton: block path and sizes only
    L = len(sm.blocks)
    kept = [int(i) for i in kept_layers]
    if not kept or sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= L:
        raise SimDiffError(f"kept blocks must be a non-empty increasing list of indices in 0..{L - 1}")
    block_bytes = max(sm.nbytes(sm.block_names(i)) for i in range(L))
    if sm.budget is not None and block_bytes > sm.budget:
        raise SimDiffError(f"memory budget {sm.budget / 2**20:.1f} MB is too small: the streamed prune works one "
                           f"block at a time and the largest block is {block_bytes / 2**20:.1f} MB")
    prefix = sm.block_path + "."
    pos = {orig: j for j, orig in enumerate(kept)}
    cfg = AutoConfig.from_pretrained(str(src), trust_remote_code=False)
    tied = bool(getattr(text_config(cfg), "tie_word_embeddings", getattr(cfg, "tie_word_embeddings", False)))
    embed = set(sm.embed_names())
    head = set(sm.head_names()) - embed
    has_embed = any(n in sm.weight_map for n in embed)

    plan_out: list[tuple[str, str, str, torch.dtype, tuple]] = []  # (out name, source name, shard, dtype, shape)
    readers: dict[str, ShardReader] = {}
    for name, shard in _source_tensors(src, sm.weight_map):
        if tied and has_embed and name in head:
            continue  # tied head: stored once, as the embeddings (what save_pretrained writes)
        new = name
        if name.startswith(prefix):
            idx, _, rest = name[len(prefix):].partition(".")
            if idx.isdigit():
                if int(idx) not in pos:
                    continue
                new = f"{prefix}{pos[int(idx)]}.{rest}"
        r = readers.setdefault(shard, ShardReader(src / shard))
        dt = r.dtype(name)
        if out_dtype is not None and dt.is_floating_point:
            dt = out_dtype
        plan_out.append((new, name, shard, dt, r.shape(name)))
    transformed = set(transformed or ())
    missing = transformed - {n for _, n, _, _, _ in plan_out}
    if missing:
        raise SimDiffError(f"internal: tensors to rewrite are not in the pruned checkpoint: {sorted(missing)[:3]}")

    groups = shard_groups(plan_out, lambda item: tensor_nbytes(item[3], item[4]), shard_bytes)
    kept_bytes = sum(tensor_nbytes(d, s) for _, _, _, d, s in plan_out)
    total = len(plan_out)
    done = [0]

    def chunks(item):
        new, name, shard, dt, shape = item
        r = readers[shard]
        if name in transformed:
            yield transform(name, r.read(name)).to(dt)
        elif not shape:
            yield r.read(name).to(dt)
        else:
            row = max(1, r.nbytes(name) // max(1, shape[0]))
            step = max(1, CHUNK_BYTES // row)
            for a in range(0, shape[0], step):
                yield r.read(name, rows=(a, a + step)).to(dt)
        done[0] += 1
        if progress is not None:
            progress(done[0] / total, f"tensor {done[0]}/{total} ({new})")

    written, weight_map = 0, {}
    with _closing(readers), staged_dir(out, force, "streamed prune") as tmp:
        for k, group in enumerate(groups):
            fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
            by_name = {g[0]: g for g in group}
            written += write_shard(tmp / fname, [(g[0], g[3], g[4]) for g in group], lambda n: chunks(by_name[n]),
                                   metadata={"format": "pt"})
            for g in group:
                weight_map[g[0]] = fname
        new_cfg = pruned_config(cfg, kept, L)
        if out_dtype is not None:
            new_cfg.torch_dtype = out_dtype  # what from_pretrained(dtype="auto") picks
        new_cfg.save_pretrained(tmp)
        for f in sorted(src.iterdir()):  # tokenizer, generation config, chat template: copied as they are
            if f.is_file() and f.name not in SKIP_FILES and not f.name.startswith(".") \
                    and f.suffix not in (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".zip"):
                shutil.copyfile(f, tmp / f.name)
        meta = {"source": str(src), "kept_layers": kept, "removed_layers": [i for i in range(L) if i not in pos],
                "out_dtype": None if out_dtype is None else str(out_dtype).replace("torch.", ""),
                "streamed": True, "bytes_written": written, "kept_tensor_bytes": kept_bytes,
                **(report or {})}
        if plan is not None:
            _side_files(tmp, plan, meta, source or str(src), new_cfg)
        else:
            (tmp / "simdiff_report.json").write_text(json.dumps(meta, indent=2))
        if len(groups) > 1:  # the index last: a directory with an index is a complete checkpoint
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": kept_bytes}, "weight_map": weight_map}, indent=2))
    return {"out": str(out), "num_layers": len(kept), "bytes_written": written, "kept_bytes": kept_bytes,
            "seconds": round(time.perf_counter() - t0, 3), "shards": len(groups)}


def stream_export(model_dir: str | Path, plan, out_dir: str | Path, out_dtype: torch.dtype | None = None,
                  memory_budget_mb: float | None = None, force: bool = False, repair: str = "none",
                  windows: torch.Tensor | None = None, calibration: dict | None = None, device="cpu",
                  dtype="float32", batch_size: int | None = None, source: str | None = None,
                  progress: Progress | None = None) -> dict:
    """``prune --stream [--repair METHOD]`` as one call (the CLI and the app's Export page both run it).

    ``repair`` != "none": fit it on ``windows`` block by block (``repair.streaming.stream_fit_repair``),
    then write the pruned checkpoint with the fitted maps folded into the kept weights. Progress: the
    fit is the first half, the write the second (the whole of it without repair). Returns
    ``stream_prune``'s dict, plus ``repair`` (the ``Repair`` record's dict) and ``repair_summary``.
    """
    if plan.merged_groups:
        raise SimDiffError("--stream cannot merge blocks (merging needs their weights in memory); "
                           "use a plan without merged groups or prune without --stream")

    def part(a: float, b: float):
        return None if progress is None else (lambda f, m: progress(a + (b - a) * f, m))

    transform, transformed, report, rep = None, None, None, None
    if repair != "none":
        from ..repair.streaming import fold_sources, stream_fit_repair, stream_fold

        if windows is None:
            raise SimDiffError("the streamed repair needs calibration windows")
        rep, sm = stream_fit_repair(model_dir, plan.removed_layers, windows, method=repair,
                                    memory_budget_mb=memory_budget_mb, device=device, dtype=dtype,
                                    batch_size=batch_size, progress=part(0.0, 0.5), calibration=calibration)
        transform, transformed, report = stream_fold(rep, sm), set(fold_sources(rep, sm)), {"repair": rep.to_dict()}
    res = stream_prune(model_dir, plan.kept_layers, out_dir, out_dtype=out_dtype, memory_budget_mb=memory_budget_mb,
                       force=force, plan=plan, progress=part(0.5 if rep is not None else 0.0, 1.0),
                       transform=transform, transformed=transformed, report=report, source=source)
    if rep is not None:
        res["repair"] = {"method": repair, "spans": [[r["start"], r["end"], r.get("status"),
                                                      round(r.get("ratio", 1.0), 6)] for r in rep.spans]}
        res["repair_summary"] = rep.summary()
    return res
