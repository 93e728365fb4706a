"""The LaSeR refiner: a GAN trained on the weighted latent space (paper section 3 and 4.1).

The refiner Phi maps an auxiliary latent y ~ N(0, I_L) (L = 4 in the paper) onto the refined latent
space Z' whose density should be q_Z(z) = p_Z(z) w(z) / Z_0 (eq. 3). Its discriminator sees the
weighted latent points (z_i, w_i) as "real": only that term of the discriminator loss is weighted,
sum_i w_i BCE(D(z_i), 1) / sum_i w_i, while the fake term and the generator loss are the usual
unweighted BCE. Paper: generator and discriminator MLPs with 7 hidden layers x 100 LeakyReLU,
Adam (1e-4, 0.5, 0.9), exponential decay 0.999 per epoch, 4 discriminator updates per generator
update. Refined samples are g(Phi(y)).

Option ``residual`` (not in the paper; needs aux_dim >= latent_dim): Phi(y) = y[:N] + MLP(y) starts
the refiner at the unrefined latent space N(0, I), so a short training only has to learn the
reweighting instead of the whole density.

Option ``ema`` (not in the paper): refined samples come from an exponential moving average of the
generator's parameters (decay ``ema`` per generator update), which averages out the oscillation of
the adversarial game around its equilibrium; training itself is unchanged.

Option ``context_dim`` (> 0): a conditional refiner Phi(y, c) = [y[:N] +] MLP([y, c]) for a
generator g(z | c) with a condition c (the encoded incident energy of a shower model). Batches are
then ``(z, w, c)``: the weighted latent points with the conditions that produced them. The
discriminator sees [z, c] (real) and [Phi(y, c), c] (fake, with the conditions of the same batch),
so it learns the conditional density q(z | c) = p(z) w(g(z | c), c) / Z_0(c); the losses are the
paper's, unchanged.

Option ``zero_init``: the generator MLP's last layer starts at zero, so with ``residual`` Phi(y, c)
= y exactly before training (the refiner starts as the identity, i.e. at the unrefined prior).

Option ``paired`` (not in the paper; needs ``aux_dim == latent_dim``): the fakes of a batch are
Phi(z_i, c_i) of the batch's own latent points z_i (unweighted) instead of fresh y ~ N(0, I). The
z_i are prior draws, so Phi(z_i) is still a sample of the refined density; but real and fake now
come from one finite sample, and the discriminator can tell them apart only through the weights.
With fresh fakes a discriminator in hundreds of latent dimensions instead memorises the finite set
of real points and drives the generator away from the prior.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from caloflow.nn import mlp
from caloflow.training import adam_with_decay
from refine.nets import checked_context


class WeightedGANRefiner(L.LightningModule):
    """Weighted GAN Phi: R^L -> R^N; batches are ``(z, w)`` of weighted latent points.

    Also a generator in the sense of :mod:`refine.generators`: ``sample_latent`` draws y,
    ``decode`` returns Phi(y), so ``RefinedGenerator(g, refiner)`` is g(Phi(y)).
    """

    def __init__(
        self,
        latent_dim: int = 2,
        aux_dim: int = 4,
        hidden: int = 100,
        n_hidden: int = 7,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        lr_decay: float = 0.999,
        n_critic: int = 4,
        residual: bool = False,
        ema: float | None = None,
        context_dim: int = 0,
        zero_init: bool = False,
        paired: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if residual and aux_dim < latent_dim:
            raise ValueError(f"residual needs aux_dim >= latent_dim, got {aux_dim} < {latent_dim}")
        if paired and aux_dim != latent_dim:
            raise ValueError(f"paired needs aux_dim == latent_dim, got {aux_dim} != {latent_dim}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.generator = mlp(aux_dim + context_dim, latent_dim, hidden, n_hidden)
        self.discriminator = mlp(latent_dim + context_dim, 1, hidden, n_hidden)
        if zero_init:
            torch.nn.init.zeros_(self.generator[-1].weight)
            torch.nn.init.zeros_(self.generator[-1].bias)
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError(f"ema must be in (0, 1) or None, got {ema}")
        # averaged copy used for sampling only; never seen by an optimizer
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if ema else None

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.hparams.aux_dim, generator=generator, device=self.device)

    def decode(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Phi(y[, c]) of the sampling generator (the averaged one with ``ema``)."""
        return self._phi(
            y, self.generator_ema if self.generator_ema is not None else self.generator, context
        )

    def forward(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Phi(y[, c]) of the trained generator; with ``residual`` Phi(y, c) = y[:, :N] + MLP([y, c]), so
        training starts near the prior N(0, I) (exactly at it with ``zero_init``)."""
        return self._phi(y, self.generator, context)

    def _with_context(self, x: Tensor, context: Tensor | None) -> Tensor:
        """[x, c] for a conditional refiner (``context_dim`` > 0), x otherwise."""
        context = checked_context(x, context, self.hparams.get("context_dim", 0))
        return x if context is None else torch.cat([x, context.to(x.dtype)], dim=1)

    def _phi(self, y: Tensor, net: torch.nn.Module, context: Tensor | None = None) -> Tensor:
        out = net(self._with_context(y, context))
        if self.hparams.residual:
            out = out + y[:, : self.hparams.latent_dim]
        return out

    @torch.no_grad()
    def refine(
        self, n: int, generator: torch.Generator | None = None, context: Tensor | None = None
    ) -> Tensor:
        """``n`` refined latent points Phi(y[, c]) (``context``: (n, context_dim) for a conditional refiner)."""
        was = self.training
        self.eval()
        z = self.decode(self.sample_latent(n, generator), context)
        self.train(was)
        return z

    def discriminator_loss(
        self, z: Tensor, w: Tensor, fake: Tensor, context: Tensor | None = None
    ) -> Tensor:
        """Weighted real term sum w BCE(D(z), 1) / sum w plus the unweighted fake term BCE(D(fake), 0)
        (the discriminator sees [z, c] and [fake, c] for a conditional refiner)."""
        real_bce = F.binary_cross_entropy_with_logits(
            self.discriminator(self._with_context(z, context)).squeeze(-1),
            torch.ones_like(w),
            reduction="none",
        )
        d_fake = self.discriminator(self._with_context(fake, context)).squeeze(-1)
        fake_bce = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        return (w * real_bce).sum() / w.sum() + fake_bce

    def generator_loss(self, fake: Tensor, context: Tensor | None = None) -> Tensor:
        """Unweighted non-saturating generator loss -log D(Phi(y[, c])[, c])."""
        d_fake = self.discriminator(self._with_context(fake, context)).squeeze(-1)
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))

    def _fake_input(self, z: Tensor) -> Tensor:
        """What Phi maps to make a batch's fakes: the batch's own latent points with ``paired``, else fresh y."""
        return z if self.hparams.get("paired") else self.sample_latent(z.shape[0])

    def training_step(self, batch, batch_idx):
        """One discriminator update per batch ``(z, w)`` or ``(z, w, c)``, one generator update every ``n_critic``."""
        opt_g, opt_d = self.optimizers()
        z, w, *rest = batch
        context = rest[0] if rest else None
        d_loss = self.discriminator_loss(z, w, self(self._fake_input(z), context).detach(), context)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.log("train/d_loss", d_loss, prog_bar=True, on_step=False, on_epoch=True)
        if (batch_idx + 1) % self.hparams.n_critic == 0:
            g_loss = self.generator_loss(self(self._fake_input(z), context), context)
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
            if self.generator_ema is not None:
                with torch.no_grad():
                    for avg, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
                        avg.lerp_(p, 1.0 - self.hparams.ema)
            self.log("train/g_loss", g_loss, prog_bar=True, on_step=False, on_epoch=True)

    def on_train_epoch_end(self):
        for sched in self.lr_schedulers():
            sched.step()

    def configure_optimizers(self):
        hp = self.hparams
        return [
            adam_with_decay(self.generator.parameters(), hp.lr, hp.lr_decay, betas=hp.betas),
            adam_with_decay(self.discriminator.parameters(), hp.lr, hp.lr_decay, betas=hp.betas),
        ]


__all__ = ["WeightedGANRefiner"]
