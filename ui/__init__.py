"""Streamlit glue for SimDiff Explorer: the session (``state``), the page shell and navigation (``shell``),
the model cache and page guards (``models``), the session's plan (``settings``), calibration (``calibration``),
exports (``exports``), shared widgets (``views``) and the live preview (``live_slider``, ``live_chart``)."""
