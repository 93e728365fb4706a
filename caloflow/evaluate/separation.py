"""Separation power between two histograms (CaloFlow paper section 5; docs/physics.md section 7)."""

from __future__ import annotations

import numpy as np


def histogram_separation(h1: np.ndarray, h2: np.ndarray) -> float:
    """S = 1/2 sum_i (h1_i - h2_i)^2 / (h1_i + h2_i), with both histograms normalised to sum 1.

    0 for identical shapes, 1 for histograms with no bin in common. Empty bins in both are skipped.
    """
    h1 = np.asarray(h1, dtype=np.float64)
    h2 = np.asarray(h2, dtype=np.float64)
    if h1.shape != h2.shape:
        raise ValueError(f"histograms have different shapes {h1.shape} and {h2.shape}")
    s1, s2 = h1.sum(), h2.sum()
    if s1 <= 0 or s2 <= 0:
        raise ValueError("cannot compare an empty histogram")
    h1, h2 = h1 / s1, h2 / s2
    total = h1 + h2
    used = total > 0
    return float(0.5 * np.sum((h1[used] - h2[used]) ** 2 / total[used]))


def separation_power(
    a: np.ndarray, b: np.ndarray, bins: int | np.ndarray = 50, range=None
) -> float:
    """Separation power of the histograms of two samples, on common bins.

    Args:
        a, b: 1D samples of one feature.
        bins: number of bins or explicit edges (as ``numpy.histogram``).
        range: (low, high); by default the union of both samples' finite values.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if np.ndim(bins) == 0 and range is None:
        both = np.concatenate([a, b])
        lo, hi = float(both.min()), float(both.max())
        range = (lo, hi if hi > lo else lo + 1.0)
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=bins, range=range)
    return histogram_separation(np.histogram(a, edges)[0], np.histogram(b, edges)[0])


__all__ = ["histogram_separation", "separation_power"]
