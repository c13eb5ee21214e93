"""The time-left text of streamed progress bars (common/progress.with_eta): elapsed / done x still to do."""

from simdiff_core.common.progress import eta_text, with_eta


def test_eta_from_the_measured_time_per_unit():
    now = [100.0]
    seen = []
    p = with_eta(lambda f, m: seen.append((f, m)), clock=lambda: now[0])
    p(0.0, "block 0/8")
    now[0] = 130.0  # 2 of 8 blocks took 30 s: 6 more take 90 s
    p(0.25, "block 2/8")
    now[0] = 250.0  # 6 of 8 in 150 s: 50 s left
    p(0.75, "block 6/8")
    assert seen == [(0.0, "block 0/8 · estimating…"), (0.25, "block 2/8 · ~1 min 30 s left"),
                    (0.75, "block 6/8 · ~50 s left")]


def test_eta_text_units():
    assert eta_text(None) == "estimating…" and eta_text(-1) == "estimating…"
    assert eta_text(59.4) == "~59 s left" and eta_text(3725) == "~1 h 2 min left"
