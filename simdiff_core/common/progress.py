"""The progress callback every long-running library function takes: ``progress(fraction, message)``
with ``fraction`` in [0, 1] and a short message for the user."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[float, str], None]
