"""Per-block views for display (simdiff_core/analysis/derived.py) against direct computations."""

from __future__ import annotations

import math

import numpy as np

from simdiff_core.analysis.derived import curves_frame, nblock_angular, outliers


def test_outliers_are_blocks_far_above_the_90th_percentile():
    assert outliers([1, 1.1, 0.9, 1.2, 40, 1.0, 0.95, 1.05, 1.1, 1.0]) == [4]
    assert outliers(np.linspace(1, 2, 30)) == []
    assert outliers([0, 0, 0, 0, 0, 5]) == []          # 90th percentile 0: nothing to compare with
    assert outliers([1, 100, 1, 1]) == []              # fewer than 5 blocks


def test_nblock_angular_reads_the_window_l_to_l_plus_n():
    L = 4
    A = [[10 * a + b for b in range(L + 1)] for a in range(L + 1)]   # A[a][b] = 10a + b: readable entries
    D, x, y = nblock_angular(A)
    assert x == [0, 1, 2, 3] and y == [1, 2, 3, 4]
    assert D[0].tolist() == [1, 12, 23, 34]                  # n = 1: A[l][l+1]
    assert D[3][0] == 4 and all(math.isnan(v) for v in D[3][1:])  # n = 4: only the window from 0


def test_curves_frame_marks_the_dropped_blocks():
    layers = [{"index": i, "cosine": 0.9 + i / 100} for i in range(4)]
    df = curves_frame(layers, simdiff=[0.1, 0.2, 0.3, 0.4], dropped=[1, 3])
    assert df["dropped"].tolist() == [False, True, False, True]
    assert df["simdiff"].tolist() == [0.1, 0.2, 0.3, 0.4] and df.loc[2, "cosine"] == 0.92
