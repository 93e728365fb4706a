"""Distances between 2D samples on a fixed histogram grid (LaSeR paper section 4.2).

Both scores compare the histograms of two samples, normalised to sum 1, on the same grid
(``bins`` and ``range`` exactly as in :func:`numpy.histogram2d`):

- EMD (eq. 5): optimal-transport cost with POT's exact solver ``ot.emd2``; the ground cost is the
  Euclidean distance between bin centres in data units. Only bins that are non-empty in either
  histogram enter the cost matrix, so a 100 x 100 grid stays tractable.
- JSD (eq. 4): Jensen-Shannon divergence with natural logarithms (0 <= JSD <= ln 2).

The error floor of a score is its value between two independent truth samples of the same size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import ot

Range = Sequence[Sequence[float]]


def histogram2d(
    x: np.ndarray, bins: int | Sequence[int] = 100, range: Range | None = None, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D histogram of points ``x`` (N, 2) normalised to sum 1 over the grid.

    Points outside ``range`` are dropped before normalising (as with ``numpy.histogram2d``).
    Returns ``(h, xedges, yedges)``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"expected points of shape (N, 2), got {x.shape}")
    h, xe, ye = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=range, weights=weights)
    total = h.sum()
    if total <= 0:
        raise ValueError("no points (or no weight) inside the histogram range")
    return h / total, xe, ye


def _centres(edges: np.ndarray) -> np.ndarray:
    return 0.5 * (edges[1:] + edges[:-1])


def emd_hist(p: np.ndarray, q: np.ndarray, xedges: np.ndarray, yedges: np.ndarray) -> float:
    """EMD between two normalised 2D histograms on the same grid (data units, eq. 5)."""
    keep = (p > 0) | (q > 0)
    ix, iy = np.nonzero(keep)
    centres = np.stack([_centres(xedges)[ix], _centres(yedges)[iy]], axis=1)
    cost = ot.dist(centres, centres, metric="euclidean")
    a = np.ascontiguousarray(p[keep], dtype=np.float64)
    b = np.ascontiguousarray(q[keep], dtype=np.float64)
    # renormalise against round-off so that POT sees exactly balanced marginals
    return float(ot.emd2(a / a.sum(), b / b.sum(), cost, numItermax=10_000_000))


def jsd_hist(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) between two normalised histograms (eq. 4)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0)
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0)
    return float(0.5 * kl_p.sum() + 0.5 * kl_q.sum())


def emd2d(
    a: np.ndarray,
    b: np.ndarray,
    bins: int | Sequence[int] = 100,
    range: Range | None = None,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
) -> float:
    """EMD between the 2D histograms of samples ``a`` and ``b`` (N, 2), in data units."""
    p, xe, ye = histogram2d(a, bins, range, weights_a)
    q, _, _ = histogram2d(b, (xe, ye), None, weights_b)
    return emd_hist(p, q, xe, ye)


def jsd2d(
    a: np.ndarray,
    b: np.ndarray,
    bins: int | Sequence[int] = 100,
    range: Range | None = None,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
) -> float:
    """Jensen-Shannon divergence (nats) between the 2D histograms of samples ``a`` and ``b``."""
    p, xe, ye = histogram2d(a, bins, range, weights_a)
    q, _, _ = histogram2d(b, (xe, ye), None, weights_b)
    return jsd_hist(p, q)


def scores(
    truth: np.ndarray,
    sample: np.ndarray,
    bins: int | Sequence[int] = 100,
    range: Range | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """``{"emd", "jsd"}`` of ``sample`` (optionally weighted) against ``truth``, histogrammed once."""
    p, xe, ye = histogram2d(truth, bins, range)
    q, _, _ = histogram2d(sample, (xe, ye), None, weights)
    return {"emd": emd_hist(p, q, xe, ye), "jsd": jsd_hist(p, q)}
