"""The LaSeR refiner as a conditional normalizing flow, trained by weighted maximum likelihood.

The LaSeR paper (arXiv:2106.00792, section 3) lets the refiner Phi be any generative model of the
weighted latent space, whose density is q(z | c) = p(z) w(g(z | c), c) / Z_0(c) (eq. 3). A flow
has a density, so it can be fitted to the weighted latent points (z_i, w_i, c_i) directly, without
a discriminator: maximising sum_i w_i log q_Phi(z_i | c_i) / sum_i w_i is maximum likelihood of the
weighted sample, whose expectation is E_q[log q_Phi] (the z_i are draws of p, and weighting draws
of p by w gives expectations under q), i.e. minimising KL(q || q_Phi) up to a constant. The
refiner needs no derivative of w, and unlike the weighted GAN it does not have to learn w(z) from
a discriminator in hundreds of dimensions.

**The maps.** The flow is T(., c): R^N -> R^N, a stack of conditional affine coupling blocks
(Real NVP, Dinh et al. 2016): each block leaves a fixed half a of the coordinates unchanged and
maps the other half b to b exp(s(a, c)) + t(a, c), s and t one MLP of [a, c], s bounded to
(-max_log_scale, max_log_scale) by a scaled tanh. Sampling is z = Phi(y, c) = T(y, c) with
y ~ N(0, I): one pass, as cheap as the unrefined draw. Training evaluates the density
log q_Phi(z | c) = log N(T^{-1}(z, c); 0, I) - sum_blocks sum s, the inverse also one pass
(couplings invert exactly in closed form). So the map that is trained is T^{-1}, the normalising
direction, on the weighted latent points; the one that samples is T.

**Identity at the start.** Each conditioner MLP's last layer is zero, so s = t = 0 and
T(y, c) = y exactly (y exp(0) + 0 is y in floating point): before training, the refined model
draws the unrefined showers bit for bit.

**The halves.** Block pairs (2k, 2k+1) use a random half of the coordinates (seeded with
``mask_seed``) and its complement, so every coordinate is transformed in every pair and every
coordinate conditions every other one after two pairs. For CaloFlow's z = (z_I, z_II) both latents
are coordinates of one vector: energies (z_I) and shapes (z_II) are refined jointly.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn

from caloflow.nn import mlp
from caloflow.training import adam_with_decay
from refine.nets import checked_context


class _Coupling(nn.Module):
    """What every coupling block has: the coordinates it keeps (a) and transforms (b), and a conditioner
    MLP of [a, c] with ``per_coordinate`` outputs per transformed coordinate, its last layer zero."""

    def __init__(
        self,
        kept: Tensor,
        transformed: Tensor,
        context_dim: int,
        per_coordinate: int,
        hidden: int,
        n_hidden: int,
    ):
        super().__init__()
        self.register_buffer("kept", kept)
        self.register_buffer("transformed", transformed)
        self.net = mlp(len(kept) + context_dim, per_coordinate * len(transformed), hidden, n_hidden)
        # zero last layer: the block starts as the identity
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)


class ConditionalAffineCoupling(_Coupling):
    """One coupling block on R^N with condition c: b -> b exp(s(a, c)) + t(a, c) for the coordinates
    ``transformed`` (b), conditioned on the others (a); s in (-bound, bound). s = t = 0 at the start:
    exactly the identity."""

    def __init__(
        self,
        kept: Tensor,
        transformed: Tensor,
        context_dim: int,
        hidden: int,
        n_hidden: int,
        bound: float,
    ):
        super().__init__(kept, transformed, context_dim, 2, hidden, n_hidden)
        self.bound = float(bound)

    def _scale_shift(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a = x[:, self.kept]
        h = self.net(a if context is None else torch.cat([a, context.to(a.dtype)], dim=1))
        raw, shift = h.chunk(2, dim=1)
        # a bounded log scale: one update cannot blow a coordinate up by more than exp(bound)
        return self.bound * torch.tanh(raw / self.bound), shift

    def forward(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """The sampling direction: b -> b exp(s) + t."""
        s, t = self._scale_shift(y, context)
        z = y.clone()
        z[:, self.transformed] = y[:, self.transformed] * torch.exp(s) + t
        return z

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The normalising direction b -> (b - t) exp(-s), and its log |det| = -sum s per row."""
        s, t = self._scale_shift(z, context)
        y = z.clone()
        y[:, self.transformed] = (z[:, self.transformed] - t) * torch.exp(-s)
        return y, -s.sum(dim=1)


