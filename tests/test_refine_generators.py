"""Generator adapters and the OmniFold pull-back for a generator with hidden randomness."""

import lightning as L
import pytest
import torch

from caloflow.training import make_trainer
from refine import BlackBoxGenerator, FlowGenerator, generate, omnifold_pullback
from refine.toys import real_nvp, sample_toy

#: small models train fastest on one thread
pytestmark = pytest.mark.usefixtures("one_thread")


def test_flow_generator_decode_inverts_the_flow():
    flow = real_nvp(
        n_blocks=4,
        hidden=16,
        n_hidden=1,
        shift=torch.tensor([1.0, -2.0]),
        scale=torch.tensor([3.0, 0.5]),
    )
    g = FlowGenerator(flow)
    z = g.sample_latent(64, torch.Generator().manual_seed(0))
    assert torch.equal(z, g.sample_latent(64, torch.Generator().manual_seed(0)))
    x = g.decode(z)
    z_back, _ = flow._transform(x)
    assert torch.allclose(z_back, z, atol=1e-4)
    # differentiable in z (needed by HMC)
    zr = z.clone().requires_grad_(True)
    g.decode(zr).sum().backward()
    assert torch.isfinite(zr.grad).all() and zr.grad.abs().sum() > 0


def test_toy_samplers_are_seeded_and_shaped():
    for name in ("gaussians", "donut", "rings"):
        a, b = sample_toy(name, 1000, seed=5), sample_toy(name, 1000, seed=5)
        assert a.shape == (1000, 2) and (a == b).all()
    rings = sample_toy("rings", 30_000, seed=1)
    centre = rings[rings[:, 0] > 6] - [12.0, 0.0]
    r = (centre**2).sum(1) ** 0.5
    assert abs(r.mean() - 4.0) < 0.1 and abs(r.std() - 1.0) < 0.1


def test_omnifold_makes_weights_a_function_of_z(tmp_path):
    """g(z, eps) = z + 0.5 eps with hidden eps; truth = g applied to N(0.5, 1) in each coordinate.

    The exact latent weight is nu(z) = N(z; 0.5, 1) / N(z; 0, 1) = exp(0.5 z_1 - 1/8) (first coordinate
    shifted only); OmniFold must recover it as a function of z.
    """
    L.seed_everything(0, verbose=False)
    noise = torch.Generator().manual_seed(1)
    g = BlackBoxGenerator(
        lambda z, gen: z + 0.5 * torch.randn(z.shape, generator=gen), latent_dim=2, generator=noise
    )
    assert not g.deterministic
    z, x = generate(g, 12_000, torch.Generator().manual_seed(2))
    z_true = torch.randn(12_000, 2, generator=torch.Generator().manual_seed(3)) + torch.tensor(
        [0.5, 0.0]
    )
    truth = g.decode(z_true)
    result = omnifold_pullback(
        truth,
        z,
        x,
        lambda name: make_trainer(4, tmp_path, name),
        iterations=2,
        batch_size=1000,
        hidden=32,
        n_hidden=2,
        lr=3e-3,
    )
    assert len(result.weights) == 2
    grid = torch.stack([torch.linspace(-1.5, 1.5, 7), torch.zeros(7)], 1)
    nu = result.weight_fn()(grid)
    exact = torch.exp(0.5 * grid[:, 0] - 0.125)
    ratio = nu / exact
    ratio = ratio / ratio.mean()
    assert ((ratio.log()).abs() < 0.2).all(), (nu, exact)
    # the weighted latent mean moves towards the truth's 0.5
    w = result.final
    assert abs((w * z[:, 0]).sum() / w.sum() - 0.5) < 0.12


def test_flow_generator_refines_caloflow_flow2():
    """CaloFlow's Flow II behind the generator protocol: decode(z) is the shower model's own inverse
    (same showers as ``FlowII.sample`` for the same noise), differentiable for HMC."""
    from caloflow.geometry import layer_energies
    from caloflow.models import FlowII
    from refine.mcmc import laser_log_prob

    torch.manual_seed(0)
    model = FlowII(n_blocks=2, hidden_features=16, num_bins=4, fast_sampling=False).eval()
    incident = torch.tensor([10.0, 50.0, 90.0])
    layers = torch.tensor(
        [[1500.0, 7000.0, 300.0], [6000.0, 40000.0, 1500.0], [9000.0, 75000.0, 2500.0]]
    )
    context = model.preprocessing.context(incident, layers).float()
    g = FlowGenerator(model.flow, context=context)
    z = g.sample_latent(3, torch.Generator().manual_seed(7))
    assert z.shape == (3, 504)
    showers = model.preprocessing.inverse(g.decode(z), layers)
    expected = model.sample(incident, layers, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(showers, expected, rtol=1e-5, atol=1e-3)
    # layer sums are the conditioning energies (MeV), as CaloFlow guarantees before the readout cut
    raw = model.preprocessing.inverse(g.decode(z), layers, threshold=False)
    assert torch.allclose(layer_energies(raw).double(), layers.double(), rtol=1e-4)
    # the LaSeR target log N(z) + log w(g(z)) is differentiable through Flow II
    zr = z.clone().requires_grad_(True)
    target = laser_log_prob(g.decode, lambda x: -0.01 * x.pow(2).sum(-1))
    target(zr).sum().backward()
    assert torch.isfinite(zr.grad).all() and zr.grad.abs().sum() > 0
