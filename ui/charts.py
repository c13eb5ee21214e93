"""Alias of ``simdiff_core.export.figures``, which builds every plotly figure (the app's, the report's, the
CLI's): ``from ui import charts`` gets that very module (same functions, same caches), so code written
against ``ui.charts`` keeps working. Edit figures in simdiff_core/export/figures.py.
"""

import sys

from simdiff_core.export import figures as _figures

sys.modules[__name__] = _figures
