"""One self-contained HTML report (works offline) and a publication figure.

    from simdiff_core.export.report import write_report, write_figure
    write_report("report.html", scores, damage=dmg, plan=plan,
                 ppl={"before": 18.2, "after": 27.5, "protocol": "WikiText-2 test, 8 x 512"})
    write_figure("fig.pdf", scores, damage=dmg, plan=plan)   # PNG/PDF/SVG via kaleido + Chromium

The HTML embeds the plotly.js bundle once (inline, ~4.5 MB) and every figure as a ``plotly-graph-div``:
no network is needed to open it. Sections: model and calibration protocol, per-block curves
(cosine, MSSD, MASD, SimDiff, measured damage), cross-layer heatmaps, criterion/damage agreement
table and scatter plots, multi-block set damage, the chosen plan (kept ranges, mergekit YAML) and
perplexity before/after. Sections whose inputs are missing are left out and say how to add them.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path

from ..common.errors import SimDiffError
from ..common.fileio import atomic_write_bytes, atomic_write_text
from ..pruning.plan import count_from_ratio

FIGURE_FORMATS = ("png", "pdf", "svg")


def _esc(v) -> str:
    return html.escape(str(v))


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return _esc(v)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(pairs: list[tuple[str, object]]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt(v)}</td></tr>"
                                          for k, v in pairs if v not in (None, "")) + "</table>"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
thead th{background:#f4f4f4}table.kv th{background:#fafafa;font-weight:600}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em}.note{color:#666;font-size:.9em}
.good{color:#2a7a2a}.bad{color:#b22}
"""


