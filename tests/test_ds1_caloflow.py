"""CaloFlow on CaloChallenge dataset 1: the teacher configs, Flow I's energy scale, sampling on the
dataset-1 geometries, the CPU presets and the fidelity benchmark at tiny size. (The fast inverse and
the fast training step on these geometries: tests/test_geometry.py, tests/test_training_step.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from caloflow.configs import CONFIG_DIR
from caloflow.data.barrel import simulate_barrel_to_file
from caloflow.geometry import DS1_PHOTONS, DS1_PIONS, GEV, get_geometry
from caloflow.models.flows import FlowI, FlowII
from caloflow.transforms import EnergyToU, FlowIPreprocessing
from tests.helpers import run_cli

DS1 = ("ds1-photons", "ds1-pions")


def made_rqs_parameters(features: int, context: int, hidden: int, layers: int, bins: int) -> int:
    """Trainable parameters of one nflows MADE + linear-tail RQS block, counted by hand: the masked
    input layer and the context layer (each with bias), ``layers`` hidden layers, and the output layer
    giving 3 bins - 1 spline parameters per feature."""
    per_feature = 3 * bins - 1
    return (
        (features + 1) * hidden
        + (context + 1) * hidden
        + layers * (hidden + 1) * hidden
        + (hidden + 1) * features * per_feature
    )


@pytest.mark.parametrize(
    "particle, flow1, flow2, published_m",
    [("photons", 97_842, 27_945_968, 28.0), ("pions", 116_550, 56_962_776, 57.1)],
)
def test_teacher_configs_have_the_published_sizes(particle, flow1, flow2, published_m):
    """configs/ds1/PARTICLE at the published teacher sizes (arXiv:2410.21611: 28.0M photons, 57.1M
    pions trainable parameters, Flow I + Flow II), equal to a count by hand of the architecture."""
    counts, geometry = {}, None
    for name, cls in (("flow1", FlowI), ("flow2", FlowII)):
        init = yaml.safe_load((CONFIG_DIR / "ds1" / particle / f"{name}.yaml").read_text())
        init = init["model"]["init_args"]
        model = cls(**init)
        geometry = model.geometry
        counts[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_features = geometry.n_layers if name == "flow1" else geometry.n_voxels
        context = 1 if name == "flow1" else 1 + geometry.n_layers
        by_hand = init["n_blocks"] * made_rqs_parameters(
            n_features, context, init["hidden_features"], init["num_blocks"], init["num_bins"]
        )
        assert counts[name] == by_hand
        del model
    assert geometry == get_geometry(f"ds1-{particle}")
    assert counts == {"flow1": flow1, "flow2": flow2}
    assert round((flow1 + flow2) / 1e6, 1) == published_m


def test_energy_scale_of_flow1():
    """u_0 = E_hat / (c E_inc) (dataset-1 code: c = 2.42 photons, 6.93 pions); the inverse gives the
    energies back and never more than c E_inc in total; c = 1 is the CaloGAN paper's u-space."""
    g = torch.Generator().manual_seed(0)
    incident = 2.0 ** torch.randint(8, 23, (200,), generator=g).double() / 1000  # GeV
    e = torch.rand(200, DS1_PIONS.n_layers, generator=g, dtype=torch.float64)
    e = e / e.sum(1, keepdim=True) * incident[:, None] * GEV * 0.9
    for c in (1.0, 2.42, 6.93):
        u = EnergyToU(c).forward(e, incident)
        assert torch.allclose(u[:, 0], e.sum(1) / (c * incident * GEV), rtol=1e-14, atol=0)
        assert torch.allclose(EnergyToU(c).inverse(u, incident), e, rtol=1e-12, atol=1e-9)
    pre = FlowIPreprocessing(DS1_PIONS.n_layers, energy_scale=6.93)
    x = 20 * torch.rand(200, DS1_PIONS.n_layers, generator=g, dtype=torch.float64) - 10
    generated = pre.inverse(x, incident)
    assert (generated >= 0).all()
    assert (generated.sum(1) <= 6.93 * incident * GEV * (1 + 1e-12)).all()
    with pytest.raises(ValueError, match="energy_scale must be > 0"):
        EnergyToU(0.0)


