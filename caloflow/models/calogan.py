"""CaloGAN (Paganini, de Oliveira, Nachman, arXiv:1712.10321): the GAN baseline of the CaloFlow paper.

A PyTorch port of the published Keras model (docs/physics.md section 8). Everything inside this module is
in GeV (voxels MeV/1000, incident energy GeV), as in the published training; :meth:`CaloGAN.sample`
returns MeV like the rest of caloflow.

Generator: latent z ~ N(0, 1) (1024) times E_inc / 100 GeV; per calorimeter layer (r, c) a stream
Dense -> (r+2, c+2, 36) -> Conv 16 2x2 'same' -> LeakyReLU(0.3) -> BatchNorm -> locally connected
6 2x2 -> LeakyReLU(0.3) -> locally connected 1 2x2 (no bias) -> (r, c); layer-to-layer in-painting
attention 0 -> 1 -> 2; ReLU. With the published sizes it has 29,726,280 trainable parameters, the
count quoted in the CaloFlow paper (section 5.5) for CaloGAN.

Discriminator: per layer Conv 64 2x2 'same' and three locally connected layers, minibatch
discrimination on the features, on the layer occupancy and on the three layer energies, plus
the energy-consistency inputs E_k/10, E_hat/100, |E_hat - E_inc| and 10 * 1[|E_hat - E_inc| > 5 GeV].
It outputs a real/fake logit and E_hat; the mean absolute error |E_hat - E_inc| (weight 0.05)
has no discriminator parameters in its path, so it trains the generator only. 2,744,332
trainable parameters with the published sizes.

Training (manual optimisation, the published order): a discriminator step on a real-only batch,
one on a fake-only batch, then two generator steps with fresh z and energies uniform in
[1, 100] GeV. Adam with beta1 = 0.5, lr 2e-5 (discriminator) and 2e-4 (generator).

The networks are built for the three CaloGAN layers (their shapes, the in-painting between them):
the model takes a ``geometry`` like every caloflow model, and refuses any but ``calogan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloflow.domain import RemembersDomain, carry_geometry
from caloflow.errors import CaloflowError
from caloflow.geometry import CALOGAN, GEV, Geometry, get_geometry
from caloflow.models.layers import (
    InpaintingAttention,
    LocallyConnected2d,
    MinibatchDiscrimination,
    glorot_uniform_,
    he_uniform_,
)

#: Keras' default LeakyReLU slope, used throughout the published networks.
LEAKY_SLOPE = 0.3
#: Energy scale of the latent vector and of E_hat in the discriminator head, GeV.
ENERGY_SCALE_GEV = 100.0


def _keras_batchnorm(channels: int) -> nn.BatchNorm2d:
    # Keras defaults: momentum 0.99 of the old average (PyTorch counts the new batch: 0.01), eps 1e-3
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _keras_conv(in_channels: int, out_channels: int, init=glorot_uniform_) -> nn.Sequential:
    """2x2 convolution, Keras 'same' padding: TensorFlow puts the extra row/column at the bottom/right."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=2)
    init(conv.weight, in_channels * 4, out_channels * 4)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), conv)


def _keras_dense(in_features: int, out_features: int) -> nn.Linear:
    dense = nn.Linear(in_features, out_features)
    glorot_uniform_(dense.weight, in_features, out_features)
    nn.init.zeros_(dense.bias)
    return dense


class GeneratorStream(nn.Module):
    """One calorimeter layer of the generator: latent (B, latent_dim) -> image (B, 1, rows, cols), GeV, before ReLU."""

    def __init__(
        self,
        shape: tuple[int, int],
        latent_dim: int,
        dense_channels: int = 36,
        conv_channels: int = 16,
        lc_channels: int = 6,
    ) -> None:
        super().__init__()
        rows, cols = shape
        self.grid = (dense_channels, rows + 2, cols + 2)
        self.dense = _keras_dense(latent_dim, dense_channels * (rows + 2) * (cols + 2))
        self.conv = _keras_conv(dense_channels, conv_channels, he_uniform_)
        self.norm = _keras_batchnorm(conv_channels)
        self.lc1 = LocallyConnected2d(
            conv_channels, lc_channels, (rows + 2, cols + 2), 2, init="he_uniform"
        )
        self.lc2 = LocallyConnected2d(
            lc_channels, 1, self.lc1.output_size, 2, bias=False, init="glorot_normal"
        )

    def forward(self, h: Tensor) -> Tensor:
        x = self.dense(h).reshape(-1, *self.grid)
        x = self.norm(F.leaky_relu(self.conv(x), LEAKY_SLOPE))
        x = F.leaky_relu(self.lc1(x), LEAKY_SLOPE)
        return self.lc2(x)


