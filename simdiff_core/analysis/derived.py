"""Per-block views derived from Scores for display and download: the curve table, outlier blocks, the
PruneMe n-block distance matrix. Pure numpy/pandas; the figures (``export/figures``) and pages use them."""

from __future__ import annotations

import numpy as np
import pandas as pd


def curves_frame(layers: list[dict], simdiff: np.ndarray | None = None, dropped=()) -> pd.DataFrame:
    """The data behind the curve charts (what the CSV download holds)."""
    df = pd.DataFrame(layers).set_index("index")
    if simdiff is not None:
        df["simdiff"] = np.asarray(simdiff, dtype=float)
    df["dropped"] = [i in set(dropped) for i in df.index]
    return df


def outliers(values, factor: float = 5.0) -> list[int]:
    """Blocks far above the rest: value above ``factor`` x the 90th percentile of all blocks (at most 10 %
    of the blocks can be outliers). [] when nothing stands out or the values are not positive."""
    v = np.asarray(values, dtype=float)
    if v.size < 5:
        return []
    p90 = float(np.quantile(v, 0.9))
    if not p90 > 0:
        return []
    return [int(i) for i in np.flatnonzero(v > factor * p90)]


def nblock_angular(angular_boundaries) -> tuple[np.ndarray, list[int], list[int]]:
    """PruneMe view: D[n-1, l] = angular distance across the n blocks starting at l (NaN where l+n > L)."""
    A = np.asarray(angular_boundaries, dtype=float)
    L = A.shape[0] - 1
    D = np.full((L, L), np.nan)
    for n in range(1, L + 1):
        for l in range(0, L - n + 1):
            D[n - 1, l] = A[l, l + n]
    return D, list(range(L)), list(range(1, L + 1))
