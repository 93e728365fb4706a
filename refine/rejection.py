"""Unweighting a weighted sample (LaSeR paper section 3: rejection sampling of (z, w(z)))."""
from __future__ import annotations

import torch
from torch import Tensor


def rejection_sample(
    points: Tensor, weights: Tensor, w_max: float | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Keep each point with probability min(1, w / w_max) (``w_max`` defaults to max w).

    The kept points follow p(x) w(x) / Z exactly when w <= w_max everywhere; a smaller ``w_max``
    trades that exactness for efficiency (weights above it are effectively capped).
    """
    if points.shape[0] != weights.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {weights.shape[0]} weights")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    w_max = float(weights.max()) if w_max is None else float(w_max)
    u = torch.rand(weights.shape, generator=generator, dtype=torch.float64)
    return points[u * w_max < weights.double()]


def resample(
    points: Tensor, weights: Tensor, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` points drawn with replacement with probability proportional to ``weights``.

    Used to start HMC chains in proportion to the weighted latent density, so that well-separated
    modes (which the chains cannot cross) get the right share of chains.
    """
    idx = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
    return points[idx]
