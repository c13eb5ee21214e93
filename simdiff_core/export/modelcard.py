"""A Hugging Face Hub model card (``README.md``) for a pruned export, and the upload to the Hub.

    from simdiff_core.export.modelcard import model_card, push_to_hub
    text = model_card(plan, report, lm)      # YAML front matter + markdown body, as the Hub renders it
    url = push_to_hub("exports/smollm2-pruned", "me/smollm2-pruned")   # token from $HF_TOKEN only

``export.export_pruned`` writes the card into every export. The front matter holds what the Hub
indexes (``base_model`` only when the source is a real Hub repository id, ``license`` when known,
``library_name: transformers``, tags); the body records what was removed or merged and why
(criterion, alpha, ratio), the calibration data, perplexity before/after with its protocol, how to
load and reproduce it, and the tool version.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..common.errors import SimDiffError

# Embedded model specs -> (the Hub repository they were quantised from, licence). The GGUF files
# carry no repository id, and a card's base_model must be one for the Hub to link it.
KNOWN_BASES = {
    "default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": ("google/gemma-3-270m", "gemma"),
}
TAGS = ["simdiff-explorer", "pruned", "layer-pruning", "depth-pruning"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def base_model_and_license(lm) -> tuple[str | None, str | None]:
    """(Hub repo id or None, licence or None) of the model the export was pruned from."""
    source = str(getattr(lm, "source", "") or "")
    if source in KNOWN_BASES:
        return KNOWN_BASES[source]
    license_ = _gguf_license(getattr(lm, "gguf_file", None)) or _readme_license(source)
    is_repo = bool(_REPO_ID.match(source)) and not Path(source).expanduser().exists()
    return (source if is_repo else None), license_


def _gguf_license(path) -> str | None:
    if not path:
        return None
    try:
        import gguf

        field = gguf.GGUFReader(str(path)).fields.get("general.license")
        return str(field.contents()) if field is not None else None
    except Exception:  # an unreadable GGUF only costs the card its licence line
        return None


def _readme_license(source: str) -> str | None:
    """The ``license:`` of a local source directory's own model card, if it has one."""
    readme = Path(source).expanduser() / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    lic = m and re.search(r"^license:\s*(\S+)\s*$", m.group(1), re.M)
    return lic.group(1).strip("'\"") if lic else None


def _yaml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid YAML scalar, quotes and all


