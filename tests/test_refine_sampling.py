"""HMC, rejection sampling and classifier weights against known densities."""

import math

import lightning as L
import pytest
import torch

from caloflow.models import ShowerClassifier
from caloflow.training import make_trainer
from refine import hmc, laser_log_prob, rejection_sample, resample, weights_from_logits
from refine.classifier import labelled_points, log_weight, point_logits, train_classifier
from refine.data import TensorLoader

#: small models train fastest on one thread
pytestmark = pytest.mark.usefixtures("one_thread")


def test_hmc_reproduces_gaussian_mean_and_variance():
    mu = torch.tensor([1.0, -2.0, 0.5])
    sd = torch.tensor([0.5, 2.0, 1.0])

    def log_prob(z):
        return -0.5 * (((z - mu) / sd) ** 2).sum(-1)

    g = torch.Generator().manual_seed(0)
    init = torch.randn(400, 3, generator=g) * 3
    samples, rate = hmc(
        log_prob,
        init,
        step_size=0.25,
        n_leapfrog=10,
        n_samples=60,
        burn_in=40,
        generator=g,
        progress=False,
    )
    assert samples.shape == (60, 400, 3)
    assert 0.5 < rate <= 1.0
    flat = samples.reshape(-1, 3)
    assert ((flat.mean(0) - mu).abs() / sd < 0.1).all()
    assert ((flat.var(0) / sd**2 - 1).abs() < 0.1).all()