class ConditionalSplineCoupling(_Coupling):
    """One coupling block with a monotone rational-quadratic spline (Durkan et al. 2019, the splines
    of CaloFlow's MADE blocks) instead of the affine map: b -> RQS(b; theta(a, c)) on [-B, B] with
    ``num_bins`` bins, the identity outside. A zero conditioner gives equal bins and unit derivatives
    (the derivative parameters are offset so that 0 means slope 1), i.e. the identity up to rounding."""

    def __init__(
        self,
        kept: Tensor,
        transformed: Tensor,
        context_dim: int,
        hidden: int,
        n_hidden: int,
        num_bins: int,
        tail_bound: float,
    ):
        super().__init__(kept, transformed, context_dim, 3 * num_bins - 1, hidden, n_hidden)
        self.num_bins, self.tail_bound = int(num_bins), float(tail_bound)

    def _spline(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        import math

        from nflows.transforms.splines.rational_quadratic import (
            DEFAULT_MIN_DERIVATIVE,
            unconstrained_rational_quadratic_spline,
        )

        a, k = x[:, self.kept], self.num_bins
        h = self.net(a if context is None else torch.cat([a, context.to(a.dtype)], dim=1))
        h = h.view(len(x), len(self.transformed), 3 * k - 1)
        # softplus(offset) + min derivative = 1: a zero conditioner is the identity
        offset = math.log(math.expm1(1 - DEFAULT_MIN_DERIVATIVE))
        out, log_det = unconstrained_rational_quadratic_spline(
            x[:, self.transformed],
            h[..., :k],
            h[..., k : 2 * k],
            h[..., 2 * k :] + offset,
            inverse=inverse,
            tail_bound=self.tail_bound,
        )
        return out, log_det.sum(dim=1)

    def forward(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        z = y.clone()
        z[:, self.transformed] = self._spline(y, context, inverse=False)[0]
        return z

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = z.clone()
        y[:, self.transformed], log_det = self._spline(z, context, inverse=True)
        return y, log_det


def coupling_halves(dim: int, n_blocks: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """(kept, transformed) coordinate indices per block: a seeded random half and its complement
    for each pair of blocks (so every coordinate is transformed once per pair)."""
    gen = torch.Generator().manual_seed(seed)
    halves: list[tuple[Tensor, Tensor]] = []
    for k in range(n_blocks):
        if k % 2 == 0:
            perm = torch.randperm(dim, generator=gen)
            first, second = perm[: dim // 2].sort().values, perm[dim // 2 :].sort().values
            halves.append((first, second))
        else:
            halves.append((second, first))
    return halves


class WeightedFlowRefiner(L.LightningModule):
    """Phi(y, c) = T(y, c), a conditional affine-coupling flow on the latent space R^N (module
    docstring), trained by weighted maximum likelihood: loss = -sum_i w_i log q_Phi(z_i | c_i) /
    sum_i w_i on batches ``(z, w)`` or ``(z, w, c)``. Starts as the identity.

    Also a generator in the sense of :mod:`refine.generators` (``sample_latent``, ``decode``), with
    the interface of :class:`refine.gan.WeightedGANRefiner` that shower generation uses
    (``hparams.latent_dim``, ``hparams.context_dim``, ``aux_dim``, ``decode(y, c)``).

    Args:
        latent_dim: N, the latent dimension of the refined generator (set by the protocol).
        context_dim: size of the condition c (0: unconditional; set by the protocol).
        n_blocks: coupling blocks (an even number mixes every coordinate evenly).
        hidden, n_hidden: width and depth of each block's conditioner MLP (LeakyReLU).
        max_log_scale: bound on each block's log scale |s|.
        lr, lr_decay, weight_decay: Adam, with the learning rate multiplied by ``lr_decay`` per epoch.
        mask_seed: seed of the coordinate halves.
        coupling: ``affine`` (b exp(s) + t; exactly the identity at the start) or ``spline``
            (rational-quadratic, ``num_bins`` bins on [-tail_bound, tail_bound]; more flexible per
            block, the identity up to rounding at the start).
    """

    def __init__(
        self,
        latent_dim: int = 2,
        context_dim: int = 0,
        n_blocks: int = 4,
        hidden: int = 128,
        n_hidden: int = 2,
        max_log_scale: float = 3.0,
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        weight_decay: float = 0.0,
        mask_seed: int = 0,
        coupling: Literal["affine", "spline"] = "affine",
        num_bins: int = 8,
        tail_bound: float = 4.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if latent_dim < 2:
            raise ValueError(f"a coupling flow needs latent_dim >= 2, got {latent_dim}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        if not max_log_scale > 0:
            raise ValueError(f"max_log_scale must be > 0, got {max_log_scale}")
        if not tail_bound > 0:
            raise ValueError(f"tail_bound must be > 0, got {tail_bound}")

        def block(kept: Tensor, moved: Tensor) -> nn.Module:
            if coupling == "spline":
                return ConditionalSplineCoupling(
                    kept, moved, context_dim, hidden, n_hidden, num_bins, tail_bound
                )
            return ConditionalAffineCoupling(
                kept, moved, context_dim, hidden, n_hidden, max_log_scale
            )

        self.blocks = nn.ModuleList(
            block(kept, moved) for kept, moved in coupling_halves(latent_dim, n_blocks, mask_seed)
        )

    @property
    def aux_dim(self) -> int:
        """The dimension of y: that of z (a flow is a bijection)."""
        return int(self.hparams.latent_dim)

    def _context(self, x: Tensor, context: Tensor | None) -> Tensor | None:
        return checked_context(x, context, self.hparams.context_dim)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.aux_dim, generator=generator, device=self.device)

    def forward(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """z = Phi(y[, c]) = T(y, c): the refined latent points of y, one pass through the blocks."""
        context = self._context(y, context)
        for block in self.blocks:
            y = block(y, context)
        return y

    def decode(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Phi(y[, c]) (as :meth:`forward`; the name refined generators call)."""
        return self(y, context)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """log q_Phi(z | c) = log N(T^{-1}(z, c); 0, I) + log |det d T^{-1} / dz| per row (nats)."""
        context = self._context(z, context)
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for block in reversed(self.blocks):
            z, ld = block.inverse(z, context)
            log_det = log_det + ld
        log_normal = -0.5 * (z * z).sum(dim=1) - 0.5 * z.shape[1] * torch.log(
            torch.tensor(2 * torch.pi, dtype=z.dtype)
        )
        return log_normal + log_det

    @torch.no_grad()
    def refine(
        self, n: int, generator: torch.Generator | None = None, context: Tensor | None = None
    ) -> Tensor:
        """``n`` refined latent points Phi(y[, c]), y ~ N(0, I)."""
        return self.decode(self.sample_latent(n, generator), context)

    def weighted_nll(self, z: Tensor, w: Tensor, context: Tensor | None = None) -> Tensor:
        """The loss: -sum_i w_i log q_Phi(z_i | c_i) / sum_i w_i (weighted maximum likelihood)."""
        w = w.to(z.dtype)
        return -(w * self.log_prob(z, context)).sum() / w.sum()

    def training_step(self, batch, batch_idx):
        z, w, *rest = batch
        loss = self.weighted_nll(z, w, rest[0] if rest else None)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        z, w, *rest = batch
        self.log("val/loss", self.weighted_nll(z, w, rest[0] if rest else None), on_epoch=True)

    def configure_optimizers(self):
        hp = self.hparams
        return adam_with_decay(self.parameters(), hp.lr, hp.lr_decay, weight_decay=hp.weight_decay)


__all__ = [
    "ConditionalAffineCoupling",
    "ConditionalSplineCoupling",
    "coupling_halves",
    "WeightedFlowRefiner",
]
