"""The LaSeR flow refiner (:class:`refine.flow_refiner.WeightedFlowRefiner`): weighted maximum
likelihood on a Gaussian latent space with a known reweighting, the identity at the start (bit for
bit on real tiny flows), and the shower protocol end to end with it and two refinement rounds
(``python -m refine.laser --rounds 2`` and ``caloflow generate --refiner`` as real subprocesses);
no round reads the evaluation split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from caloflow.data.io import read_energies
from caloflow.data.simulate import simulate_to_file
from tests.helpers import save_checkpoint, tiny_flows
from tests.test_refine_showers import TINY, _datasets, _poisoned_references, _run

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


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_couplings_invert_and_their_density_is_the_change_of_variables(coupling):
    """Both couplings, with random conditioners, in float64: T^{-1}(T(y)) = y to 1e-12, and
    log q(z | c) equals log N(y) - log |det dT/dy| from an independent autograd Jacobian; a fresh
    refiner is the identity (affine: exactly; spline: up to float32 rounding)."""
    from torch.autograd.functional import jacobian

    from refine.flow_refiner import WeightedFlowRefiner

    torch.manual_seed(0)
    fresh = WeightedFlowRefiner(
        latent_dim=5, context_dim=1, n_blocks=4, hidden=16, coupling=coupling
    )
    y32, c32 = torch.randn(500, 5), torch.randn(500, 1)
    moved = (fresh(y32, c32) - y32).abs().max()
    assert moved == 0 if coupling == "affine" else moved < 1e-6
    phi = fresh.double()
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.1 * torch.randn_like(p))
    y, c = y32.double(), c32.double()
    z = phi(y, c)
    back = z
    for block in reversed(phi.blocks):
        back, _ = block.inverse(back, c)
    assert (back - y).abs().max() < 1e-12 and (z - y).abs().max() > 1e-2
    normal = torch.distributions.Normal(0.0, 1.0)
    for i in range(4):
        jac = jacobian(lambda v: phi(v[None], c[i : i + 1])[0], y[i])
        expected = normal.log_prob(y[i]).sum() - torch.linalg.slogdet(jac)[1]
        assert float(phi.log_prob(z[i : i + 1], c[i : i + 1])) == pytest.approx(
            float(expected), abs=1e-10
        )


def _gaussian_reweighting(n: int, seed: int):
    """z ~ N(0, I_3) with weights w(z) = N(z; mu, S) / N(z; 0, I) (the weighted sample is N(mu, S)),
    and the exact KL(N(mu, S) || N(0, I)) = (tr S + mu.mu - d - log det S) / 2 in nats."""
    gen = torch.Generator().manual_seed(seed)
    d = 3
    mu = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    cov = torch.tensor([[0.6, 0.15, 0.0], [0.15, 0.8, -0.1], [0.0, -0.1, 0.7]], dtype=torch.float64)
    z = torch.randn(n, d, dtype=torch.float64, generator=gen)
    target = torch.distributions.MultivariateNormal(mu, cov)
    w = torch.exp(target.log_prob(z) + 0.5 * (z * z).sum(1) + 0.5 * d * np.log(2 * np.pi))
    kl = 0.5 * float(torch.trace(cov) + mu @ mu - d - torch.logdet(cov))
    return z, w, kl


def test_the_held_out_likelihood_keeps_the_best_refiner_and_measures_the_gain():
    """``fit_kept_best`` on the known reweighting: the target gain it estimates from the held-out
    weights, E_q[log w] - log E_p[w], and the gain of the kept refiner (start NLL - best NLL) both
    match the exact KL(N(mu, S) || N(0, I)); the kept state is the best epoch's, not the last one's.
    On weights that carry no information (w = 1) the target gain is 0 and whatever is kept is no
    worse than the start on the held-out points, the start itself (bit for bit) when no epoch beat it."""
    from caloflow.training import make_trainer
    from refine.data import TensorLoader
    from refine.flow_refiner import WeightedFlowRefiner
    from refine.shower_laser import fit_kept_best

    z, w, kl = _gaussian_reweighting(24_000, seed=0)
    c = torch.zeros(len(z), 1)
    fit = TensorLoader(z[:20_000].float(), w[:20_000].float(), c[:20_000], batch_size=500, seed=0)
    val = TensorLoader(z[20_000:].float(), w[20_000:].float(), c[20_000:], batch_size=4000)
    torch.manual_seed(0)
    phi = WeightedFlowRefiner(
        latent_dim=3, context_dim=1, n_blocks=4, hidden=32, n_hidden=1, lr=1e-2
    )
    info = fit_kept_best(make_trainer(12, None), phi, fit, val)
    assert abs(info["target_gain"] - kl) < 0.05 * kl + 0.02, (info, kl)
    assert 1 <= info["best_epoch"] <= 12
    gain = info["val_nll_start"] - info["val_nll_best"]
    assert abs(gain - kl) < 0.1 * kl + 0.02, (info, kl)
    zv, wv, cv = next(iter(val))
    with torch.no_grad():
        assert float(phi.weighted_nll(zv, wv, cv)) == pytest.approx(info["val_nll_best"], rel=1e-6)

    ones = torch.ones(len(z))
    fit = TensorLoader(z[:2000].float(), ones[:2000], c[:2000], batch_size=500, seed=0)
    val = TensorLoader(z[20_000:].float(), ones[20_000:], c[20_000:], batch_size=4000)
    torch.manual_seed(0)
    phi = WeightedFlowRefiner(
        latent_dim=3, context_dim=1, n_blocks=4, hidden=32, n_hidden=1, lr=3e-2
    )
    start = {k: v.clone() for k, v in phi.state_dict().items()}
    info = fit_kept_best(make_trainer(4, None), phi, fit, val)
    assert info["target_gain"] == pytest.approx(0.0, abs=1e-12)
    assert info["val_nll_best"] <= info["val_nll_start"]
    if info["best_epoch"] == 0:
        assert all(torch.equal(v, start[k]) for k, v in phi.state_dict().items())


def test_keep_best_reloads_the_lowest_validation_epoch_and_leaves_no_checkpoint():
    """``keep_best`` (shared by the classifier test and the refiner): the epoch it names is the one
    whose logged validation loss was lowest, its checkpoint holds that epoch's loss, and its folder
    is gone once the block ends."""
    from lightning.pytorch.callbacks import Callback

    from caloflow.training import best_epoch, keep_best, make_trainer
    from refine.data import TensorLoader
    from refine.flow_refiner import WeightedFlowRefiner

    class Losses(Callback):
        def __init__(self):
            self.values: list[float] = []

        def on_validation_epoch_end(self, trainer, module):
            self.values.append(float(trainer.callback_metrics["val/loss"]))

    z, w, _ = _gaussian_reweighting(3000, seed=1)
    c = torch.zeros(len(z), 1)
    fit = TensorLoader(z[:2000].float(), w[:2000].float(), c[:2000], batch_size=100, seed=0)
    val = TensorLoader(z[2000:].float(), w[2000:].float(), c[2000:], batch_size=1000)
    torch.manual_seed(0)
    # a learning rate large enough for the validation loss to go up and down
    phi = WeightedFlowRefiner(latent_dim=3, context_dim=1, n_blocks=2, hidden=16, lr=0.1)
    losses = Losses()
    with keep_best("val/loss", "min") as best:
        trainer = make_trainer(6, None, callbacks=[losses, best], checkpointing=True)
        trainer.fit(phi, fit, val)
        folder = Path(best.dirpath)
        assert best_epoch(best) == 1 + int(np.argmin(losses.values)), losses.values
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        phi.load_state_dict(state["state_dict"])
        zv, wv, cv = next(iter(val))
        with torch.no_grad():
            assert float(phi.weighted_nll(zv, wv, cv)) == pytest.approx(
                min(losses.values), rel=1e-6
            )
    assert not folder.exists()


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


def _flow_config(path: Path) -> Path:
    """The tiny shower config of tests/test_refine_showers.py with the flow refiner."""
    gan_refiner = TINY[TINY.index("  class_path: refine.gan") : TINY.index("refiner_training")]
    path.write_text(TINY.replace(gan_refiner, FLOW_REFINER))
    return path


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory) -> dict:
    """``python -m refine.laser --rounds 2`` with the flow refiner on tiny flows and a 240-shower reference."""
    d = tmp_path_factory.mktemp("flow_refiner")
    flow1, flow2 = tiny_flows()
    config = _flow_config(d / "flow.yaml")
    files = {
        "flow1": Path(save_checkpoint(flow1, d / "f1.ckpt")),
        "flow2": Path(save_checkpoint(flow2, d / "f2.ckpt")),
        "reference": simulate_to_file(d / "ref.hdf5", "eplus", 240, seed=5, progress=False),
    }
    out = d / "out"
    proc = _run(
        "refine.laser",
        *("--flow1", files["flow1"], "--flow2", files["flow2"], "--reference", files["reference"]),
        *("--out", out, "--config", config, "--seed", SEED, "--rounds", 2),
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return {**files, "config": config, "out": out, "proc": proc}


def test_the_flow_refiner_runs_two_rounds_end_to_end_and_moves_both_latents(flow_run):
    """The run writes both rounds' flow refiners (their class in the checkpoints), a row per round and
    every other method's row, and laser showers at the evaluation energies that differ from the
    unrefined ones and between the rounds; round 1's refiner moves both z_I (Flow I's 3 coordinates)
    and z_II (Flow II's 504); round 2 starts from it and moves further; round 2 has its own weights."""
    from refine.flow_refiner import WeightedFlowRefiner
    from refine.shower_refiner import incident_context, load_refiner

    out = flow_run["out"]
    (first, entry), (last, _) = (
        load_refiner(out / f) for f in ("refiner-round1.ckpt", "refiner.ckpt")
    )
    assert isinstance(first, WeightedFlowRefiner) and isinstance(last, WeightedFlowRefiner)
    assert entry["latent_dim"] == 507
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["refiner"] == "refine.flow_refiner.WeightedFlowRefiner"
    assert results["settings"]["rounds"] == 2 and not results["failed"]
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["rounds"][0]["weights"] != results["rounds"][1]["weights"]
    for method in ("laser-round1", "laser"):
        test = results["methods"][method]["classifier"]["dnn-normalized"]
        assert 0 <= test["auc"]["mean"] <= 1, method
    table = (out / "table.md").read_text()
    assert (
        "| LaSeR refiner, round 1 | 120 |" in table and "| LaSeR refiner, round 2 | 120 |" in table
    )
    assert "LaSeR refiner (WeightedFlowRefiner): trained on 360" in table and "- Round 2:" in table
    splits = json.loads((out / "splits.json").read_text())
    energies = read_energies(flow_run["reference"], splits["evaluation_used"])
    showers = {
        m: _datasets(out / "showers" / f"{m}.hdf5") for m in ("laser", "laser-round1", "unrefined")
    }
    assert np.array_equal(showers["laser"]["energy"].reshape(-1), energies.reshape(-1))
    assert not np.array_equal(showers["laser-round1"]["layer_1"], showers["unrefined"]["layer_1"])
    assert not np.array_equal(showers["laser"]["layer_1"], showers["laser-round1"]["layer_1"])
    y = torch.randn(50, 507, generator=torch.Generator().manual_seed(0))
    context = incident_context(torch.full((50,), 30.0))
    with torch.no_grad():
        moved = (first.decode(y, context) - y).abs()
        further = (last.decode(y, context) - first.decode(y, context)).abs()
    assert moved[:, :3].max() > 1e-6 and moved[:, 3:].max() > 1e-6
    assert further.max() > 1e-6


@pytest.mark.parametrize(
    "ckpt, method", [("refiner.ckpt", "laser"), ("refiner-round1.ckpt", "laser-round1")]
)
def test_caloflow_generate_reproduces_the_flow_refined_showers(flow_run, tmp_path, ckpt, method):
    """``caloflow generate --refiner DIR/CKPT --energies DIR/showers/unrefined.hdf5 --seed S
    --batch-size B`` writes the run's showers of that round bit for bit with the flow refiner."""
    out, gen = flow_run["out"], tmp_path / "laser.hdf5"
    proc = _run(
        "caloflow.commands.cli",
        "generate",
        *("--flow1", flow_run["flow1"], "--flow2", flow_run["flow2"]),
        *("--refiner", out / ckpt, "--energies", out / "showers" / "unrefined.hdf5"),
        *("--seed", SEED, "--batch-size", 50, "--out", gen, "--no-progress"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    mine, theirs = _datasets(gen), _datasets(out / "showers" / f"{method}.hdf5")
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)


def _refine_rounds(flow_run: dict, reference: Path, out: Path) -> dict:
    """The refinement steps of two rounds (splits, weights, refiners) in-process, as the command runs them."""
    from refine.shower_laser import (
        ShowerRun,
        check_inputs,
        laser_generator,
        load_shower_config,
        make_splits,
        refinement_steps,
    )

    cfg = load_shower_config(False, flow_run["config"])
    flows = {"flow1": str(flow_run["flow1"]), "flow2": str(flow_run["flow2"])}
    inputs = check_inputs(flows, str(reference), out, str(flow_run["config"]))
    splits = make_splits(inputs.n_reference, cfg.split, SEED)
    (out / "showers").mkdir(parents=True)
    run = ShowerRun(cfg, out, SEED, inputs, progress=False, g=laser_generator(inputs), rounds=2)
    refined = refinement_steps(run, splits)
    states = {
        f: torch.load(out / f, weights_only=True)["state_dict"]
        for f in ("refiner-round1.ckpt", "refiner.ckpt")
    }
    return {"splits": splits, "states": states, "w": refined["w"], "rounds": refined["rounds"]}


def test_no_round_reads_the_evaluation_split(flow_run, tmp_path):
    """NaN in every evaluation row of the reference: both rounds' refiners (tensors) and weights are
    bitwise those of the clean file (reading one evaluation row would fail its validation); one
    refinement row scaled changes round 2's refiner."""
    clean = _refine_rounds(flow_run, flow_run["reference"], tmp_path / "clean")
    splits = clean["splits"]
    poisoned, scaled = _poisoned_references(flow_run["reference"], splits, tmp_path)

    def same(other: dict) -> bool:
        return torch.equal(clean["w"], other["w"]) and all(
            torch.equal(clean["states"][f][k], other["states"][f][k])
            for f in clean["states"]
            for k in clean["states"][f]
        )

    assert same(_refine_rounds(flow_run, poisoned, tmp_path / "poisoned"))
    changed = _refine_rounds(flow_run, scaled, tmp_path / "scaled")
    assert not any(
        torch.equal(clean["states"]["refiner.ckpt"][k], changed["states"]["refiner.ckpt"][k])
        for k in clean["states"]["refiner.ckpt"]
        if k.endswith("weight")
    )


def gan_config(path: Path, val_fraction: float = 0.0) -> Path:
    """The shipped shower config with the weighted-GAN refiner of its comment instead of the flow."""
    import yaml

    from refine.config import CONFIG_DIR

    config = yaml.safe_load((CONFIG_DIR / "showers.yaml").read_text())
    config["refiner"] = {
        "class_path": "refine.gan.WeightedGANRefiner",
        "init_args": {"hidden": 64, "n_hidden": 2, "ema": 0.99, "paired": True},
    }
    config["refiner_training"]["val_fraction"] = val_fraction
    path.write_text(yaml.safe_dump(config))
    return path


def test_rounds_with_the_gan_refiner_are_refused_before_any_work(tmp_path, capsys):
    """``--rounds 2`` with the weighted GAN: one line naming the option, exit 2, no output folder;
    ``--rounds`` on the toys: likewise; a held-out share for the GAN (it has no held-out loss): one
    line naming the key."""
    from refine.laser import main

    flows = ["--flow1", "a.ckpt", "--flow2", "b.ckpt", "--reference", "r.hdf5"]
    for argv, needle in (
        ([*flows, "--config", str(gan_config(tmp_path / "gan.yaml"))], "flow refiner"),
        (["--toy", "donut"], "shower models"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--rounds", "2", "--out", str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1, lines
        assert "--rounds" in lines[0] and needle in lines[0], lines
        assert not (tmp_path / "out").exists()
    bad = gan_config(tmp_path / "gan-val.yaml", val_fraction=0.1)
    with pytest.raises(SystemExit) as exit_info:
        main([*flows, "--config", str(bad), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert "gan-val.yaml" in lines[0] and "refiner_training.val_fraction" in lines[0], lines
    assert not (tmp_path / "out").exists()
