"""The leave-one-out damage record: what ``damage.measure_damage`` returns, saves and reads back.

    from simdiff_core.evaluation.damage_record import Damage    # also importable from .damage
    dmg = Damage.load("damage.json")               # a clear SimDiffError on a malformed/inconsistent file
    dmg.deltas()                                   # loss increase per block (the "ground truth" curve)
    scores = dmg.attach(scores)                    # copies damage_loss/damage_ppl/damage_delta into scores.layers
    Damage.from_scores(scores)                     # ... and back (None when the scores carry no damage)

Why a module of its own: the record travels further than the computation (CLI ``ground-truth``, the
report, the agreement table, saved Scores files, the app's session) and none of those needs torch
or the evaluator to read one. Cost: plain Python over L dicts; nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..common.errors import SimDiffError
from ..common.records import JsonRecord


@dataclass
class Damage(JsonRecord):
    """Measured leave-one-out damage of every block on one calibration set."""

    KIND = "damage"

    model: str
    num_layers: int
    dense_loss: float          # mean NLL per predicted token of the full model
    dense_ppl: float
    layers: list[dict]         # [{index, loss, ppl, delta_loss, delta_ppl}] with block `index` removed
    calibration: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def deltas(self) -> list[float]:
        """Loss increase caused by removing each block (higher = the block matters more)."""
        return [float(l["delta_loss"]) for l in self.layers]

    def losses(self) -> list[float]:
        return [float(l["loss"]) for l in self.layers]

    def ppls(self) -> list[float]:
        return [float(l["ppl"]) for l in self.layers]

    def attach(self, scores):
        """A copy of ``scores`` whose layers carry ``damage_loss``, ``damage_ppl``, ``damage_delta``."""
        from ..analysis.score import Scores

        if scores.num_layers != self.num_layers:
            raise SimDiffError(f"damage is for {self.num_layers} blocks but the scores have {scores.num_layers}")
        layers = [dict(s, damage_loss=d["loss"], damage_ppl=d["ppl"], damage_delta=d["delta_loss"])
                  for s, d in zip(scores.layers, self.layers)]
        meta = dict(scores.meta, damage={"dense_loss": self.dense_loss, "dense_ppl": self.dense_ppl,
                                         "calibration": self.calibration})
        return Scores(scores.model, scores.num_layers, layers, scores.matrices, scores.calibration, meta)

    @classmethod
    def from_scores(cls, scores) -> "Damage | None":
        """The damage stored in ``scores`` by ``attach`` (None when there is none)."""
        if not scores.layers or "damage_loss" not in scores.layers[0]:
            return None
        info = scores.meta.get("damage", {})
        dense = float(info.get("dense_loss", float("nan")))
        layers = [{"index": l["index"], "loss": float(l["damage_loss"]), "ppl": float(l["damage_ppl"]),
                   "delta_loss": float(l.get("damage_delta", float(l["damage_loss"]) - dense)),
                   "delta_ppl": float(l["damage_ppl"]) - float(info.get("dense_ppl", float("nan")))}
                  for l in scores.layers]
        return cls(scores.model, scores.num_layers, dense, float(info.get("dense_ppl", float("nan"))), layers,
                   info.get("calibration", {}), {})

    @classmethod
    def from_dict(cls, d: dict) -> "Damage":
        try:
            n = int(d["num_layers"])
            layers = [dict(l) for l in d["layers"]]
            if len(layers) != n or any(int(l["index"]) != i for i, l in enumerate(layers)):
                raise SimDiffError("damage file is inconsistent: layer list does not match num_layers")
            for l in layers:
                for k in ("loss", "ppl", "delta_loss"):
                    l[k] = float(l[k])
            return cls(d.get("model", "?"), n, float(d["dense_loss"]), float(d["dense_ppl"]), layers,
                       d.get("calibration", {}), d.get("meta", {}))
        except SimDiffError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise SimDiffError(f"malformed damage file: missing or bad field {e}") from None
