"""The LaSeR flow refiner (:class:`refine.flow_refiner.WeightedFlowRefiner`): weighted maximum
likelihood on a Gaussian latent space with a known reweighting, the identity at the start (bit for
bit on real tiny flows), and the shower protocol end to end with it (``python -m refine.laser`` and
``caloflow generate --refiner`` as real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from caloflow.data.io import read_energies
from caloflow.data.simulate import simulate_to_file
from tests.helpers import save_checkpoint, tiny_flows
from tests.test_refine_showers import TINY, _datasets, _run

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 4
FLOW_REFINER = """  class_path: refine.flow_refiner.WeightedFlowRefiner
  init_args: {n_blocks: 2, hidden: 16, n_hidden: 1, lr: 1.0e-2}
"""


def test_weighted_likelihood_recovers_a_known_reweighting():
    """Latent z ~ N(0, I_3), weights w(z) = N(z; mu, S) / N(z; 0, I): the weighted sample is N(mu, S)
    (eq. 3). The refiner trained by weighted maximum likelihood samples a density whose mean and
    covariance match mu and S within 4 standard errors of the weighted sample (its effective size
    n_eff = (sum w)^2 / sum w^2; var of a covariance entry (S_ij^2 + S_ii S_jj) / n_eff), while the
    prior is many standard errors away; the refiner depends on the context when the weights do."""
    from caloflow.training import make_trainer
    from refine.data import TensorLoader
    from refine.flow_refiner import WeightedFlowRefiner

    torch.manual_seed(0)
    d, n = 3, 20_000
    mu = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    cov = torch.tensor([[0.6, 0.15, 0.0], [0.15, 0.8, -0.1], [0.0, -0.1, 0.7]], dtype=torch.float64)
    z = torch.randn(n, d, dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(mu, cov)
    log_w = target.log_prob(z) + 0.5 * (z * z).sum(1) + 0.5 * d * np.log(2 * np.pi)
    w = torch.exp(log_w)
    n_eff = float(w.sum() ** 2 / (w * w).sum())
    phi = WeightedFlowRefiner(
        latent_dim=d, context_dim=1, n_blocks=4, hidden=32, n_hidden=1, lr=1e-2, lr_decay=0.85
    )
    loader = TensorLoader(z.float(), w.float(), torch.zeros(n, 1), batch_size=500, seed=0)
    make_trainer(25, None).fit(phi, loader)
    m = 200_000
    with torch.no_grad():
        sample = phi.refine(m, torch.Generator().manual_seed(1), torch.zeros(m, 1)).double()
    var = torch.diag(cov)
    mean_pull = (sample.mean(0) - mu) / (var / n_eff + var / m).sqrt()
    cov_err = ((cov**2 + torch.outer(var, var)) * (1 / n_eff + 1 / m)).sqrt()
    cov_pull = (torch.cov(sample.T) - cov) / cov_err
    assert mean_pull.abs().max() < 4 and cov_pull.abs().max() < 4, (mean_pull, cov_pull)
    prior_pull = mu / (var / n_eff).sqrt()  # the unrefined latent's mean (0) in the same units
    assert prior_pull.abs().max() > 20
    # the log density is normalised: E_q[-log q] is the Gaussian entropy of the fitted covariance
    with torch.no_grad():
        lp = phi.log_prob(sample[:20_000].float(), torch.zeros(20_000, 1)).double()
    entropy = 0.5 * torch.logdet(2 * np.pi * np.e * cov)
    assert abs(float(-lp.mean()) - float(entropy)) < 0.05


def test_identity_refiner_reproduces_the_unrefined_showers_bit_for_bit(tmp_path):
    """A refiner fresh from its constructor is T(y, c) = y exactly for every E_inc (zero conditioners),
    log q(z) = log N(z; 0, I); on tiny CaloGAN-geometry flows, generation through it (saved and loaded
    back as ``caloflow generate --refiner`` loads it) writes the unrefined showers bit for bit."""
    from caloflow.sampling import CaloFlow
    from refine.flow_refiner import WeightedFlowRefiner
    from refine.shower_refiner import RefinedSampler, incident_context, load_refiner, save_refiner

    flow1, flow2 = tiny_flows()
    paths = {
        "flow1": save_checkpoint(flow1, tmp_path / "f1.ckpt"),
        "flow2": save_checkpoint(flow2, tmp_path / "f2.ckpt"),
    }
    torch.manual_seed(0)
    phi = WeightedFlowRefiner(latent_dim=507, context_dim=1, hidden=8, n_hidden=1)
    y = torch.randn(6, 507)
    context = incident_context(torch.tensor([1.0, 5.0, 10.0, 20.0, 50.0, 100.0]))
    assert torch.equal(phi.decode(y, context), y)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(1)
    assert torch.allclose(phi.log_prob(y, context), normal, atol=1e-3)
    save_refiner(tmp_path / "refiner.ckpt", phi, "caloflow", paths, seed=0, batch_size=20)
    loaded, entry = load_refiner(tmp_path / "refiner.ckpt", checkpoints=paths)
    assert isinstance(loaded, WeightedFlowRefiner)
    assert entry["refiner_class"] == "refine.flow_refiner.WeightedFlowRefiner"
    energies = np.geomspace(1.0, 100.0, 45)
    base = CaloFlow(flow1, flow2)
    plain = base.sample(energies, torch.Generator().manual_seed(9), batch_size=20)
    refined = RefinedSampler(base, loaded).sample(
        energies, torch.Generator().manual_seed(9), batch_size=20
    )
    assert np.array_equal(refined.voxels, plain.voxels) and np.array_equal(
        refined.energy, plain.energy
    )


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory) -> dict:
    """``python -m refine.laser`` with the flow refiner on tiny flows and a 240-shower reference."""
    d = tmp_path_factory.mktemp("flow_refiner")
    flow1, flow2 = tiny_flows()
    gan_refiner = TINY[TINY.index("  class_path: refine.gan") : TINY.index("refiner_training")]
    config = d / "flow.yaml"
    config.write_text(TINY.replace(gan_refiner, FLOW_REFINER))
    files = {
        "flow1": Path(save_checkpoint(flow1, d / "f1.ckpt")),
        "flow2": Path(save_checkpoint(flow2, d / "f2.ckpt")),
        "reference": simulate_to_file(d / "ref.hdf5", "eplus", 240, seed=5, progress=False),
    }
    out = d / "out"
    proc = _run(
        "refine.laser",
        *("--flow1", files["flow1"], "--flow2", files["flow2"], "--reference", files["reference"]),
        *("--out", out, "--config", config, "--seed", SEED),
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return {**files, "out": out, "proc": proc}


def test_the_flow_refiner_runs_end_to_end_and_moves_both_latents(flow_run):
    """The run writes the flow refiner (its class in the checkpoint), every method's row, and laser
    showers at the evaluation energies that differ from the unrefined ones; the trained refiner moves
    both z_I (Flow I's 3 coordinates) and z_II (Flow II's 504)."""
    from refine.flow_refiner import WeightedFlowRefiner
    from refine.shower_refiner import incident_context, load_refiner

    out = flow_run["out"]
    refiner, entry = load_refiner(out / "refiner.ckpt")
    assert isinstance(refiner, WeightedFlowRefiner) and entry["latent_dim"] == 507
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["refiner"] == "refine.flow_refiner.WeightedFlowRefiner"
    assert not results["failed"]
    laser = results["methods"]["laser"]
    assert 0 <= laser["classifier"]["dnn-normalized"]["auc"]["mean"] <= 1
    assert "LaSeR refiner (WeightedFlowRefiner): trained on 360" in (out / "table.md").read_text()
    splits = json.loads((out / "splits.json").read_text())
    energies = read_energies(flow_run["reference"], splits["evaluation_used"])
    refined, unrefined = (_datasets(out / "showers" / f"{m}.hdf5") for m in ("laser", "unrefined"))
    assert np.array_equal(refined["energy"].reshape(-1), energies.reshape(-1))
    assert not np.array_equal(refined["layer_1"], unrefined["layer_1"])
    y = torch.randn(50, 507, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        moved = (refiner.decode(y, incident_context(torch.full((50,), 30.0))) - y).abs()
    assert moved[:, :3].max() > 1e-6 and moved[:, 3:].max() > 1e-6


def test_caloflow_generate_reproduces_the_flow_refined_showers(flow_run, tmp_path):
    """``caloflow generate --refiner DIR/refiner.ckpt --energies DIR/showers/unrefined.hdf5 --seed S
    --batch-size B`` writes the run's laser.hdf5 bit for bit with the flow refiner."""
    out, gen = flow_run["out"], tmp_path / "laser.hdf5"
    proc = _run(
        "caloflow.commands.cli",
        "generate",
        *("--flow1", flow_run["flow1"], "--flow2", flow_run["flow2"]),
        *("--refiner", out / "refiner.ckpt", "--energies", out / "showers" / "unrefined.hdf5"),
        *("--seed", SEED, "--batch-size", 50, "--out", gen, "--no-progress"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    mine, theirs = _datasets(gen), _datasets(out / "showers" / "laser.hdf5")
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
