"""CaloFlow and CaloGAN behind refine's generator protocol (refine.showers), and the decode paths of the models.

Small random-initialised models (weights perturbed so that no block is near the identity); no mocks.
``decode`` is compared with what ``caloflow generate`` writes (the CLI itself, run in-process on
saved checkpoints, with its latent draws reproduced from the same seed), and its gradient with
central finite differences and with autograd through nflows' own inverse.
"""

from __future__ import annotations

import pytest
import torch

from caloflow.commands.cli import main as cli_main
from caloflow.data.io import read_showers
from caloflow.flows.fast_inverse import fast_inverse
from caloflow.geometry import layer_energies as layer_sums
from caloflow.models.calogan import CaloGAN
from caloflow.models.flows import FlowI, FlowII
from caloflow.sampling import CaloGANSampler
from refine import CaloFlowGenerator, CaloGANGenerator, Generator, generate
from refine.mcmc import laser_log_prob
from tests.helpers import TINY_GAN, save_checkpoint, tiny_flows


@pytest.fixture(scope="module")
def flows() -> tuple[FlowI, FlowII]:
    return tiny_flows()


def test_decode_is_what_caloflow_generate_writes(flows, tmp_path):
    """``caloflow generate`` (the CLI, in-process) draws per batch z_I (n, 3) then z_II (n, 504) from
    ``torch.Generator().manual_seed(seed)``: ``sample_latent`` once per batch with such a generator gives
    the same latent points, and ``decode`` at the file's incident energies the same showers, bit for bit."""
    flow1, flow2 = flows
    ckpt1, ckpt2 = (
        save_checkpoint(flow1, tmp_path / "f1.ckpt"),
        save_checkpoint(flow2, tmp_path / "f2.ckpt"),
    )
    n, batch, seed = 10, 4, 3
    out = tmp_path / "gen.h5"
    assert (
        cli_main(
            [
                "generate",
                "--flow1",
                ckpt1,
                "--flow2",
                ckpt2,
                "--n",
                str(n),
                "--batch-size",
                str(batch),
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    written = read_showers(out)
    energies = torch.as_tensor(written.energy)

    g = CaloFlowGenerator(flow1, flow2, incident_gev=energies)
    assert isinstance(g, Generator) and g.latent_shape == (507,)
    rng = torch.Generator().manual_seed(seed)
    z = torch.cat([g.sample_latent(len(chunk), rng) for chunk in energies.split(batch)])
    with torch.no_grad():  # in the batches of the CLI: another batch size may round differently
        voxels = torch.cat(
            [g.decode(zb, eb) for zb, eb in zip(z.split(batch), energies.split(batch))]
        )
        whole = g.decode(z)
    assert voxels.shape == (n, 504) and voxels.dtype == torch.float32
    assert (voxels > 0).any(), "the comparison needs showers with deposits"
    assert torch.equal(voxels, torch.as_tensor(written.voxels))
    assert torch.allclose(whole, voxels, rtol=1e-4, atol=1e-6)
    # the protocol's batched generation: the CLI's first batch; the energies given at construction by default
    first = CaloFlowGenerator(flow1, flow2, incident_gev=energies[:batch])
    _, again = generate(first, batch, torch.Generator().manual_seed(seed), batch_size=batch)
    assert torch.equal(again, voxels[:batch])
    with torch.no_grad():
        assert torch.equal(CaloFlowGenerator(flow1, flow2).decode(z, energies), whole)
    # grad mode on but z without grad: still the graph-free path; z requiring grad: the differentiable
    # path, the same showers up to float rounding
    plain = g.decode(z)
    assert plain.grad_fn is None and torch.equal(plain, whole)
    assert torch.allclose(
        g.decode(z.clone().requires_grad_(True)).detach(), whole, rtol=1e-5, atol=1e-6
    )


def test_model_sample_is_latent_draw_then_decode(flows):
    """FlowI.sample / FlowII.sample draw z with the generator and decode it (one code path), also with
    nflows' inverse."""
    flow1, flow2 = flows
    e = torch.tensor([3.0, 20.0, 70.0])
    layers = flow1.sample(e, torch.Generator().manual_seed(5))
    assert torch.equal(
        layers, flow1.decode(torch.randn(3, 3, generator=torch.Generator().manual_seed(5)), e)
    )
    for fast in (True, False):
        shower = flow2.sample(
            e, layers, torch.Generator().manual_seed(6), fast=fast, threshold=False
        )
        z_2 = torch.randn(3, 504, generator=torch.Generator().manual_seed(6))
        assert torch.equal(shower, flow2.decode(z_2, e, layers, fast=fast, threshold=False))
    assert flow2.decode(z_2, e, layers).grad_fn is None  # no graph unless asked for


def test_layer_sums_before_the_threshold_are_flow1_layer_energies(flows):
    flow1, flow2 = flows
    e = torch.tensor([2.0, 10.0, 45.0, 99.0])
    g = CaloFlowGenerator(flow1, flow2, incident_gev=e, threshold=False)
    z = g.sample_latent(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw, layers = g.decode(z), g.layer_energies(z)
        cut = CaloFlowGenerator(flow1, flow2, incident_gev=e).decode(z)
    assert torch.equal(layers, flow1.decode(z[:, :3], e))
    assert (layers > 0).all() and (layers.sum(1) <= e * 1000 * (1 + 1e-6)).all()
    assert torch.allclose(layer_sums(raw).double(), layers.double(), rtol=1e-4, atol=0)
    # the threshold only zeroes voxels below 10 keV
    assert torch.equal(cut, torch.where(raw >= 0.01, raw, torch.zeros_like(raw)))


def test_gradient_matches_finite_differences_and_nflows_autograd():
    """float64: d/dz of a smooth function of g(z) (no threshold) through the fast differentiable inverse
    equals central finite differences along a few directions (in z_I, in z_II, in both), and equals
    autograd through nflows' own inverse of Flow II."""
    flow1, flow2 = tiny_flows(torch.float64, seed=2)
    e = torch.tensor([8.0, 60.0], dtype=torch.float64)
    fast, nflows = (
        CaloFlowGenerator(flow1, flow2, incident_gev=e, fast=f, threshold=False)
        for f in (True, False)
    )
    z = fast.sample_latent(2, torch.Generator().manual_seed(4))
    assert z.dtype == torch.float64
    w = torch.rand(2, 504, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def objective(g: CaloFlowGenerator, z: torch.Tensor) -> torch.Tensor:
        return (w * torch.log1p(g.decode(z))).sum()

    zr = z.clone().requires_grad_(True)
    grad = torch.autograd.grad(objective(fast, zr), zr)[0]
    assert (
        torch.isfinite(grad).all() and grad[:, :3].abs().sum() > 0 and grad[:, 3:].abs().sum() > 0
    )
    zr_ref = z.clone().requires_grad_(True)
    grad_ref = torch.autograd.grad(objective(nflows, zr_ref), zr_ref)[0]
    assert torch.allclose(grad, grad_ref, rtol=1e-8, atol=1e-10 * grad.abs().max().item())

    directions = torch.zeros(3, *z.shape, dtype=torch.float64)
    directions[0, :, :3] = torch.randn(
        2, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64
    )
    directions[1, :, 3:] = torch.randn(
        2, 504, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    directions[2] = torch.randn(
        *z.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64
    )
    h = 1e-5
    with torch.no_grad():
        for v in directions / directions.flatten(1).norm(dim=1)[:, None, None]:
            numeric = (objective(fast, z + h * v) - objective(fast, z - h * v)) / (2 * h)
            assert torch.isclose((grad * v).sum(), numeric, rtol=1e-6, atol=1e-8)


def test_differentiable_fast_inverse_gradcheck_and_default_path_unchanged():
    """fast_inverse(differentiable=True): exact gradients in z and the context (gradcheck), the same
    values as the default path, which keeps no graph even when its inputs require grad."""
    _, flow2 = tiny_flows(torch.float64, seed=3)
    transform = flow2.flow._transform
    z = torch.randn(2, 504, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = fast_inverse(transform, z, c, differentiable=True)
    default = fast_inverse(transform, z, c)
    assert out.grad_fn is not None and default.grad_fn is None
    assert torch.allclose(out, default, rtol=0, atol=1e-12)
    idx = torch.tensor([0, 100, 300, 503])  # a few outputs keep gradcheck's Jacobian small
    assert torch.autograd.gradcheck(
        lambda z, c: fast_inverse(transform, z, c, differentiable=True)[:, idx],
        (z, c),
        fast_mode=True,
    )
    with torch.no_grad():  # under no_grad the flag changes nothing
        assert fast_inverse(transform, z, c, differentiable=True).grad_fn is None


def test_hmc_target_through_caloflow_is_differentiable(flows):
    flow1, flow2 = flows
    g = CaloFlowGenerator(flow1, flow2, incident_gev=torch.tensor(30.0))
    z = g.sample_latent(3, torch.Generator().manual_seed(0)).requires_grad_(True)
    target = laser_log_prob(g.decode, lambda x: -1e-3 * torch.log1p(x).sum(-1))
    target(z).sum().backward()
    assert (
        torch.isfinite(z.grad).all()
        and z.grad[:, :3].abs().sum() > 0
        and z.grad[:, 3:].abs().sum() > 0
    )


def test_incident_energies_are_checked(flows):
    g = CaloFlowGenerator(*flows)
    z = g.sample_latent(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no incident energies"):
        g.decode(z)
    with pytest.raises(ValueError, match="3 incident energies for 2"):
        g.decode(z, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="shape"):
        g.decode(z[:, :504], torch.tensor([1.0, 2.0]))


def test_calogan_generator_is_calogan_sample():
    """CaloGANGenerator: latent R^latent_dim (the module's: 1024 for the published CaloGAN), decode (n, 504)
    MeV equal to the CaloGAN sampling code path (``caloflow generate --calogan``) for the same seed."""
    import inspect

    assert inspect.signature(CaloGAN).parameters["latent_dim"].default == 1024
    torch.manual_seed(0)
    gan = CaloGAN(**TINY_GAN)
    e = torch.tensor([5.0, 50.0, 95.0])
    expected = torch.as_tensor(
        CaloGANSampler(gan).sample(e, torch.Generator().manual_seed(9)).voxels
    )

    g = CaloGANGenerator(gan, incident_gev=e)
    assert isinstance(g, Generator) and g.latent_shape == (8,)
    assert CaloGANGenerator(gan.generator).latent_shape == (8,)
    z = g.sample_latent(3, torch.Generator().manual_seed(9))
    with torch.no_grad():
        voxels = g.decode(z)
    assert voxels.shape == (3, 504) and voxels.dtype == torch.float32 and (voxels > 0).any()
    assert torch.equal(voxels, expected)

    gan.train()  # decode uses BatchNorm's running averages whatever the mode, and restores it
    zr = z.clone().requires_grad_(True)
    g.decode(zr).sum().backward()
    assert gan.generator.training and torch.isfinite(zr.grad).all() and zr.grad.abs().sum() > 0
    with pytest.raises(TypeError):
        CaloGANGenerator(torch.nn.Linear(2, 2))