def build_report_html(scores, damage=None, plan=None, ppl=None, agreement: list | None = None,
                      sets: list | None = None, alpha: float | None = None, ratio=None,
                      title: str | None = None, sensitivity=None) -> tuple[str, int]:
    """The report as an HTML string, and the number of plotly figures it embeds.

    ``agreement`` defaults to ``agreement.agreement_table`` (when ``damage`` is given); ``sets`` is
    the output of ``agreement.set_damage``; ``ppl`` is a ``records.Evaluation`` (or a dict it reads:
    {"before", "after", "protocol"} or {"ppl_dense", "ppl_pruned", "protocol"}). Where the scores carry
    per-window statistics, the report adds 90 % bootstrap bands per block and the plan's stability
    (``analysis/uncertainty.py``); ``sensitivity`` (a ``pruning.sensitivity.Sensitivity``) adds the calibration-sensitivity
    section.
    """
    from ..common.records import Evaluation

    ev = Evaluation.coerce(ppl)
    from .. import __version__
    from ..analysis.score import protocol as score_protocol
    from ..evaluation.agreement import agreement_table
    from .figures import agreement_grid, curves_figure, matrix_figures, set_damage_figure

    if damage is not None and damage.num_layers != scores.num_layers:
        raise SimDiffError(f"damage is for {damage.num_layers} blocks but the scores have {scores.num_layers}")
    if plan is not None:
        plan.validate(scores.num_layers)
    if alpha is None:
        alpha = plan.alpha if plan is not None and plan.alpha is not None else scores.meta.get("simdiff_alpha", 0.5)
    if ratio is None and plan is not None:
        ratio = plan.num_removed / plan.num_layers
    removed = plan.removed_layers if plan is not None else None

    figs = [curves_figure(scores, damage, alpha=alpha, removed=removed)]
    heatmaps = matrix_figures(scores)
    figs += heatmaps
    if damage is not None:
        if agreement is None:
            k = count_from_ratio(scores.num_layers, ratio) if ratio else None
            agreement = agreement_table(scores, damage, alpha=alpha, num=k) if k and k < scores.num_layers \
                else agreement_table(scores, damage, alpha=alpha)
        figs.append(agreement_grid(scores, damage, alpha=alpha))
    if sets:
        figs.append(set_damage_figure(sets))
    divs = []
    for n, f in enumerate(figs):
        # The plotly.js bundle goes in once, inline, so the file opens offline.
        divs.append(f.to_html(full_html=False, include_plotlyjs=(n == 0), config={"displaylogo": False},
                              default_width="100%"))
    it = iter(divs)

    cal = scores.calibration or {}
    meta = scores.meta or {}
    title = title or f"SimDiff Explorer report: {scores.model}"
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p class='note'>Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by simdiff_core "
             f"{_esc(__version__)}. Self-contained: opens offline.</p>",
             "<h2>Model and calibration protocol</h2>",
             _kv([("model", scores.model), ("blocks", scores.num_layers), ("family", meta.get("family")),
                  ("device / dtype", f"{meta.get('device', '?')} / {meta.get('dtype', '?')}"),
                  ("calibration text", cal.get("description") or cal.get("source")),
                  ("windows x tokens", f"{cal.get('samples', '?')} x {cal.get('seq_len', '?')}"),
                  ("calibration tokens", cal.get("tokens")),
                  ("scoring protocol", score_protocol(cal)),
                  ("scoring time (s)", meta.get("seconds")),
                  ("cross-layer matrices", (scores.matrices or {}).get("method"))])]
    if damage is not None:
        dcal = damage.calibration or {}
        parts.append(_kv([("damage calibration", f"{dcal.get('source', cal.get('source', '?'))}: "
                                                 f"{dcal.get('samples', '?')} x {dcal.get('seq_len', '?')} tokens"),
                          ("dense calibration loss / ppl", f"{damage.dense_loss:.4f} / {damage.dense_ppl:.3f}"),
                          ("damage method", damage.meta.get("method")),
                          ("block executions (cached vs naive)",
                           f"{damage.meta.get('block_executions', '?')} vs {damage.meta.get('naive_block_executions', '?')}"),
                          ("damage time (s)", damage.meta.get("seconds"))]))
    parts += ["<h2>Per-block curves</h2>",
              "<p class='note'>Cosine: high = block barely rotates the residual stream. MSSD/MASD: size of the "
              f"block's update (log scale). SimDiff: fused importance at α = {alpha:g} (higher = keep)."
              + (" Δ loss: measured calibration-loss increase when only that block is removed." if damage else
                 " Add measured damage with <code>python -m simdiff_core damage</code>.")
              + (" Red crosses: blocks removed by the plan." if removed else "") + "</p>",
              next(it)]
    if heatmaps:
        parts.append("<h2>Cross-layer heatmaps</h2>")
        parts += [next(it) for _ in heatmaps]
    if damage is not None:
        has_k = agreement and "k" in agreement[0]
        parts.append("<h2>Criterion agreement with measured damage</h2>")
        parts.append("<p class='note'>Correlation of each criterion's importance (higher = keep) with the measured "
                     "loss increase (+1 = perfect proxy). Top-k: of the k blocks the criterion would remove, how "
                     "many are among the k least damaging single removals.</p>")
        header = ["criterion", "Spearman ρ", "Kendall τ-b"] + (["top-k overlap", "criterion removes",
                                                                 "least damaging"] if has_k else [])
        rows = []
        for r in agreement:
            row = [r["criterion"], r["spearman"], r["kendall"]]
            if has_k:
                row += [f"{r['topk_overlap']}/{r['k']}", str(r["criterion_blocks"]), str(r["damage_blocks"])]
            rows.append(row)
        parts.append(_table(header, rows))
        parts.append(next(it))
    if sets:
        parts.append("<h2>Multi-block damage vs single-block prediction</h2>")
        parts.append("<p class='note'>Measured loss increase when the whole set is removed at once, next to the sum "
                     "of single-block increases. Interaction &gt; 0: removing the blocks together hurts more than "
                     "their single damages predict.</p>")
        parts.append(_table(["set", "removed", "ppl", "Δ loss measured", "Δ loss additive", "interaction"],
                            [[s["label"], str(s["removed"]), s["ppl"], s["delta_loss"], s["additive_delta"],
                              s["interaction"]] for s in sets]))
        parts.append(next(it))
    parts += _insight_sections(scores, plan, sensitivity)
    parts.append("<h2>Chosen plan</h2>")
    if plan is not None:
        parts.append(_kv([("method", plan.method), ("criterion", plan.criterion), ("alpha", plan.alpha),
                          ("removed blocks", str(plan.removed_layers)),
                          ("kept", f"{len(plan.kept_layers)} of {plan.num_layers} blocks"),
                          ("kept ranges [start, end)", ", ".join(f"[{a}, {b})" for a, b in plan.kept_ranges()))]))
        parts.append("<pre>" + _esc(plan.to_mergekit_yaml()) + "</pre>")
    else:
        parts.append("<p class='note'>No plan given (<code>--plan plan.json</code>).</p>")
    parts.append("<h2>Perplexity before / after</h2>")
    if ev is not None and ev.ppl_dense is not None:
        before, after = ev.ppl_dense, ev.ppl_pruned
        rows = [("dense", before)]
        if after is not None:
            rows.append(("pruned", after))
            rows.append(("ratio pruned / dense", after / before if before else None))
        parts.append(_kv(rows + [("protocol", ev.protocol)]))
        parts += _honest_section(ev)
    else:
        parts.append("<p class='note'>Not measured (give --model and --plan to the report command, or "
                     "--ppl-before/--ppl-after).</p>")
    parts.append("<h2>Raw data</h2><details><summary>scores, damage and plan as JSON</summary><pre>"
                 + _esc(json.dumps({"scores_layers": scores.layers,
                                    "damage": damage.to_dict() if damage is not None else None,
                                    "plan": plan.to_dict() if plan is not None else None}, indent=1))
                 + "</pre></details>")
    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
           f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")
    return doc, len(figs)