def _perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Move every weight off its initial value (the last layers start near the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("geometry", DS1)
def test_sampling_conserves_every_layer_energy_before_the_threshold(geometry):
    """Flow I's energies (sum <= c E_inc) and Flow II's shapes: before the 0.01 MeV cut every
    generated layer sums to its Flow I energy; after it no voxel is below the cut."""
    g = get_geometry(geometry)
    flow1 = FlowI(geometry=geometry, hidden_features=8, n_blocks=2, energy_scale=2.42)
    flow2 = FlowII(geometry=geometry, hidden_features=8, n_blocks=2).double()
    _perturb(flow1, 0.05, seed=3)
    _perturb(flow2, 0.02, seed=4)
    incident = torch.tensor([0.256, 2.048, 65.536, 4194.304], dtype=torch.float64).repeat(5)
    gen = torch.Generator().manual_seed(5)
    energies = flow1.sample(incident, generator=gen).double()
    assert energies.shape == (20, g.n_layers)
    assert (energies.sum(1) <= 2.42 * incident * GEV * (1 + 1e-6)).all()
    for threshold in (False, True):
        voxels = flow2.sample(
            incident, energies, generator=torch.Generator().manual_seed(6), threshold=threshold
        )
        assert voxels.shape == (20, g.n_voxels) and torch.isfinite(voxels).all()
        sums = torch.as_tensor(g.layer_energies(voxels))
        if not threshold:
            assert torch.allclose(sums, energies, rtol=1e-9, atol=1e-9)
        else:
            assert ((voxels == 0) | (voxels >= 0.01)).all() and (sums <= energies + 1e-9).all()


# ------------------------------------------------------------------ presets and fidelity (tiny)
@pytest.fixture(scope="module")
def ds1_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ds1")
    return {
        name: simulate_barrel_to_file(folder / f"{name}.hdf5", get_geometry(name), 200, seed=3)
        for name in DS1
    }


@pytest.mark.parametrize("geometry", DS1)
@pytest.mark.parametrize("flow", ["flow1", "flow2"])
def test_ds1_preset_trains_one_epoch(geometry, flow, ds1_files, tmp_path):
    """configs/cpu/ds1-*: the recipe reaches the model (geometry, energy scale, one-cycle schedule),
    one epoch on the dataset-1 file gives a finite validation NLL and a checkpoint."""
    config = CONFIG_DIR / "cpu" / geometry / f"{flow}.yaml"
    init = yaml.safe_load(config.read_text())["model"]["init_args"]
    done = run_cli(
        "lightning", "fit", "-c", str(config), "--data.path", str(ds1_files[geometry]),
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    best = next(tmp_path.rglob("best-*.ckpt"))
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    model = (FlowI if flow == "flow1" else FlowII).load_from_checkpoint(best)
    assert model.geometry == get_geometry(geometry)
    for key in ("hidden_features", "n_blocks", "fast_training", "min_bin_width"):
        assert hparams[key] == init[key], key
    if flow == "flow1":
        assert hparams["schedule"] == "onecycle"
        assert model.preprocessing.to_u.scale == init["energy_scale"]


def _ds1_tiny_configs(folder: Path) -> Path:
    """configs/cpu/ds1-photons shrunk to seconds: 300 showers, 2 epochs, a snapshot every epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("flow1", "flow2"):
        config = yaml.safe_load((CONFIG_DIR / "cpu" / "ds1-photons" / f"{name}.yaml").read_text())
        config["trainer"]["max_epochs"] = 2
        config["model"]["init_args"]["hidden_features"] = 8
        config["data"]["init_args"]["n_simulated"] = 300
        for callback in config["trainer"]["callbacks"]:
            if str(callback.get("init_args", {}).get("filename", "")).startswith("snapshot-"):
                callback["init_args"]["every_n_epochs"] = 1
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_ds1_fidelity_end_to_end(tmp_path):
    """Simulate, fit Flow I and Flow II, generate at the reference's energies, score with the
    dataset-1 classifiers: the generated file has the reference's events and energies, every row
    its AUCs."""
    configs = _ds1_tiny_configs(tmp_path / "configs")
    out = tmp_path / "bench"
    done = run_cli(
        "caloflow", "benchmark", "fidelity", "--configs", str(configs), "--out", str(out),
        "--n-reference", "200", "--runs", "1", "--max-epochs", "4", "--patience", "2",
        "--classifiers", "cls-low,cls-high", "--budgets", "1,2", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "fidelity.json").read_text())
    assert result["plan"]["geometry"] == "ds1-photons" and len(result["rows"]) == 2
    for row in result["rows"]:
        for kind in ("cls-low", "cls-high"):
            assert 0.0 <= row["auc"][kind]["mean"] <= 1.0
        with (
            h5py.File(row["samples"]) as generated,
            h5py.File(out / "data" / "ds1-photons_reference.hdf5") as reference,
        ):
            assert generated["showers"].shape == (200, DS1_PHOTONS.n_voxels)
            np.testing.assert_array_equal(
                generated["incident_energies"][:], reference["incident_energies"][:]
            )
    table = (out / "fidelity.md").read_text()
    assert "cls-low (converged)" in table and "cls-high (converged)" in table
    metrics = next(out.glob("evaluation-*/metrics.json"))
    assert json.loads(metrics.read_text())["settings"]["geometry"] == "ds1-photons"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--budgets", "7"], "--budgets: Flow II epoch 7 has no snapshot"),
        (["--classifiers", "dnn"], "--classifiers dnn: not a classifier of ds1-photons runs"),
    ],
)
def test_ds1_fidelity_bad_input_is_one_line(args, needle, tmp_path):
    out = tmp_path / "bench"
    proc = run_cli(
        "caloflow", "benchmark", "fidelity", "--configs", "cpu/ds1-photons", "--out", str(out),
        *args,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())