def _fmt(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "n/a"


def model_card(plan, report, lm) -> str:
    """The README.md text for ``plan`` applied to ``lm``; ``report`` is the export's ``ExportReport``
    (or its dict, in any shape ``records.read_report`` reads; None: nothing measured)."""
    from .. import __version__
    from ..common.records import read_report

    rep = read_report(report or {})
    base, license_ = base_model_and_license(lm)
    source = str(getattr(lm, "source", plan.model))
    front = ["---"]
    if base:
        front.append(f"base_model: {_yaml_str(base)}")
    if license_:
        front.append(f"license: {_yaml_str(license_)}")
    front += ["library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    front += [f"- {t}" for t in TAGS]
    front.append("---")

    L, kept = plan.num_layers, len(plan.kept_layers)
    name = base.split("/")[-1] if base else (Path(source).name if Path(source).expanduser().exists() else source)
    body = [
        f"# {name}, depth-pruned to {kept} of {L} blocks",
        "",
        f"This checkpoint is [{base}](https://huggingface.co/{base})" if base else f"This checkpoint is `{source}`",
        f"with {plan.num_removed} of its {L} transformer blocks removed by SimDiff Explorer {__version__}. "
        "It is an ordinary `transformers` checkpoint (`num_hidden_layers` = "
        f"{kept}); no custom code is needed.",
        "",
        "## What was removed",
        "",
        "| | |",
        "|---|---|",
        f"| source | `{source}`" + (f" (GGUF `{Path(lm.gguf_file).name}`, dequantised)" if getattr(lm, "gguf_file", None) else "") + " |",
        f"| blocks | {L} → {kept} |",
        f"| removed blocks (0-based, original numbering) | {plan.removed_layers} |",
        f"| kept blocks | {plan.kept_layers} |",
        f"| method | {plan.method} |",
        f"| criterion | {plan.criterion or 'n/a'} |",
        f"| α (SimDiff similarity weight) | {_fmt(plan.alpha, 2) if plan.alpha is not None else 'n/a'} |",
        f"| removal ratio | {_fmt(plan.ratio, 3) if plan.ratio is not None else f'{plan.num_removed}/{L}'} |",
        f"| first / last block protected | {plan.keep_first} / {plan.keep_last} |",
    ]
    for g in plan.merged_groups:
        body.append(f"| merged group | blocks {g.get('layers')} folded into block {g.get('base')} |")
    if "auto_alpha" in plan.details:
        body.append(f"| α chosen by | calibration perplexity over {len(plan.details['auto_alpha'].get('trials') or [])} trials |")

    calib = {**((rep.scores or {}).get("calibration") or {}), **dict(plan.calibration or {})}
    body += ["", "## Calibration data", ""]
    if calib:
        desc = calib.get("description") or calib.get("source") or "unspecified"
        size = ""
        if calib.get("samples") and calib.get("seq_len"):
            size = f": {calib['samples']} windows × {calib['seq_len']} tokens"
        body.append(f"Blocks were scored on {desc}{size}.")
    else:
        body.append("Not recorded in the plan.")

    ev = rep.evaluation
    body += ["", "## Perplexity", ""]
    if ev is not None and ev.measured:
        sd = ev.second_domain or {}
        rows = [(f"original ({L} blocks)", ev.ppl_dense, sd.get("ppl_dense")),
                (f"pruned ({kept} blocks)", ev.ppl_pruned, sd.get("ppl_pruned"))]
        if ev.ppl_recovered is not None:
            rows.append((f"pruned + LoRA recovery ({kept} blocks)", ev.ppl_recovered, sd.get("ppl_recovered")))
        if ev.ppl_dense_lora is not None:
            rows.append((f"original + the same LoRA ({L} blocks, reference)", ev.ppl_dense_lora,
                         sd.get("ppl_dense_lora")))
        if sd:
            body += ["| model | perplexity | second domain |", "|---|---|---|"]
            body += [f"| {n} | {_fmt(a)} | {_fmt(b)} |" for n, a, b in rows]
        else:
            body += ["| model | perplexity |", "|---|---|"] + [f"| {n} | {_fmt(a)} |" for n, a, _ in rows]
        body += ["", f"Protocol: {ev.protocol or 'not recorded'}" + (f" ({ev.tokens} tokens)." if ev.tokens else ".")]
        if sd:
            body.append(f"Second domain: {sd.get('protocol', 'not recorded')}.")
        body += _honesty_lines(ev.honesty)
    else:
        body.append("Not measured at export time (run `simdiff ppl --model THIS_DIR`).")

    body += _repair_lines(rep.extra.get("repair"))
    body += [
        "", "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("THIS_DIR_OR_REPO")',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_DIR_OR_REPO")',
        "```", "",
        "## Reproduce", "",
        "`plan.json` is the plan, `simdiff_report.json` holds the plan, scores and evaluation, and",
        "`mergekit.yaml` rebuilds the block removal from the source checkpoint with mergekit's",
        "passthrough method (`mergekit-yaml mergekit.yaml OUT_DIR`).",
        "",
        f"Made with SimDiff Explorer {__version__} (`simdiff_core`).",
        "",
    ]
    return "\n".join(front) + "\n\n" + "\n".join(body)


def _repair_lines(r: dict | None) -> list[str]:
    """The training-free repair folded into these weights (``repair.Repair.to_dict``), with its guard."""
    if not r or r.get("method") in (None, "none"):
        return []
    c = r.get("calibration") or {}
    out = ["", "## Repair", "",
           f"After the blocks were removed, the weights were repaired without training: `{r['method']}` "
           f"({r.get('fit', 'dense')} fit; see SimDiff Explorer's docs/repair.md). {r.get('note', '')}".rstrip(),
           "",
           f"Fitted on {c.get('description') or c.get('source') or 'unrecorded text'}: {c.get('samples')} windows × "
           f"{c.get('seq_len')} tokens ({c.get('tokens')} tokens).", "",
           "| removed span [a, b) | folded into | fit residual before | after | after / before |",
           "|---|---|---|---|---|"]
    for s in r.get("spans", []):
        if s.get("status") == "repaired":
            out.append(f"| [{s['start']}, {s['end']}) | `{s['site']}` | {s['residual_before']:.4g} | "
                       f"{s['residual_after']:.4g} | {s['ratio']:.3f} |")
        else:
            out.append(f"| [{s['start']}, {s['end']}) | {s.get('status')} | | | |")
    ev = r.get("evaluation")
    if ev:
        h, c2 = ev["held_out"], ev["calibration"]
        out += ["", "| perplexity | pruned | pruned + repair |", "|---|---|---|",
                f"| calibration text (fitted on it: optimistic) | {_fmt(c2['pruned'])} | {_fmt(c2['repaired'])} |",
                f"| held-out: {h.get('protocol', '')} | {_fmt(h['pruned'])} | {_fmt(h['repaired'])} |"]
        sd = ev.get("second_domain")
        if sd:
            out.append(f"| second domain: {sd.get('protocol', '')} (dense {_fmt(sd.get('dense'))}) | "
                       f"{_fmt(sd['pruned'])} | {_fmt(sd['repaired'])} |")
        ok = ev.get("improves_held_out") and ev.get("improves_second_domain", True)
        out += ["", ("" if ok else "**Warning:** ") + ev.get("verdict", "")]
    out += ["", "`plan.json` and `mergekit.yaml` cannot express the repaired weights: they reproduce the "
            "*unrepaired* pruning. This checkpoint (and a GGUF converted from it) carries the repaired weights."]
    return out


def _honesty_lines(h: dict | None) -> list[str]:
    """The honest-comparison verdict (``evaluation/honest.py``): its headline and every flag, in words."""
    if not h:
        return []
    out = ["", "### Honest comparison", "", h.get("headline", "")]
    if h.get("dense_gain_share") is not None:
        out.append(f"The dense model given the same training gains {100 * h['dense_gain_share']:.0f} % as much "
                   "(in log perplexity) as the pruned one: that share is adaptation to the training text, "
                   "not repair of the removed blocks.")
    if h.get("messages"):
        out.append("")
        out += [f"- **{code}**: {msg}" for code, msg in zip(h.get("flags", []), h["messages"])]
    return out


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False,
                commit_message: str | None = None) -> str:
    """Upload an export folder to the Hub repository ``repo_id`` (created if missing); returns its URL.

    The token comes only from the ``HF_TOKEN`` environment variable and never appears in messages.
    Failures (no token, offline, refused) raise a one-line SimDiffError.
    """
    folder = Path(folder)
    if not _REPO_ID.match(repo_id or ""):
        raise SimDiffError(f"--push-to-hub needs a Hub repository id like 'user/name', got {repo_id!r}")
    token = hub_token()
    if not folder.is_dir():
        raise SimDiffError(f"nothing to upload: {folder} is not a directory")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=commit_message or "Upload pruned model (SimDiff Explorer)")
    except Exception as e:  # network, auth, permissions: one line, token scrubbed
        raise SimDiffError(f"upload to {repo_id} failed: {_scrub(_one_line(e), token)}") from None
    return f"https://huggingface.co/{repo_id}"


def hub_token() -> str:
    """$HF_TOKEN, checked before any slow work; the Hub being switched off is reported here too."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise SimDiffError("cannot push to the Hub: HF_HUB_OFFLINE is set (unset it when online)")
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise SimDiffError("--push-to-hub needs a Hub write token in the HF_TOKEN environment variable")
    return token


def check_hub_access(token: str) -> str:
    """The user name the token belongs to; a one-line error when offline or the token is refused."""
    from huggingface_hub import HfApi

    try:
        return HfApi(token=token).whoami()["name"]
    except Exception as e:
        raise SimDiffError(f"cannot reach the Hugging Face Hub to push ({type(e).__name__}: "
                           f"{_scrub(_one_line(e), token)}); check the network and HF_TOKEN") from None


def _one_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
