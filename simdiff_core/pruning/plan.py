"""A pruning plan: which blocks go, why, and how to write it down (JSON, mergekit YAML).

    from simdiff_core.pruning.plan import make_plan
    plan = make_plan(scores, criterion="simdiff", ratio=0.25)      # one-shot, lowest importance out
    plan.save("plan.json"); print(plan.to_mergekit_yaml("path/to/model"))

The plan is the single record shared by the CLI, the app and the export: the exported checkpoint
carries it in ``simdiff_report.json``. Indices are 0-based positions in the *original* block list.
``merged_groups`` (sliding layer merging) lists windows folded into their base block; every
merged-away block also appears in ``removed_layers``.

Block count from a ratio: ``k = round(ratio * L)`` (halves round to even), at least 1.

*What was asked for* is typed: ``plan.recipe`` (method, criterion, ratio or num, α, β, locks, fusion
options). Plans written before β and the options had their own fields kept them in
``details["fusion"]``; ``Plan.from_dict`` moves them to the typed fields, so old files still load.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..analysis.metrics import CRITERIA
from ..common.errors import SimDiffError
from ..common.records import JsonRecord

PLAN_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """How a plan was asked for (the settings that reproduce it), apart from what it removes."""

    method: str = "oneshot"
    criterion: str | None = None
    ratio: float | None = None        # fraction of blocks asked for (k / L when planned by count)
    num: int | None = None            # block count asked for, when planned by count
    alpha: float | None = None        # SimDiff similarity weight
    beta: float | None = None         # SimDiff MSSD share of the difference view
    keep_first: bool = True
    keep_last: bool = True
    options: dict = field(default_factory=dict)   # other fusion settings: norm, scale_free

    def fusion(self) -> dict:
        """Keyword arguments for ``Scores.importance`` (SimDiff fusion) that this recipe used."""
        return {**self.options, **({"beta": self.beta} if self.beta is not None else {})}


@dataclass
class Plan(JsonRecord):
    KIND = "plan"

    model: str
    num_layers: int
    removed_layers: list[int]
    kept_layers: list[int] = field(default_factory=list)
    method: str = "oneshot"
    criterion: str | None = None
    alpha: float | None = None
    ratio: float | None = None
    keep_first: bool = True
    keep_last: bool = True
    scores: list[float] | None = None  # importance per original block used for the choice
    merged_groups: list[dict] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    beta: float | None = None         # SimDiff MSSD share (see Recipe)
    num: int | None = None            # block count asked for, when planned by count
    options: dict = field(default_factory=dict)   # other SimDiff fusion settings (norm, scale_free)
    version: int = PLAN_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self):
        self.removed_layers = sorted(int(i) for i in self.removed_layers)
        if not self.kept_layers:
            gone = set(self.removed_layers)
            self.kept_layers = [i for i in range(self.num_layers) if i not in gone]
        self.validate()

    @property
    def num_removed(self) -> int:
        return len(self.removed_layers)

    @property
    def recipe(self) -> Recipe:
        return Recipe(method=self.method, criterion=self.criterion, ratio=self.ratio, num=self.num,
                      alpha=self.alpha, beta=self.beta, keep_first=self.keep_first, keep_last=self.keep_last,
                      options=dict(self.options))

    def validate(self, num_layers: int | None = None) -> None:
        L = self.num_layers
        if num_layers is not None and num_layers != L:
            raise SimDiffError(
                f"plan was made for a model with {L} blocks but this model has {num_layers} (plan for '{self.model}')")
        rem, kept = self.removed_layers, sorted(int(i) for i in self.kept_layers)
        if len(set(rem)) != len(rem) or any(not 0 <= i < L for i in rem):
            raise SimDiffError(f"plan lists invalid removed blocks {rem} for a {L}-block model")
        if sorted(set(rem) | set(kept)) != list(range(L)) or set(rem) & set(kept):
            raise SimDiffError("plan is inconsistent: removed and kept blocks must partition 0..L-1")
        if not kept:
            raise SimDiffError("plan removes every block: nothing would be left")
        for g in self.merged_groups:
            if g.get("base") not in g.get("layers", []) or g["base"] not in kept:
                raise SimDiffError(f"plan has a malformed merged group {g}")
            if any(i not in rem for i in g["layers"] if i != g["base"]):
                raise SimDiffError(f"merged group {g} must list its merged-away blocks as removed")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_removed"] = self.num_removed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if not isinstance(d, dict):
            raise SimDiffError("malformed plan: expected a JSON object")
        try:
            kwargs = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
            if "removed_layers" not in kwargs or "num_layers" not in kwargs:
                raise KeyError("removed_layers/num_layers")
            kwargs["num_layers"] = int(kwargs["num_layers"])
            kwargs["removed_layers"] = [int(i) for i in kwargs["removed_layers"]]
            kwargs.setdefault("model", "?")
            details = dict(kwargs.get("details") or {})
            fusion = details.pop("fusion", None)
            if isinstance(fusion, dict):  # plans written before beta/options had their own fields
                fusion = dict(fusion)
                kwargs.setdefault("beta", fusion.pop("beta", None))
                kwargs.setdefault("options", fusion)
                kwargs["details"] = details
            if kwargs.get("beta") is not None:
                kwargs["beta"] = float(kwargs["beta"])
            if kwargs.get("num") is not None:
                kwargs["num"] = int(kwargs["num"])
            return cls(**kwargs)
        except SimDiffError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise SimDiffError(f"malformed plan: missing or bad field {e}") from None

    def kept_ranges(self) -> list[tuple[int, int]]:
        """Kept blocks as half-open [start, end) runs, mergekit's layer_range convention."""
        runs, start, prev = [], None, None
        for i in self.kept_layers:
            if start is None:
                start = prev = i
            elif i == prev + 1:
                prev = i
            else:
                runs.append((start, prev + 1))
                start = prev = i
        if start is not None:
            runs.append((start, prev + 1))
        return runs

    def to_mergekit_yaml(self, model_path: str | None = None, dtype: str = "bfloat16") -> str:
        """mergekit passthrough config that rebuilds this pruning from the source checkpoint.

        Merged groups cannot be expressed as passthrough slices; they are listed in a comment.
        """
        src = model_path or self.model
        lines = [f"# SimDiff Explorer plan: remove blocks {self.removed_layers} of {self.num_layers}",
                 f"# method={self.method} criterion={self.criterion} alpha={self.alpha}"]
        if self.merged_groups:
            lines.append("# NOTE: merged groups (sliding layer merging) are not representable in passthrough: "
                         + json.dumps(self.merged_groups))
        lines.append("slices:")
        for a, b in self.kept_ranges():
            lines += ["  - sources:", f"      - model: {src}", f"        layer_range: [{a}, {b}]"]
        lines += ["merge_method: passthrough", f"dtype: {dtype}", ""]
        return "\n".join(lines)


