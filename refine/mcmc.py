"""Hamiltonian Monte Carlo of the weighted latent space (LaSeR paper section 3, eq. 3).

The weighted latent density q_Z(z) = p_Z(z) w(g(z)) / Z_0 has the unnormalised log density
log N(z; 0, I) + log w(g(z)); its gradient flows through the classifier and the generator by autograd.
Many chains run in parallel as one batch (paper: 100 chains, leapfrog step 0.004, 50 leapfrog
steps, burn-in), each with its own Metropolis accept/reject. The log density is per chain, so its
gradient can be taken over blocks of chains (``chunk_size``): the same numbers up to float32 rounding,
and faster on a CPU for a generator as large as CaloFlow, whose graph for thousands of chains at once
no longer fits the caches (``benchmarks/hmc_chunks.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

#: a batched log density: (chains, dim) and optional per-chain context rows -> (chains,)
LogProb = Callable[..., Tensor]


def log_prob_and_grad(
    log_prob: LogProb, z: Tensor, context: tuple[Tensor, ...] = (), chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """log_prob(z, *context) (chains,) and its gradient in z (chains, dim), by autograd over blocks of
    at most ``chunk_size`` chains (None: all at once); ``context`` tensors (one row per chain, e.g. the
    incident energies) are split with z."""
    size = z.shape[0] if chunk_size is None else int(chunk_size)
    if size < 1:
        raise ValueError("chunk_size must be >= 1")
    values, grads = [], []
    with torch.enable_grad():
        for lo in range(0, z.shape[0], size):
            block = z[lo : lo + size].detach().requires_grad_(True)
            lp = log_prob(block, *(c[lo : lo + size] for c in context))
            (grad,) = torch.autograd.grad(lp.sum(), block)
            values.append(lp.detach())
            grads.append(grad.detach())
    return torch.cat(values), torch.cat(grads)


def hmc(
    log_prob: LogProb,
    init: Tensor,
    *,
    step_size: float,
    n_leapfrog: int,
    n_samples: int,
    burn_in: int = 0,
    thin: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = True,
    target_acceptance: float | None = None,
    info: dict | None = None,
    context: tuple[Tensor, ...] = (),
    chunk_size: int | None = None,
) -> tuple[Tensor, float]:
    """Sample ``log_prob`` (unnormalised, batched: (chains, dim) -> (chains,)) with HMC.

    ``init`` (chains, dim) starts one chain per row. Each iteration draws a Gaussian momentum,
    integrates Hamilton's equations with ``n_leapfrog`` leapfrog steps of size ``step_size``
    (unit mass) and accepts per chain with probability min(1, exp(H_old - H_new)).
    The first ``burn_in`` iterations are discarded, then every ``thin``-th state is kept.

    ``target_acceptance``: during burn-in only, each chain's step size follows its acceptance
    probability a, log eps <- log eps + 2 (a - target) / sqrt(t + 1) (Robbins-Monro), starting from
    ``step_size``; it is frozen after burn-in, so the kept states come from one fixed, valid HMC
    kernel per chain. ``info`` (a dict), if given, receives the final ``step_size`` per chain.
    ``context``: tensors with one row per chain passed on as ``log_prob(z, *context)`` (a conditional
    target, e.g. the incident energies); ``chunk_size``: chains per gradient evaluation
    (:func:`log_prob_and_grad`; None: all at once).

    Returns ``(samples (n_samples, chains, dim), acceptance rate after burn-in)``.
    """
    if n_samples < 1 or n_leapfrog < 1 or step_size <= 0 or burn_in < 0 or thin < 1:
        raise ValueError(
            "hmc needs n_samples >= 1, n_leapfrog >= 1, step_size > 0, burn_in >= 0, thin >= 1"
        )
    if target_acceptance is not None and not 0 < target_acceptance < 1:
        raise ValueError("hmc needs 0 < target_acceptance < 1")
    z = init.detach().clone()
    # one step size per chain, shaped to broadcast over the latent dimension
    eps = torch.full((z.shape[0], 1), float(step_size), dtype=z.dtype)
    lp, grad = log_prob_and_grad(log_prob, z, context, chunk_size)
    samples = torch.empty(n_samples, *z.shape, dtype=z.dtype)
    accepted = torch.zeros((), dtype=torch.float64)
    n_total = burn_in + n_samples * thin
    kept = 0
    for it in tqdm(range(n_total), desc="HMC", disable=not progress, leave=False):
        p = torch.randn(z.shape, generator=generator, dtype=z.dtype)
        h_old = -lp + 0.5 * (p * p).sum(-1)
        z_new, p_new, g_new = z, p + 0.5 * eps * grad, grad
        for k in range(n_leapfrog):
            z_new = z_new + eps * p_new
            lp_new, g_new = log_prob_and_grad(log_prob, z_new, context, chunk_size)
            # full momentum steps in between, a half step at the end
            p_new = p_new + (eps if k < n_leapfrog - 1 else 0.5 * eps) * g_new
        h_new = -lp_new + 0.5 * (p_new * p_new).sum(-1)
        log_u = torch.log(torch.rand(lp.shape, generator=generator, dtype=z.dtype))
        accept = (log_u < (h_old - h_new)) & torch.isfinite(h_new)
        if target_acceptance is not None and it < burn_in:
            prob = torch.where(
                torch.isfinite(h_new), torch.exp(torch.clamp(h_old - h_new, max=0.0)), 0.0
            )
            eps = eps * torch.exp(2.0 * (prob - target_acceptance) / (it + 1) ** 0.5)[:, None]
        z = torch.where(accept[:, None], z_new, z)
        lp = torch.where(accept, lp_new, lp)
        grad = torch.where(accept[:, None], g_new, grad)
        if it >= burn_in:
            accepted += accept.double().mean()
            if (it - burn_in) % thin == 0:
                samples[kept] = z
                kept += 1
    rate = float(accepted / (n_total - burn_in))
    if info is not None:
        info["step_size"] = eps[:, 0].clone()
    return samples, rate


def laser_log_prob(decode: Callable[..., Tensor], log_weight: Callable[..., Tensor]) -> LogProb:
    """log N(z; 0, I) + log w(g(z)) up to a constant (eq. 3 with a standard-normal prior); a
    conditional target passes its context on: log N(z) + log w(g(z | E), E) as ``fn(z, E)``."""

    def fn(z: Tensor, *context: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) + log_weight(decode(z, *context), *context)

    return fn


__all__ = ["log_prob_and_grad", "hmc", "laser_log_prob"]