def _honest_section(ev) -> list[str]:
    """Recovered model beside the dense model given the same LoRA, on the held-out and a second-domain
    text, with the verdict's flags (``evaluation/honest.py``); empty when nothing was recovered."""
    if ev.ppl_recovered is None and ev.ppl_dense_lora is None and not ev.second_domain:
        return []
    sd = ev.second_domain or {}
    rows = [[name, a, sd.get(key)] for name, a, key in (
        ("dense", ev.ppl_dense, "ppl_dense"), ("pruned", ev.ppl_pruned, "ppl_pruned"),
        ("pruned + LoRA", ev.ppl_recovered, "ppl_recovered"),
        ("dense + same LoRA (reference)", ev.ppl_dense_lora, "ppl_dense_lora")) if a is not None or sd.get(key)]
    out = ["<h2>Recovery: honest comparison</h2>",
           "<p class='note'>The recovered model next to the dense model given the same LoRA run on the same text, "
           f"on the held-out text and on a text from another domain ({_esc(sd.get('protocol', 'not measured'))}).</p>",
           _table(["model", "held-out ppl", "second-domain ppl"], rows)]
    h = ev.honesty or {}
    if h.get("headline"):
        out.append(f"<p><b>{_esc(h['headline'])}</b></p>")
    if h.get("messages"):
        out.append("<ul>" + "".join(f"<li class='bad'><code>{_esc(c)}</code>: {_esc(m)}</li>"
                                    for c, m in zip(h.get("flags", []), h["messages"])) + "</ul>")
    return out


