"""Streamlit glue for SimDiff Explorer: session state and caches (``state``), plotly charts (``charts``)."""
