"""Hamiltonian Monte Carlo of the weighted latent space (LaSeR paper section 3, eq. 3).

The weighted latent density q_Z(z) = p_Z(z) w(g(z)) / Z_0 has the unnormalised log density
log N(z; 0, I) + log w(g(z)); its gradient flows through the classifier and the generator by autograd.
Many chains run in parallel as one batch (paper: 100 chains, leapfrog step 0.004, 50 leapfrog
steps, burn-in), each with its own Metropolis accept/reject.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

LogProb = Callable[[Tensor], Tensor]


def _log_prob_and_grad(log_prob: LogProb, z: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad.detach()


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

    Returns ``(samples (n_samples, chains, dim), acceptance rate after burn-in)``.
    """
    if n_samples < 1 or n_leapfrog < 1 or step_size <= 0 or burn_in < 0 or thin < 1:
        raise ValueError("hmc needs n_samples >= 1, n_leapfrog >= 1, step_size > 0, burn_in >= 0, thin >= 1")
    if target_acceptance is not None and not 0 < target_acceptance < 1:
        raise ValueError("hmc needs 0 < target_acceptance < 1")
    z = init.detach().clone()
    # one step size per chain, shaped to broadcast over the latent dimension
    eps = torch.full((z.shape[0], 1), float(step_size), dtype=z.dtype)
    lp, grad = _log_prob_and_grad(log_prob, z)
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
            lp_new, g_new = _log_prob_and_grad(log_prob, z_new)
            # full momentum steps in between, a half step at the end
            p_new = p_new + (eps if k < n_leapfrog - 1 else 0.5 * eps) * g_new
        h_new = -lp_new + 0.5 * (p_new * p_new).sum(-1)
        log_u = torch.log(torch.rand(lp.shape, generator=generator, dtype=z.dtype))
        accept = (log_u < (h_old - h_new)) & torch.isfinite(h_new)
        if target_acceptance is not None and it < burn_in:
            prob = torch.where(torch.isfinite(h_new), torch.exp(torch.clamp(h_old - h_new, max=0.0)), 0.0)
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


def laser_log_prob(decode: Callable[[Tensor], Tensor], log_weight: Callable[[Tensor], Tensor]) -> LogProb:
    """log N(z; 0, I) + log w(g(z)) up to a constant (eq. 3 with a standard-normal prior)."""

    def fn(z: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) + log_weight(decode(z))

    return fn
