"""Unweighting a weighted sample (LaSeR paper section 3: rejection sampling of (z, w(z))), also per condition."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from refine.failures import MethodFailed


def rejection_sample(
    points: Tensor,
    weights: Tensor,
    w_max: float | None = None,
    generator: torch.Generator | None = None,
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


def rejection_sample_conditional(
    propose: Callable[[Tensor], tuple[Tensor, Tensor]],
    weight: Callable[[Tensor, Tensor], Tensor],
    conditions: Tensor,
    w_max: float,
    generator: torch.Generator | None = None,
    max_rounds: int = 1000,
) -> tuple[Tensor, Tensor, float]:
    """One sample of the reweighted density q(z | c) = p(z) w(g(z | c), c) / Z_0(c) per condition.

    For every condition c_i (e.g. a requested incident energy) propose z ~ p(z) with
    ``propose(c) -> (z, x = g(z | c))`` and accept with probability min(1, w(x, c) / w_max), the
    proposal repeated until accepted: the accepted z follow q(z | c_i) exactly where w <= w_max
    (larger weights are effectively capped at w_max). Conditions still waiting are proposed for
    together, one round at a time; a non-finite weight (e.g. of a broken x) is a rejection.

    Args:
        propose: ``c (m, ...) -> (z (m, N), x (m, M))``, one proposal per condition given.
        weight: ``(x, c) -> w (m,)``, w >= 0, on the scale of ``w_max``.
        conditions: (n, ...) one condition per sample wanted.
        w_max: the acceptance bound (> 0).
        generator: draws the uniforms of the accept/reject (``propose`` brings its own randomness).
        max_rounds: refuse (:class:`refine.failures.MethodFailed`, a ``RuntimeError``, with the
            acceptance so far) when a condition has had this many proposals rejected.

    Returns:
        ``(z (n, N), x (n, M), acceptance)``: the accepted points in the order of ``conditions``, and
        the fraction of all proposals that were accepted (n / proposals).
    """
    if not w_max > 0:
        raise ValueError(f"w_max must be > 0, got {w_max}")
    n = len(conditions)
    pending = torch.arange(n)
    z_out: Tensor | None = None
    x_out: Tensor | None = None
    proposals = 0
    for _ in range(max_rounds):
        if len(pending) == 0:
            break
        z, x = propose(conditions[pending])
        w = weight(x, conditions[pending]).detach().double()
        u = torch.rand(w.shape, generator=generator, dtype=torch.float64)
        accept = (u * float(w_max) < w) & torch.isfinite(w)
        proposals += len(pending)
        if z_out is None:
            z_out, x_out = z.new_zeros((n, *z.shape[1:])), x.new_zeros((n, *x.shape[1:]))
        z_out[pending[accept]], x_out[pending[accept]] = z[accept], x[accept]
        pending = pending[~accept]
    if len(pending):
        acceptance = (n - len(pending)) / max(proposals, 1)
        raise MethodFailed(
            f"rejection sampling: {len(pending)} of {n} conditions had all {max_rounds} proposals "
            f"rejected (acceptance {acceptance:.2g}); raise max_rounds or lower w_max",
            acceptance=acceptance,
            conditions_rejected=len(pending),
            conditions=n,
            max_rounds=max_rounds,
        )
    return z_out, x_out, n / max(proposals, 1)


__all__ = ["rejection_sample", "resample", "rejection_sample_conditional"]