def resize_layer0_to_layer1(image: Tensor) -> Tensor:
    """(B, 1, 3, 96) -> (B, 1, 12, 12): nearest upsampling x4 along phi, average of 8 eta cells."""
    return F.avg_pool2d(image.repeat_interleave(4, dim=2), kernel_size=(1, 8))


def resize_layer1_to_layer2(image: Tensor) -> Tensor:
    """(B, 1, 12, 12) -> (B, 1, 12, 6): average of 2 eta cells."""
    return F.avg_pool2d(image, kernel_size=(1, 2))


class CaloGANGenerator(nn.Module):
    """(z (B, latent_dim), E_inc (B,) GeV) -> three non-negative layer images [(B, r, c)] in GeV."""

    def __init__(
        self,
        latent_dim: int = 1024,
        dense_channels: int = 36,
        conv_channels: int = 16,
        lc_channels: int = 6,
        attention: bool = True,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        shapes = CALOGAN.layer_shapes
        self.streams = nn.ModuleList(
            GeneratorStream(shape, latent_dim, dense_channels, conv_channels, lc_channels)
            for shape in shapes
        )
        # layer 0 paints into layer 1, layer 1 (after its attention) into layer 2
        self.attention = (
            nn.ModuleList([InpaintingAttention(shapes[1]), InpaintingAttention(shapes[2])])
            if attention
            else None
        )

    def forward(self, z: Tensor, energy_gev: Tensor) -> list[Tensor]:
        h = z * (energy_gev.reshape(-1, 1) / ENERGY_SCALE_GEV)  # multiplied, not concatenated
        images = [stream(h) for stream in self.streams]
        if self.attention is not None:
            images[1] = self.attention[0](images[1], resize_layer0_to_layer1(images[0]))
            images[2] = self.attention[1](images[2], resize_layer1_to_layer2(images[1]))
        return [torch.relu(image).squeeze(1) for image in images]

    def decode(self, z: Tensor, energy_gev: Tensor) -> Tensor:
        """Showers (B, V) in MeV (float32, the flat order of :data:`caloflow.geometry.CALOGAN`) of
        the latent points ``z`` (B, latent_dim) at E_inc (B,) GeV; differentiable in ``z``. The
        caller chooses the mode (eval for generation: BatchNorm with its running averages)."""
        return torch.cat([image.flatten(1) for image in self(z, energy_gev)], dim=1).float() * GEV


class DiscriminatorStream(nn.Module):
    """Features of one layer image (B, rows, cols) GeV -> (B, n_features).

    Conv -> LC 3x3 stride (1,2) -> LC 2x2 -> LC 2x2 stride (1,2) (each LC after a zero-padding of
    1, each followed by LeakyReLU and BatchNorm), flattened; then minibatch discrimination on
    these features and on the occupancy (fraction of cells > 0), and the occupancy itself.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        conv_channels: int = 64,
        lc_channels: Sequence[int] = (16, 8, 8),
        mbd_kernels: int = 10,
        mbd_dim: int = 10,
    ) -> None:
        super().__init__()
        c1, c2, c3 = lc_channels
        self.conv = _keras_conv(1, conv_channels)
        self.lc1 = LocallyConnected2d(conv_channels, c1, shape, 3, stride=(1, 2), padding=1)
        self.lc2 = LocallyConnected2d(c1, c2, self.lc1.output_size, 2, padding=1)
        self.lc3 = LocallyConnected2d(c2, c3, self.lc2.output_size, 2, stride=(1, 2), padding=1)
        self.norms = nn.ModuleList(_keras_batchnorm(c) for c in (c1, c2, c3))
        n_flat = c3 * self.lc3.output_size[0] * self.lc3.output_size[1]
        self.mbd_features = MinibatchDiscrimination(n_flat, mbd_kernels, mbd_dim)
        self.mbd_occupancy = MinibatchDiscrimination(1, mbd_kernels, mbd_dim)
        self.n_features = n_flat + 2 * mbd_kernels + 1

    def forward(self, image: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv(image.unsqueeze(1)), LEAKY_SLOPE)
        for lc, norm in zip((self.lc1, self.lc2, self.lc3), self.norms):
            x = norm(F.leaky_relu(lc(x), LEAKY_SLOPE))
        x = x.flatten(1)
        occupancy = (image > 0).flatten(1).float().mean(1, keepdim=True)
        return torch.cat([x, self.mbd_features(x), occupancy, self.mbd_occupancy(occupancy)], dim=1)


class CaloGANDiscriminator(nn.Module):
    """(three layer images [(B, r, c)] GeV, E_inc (B,) GeV) -> (real/fake logit (B,), E_hat (B,) GeV)."""

    def __init__(
        self,
        conv_channels: int = 64,
        lc_channels: Sequence[int] = (16, 8, 8),
        mbd_kernels: int = 10,
        mbd_dim: int = 10,
    ) -> None:
        super().__init__()
        self.streams = nn.ModuleList(
            DiscriminatorStream(shape, conv_channels, lc_channels, mbd_kernels, mbd_dim)
            for shape in CALOGAN.layer_shapes
        )
        self.mbd_energy = MinibatchDiscrimination(CALOGAN.n_layers, mbd_kernels, mbd_dim)
        n_head = sum(s.n_features for s in self.streams) + CALOGAN.n_layers + 3 + mbd_kernels
        self.head = _keras_dense(n_head, 1)

    def forward(self, images: Sequence[Tensor], energy_gev: Tensor) -> tuple[Tensor, Tensor]:
        features = torch.cat([stream(image) for stream, image in zip(self.streams, images)], dim=1)
        energies = torch.stack([image.flatten(1).sum(1) for image in images], dim=1)  # (B, 3) GeV
        total = energies.sum(1, keepdim=True)
        # energy conservation is coded in rather than learned (published choice)
        well = (total - energy_gev.reshape(-1, 1)).abs()
        too_big = 10.0 * (well > 5.0).to(well.dtype)
        head_in = torch.cat(
            [
                features,
                energies / 10.0,
                total / ENERGY_SCALE_GEV,
                well,
                too_big,
                self.mbd_energy(energies),
            ],
            dim=1,
        )
        return self.head(head_in).squeeze(1), total.squeeze(1)


class CaloGAN(RemembersDomain, L.LightningModule):
    """The CaloGAN baseline (arXiv:1712.10321) trained the published way; see the module docstring.

    Args:
        latent_dim: size of z (1024).
        gen_dense_channels, gen_conv_channels, gen_lc_channels: generator stream widths (36, 16, 6).
        attention: use the layer-to-layer in-painting attention.
        disc_conv_channels, disc_lc_channels: discriminator stream widths (64; 16, 8, 8).
        mbd_kernels, mbd_dim: minibatch discrimination kernels and their dimension (10, 10).
        lr_generator, lr_discriminator, beta1, beta2: Adam settings (2e-4, 2e-5, 0.5, 0.999).
        energy_loss_weight: weight of the MAE between generated E_hat and requested E_inc (0.05).
        energy_range_gev: requested energies of fake showers, uniform in this range (1, 100) GeV.
        generator_steps: generator updates per batch (2).
        sample_batch_size: showers per generator pass in :meth:`sample`.
        geometry: the detector; only ``calogan`` (its dict form when loaded from a checkpoint):
            any other is refused in one line (:class:`caloflow.errors.CaloflowError`).
    """

    def __init__(
        self,
        latent_dim: int = 1024,
        gen_dense_channels: int = 36,
        gen_conv_channels: int = 16,
        gen_lc_channels: int = 6,
        attention: bool = True,
        disc_conv_channels: int = 64,
        disc_lc_channels: tuple[int, int, int] = (16, 8, 8),
        mbd_kernels: int = 10,
        mbd_dim: int = 10,
        lr_generator: float = 2e-4,
        lr_discriminator: float = 2e-5,
        beta1: float = 0.5,
        beta2: float = 0.999,
        energy_loss_weight: float = 0.05,
        energy_range_gev: tuple[float, float] = (1.0, 100.0),
        generator_steps: int = 2,
        sample_batch_size: int = 10_000,
        geometry: str | dict[str, Any] = "calogan",
    ) -> None:
        resolved = get_geometry(geometry)
        if resolved != CALOGAN:
            raise CaloflowError(
                f"geometry {resolved.name}: the CaloGAN baseline is built for the CaloGAN detector "
                "only (--model.geometry calogan)"
            )
        super().__init__()
        self.save_hyperparameters(ignore=["geometry"])
        #: the detector (always CaloGAN), kept in the hyperparameters as a dict like every model's
        self.geometry: Geometry = carry_geometry(self, resolved)
        self.automatic_optimization = False
        self.generator = CaloGANGenerator(
            latent_dim, gen_dense_channels, gen_conv_channels, gen_lc_channels, attention
        )
        self.discriminator = CaloGANDiscriminator(
            disc_conv_channels, disc_lc_channels, mbd_kernels, mbd_dim
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _draw(self, n: int) -> tuple[Tensor, Tensor]:
        """Fresh latent vectors and requested energies (GeV) for n fake showers."""
        lo, hi = self.hparams.energy_range_gev
        z = torch.randn(n, self.hparams.latent_dim, device=self.device)
        energy = torch.empty(n, device=self.device).uniform_(lo, hi)
        return z, energy

    @staticmethod
    def _real_images(batch: dict[str, Tensor]) -> list[Tensor]:
        return CALOGAN.split_layers(batch["voxels"] / GEV)  # MeV -> GeV

    def _energy_mae(self, total_gev: Tensor, energy_gev: Tensor) -> Tensor:
        return (total_gev - energy_gev).abs().mean()

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        opt_d, opt_g = self.optimizers()
        real = self._real_images(batch)
        energy_real = batch["energy"].to(real[0].dtype)
        n = energy_real.shape[0]

        # discriminator: real-only and fake-only batches kept apart (BatchNorm, minibatch discrimination)
        self.toggle_optimizer(opt_d)
        logit, _ = self.discriminator(real, energy_real)
        d_loss_real = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        opt_d.zero_grad()
        self.manual_backward(d_loss_real)
        opt_d.step()

        z, energy_fake = self._draw(n)
        with torch.no_grad():
            # the published loop makes this batch with Keras' predict(): BatchNorm in inference mode
            was_training = self.generator.training
            self.generator.eval()
            fake = self.generator(z, energy_fake)
            self.generator.train(was_training)
        logit, _ = self.discriminator(fake, energy_fake)
        d_loss_fake = F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit))
        opt_d.zero_grad()
        self.manual_backward(d_loss_fake)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # generator: fresh z and energies each step; the discriminator is not updated here
        self.toggle_optimizer(opt_g)
        g_bce, g_mae = [], []
        for _ in range(self.hparams.generator_steps):
            z, energy_fake = self._draw(n)
            logit, total = self.discriminator(self.generator(z, energy_fake), energy_fake)
            bce = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            mae = self._energy_mae(total, energy_fake)
            opt_g.zero_grad()
            self.manual_backward(bce + self.hparams.energy_loss_weight * mae)
            opt_g.step()
            g_bce.append(bce.detach())
            g_mae.append(mae.detach())
        self.untoggle_optimizer(opt_g)

        g_bce, g_mae = torch.stack(g_bce).mean(), torch.stack(g_mae).mean()
        self.log_dict(
            {
                "train/d_loss_real": d_loss_real.detach(),
                "train/d_loss_fake": d_loss_fake.detach(),
                "train/d_loss": 0.5 * (d_loss_real.detach() + d_loss_fake.detach()),
                "train/g_loss": g_bce + self.hparams.energy_loss_weight * g_mae,
                "train/g_bce": g_bce,
                "train/g_energy_mae_gev": g_mae,
            },
            prog_bar=False,
            on_step=True,
            on_epoch=True,
            batch_size=n,
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        real = self._real_images(batch)
        energy = batch["energy"].to(real[0].dtype)
        z = torch.randn(energy.shape[0], self.hparams.latent_dim, device=self.device)
        fake = self.generator(z, energy)
        logit_real, _ = self.discriminator(real, energy)
        logit_fake, total_fake = self.discriminator(fake, energy)
        self.log_dict(
            {
                "val/d_loss_real": F.binary_cross_entropy_with_logits(
                    logit_real, torch.ones_like(logit_real)
                ),
                "val/d_loss_fake": F.binary_cross_entropy_with_logits(
                    logit_fake, torch.zeros_like(logit_fake)
                ),
                "val/g_energy_mae_gev": self._energy_mae(total_fake, energy),
            },
            batch_size=energy.shape[0],
        )

    def configure_optimizers(self):
        betas = (self.hparams.beta1, self.hparams.beta2)
        opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.hparams.lr_discriminator, betas=betas
        )
        opt_g = torch.optim.Adam(
            self.generator.parameters(), lr=self.hparams.lr_generator, betas=betas
        )
        return [opt_d, opt_g]

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, energies_gev: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Generate one shower per requested incident energy.

        Args:
            energies_gev: (N,) incident energies in GeV.
            generator: source of the latent noise (for reproducible samples); its device is used
                to draw z, which is then moved to the model's device.

        Returns:
            (N, V) voxel energies in MeV, float32, non-negative, in the CaloGAN flattening order
            (layer 0, 1, 2; each row-major over (phi, eta), as ``CALOGAN.join_layers``).
        """
        energies = torch.as_tensor(energies_gev, dtype=torch.float32).reshape(-1)
        was_training = self.generator.training
        self.generator.eval()
        try:
            out = []
            for chunk in energies.split(self.hparams.sample_batch_size):
                noise_device = generator.device if generator is not None else self.device
                z = torch.randn(
                    chunk.shape[0],
                    self.hparams.latent_dim,
                    generator=generator,
                    device=noise_device,
                )
                out.append(self.generator.decode(z.to(self.device), chunk.to(self.device)).cpu())
        finally:
            self.generator.train(was_training)
        voxels = torch.cat(out) if out else torch.zeros(0, CALOGAN.n_voxels)
        return voxels


__all__ = [
    "LEAKY_SLOPE",
    "ENERGY_SCALE_GEV",
    "GeneratorStream",
    "resize_layer0_to_layer1",
    "resize_layer1_to_layer2",
    "CaloGANGenerator",
    "DiscriminatorStream",
    "CaloGANDiscriminator",
    "CaloGAN",
]