def count_from_ratio(num_layers: int, ratio: float) -> int:
    """k = round(ratio * L) (halves to even), at least 1: the one rounding rule from a ratio to a count.

    Unchecked (a ratio of 1 gives L), for a count box that follows a ratio slider; ``num_from_ratio``
    validates."""
    return max(1, int(round(float(ratio) * num_layers)))


def num_from_ratio(num_layers: int, ratio=None, num=None) -> int:
    """Number of blocks to remove from exactly one of ``ratio`` in (0, 1) or ``num`` >= 1."""
    if (ratio is None) == (num is None):
        raise SimDiffError("give exactly one of --ratio or --num")
    if ratio is not None:
        try:
            ratio = float(ratio)
        except (TypeError, ValueError):
            raise SimDiffError(f"ratio must be a number, got {ratio!r}") from None
        if math.isnan(ratio) or not 0.0 < ratio < 1.0:
            raise SimDiffError(f"ratio must be between 0 and 1 (exclusive), got {ratio}")
        k = count_from_ratio(num_layers, ratio)
    else:
        try:
            k = int(num)
        except (TypeError, ValueError):
            raise SimDiffError(f"number of blocks must be an integer, got {num!r}") from None
        if float(num) != k:
            raise SimDiffError(f"number of blocks must be an integer, got {num!r}")
        if k < 1:
            raise SimDiffError(f"number of blocks to remove must be at least 1, got {k}")
    if k >= num_layers:
        raise SimDiffError(f"removing {k} of {num_layers} blocks would leave none; remove at most {num_layers - 1}")
    return k


