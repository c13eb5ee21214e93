"""The guard on a repair: calibration *and* held-out perplexity, pruned vs repaired, and an honest verdict.

    from simdiff_core.evaluation.repaired import evaluate_repair
    ev = evaluate_repair(rep, pruned, repaired, calib_ids, held_ids, held_protocol="WikiText-2 test; 8 x 512")
    ev["improves_held_out"], ev["verdict"]     # also stored in rep.evaluation (and so in rep.to_dict())

Why: a repair is fitted on the calibration text, so its calibration perplexity improves almost by
construction. Only the held-out number says whether the model got better. A repair that raises
held-out perplexity is flagged (``improves_held_out = False``) and worded as a regression, never
as an improvement. Held-out text of the *same corpus* still shares its format, so with ``second_ids``
(a text of another domain, e.g. the shipped code sample) the dense, pruned and repaired models are
measured there too (``second_domain``); a repair that raises that perplexity is said so in the verdict
(``improves_second_domain = False``). Measured on SmolLM2 at 8/30 (bench/RESULTS.md): a WikiText-fitted
``ridge`` repair lowers WikiText test perplexity 90.8 → 53.8 and *raises* the code sample's 47.8 → 64.1.
Cost: four perplexity passes (two models x two window sets), three more with ``second_ids``.
"""

from __future__ import annotations

from .evaluate import perplexity


def evaluate_repair(rep, pruned, repaired, calib_ids, held_ids, held_protocol: str = "", batch_size: int = 2,
                    progress=None, second_ids=None, second_protocol: str = "", dense=None) -> dict:
    """Perplexity of ``pruned`` and ``repaired`` on the calibration and held-out windows, and with
    ``second_ids`` of ``dense`` (optional), ``pruned`` and ``repaired`` on that second-domain text;
    sets ``rep.evaluation``."""
    out = {}
    sets = [("calibration", calib_ids, (("pruned", pruned), ("repaired", repaired))),
            ("held_out", held_ids, (("pruned", pruned), ("repaired", repaired)))]
    if second_ids is not None:
        sets.append(("second_domain", second_ids,
                     ((("dense", dense),) if dense is not None else ()) + (("pruned", pruned), ("repaired", repaired))))
    total, done = sum(len(models) for _, _, models in sets), 0
    for name, ids, models in sets:
        row = {}
        for which, model in models:
            if progress is not None:
                progress(done / total, f"repair check: {which} model on {name.replace('_', '-')} text")
            row[which] = float(perplexity(model, ids, batch_size=batch_size)["ppl"])
            done += 1
        row["windows"], row["seq_len"] = int(ids.shape[0]), int(ids.shape[1])
        out[name] = row
    out["calibration"]["protocol"] = "the repair's own calibration windows (fitted on them: optimistic)"
    out["held_out"]["protocol"] = held_protocol
    if second_ids is not None:
        out["second_domain"]["protocol"] = second_protocol
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
    res = {"improves_held_out": bool(better), "verdict": text}
    sd = ev.get("second_domain")
    if sd:
        res["improves_second_domain"] = bool(sd["repaired"] < sd["pruned"])
        if not res["improves_second_domain"]:
            res["verdict"] = text + (f"; but on the second-domain text ({sd.get('protocol') or 'another domain'}) it "
                                     f"raises perplexity {sd['pruned']:.2f} → {sd['repaired']:.2f}: the repair fits "
                                     "the calibration text's domain")
    return res
