"""Shared test helpers that are not tests: tiny models, the Streamlit server driver, builders.

Test modules import from here (``from tests.support.tiny import tiny_lm``), never from each other;
fixtures live in ``tests/conftest.py`` (all folders) or a folder's own ``conftest.py``.
"""
