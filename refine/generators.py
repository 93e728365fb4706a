"""The generator protocol that LaSeR refines (paper section 3, Fig. 1).

A generator is anything with

- ``sample_latent(n, generator=None) -> Tensor`` (n, N): draws z ~ p_Z, and
- ``decode(z) -> Tensor`` (n, M): the map g(z) to data space.

For HMC the decode must be differentiable in z. A generator whose output also depends on hidden
randomness (``deterministic = False``) is a stochastic function of z: classifier weights are then
not a function of z and must be pulled back with OmniFold (:mod:`refine.omnifold`).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from torch import Tensor


@runtime_checkable
class Generator(Protocol):
    """g: R^N -> R^M with a latent distribution p_Z that can be sampled."""

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


def is_deterministic(g: Generator) -> bool:
    """Whether ``g.decode`` is a function of z alone (the default unless it says otherwise)."""
    return bool(getattr(g, "deterministic", True))


class FlowGenerator:
    """An nflows :class:`~nflows.flows.base.Flow` seen as a generator.

    The latent is a sample of the flow's base distribution, the decode is the flow's inverse
    transform (nflows flows map data -> noise in ``forward``), differentiable in z. For a
    conditional flow pass ``context`` (one row per latent point, or one row broadcast to all).
    """

    deterministic = True

    def __init__(self, flow: Flow, context: Tensor | None = None):
        self.flow = flow
        self.context = context

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.flow._distribution._shape)

    def _context(self, n: int) -> Tensor | None:
        if self.context is None:
            return None
        c = self.context
        if c.shape[0] == 1 and n != 1:
            c = c.expand(n, *c.shape[1:])
        if c.shape[0] != n:
            raise ValueError(f"context has {c.shape[0]} rows for {n} latent points")
        return c

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dist = self.flow._distribution
        param = next(self.flow.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if isinstance(
            dist, StandardNormal
        ):  # unconditional base: the context only enters the transform
            return torch.randn(n, *self.latent_shape, generator=generator, device=device)
        if generator is not None:
            raise ValueError("a seeded latent sample needs a StandardNormal base distribution")
        if self.context is None:
            return dist.sample(n)
        return dist.sample(1, context=self._context(n)).squeeze(1)

    def decode(self, z: Tensor) -> Tensor:
        x, _ = self.flow._transform.inverse(z, context=self._context(z.shape[0]))
        return x


class BlackBoxGenerator:
    """A callable ``simulate(z, generator) -> x`` with hidden randomness (e.g. a Monte Carlo).

    ``decode`` is not a function of z (``deterministic = False``) and need not be differentiable:
    only the LaSeR refiner and OmniFold pull-back apply, not HMC.
    """

    deterministic = False

    def __init__(
        self,
        simulate: Callable[[Tensor, torch.Generator | None], Tensor],
        latent_dim: int,
        generator: torch.Generator | None = None,
    ):
        self.simulate = simulate
        self.latent_dim = latent_dim
        self.generator = generator

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.simulate(z, self.generator)


class RefinedGenerator:
    """g(Phi(y)): a refined latent sampler ``Phi`` composed with the original generator ``g``.

    ``refiner`` has ``sample_latent(n, generator) -> y`` and ``decode(y) -> z`` (e.g. the weighted-GAN
    refiner); the result is again a generator, so the procedure can be iterated.
    """

    def __init__(self, base: Generator, refiner: Generator):
        self.base = base
        self.refiner = refiner
        self.deterministic = is_deterministic(base)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.refiner.sample_latent(n, generator=generator)

    def decode(self, y: Tensor) -> Tensor:
        return self.base.decode(self.refiner.decode(y))


@torch.no_grad()
def decode_batched(g: Generator, z: Tensor, batch_size: int = 100_000) -> Tensor:
    """g(z) for many latent points, decoded ``batch_size`` at a time without gradients."""
    return torch.cat([g.decode(zb) for zb in z.split(batch_size)])


@torch.no_grad()
def generate(
    g: Generator, n: int, generator: torch.Generator | None = None, batch_size: int = 100_000
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` latent points and decode them in batches; returns ``(z, x)``."""
    z = g.sample_latent(n, generator=generator)
    return z, decode_batched(g, z, batch_size)


__all__ = [
    "Generator",
    "is_deterministic",
    "FlowGenerator",
    "BlackBoxGenerator",
    "RefinedGenerator",
    "decode_batched",
    "generate",
]
