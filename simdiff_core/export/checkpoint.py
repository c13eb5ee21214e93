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
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from ..common.errors import SimDiffError
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        small.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        (tmp / REPORT_NAME).write_text(rep.to_json())
        (tmp / "plan.json").write_text(plan.to_json())
        src = lm.gguf_file or lm.source
        (tmp / "mergekit.yaml").write_text(plan.to_mergekit_yaml(src, str(next(small.parameters()).dtype).replace("torch.", "")))
        from .modelcard import model_card  # Hub model card (README.md), see modelcard.py

        (tmp / "README.md").write_text(model_card(plan, rep, lm), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an export is meant to be shared
        _replace_dir(tmp, out, force)
    except SimDiffError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SimDiffError(f"export failed, nothing written to {out}: {e.strerror or e}") from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk / write error as SafetensorError("... I/O error: ... (os error N)")
        if isinstance(e, Exception) and "(os error" in str(e):
            detail = str(e).strip().splitlines()[0][:200]
            raise SimDiffError(f"export failed, nothing written to {out}: {detail}") from None
        raise
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


def _replace_dir(tmp: Path, out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise SimDiffError(f"'{out}' already exists; use --force to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        try:
            os.rename(out, old / "x")
        except BaseException:
            shutil.rmtree(old, ignore_errors=True)  # nothing moved: the old export is where it was
            raise
        try:
            os.rename(tmp, out)
        except BaseException:
            # The new export could not take the name: put the previous one back, never leave it hidden.
            try:
                os.rename(old / "x", out)
            except OSError as e:
                raise SimDiffError(f"export failed and the previous export could not be put back at {out}: "
                                   f"it is in {old / 'x'} ({e.strerror or e})") from None
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


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