def candidates(num_layers: int, keep_first: bool = True, keep_last: bool = True) -> list[int]:
    lo = 1 if keep_first else 0
    hi = num_layers - 1 if keep_last else num_layers
    return list(range(lo, hi))


def cosine_tiebreak(layers) -> np.ndarray | None:
    """The cosine criterion's importance (-cosine), the tie-break for every ranking (None without it).

    Ties in a fused importance are common with ``norm="robust"`` (z-scores clipped at +-3 all map to
    0 or 1); broken by block index they would make SimDiff at alpha = 1 differ from cosine-only. Broken
    by the cosine order, alpha = 1 is exactly the cosine plan for every normalisation (both are
    monotone in BI = 1 - cosine), which is what "auto alpha is never worse than cosine" rests on.
    """
    if not layers or any("cosine" not in l for l in layers):
        return None
    return -np.array([float(l["cosine"]) for l in layers], dtype=np.float64)


def select_lowest(imp, k: int, keep_first: bool = True, keep_last: bool = True, tiebreak=None) -> list[int]:
    """Indices of the ``k`` lowest-importance blocks among those allowed.

    Ties go by ``tiebreak`` (lower first; pass ``cosine_tiebreak(scores.layers)``), then lower index.
    """
    imp = np.asarray(imp, dtype=np.float64)
    allowed = candidates(len(imp), keep_first, keep_last)
    if k > len(allowed):
        locked = [n for n, flag in (("first", keep_first), ("last", keep_last)) if flag]
        raise SimDiffError(
            f"cannot remove {k} blocks with the {' and '.join(locked)} block locked: only {len(allowed)} removable")
    vals = np.nan_to_num(imp[allowed], nan=np.inf)
    tb = (np.zeros(len(allowed)) if tiebreak is None
          else np.nan_to_num(np.asarray(tiebreak, dtype=np.float64)[allowed], nan=np.inf))
    order = sorted(range(len(allowed)), key=lambda j: (vals[j], tb[j], allowed[j]))
    return sorted(allowed[j] for j in order[:k])


def make_plan(scores, criterion: str = "simdiff", ratio=None, num=None, alpha: float = 0.5,
              keep_first: bool = True, keep_last: bool = True, **fusion) -> Plan:
    """One-shot plan: remove the k lowest-importance blocks by ``criterion`` (no forward pass).

    Ties in importance go to the cosine order (``cosine_tiebreak``), then to the lower index.
    """
    if criterion not in CRITERIA:
        raise SimDiffError(f"unknown criterion '{criterion}'; choose from {', '.join(CRITERIA)}")
    L = scores.num_layers
    k = num_from_ratio(L, ratio, num)
    imp = scores.importance(criterion, alpha=alpha, **fusion)
    removed = select_lowest(imp, k, keep_first, keep_last, tiebreak=cosine_tiebreak(scores.layers))
    options = {n: v for n, v in fusion.items() if n != "beta"}
    return Plan(
        model=scores.model, num_layers=L, removed_layers=removed, method="oneshot", criterion=criterion,
        alpha=alpha if criterion == "simdiff" else None, ratio=k / L if ratio is None else float(ratio),
        keep_first=keep_first, keep_last=keep_last, scores=[float(v) for v in imp],
        calibration=dict(scores.calibration), beta=None if fusion.get("beta") is None else float(fusion["beta"]),
        num=k if ratio is None else None, options=options,
    )