def test_hmc_same_seed_same_chain():
    def log_prob(z):
        return -0.5 * (z * z).sum(-1)

    runs = [
        hmc(
            log_prob,
            torch.zeros(5, 2),
            step_size=0.3,
            n_leapfrog=5,
            n_samples=4,
            burn_in=2,
            generator=torch.Generator().manual_seed(7),
            progress=False,
        )[0]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_laser_target_is_prior_times_weight():
    """log N(z) + log w(g(z)) with g = identity and w = exp(a.z) is N(a, I) (eq. 3)."""
    a = torch.tensor([1.5, -0.5])
    target = laser_log_prob(lambda z: z, lambda x: x @ a)
    g = torch.Generator().manual_seed(1)
    samples, _ = hmc(
        target,
        torch.randn(300, 2, generator=g),
        step_size=0.3,
        n_leapfrog=8,
        n_samples=50,
        burn_in=30,
        generator=g,
        progress=False,
    )
    flat = samples.reshape(-1, 2)
    assert (flat.mean(0) - a).abs().max() < 0.1
    assert ((flat.var(0) - 1).abs() < 0.1).all()


def test_chunked_gradient_equals_autograd_of_the_whole_batch():
    """log_prob_and_grad over blocks of chains, each with its own context rows, equals the gradient of the
    whole batch at once and the analytic one: d/dz [-z^2/2 + E tanh(z).1] = -z + E (1 - tanh^2 z)."""
    from refine.mcmc import log_prob_and_grad

    g = torch.Generator().manual_seed(3)
    z, energies = (
        torch.randn(10, 4, generator=g, dtype=torch.float64),
        torch.rand(10, generator=g, dtype=torch.float64),
    )
    target = laser_log_prob(lambda z, e: torch.tanh(z), lambda x, e: e * x.sum(-1))
    whole = log_prob_and_grad(target, z, (energies,))
    for chunk in (1, 3, 10, 25):
        lp, grad = log_prob_and_grad(target, z, (energies,), chunk_size=chunk)
        assert torch.allclose(lp, whole[0], rtol=0, atol=1e-12) and torch.allclose(
            grad, whole[1], rtol=0, atol=1e-12
        )
    analytic = -z + energies[:, None] * (1 - torch.tanh(z) ** 2)
    assert torch.allclose(whole[1], analytic, rtol=0, atol=1e-12)


def test_conditional_hmc_in_chunks_samples_each_chains_target():
    """Chains at different contexts E sample N(E a, I) (w = exp(E a.z)); in blocks of 7 chains the
    chains are the same as all at once."""
    a = torch.tensor([1.0, -0.5], dtype=torch.float64)
    target = laser_log_prob(lambda z, e: z, lambda x, e: e * (x @ a))
    energies = torch.tensor([-1.0, 2.0]).repeat_interleave(150).double()
    init = torch.randn(300, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    runs = [
        hmc(
            target,
            init,
            step_size=0.3,
            n_leapfrog=8,
            n_samples=40,
            burn_in=30,
            context=(energies,),
            chunk_size=chunk,
            generator=torch.Generator().manual_seed(5),
            progress=False,
        )[0]
        for chunk in (None, 7)
    ]
    assert torch.allclose(runs[0], runs[1], rtol=0, atol=1e-9)
    for e in (-1.0, 2.0):
        flat = runs[1][:, energies == e].reshape(-1, 2)
        assert (flat.mean(0) - e * a).abs().max() < 0.15
        assert ((flat.var(0) - 1).abs() < 0.15).all()


def test_rejection_sampling_reproduces_weighted_density():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(200_000, 2, generator=g)
    # w = N(z; m, s^2) / N(z; 0, 1): the weighted density is N(m, s^2) exactly
    m, s = torch.tensor([0.8, -0.4]), 0.6
    log_w = (-0.5 * ((z - m) / s) ** 2 - math.log(s)).sum(-1) + 0.5 * (z**2).sum(-1)
    w = torch.exp(log_w)
    kept = rejection_sample(z, w, generator=g)
    assert len(kept) > 10_000
    assert (kept.mean(0) - m).abs().max() < 0.03
    assert (kept.std(0) / s - 1).abs().max() < 0.05
    # a 1D step weight: w = 2 for z > 0, 1 otherwise -> P(z > 0) = 2/3
    w_step = 1.0 + (z[:, 0] > 0).double()
    kept = rejection_sample(z, w_step, generator=g)
    assert abs((kept[:, 0] > 0).double().mean().item() - 2 / 3) < 0.01
    picked = resample(z, w_step, 60_000, generator=g)
    assert abs((picked[:, 0] > 0).double().mean().item() - 2 / 3) < 0.01


def test_weights_are_exp_logit():
    logits = torch.linspace(-6, 6, 101)
    f = torch.sigmoid(logits)
    w = weights_from_logits(logits, normalise=False)
    assert torch.allclose(w, f / (1 - f), rtol=1e-4)
    assert torch.allclose(w, torch.exp(logits), rtol=1e-6)
    wn = weights_from_logits(logits, clip=10.0)
    assert abs(wn.mean().item() - 1) < 1e-5
    assert torch.allclose(wn / wn.max(), torch.exp(logits).clamp(max=10) / 10, rtol=1e-5)


def test_trained_classifier_weight_is_likelihood_ratio(tmp_path):
    """Real N((1, 0), I) vs generated N(0, I): log p_real/p_gen = x0 - 1/2, linear in x.

    refine's classifier IS caloflow's one ShowerClassifier (mlp backbone), with its label
    convention 1 = real: its logit is log w = log p_real/p_gen."""
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    fake = torch.randn(20_000, 2, generator=g)
    real = torch.randn(20_000, 2, generator=g) + torch.tensor([1.0, 0.0])
    clf = train_classifier(
        real,
        fake,
        make_trainer(10, tmp_path, "clf"),
        batch_size=1000,
        hidden=32,
        n_hidden=2,
        lr=3e-3,
    )
    assert type(clf) is ShowerClassifier and clf.hparams.backbone == "mlp" and not clf.training
    x = torch.stack([torch.linspace(-1.0, 2.0, 7), torch.zeros(7)], 1)
    logits = point_logits(clf, x)
    assert torch.equal(logits, clf.logits({"x": x})) and torch.equal(logits, log_weight(clf)(x))
    w = weights_from_logits(logits, normalise=False)
    true = torch.exp(x[:, 0] - 0.5)
    assert ((w / true).log().abs() < 0.25).all()
    assert list((tmp_path / "clf").glob("events.out.tfevents*"))


def test_classifier_batches_label_real_one():
    """train_classifier feeds ShowerClassifier dict batches {"x", "label", "weight"}: real -> 1, generated -> 0,
    both classes with the same total weight."""
    real, fake = torch.randn(6, 2), torch.randn(4, 2)
    data = labelled_points(real, fake, w_fake=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert data["label"].tolist() == [1.0] * 6 + [0.0] * 4
    assert torch.equal(data["x"][:6], real) and torch.equal(data["x"][6:], fake)
    assert torch.isclose(data["weight"][:6].sum(), data["weight"][6:].sum())
    (batch,) = list(TensorLoader(**data, batch_size=10, seed=0))
    assert set(batch) == {"x", "label", "weight"}
    (plain,) = list(TensorLoader(*data.values(), batch_size=10, seed=0))
    assert all(
        torch.equal(batch[k], t) for k, t in zip(data, plain)
    )  # same order by name or by position
    clf = ShowerClassifier("mlp", backbone_args={"n_features": 2, "hidden": 4, "n_hidden": 1})
    assert clf.loss(batch).ndim == 0


def test_hmc_step_size_adapts_in_burn_in_and_samples_the_target():
    """A 200-dim standard normal from a 20x too small step: the burn-in adaptation brings the acceptance
    near its target, and the frozen kernel afterwards samples the right variance; without it the
    chains accept everything and barely move."""

    def log_prob(z):
        return -0.5 * (z * z).sum(-1)

    g = torch.Generator().manual_seed(3)
    init = (
        torch.randn(64, 200, generator=g) * 0.3
    )  # too narrow a start: the chains must move to unit variance
    info = {}
    samples, rate = hmc(
        log_prob,
        init,
        step_size=0.01,
        n_leapfrog=5,
        n_samples=40,
        burn_in=60,
        generator=g,
        progress=False,
        target_acceptance=0.8,
        info=info,
    )
    assert 0.65 < rate < 0.95, rate
    assert info["step_size"].shape == (64,) and info["step_size"].min() > 0.1
    assert abs(float(samples[-20:].var()) - 1) < 0.1
    fixed, fixed_rate = hmc(
        log_prob,
        init,
        step_size=0.01,
        n_leapfrog=5,
        n_samples=40,
        burn_in=60,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    assert fixed_rate > 0.99 and float(fixed[-20:].var()) < 0.5
