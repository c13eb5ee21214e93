"""The plotly figures an AppTest page shows, in page order, whichever element draws them.

``st.plotly_chart`` elements carry their spec in ``proto.spec``; the charts a slider move changes are
drawn by ``ui.live_chart`` (a ``bidi_component``, updated in place in the browser) and carry it inside
their JSON data. Tests read both the same way, so they check what the page sends either way.
"""

from __future__ import annotations

import json


def _walk(node):
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield child
            yield from _walk(child)


def figures(at) -> list[dict]:
    out = []
    for el in _walk(at._tree):
        kind = getattr(el, "type", None)
        if kind == "plotly_chart":
            out.append(json.loads(el.proto.spec))
        elif kind == "bidi_component" and el.proto.component_name == "simdiff_live":
            data = json.loads(el.proto.json)
            if "spec" in data:
                out.append(json.loads(data["spec"]))
    return out


def html_bodies(at) -> str:
    """All HTML a page shows: ``st.html`` bodies and the live block stack's (``ui.live_chart.stack_live``)."""
    out = []
    for el in _walk(at._tree):
        kind = getattr(el, "type", None)
        if kind == "html":
            out.append(el.proto.body)
        elif kind == "bidi_component" and el.proto.component_name == "simdiff_live":
            data = json.loads(el.proto.json)
            if "html" in data:
                out.append(data["html"])
    return "".join(out)
