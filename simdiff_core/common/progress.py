"""The progress callback every long-running library function takes: ``progress(fraction, message)``
with ``fraction`` in [0, 1] and a short message for the user."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[float, str], None]


def eta_text(seconds_left: float | None) -> str:
    """'~2 min 5 s left' (None or negative: 'estimating…'): what a progress bar appends."""
    if seconds_left is None or seconds_left < 0 or seconds_left != seconds_left:
        return "estimating…"
    s = int(round(seconds_left))
    if s >= 3600:
        return f"~{s // 3600} h {s % 3600 // 60} min left"
    if s >= 60:
        return f"~{s // 60} min {s % 60} s left"
    return f"~{s} s left"


def with_eta(progress: Progress, clock=None) -> Progress:
    """Wrap ``progress`` so every message ends with the time left, from the measured time per unit of
    progress so far (a streamed pass reports per block and batch: elapsed / done x still to do).

    Why the first update only says 'estimating…': nothing has been timed before one unit is done.
    """
    import time

    clock = clock or time.perf_counter
    t0 = clock()

    def wrapped(f: float, msg: str) -> None:
        f = min(max(float(f), 0.0), 1.0)
        left = (clock() - t0) / f * (1.0 - f) if f > 0 else None
        progress(f, f"{msg} · {eta_text(left)}")

    return wrapped