def _insight_sections(scores, plan, sens) -> list[str]:
    """Uncertainty (bands, plan stability) and calibration sensitivity, as HTML tables (no extra figures)."""
    from ..analysis.metrics import CRITERIA
    from ..analysis.uncertainty import DEFAULT_BOOT, DEFAULT_SEED, bands, has_windows
    from ..pruning.stability import plan_stability

    out = []
    if has_windows(scores):
        fused = {"alpha": plan.alpha if plan is not None and plan.alpha is not None else 0.5}
        b = bands(scores, fused=fused)
        keys = ("cosine", "mssd_rel", "masd_rel", "simdiff")
        out.append("<h2>Uncertainty: bootstrap bands</h2>")
        out.append(f"<p class='note'>{b['_level']:.0%} percentile-bootstrap intervals over the "
                   f"{len(scores.windows['tokens'])} calibration windows ({DEFAULT_BOOT} resamples of whole windows, "
                   f"seed {DEFAULT_SEED}); SimDiff at α = {fused['alpha']:g}. Value [low, high].</p>")
        rows = [[i] + [f"{b[k]['value'][i]:.4g} [{b[k]['lo'][i]:.4g}, {b[k]['hi'][i]:.4g}]" for k in keys]
                for i in range(scores.num_layers)]
        out.append(_table(["block"] + list(keys), rows))
        if plan is not None and plan.criterion in CRITERIA and plan.method in (None, "oneshot"):
            fusion = {k: v for k, v in (plan.options or {}).items() if k in ("scale_free", "norm")}
            if plan.beta is not None:
                fusion["beta"] = plan.beta
            stab = plan_stability(scores, plan.criterion, num=plan.num_removed,
                                  alpha=plan.alpha if plan.alpha is not None else 0.5, keep_first=plan.keep_first,
                                  keep_last=plan.keep_last, **fusion)
            out.append("<h2>Plan stability</h2>")
            verdict = ("<span class='good'>stable</span>" if stab.stable else
                       f"<span class='bad'>unstable: blocks {stab.unstable} are removed in fewer than "
                       f"{stab.threshold:.0%} of the resamples</span>")
            out.append(f"<p class='note'>How often each block is removed when the same plan is made from a bootstrap "
                       f"resample of the windows ({stab.n_boot} resamples, seed {stab.seed}). Verdict: {verdict}.</p>")
            shown = stab.removed + stab.contenders
            out.append(_table(["block", "in plan", "removed in"],
                              [[i, "yes" if i in stab.removed else "no", f"{stab.frequency[i]:.0%}"] for i in shown]))
    if sens is not None:
        out.append("<h2>Calibration sensitivity</h2>")
        out.append("<p class='note'>The same model scored on several calibration texts: Spearman ρ between the "
                   "per-block importance rankings and the overlap of the blocks each text would remove.</p>")
        out.append(_table(["source A", "source B", "Spearman ρ", "common removed", "Jaccard"],
                          [[r["source A"], r["source B"], r["spearman_rho"], r["common_removed"], r["jaccard"]]
                           for r in sens.pairs_table()]))
        out.append(_table(["source", "removed blocks"], [[n, str(sens.removed[n])] for n in sens.names]))
        flips = "; ".join(f"block {k}: {', '.join(v)}" for k, v in sens.flips.items()) or "none: all sources agree"
        out.append(f"<p>Blocks that flip (removed by some sources only): {_esc(flips)}</p>")
    return out


def write_report(path, scores, **kw) -> dict:
    """Write the HTML report atomically; returns {"out", "figures", "bytes"}."""
    doc, n = build_report_html(scores, **kw)
    atomic_write_text(Path(path), doc)
    _share(Path(path))
    return {"out": str(path), "figures": n, "bytes": len(doc.encode("utf-8"))}


def _share(path: Path) -> None:
    """mkstemp files are private (0600); a report is meant to be shared, so honour the umask instead."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass


def main_figure(scores, damage=None, plan=None, alpha: float | None = None):
    from .figures import curves_figure

    if alpha is None:
        alpha = plan.alpha if plan is not None and plan.alpha is not None else scores.meta.get("simdiff_alpha", 0.5)
    return curves_figure(scores, damage, alpha=alpha, removed=plan.removed_layers if plan else None,
                         publication=True)


def figure_bytes(fig, fmt: str, scale: float = 2.0) -> bytes:
    """Render a plotly figure with kaleido (needs Chrome/Chromium; BROWSER_PATH may point to it)."""
    if fmt not in FIGURE_FORMATS:
        raise SimDiffError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got '{fmt}'")
    if not os.environ.get("BROWSER_PATH"):
        for cand in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
            if os.path.exists(cand):
                os.environ["BROWSER_PATH"] = cand  # kaleido/choreographer look here first
                break
    try:
        return fig.to_image(format=fmt, scale=scale if fmt == "png" else 1)
    except Exception as e:  # kaleido raises assorted errors when no browser can start
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SimDiffError(f"cannot render the figure with kaleido ({first}); install Chromium "
                           "(apt-get install chromium) or set BROWSER_PATH to a Chrome binary") from None


def write_figure(path, scores, damage=None, plan=None, alpha: float | None = None) -> dict:
    """Publication-style main figure (curves + damage, removed blocks marked) as PNG/PDF/SVG."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise SimDiffError(f"figure file must end in .png, .pdf or .svg, got '{path.name}'")
    if not path.parent.exists():
        raise SimDiffError(f"output directory does not exist: {path.parent}")
    data = figure_bytes(main_figure(scores, damage, plan, alpha), fmt)
    atomic_write_bytes(path, data)
    _share(path)
    return {"figure": str(path), "figure_bytes": len(data)}
