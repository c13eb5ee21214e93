"""Write a pruned checkpoint that plain transformers can load, atomically.

    from simdiff_core.export.checkpoint import export_pruned
    out = export_pruned(lm, plan, "exports/smollm2-pruned", report=ExportReport.build(lm, plan, evaluation=ev),
                        make_zip=True)
    AutoModelForCausalLM.from_pretrained(out)   # num_hidden_layers == L - k

The directory holds safetensors weights, ``config.json``, ``generation_config.json``, the
tokenizer, ``simdiff_report.json`` (``records.ExportReport``: plan, scores, evaluation), ``plan.json`` and
``mergekit.yaml``. Everything is written into a temporary sibling directory first and renamed into
place at the end, so a crash or a full disk never leaves a half-written checkpoint under the target
name; an existing target is refused unless ``force=True``. The zip for download is streamed file by
file to disk (never built in memory), also via a temporary name.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from ..common.errors import SimDiffError
from ..common.fileio import staged_dir
from ..common.records import ExportReport, read_report
from ..models.gguf import strip_gguf_quantizer
from ..models.load import LoadedModel
from ..pruning.build import build_pruned
from ..pruning.plan import Plan

REPORT_NAME = "simdiff_report.json"


def safe_name(name: str) -> str:
    """An export name reduced to [A-Za-z0-9._-], with no leading dots (no '..', no separators)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "_", (name or "").strip())
    cleaned = re.sub(r"_+", "_", cleaned).strip("_.-")[:100]
    if not cleaned:
        raise SimDiffError(f"export name {name!r} has no usable characters: use letters, digits, '.', '_', '-'")
    return cleaned


def export_dir_under(root: str | Path, name: str) -> Path:
    """``root/safe_name(name)``, guaranteed to stay inside ``root``."""
    root = Path(root).resolve()
    target = (root / safe_name(name)).resolve()
    if target.parent != root:
        raise SimDiffError(f"export name {name!r} escapes the export folder")
    return target


def export_pruned(lm: LoadedModel, plan: Plan, out_dir: str | Path, force: bool = False,
                  make_zip: bool = False, report: ExportReport | dict | None = None, dtype: torch.dtype | None = None,
                  model: torch.nn.Module | None = None) -> Path:
    """Export ``plan`` applied to ``lm`` to ``out_dir`` (see module docstring). Returns the path.

    ``model`` may pass an already-built pruned model (e.g. recovered by fine-tuning) to save instead
    of building one from the plan. ``report`` is an ``ExportReport`` or a dict of its parts
    (``evaluation``, ``scores``, ``recovery``, other keys kept as they are; see ``report_for``).
    """
    rep = report_for(lm, plan, report)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not force:
        raise SimDiffError(f"'{out}' already exists; choose another name or use --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    small = model if model is not None else build_pruned(lm, plan)
    if dtype is not None and dtype != next(small.parameters()).dtype:
        small = copy.deepcopy(small).to(dtype)
    strip_gguf_quantizer(small)
    with staged_dir(out, force, "export") as tmp:
        small.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        (tmp / REPORT_NAME).write_text(rep.to_json())
        (tmp / "plan.json").write_text(plan.to_json())
        src = lm.gguf_file or lm.source
        (tmp / "mergekit.yaml").write_text(plan.to_mergekit_yaml(src, str(next(small.parameters()).dtype).replace("torch.", "")))
        from .modelcard import model_card  # Hub model card (README.md), see modelcard.py

        (tmp / "README.md").write_text(model_card(plan, rep, lm), encoding="utf-8")
    if make_zip:
        zip_dir(out, out.with_suffix(".zip"), force=True)
    return out


def report_for(lm: LoadedModel, plan: Plan, report: ExportReport | dict | None) -> ExportReport:
    """The ExportReport written for ``plan``: ``report`` itself, or one built from a dict of its parts.

    A dict may hold ``evaluation`` (or the old flat ``ppl_dense``/``ppl_pruned``/``ppl_protocol``),
    ``scores`` and ``recovery``; any other key is kept as it is.
    """
    if isinstance(report, ExportReport):
        return report
    parts = read_report(dict(report or {}, plan=plan.to_dict()))
    return ExportReport.build(lm, plan, evaluation=parts.evaluation, scores=parts.scores, recovery=parts.recovery,
                              extra=parts.extra)


def zip_dir(src: Path, zip_path: Path, force: bool = False) -> Path:
    """Stream ``src`` into ``zip_path`` (weights stored, text deflated), atomically."""
    src, zip_path = Path(src), Path(zip_path)
    if zip_path.exists() and not force:
        raise SimDiffError(f"'{zip_path}' already exists")
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as z:
            for f in sorted(src.rglob("*")):
                if f.is_file():
                    method = zipfile.ZIP_STORED if f.suffix in (".safetensors", ".bin") else zipfile.ZIP_DEFLATED
                    z.write(f, arcname=f"{src.name}/{f.relative_to(src)}", compress_type=method)
        os.replace(tmp, zip_path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise SimDiffError(f"cannot write {zip_path}: {e.strerror or e}") from None
    return zip_path

