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
"""
from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from caloflow.nn import mlp
from caloflow.training import adam_with_decay


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
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = mlp(aux_dim, latent_dim, hidden, n_hidden)
        self.discriminator = mlp(latent_dim, 1, hidden, n_hidden)
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError(f"ema must be in (0, 1) or None, got {ema}")
        # averaged copy used for sampling only; never seen by an optimizer
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if ema else None

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.hparams.aux_dim, generator=generator, device=self.device)

    def decode(self, y: Tensor) -> Tensor:
        """Phi(y) of the sampling generator (the averaged one with ``ema``)."""
        return self._phi(y, self.generator_ema if self.generator_ema is not None else self.generator)

    def forward(self, y: Tensor) -> Tensor:
        """Phi(y) of the trained generator; with ``residual`` Phi(y) = y[:, :N] + MLP(y), so training
        starts from the prior N(0, I)."""
        return self._phi(y, self.generator)

    def _phi(self, y: Tensor, net: torch.nn.Module) -> Tensor:
        out = net(y)
        if self.hparams.residual:
            out = out + y[:, : self.hparams.latent_dim]
        return out

    @torch.no_grad()
    def refine(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` refined latent points Phi(y)."""
        was = self.training
        self.eval()
        z = self.decode(self.sample_latent(n, generator))
        self.train(was)
        return z

    def discriminator_loss(self, z: Tensor, w: Tensor, fake: Tensor) -> Tensor:
        """Weighted real term sum w BCE / sum w plus the unweighted fake term."""
        real_bce = F.binary_cross_entropy_with_logits(
            self.discriminator(z).squeeze(-1), torch.ones_like(w), reduction="none"
        )
        d_fake = self.discriminator(fake).squeeze(-1)
        fake_bce = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        return (w * real_bce).sum() / w.sum() + fake_bce

    def generator_loss(self, fake: Tensor) -> Tensor:
        """Unweighted non-saturating generator loss -log D(Phi(y))."""
        d_fake = self.discriminator(fake).squeeze(-1)
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        z, w = batch
        y = self.sample_latent(z.shape[0])
        d_loss = self.discriminator_loss(z, w, self(y).detach())
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.log("train/d_loss", d_loss, prog_bar=True, on_step=False, on_epoch=True)
        if (batch_idx + 1) % self.hparams.n_critic == 0:
            g_loss = self.generator_loss(self(self.sample_latent(z.shape[0])))
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
