"""The weighted-GAN refiner reproduces an analytically known weighted 2D target."""

import math

import lightning as L
import pytest
import torch

from caloflow.training import make_trainer
from refine import RefinedGenerator, WeightedGANRefiner
from refine.data import TensorLoader
from refine.metrics import emd2d

#: small models train fastest on one thread
pytestmark = pytest.mark.usefixtures("one_thread")

M, S = torch.tensor([1.0, -0.5]), 0.6  # weighted target N(M, S^2 I)
RANGE = [[-2.0, 3.0], [-3.0, 2.0]]


def _weighted_latent(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    # w = N(z; M, S^2) / N(z; 0, 1): p_Z(z) w(z) is exactly N(M, S^2 I)
    log_w = (-0.5 * ((z - M) / S) ** 2 - math.log(S)).sum(-1) + 0.5 * (z**2).sum(-1)
    w = torch.exp(log_w)
    return z, w / w.mean()


def test_weighted_discriminator_loss_weights_only_real_term():
    gan = WeightedGANRefiner(hidden=8, n_hidden=1)
    z, fake = torch.randn(6, 2), torch.randn(6, 2)
    w = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    loss = gan.discriminator_loss(z, w, fake)
    d_real, d_fake = gan.discriminator(z).squeeze(-1), gan.discriminator(fake).squeeze(-1)
    expected = (
        w * torch.nn.functional.softplus(-d_real)
    ).sum() / w.sum() + torch.nn.functional.softplus(d_fake).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # the generator loss does not depend on weights: -log D(fake)
    assert torch.allclose(
        gan.generator_loss(fake), torch.nn.functional.softplus(-d_fake).mean(), atol=1e-6
    )


def test_refiner_matches_weighted_gaussian(tmp_path):
    L.seed_everything(0, verbose=False)
    z, w = _weighted_latent(20_000, 0)
    gan = WeightedGANRefiner(aux_dim=4, hidden=32, n_hidden=3, lr=1e-3, residual=True)
    make_trainer(20, tmp_path, "gan").fit(gan, TensorLoader(z, w, batch_size=500, seed=0))
    refined = gan.refine(20_000, torch.Generator().manual_seed(1)).numpy()
    target = (M + S * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2))).numpy()
    prior = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(3)).numpy()
    emd_refined = emd2d(refined, target, bins=25, range=RANGE)
    emd_prior = emd2d(prior, target, bins=25, range=RANGE)
    floor = emd2d((M + S * torch.randn(20_000, 2)).numpy(), target, bins=25, range=RANGE)
    # the unrefined prior is ~1.1 away; the refiner must land within 0.15 (floor ~0.03)
    assert emd_prior > 0.9
    assert emd_refined < 0.15, (emd_refined, floor)
    assert list((tmp_path / "gan").glob("events.out.tfevents*"))

    # refined samples are g(Phi(y)); with g = 2 z the refined data follow N(2M, (2S)^2)
    class Doubler:
        def sample_latent(self, n, generator=None):
            return torch.randn(n, 2, generator=generator)

        def decode(self, z):
            return 2 * z

    g = RefinedGenerator(Doubler(), gan)
    with torch.no_grad():
        y = g.sample_latent(20_000, torch.Generator().manual_seed(4))
        x = g.decode(y)
        assert torch.allclose(x, 2 * gan(y))
    assert (x.mean(0) - 2 * M).abs().max() < 0.3


def test_ema_generator_is_the_moving_average_used_for_sampling(tmp_path):
    L.seed_everything(0, verbose=False)
    z, w = _weighted_latent(2_000, 0)
    gan = WeightedGANRefiner(hidden=8, n_hidden=1, lr=1e-2, n_critic=1, ema=0.5)
    start = [p.clone() for p in gan.generator.parameters()]
    trainer = make_trainer(1, tmp_path, "gan", log_every_n_steps=1)
    trainer.fit(gan, TensorLoader(z, w, batch_size=1_000, seed=0))
    # two generator updates with decay 0.5: avg = 0.25 start + 0.25 theta_1 + 0.5 theta_2, unlike either end
    trained = list(gan.generator.parameters())
    averaged = list(gan.generator_ema.parameters())
    assert all(not torch.allclose(a, t) for a, t in zip(averaged, trained))
    assert all(not torch.allclose(a, s) for a, s in zip(averaged, start))
    assert all(not p.requires_grad for p in averaged)
    y = gan.sample_latent(16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = gan.generator_ema(y)
    assert torch.allclose(gan.decode(y), expected)
    assert torch.allclose(gan.refine(16, torch.Generator().manual_seed(0)), expected)


def test_paired_refiner_matches_weighted_gaussian(tmp_path):
    """``paired``: the fakes are Phi(z_i) of the weighted points themselves; the refined density is still
    p_Z w / Z_0 (the z_i are prior draws), here the known N(M, S^2 I)."""
    L.seed_everything(0, verbose=False)
    z, w = _weighted_latent(20_000, 0)
    gan = WeightedGANRefiner(
        latent_dim=2, aux_dim=2, hidden=32, n_hidden=3, lr=1e-3, residual=True, paired=True
    )
    make_trainer(20, tmp_path, "gan").fit(gan, TensorLoader(z, w, batch_size=500, seed=0))
    refined = gan.refine(20_000, torch.Generator().manual_seed(1)).numpy()
    target = (M + S * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2))).numpy()
    assert emd2d(refined, target, bins=25, range=RANGE) < 0.15


def test_paired_fakes_keep_an_unweighted_high_dimensional_latent_space_in_place(tmp_path):
    """With all weights 1 there is nothing to refine: Phi should stay the identity. In 128 dimensions a
    discriminator fed fresh fakes can separate the finite real set from them and moves the refiner
    away; with paired fakes it cannot, and Phi stays close to the identity."""
    dim, n = 128, 2000
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(5))
    w = torch.ones(n)
    shift = {}
    for paired in (False, True):
        L.seed_everything(0, verbose=False)
        gan = WeightedGANRefiner(
            latent_dim=dim,
            aux_dim=dim,
            hidden=256,
            n_hidden=2,
            lr=1e-3,
            residual=True,
            zero_init=True,
            paired=paired,
        )
        make_trainer(30, tmp_path, f"paired{paired}").fit(
            gan, TensorLoader(z, w, batch_size=250, seed=0)
        )
        y = torch.randn(4000, dim, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            shift[paired] = float(((gan(y) - y) ** 2).sum(-1).mean() / dim)
    print("mean squared shift per dimension:", shift)
    assert shift[True] < 0.05 and shift[False] > 3 * shift[True]
