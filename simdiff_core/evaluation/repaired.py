"""The guard on a repair: calibration *and* held-out perplexity, pruned vs repaired, and an honest verdict.

    from simdiff_core.evaluation.repaired import evaluate_repair
    ev = evaluate_repair(rep, pruned, repaired, calib_ids, held_ids, held_protocol="WikiText-2 test; 8 x 512")
    ev["improves_held_out"], ev["verdict"]     # also stored in rep.evaluation (and so in rep.to_dict())

Why: a repair is fitted on the calibration text, so its calibration perplexity improves almost by
construction. Only the held-out number says whether the model got better. A repair that raises
held-out perplexity is flagged (``improves_held_out = False``) and worded as a regression, never
as an improvement. Cost: four perplexity passes (two models x two window sets).
"""

from __future__ import annotations

from .evaluate import perplexity


def evaluate_repair(rep, pruned, repaired, calib_ids, held_ids, held_protocol: str = "", batch_size: int = 2,
                    progress=None) -> dict:
    """Perplexity of ``pruned`` and ``repaired`` on the calibration and held-out windows; sets ``rep.evaluation``."""
    out = {}
    for k, (name, ids) in enumerate((("calibration", calib_ids), ("held_out", held_ids))):
        row = {}
        for j, (which, model) in enumerate((("pruned", pruned), ("repaired", repaired))):
            if progress is not None:
                progress((2 * k + j) / 4, f"repair check: {which} model on {name.replace('_', '-')} text")
            row[which] = float(perplexity(model, ids, batch_size=batch_size)["ppl"])
        row["windows"], row["seq_len"] = int(ids.shape[0]), int(ids.shape[1])
        out[name] = row
    out["calibration"]["protocol"] = "the repair's own calibration windows (fitted on them: optimistic)"
    out["held_out"]["protocol"] = held_protocol
    out.update(verdict_of(out))
    rep.evaluation = out
    return out


def verdict_of(ev: dict) -> dict:
    """``improves_held_out`` and a one-line verdict from ``{"calibration": {...}, "held_out": {...}}``."""
    h, c = ev["held_out"], ev["calibration"]
    better = h["repaired"] < h["pruned"]
    if better:
        text = (f"repair lowers held-out perplexity {h['pruned']:.2f} → {h['repaired']:.2f} "
                f"(×{h['repaired'] / h['pruned']:.2f}); calibration {c['pruned']:.2f} → {c['repaired']:.2f}")
    else:
        text = (f"NOT an improvement: repair raises held-out perplexity {h['pruned']:.2f} → {h['repaired']:.2f} "
                f"(calibration {c['pruned']:.2f} → {c['repaired']:.2f} only because it was fitted there); "
                "export the unrepaired model")
    return {"improves_held_out": bool(better), "verdict": text}
