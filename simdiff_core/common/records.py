"""Typed JSON records at the boundaries: one save/load path, and the export report every writer shares.

    from simdiff_core.common.records import Evaluation, ExportReport, read_report
    ev = Evaluation(ppl_dense=18.2, ppl_pruned=27.5, tokens=4096, protocol="WikiText-2 test; 8 x 512")
    rep = ExportReport.build(lm, plan, evaluation=ev, scores=scores)   # what simdiff_report.json holds
    rep = read_report(json.loads(Path("out/simdiff_report.json").read_text()))   # any report ever written

Why: the app and the CLI used to write the export report in two shapes (flat ``ppl_*`` keys vs a
nested ``evaluation`` object) and the model card read only one, so cards from the app said "Not
measured". Now the app, the CLI, the model card and the HTML report all go through ``ExportReport``
/ ``Evaluation``; ``read_report`` also reads the old flat shape. ``JsonRecord`` is the one
``save``/``load`` (atomic write, one-line errors) behind ``Scores``, ``Damage`` and ``Plan``.

Cost: plain dataclasses and JSON; nothing here touches a model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import SimDiffError
from .fileio import atomic_write_text


class JsonRecord:
    """Mixin for dataclass records saved as one JSON object: ``to_dict``/``to_json``/``save``/``load``.

    Subclasses set ``KIND`` (the word used in error messages: "scores", "damage", "plan") and
    implement ``from_dict`` (validating, raising SimDiffError for bad content).
    """

    KIND = "record"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, d: dict):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path):
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SimDiffError(f"no such {cls.KIND} file: {path}") from None
        except IsADirectoryError:
            raise SimDiffError(f"{cls.KIND} file {path} is a directory") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SimDiffError(f"{cls.KIND} file {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise SimDiffError(f"malformed {cls.KIND}: expected a JSON object")
        return cls.from_dict(d)


def _num(x):
    return None if x is None else float(x)


def _dict(x, name: str):
    if x is None or isinstance(x, dict):
        return x
    raise TypeError(f"{name} must be an object")


@dataclass
class Evaluation:
    """Perplexity of the dense and the pruned (and optionally recovered) model on the same windows."""

    ppl_dense: float | None = None
    ppl_pruned: float | None = None
    ppl_recovered: float | None = None
    tokens: int | None = None          # predicted tokens per model
    protocol: str | None = None        # evaluate.protocol_note: text, windows x tokens, BOS
    # Honest comparison (evaluation/honest.py) when the pruned model was trained on text:
    ppl_dense_lora: float | None = None  # the dense model given the same LoRA run on the same text
    second_domain: dict | None = None    # {"protocol", "ppl_dense", "ppl_pruned", "ppl_recovered", "ppl_dense_lora"}
    honesty: dict | None = None          # honest.verdict: flags, messages, headline, ratios

    @property
    def measured(self) -> bool:
        return self.ppl_dense is not None or self.ppl_pruned is not None

    def to_dict(self) -> dict:
        """Only the measured fields (the JSON schema of ``evaluation`` in simdiff_report.json)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def coerce(cls, d) -> "Evaluation | None":
        """An Evaluation from itself, None, ``{"ppl_dense", "ppl_pruned", ...}`` or the HTML report's
        ``{"before", "after", "protocol"}``; None when nothing was measured."""
        if d is None or isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise SimDiffError(f"malformed evaluation: expected an object, got {type(d).__name__}")
        try:
            ev = cls(ppl_dense=_num(d.get("ppl_dense", d.get("before"))),
                     ppl_pruned=_num(d.get("ppl_pruned", d.get("after"))),
                     ppl_recovered=_num(d.get("ppl_recovered")),
                     tokens=None if d.get("tokens") is None else int(d["tokens"]),
                     protocol=d.get("protocol", d.get("ppl_protocol")),
                     ppl_dense_lora=_num(d.get("ppl_dense_lora")),
                     second_domain=_dict(d.get("second_domain"), "second_domain"),
                     honesty=_dict(d.get("honesty"), "honesty"))
        except (TypeError, ValueError) as e:
            raise SimDiffError(f"malformed evaluation: {e}") from None
        return ev if ev.measured else None


@dataclass
class ExportReport:
    """``simdiff_report.json`` of an export: the source, the plan, the scores and the evaluation.

    ``to_dict`` writes the one JSON shape (evaluation nested under ``evaluation``); ``read_report``
    reads that and the flat ``ppl_dense``/``ppl_pruned``/``ppl_protocol`` shape older app versions wrote.
    """

    source_model: str
    num_layers_before: int
    num_layers_after: int
    plan: dict
    source_gguf: str | None = None
    scores: dict | None = None
    evaluation: Evaluation | None = None
    recovery: dict | None = None
    extra: dict = field(default_factory=dict)      # any other keys a caller recorded, kept as they are
    tool: str = "SimDiff Explorer"
    version: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @classmethod
    def build(cls, lm, plan, evaluation=None, scores=None, recovery: dict | None = None,
              extra: dict | None = None) -> "ExportReport":
        """The report for ``plan`` applied to ``lm``; ``scores`` may be a Scores or its dict."""
        from .. import __version__

        if scores is not None and not isinstance(scores, dict):
            scores = scores.to_dict()
        return cls(source_model=lm.source, source_gguf=lm.gguf_file, num_layers_before=plan.num_layers,
                   num_layers_after=len(plan.kept_layers), plan=plan.to_dict(), scores=scores,
                   evaluation=Evaluation.coerce(evaluation), recovery=recovery, extra=dict(extra or {}),
                   version=__version__)

    def to_dict(self) -> dict:
        d = {"tool": self.tool, "version": self.version, "created": self.created,
             "source_model": self.source_model, "source_gguf": self.source_gguf,
             "num_layers_before": self.num_layers_before, "num_layers_after": self.num_layers_after,
             "plan": self.plan}
        if self.scores is not None:
            d["scores"] = self.scores
        if self.evaluation is not None and self.evaluation.measured:
            d["evaluation"] = self.evaluation.to_dict()
        if self.recovery is not None:
            d["recovery"] = self.recovery
        return {**self.extra, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    @property
    def calibration(self) -> dict:
        """The calibration the blocks were scored on: the plan's, completed by the scores'."""
        return {**((self.scores or {}).get("calibration") or {}), **(self.plan.get("calibration") or {})}


_FLAT_EVAL = ("ppl_dense", "ppl_pruned", "ppl_recovered", "ppl_protocol", "tokens")  # the old flat shape only


def read_report(d) -> ExportReport:
    """An ExportReport from any ``simdiff_report.json`` dict (current nested or old flat shape)."""
    if isinstance(d, ExportReport):
        return d
    if not isinstance(d, dict):
        raise SimDiffError("malformed export report: expected a JSON object")
    d = dict(d)
    ev = d.pop("evaluation", None)
    flat = {k: d.pop(k) for k in _FLAT_EVAL if k in d}
    if ev is None and flat:
        ev = flat
    plan = d.pop("plan", None) or {}
    known = {f.name for f in fields(ExportReport)} - {"evaluation", "plan", "extra"}
    kw = {k: d.pop(k) for k in list(d) if k in known}
    n_before = kw.pop("num_layers_before", plan.get("num_layers"))
    n_after = kw.pop("num_layers_after", len(plan.get("kept_layers") or []) or None)
    return ExportReport(source_model=kw.pop("source_model", plan.get("model", "?")),
                        num_layers_before=n_before, num_layers_after=n_after, plan=plan,
                        evaluation=Evaluation.coerce(ev), extra=d, **kw)

