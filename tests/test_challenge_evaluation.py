"""CaloChallenge-kind evaluation: the high-level features against hand-computed values, the cls-*
inputs against an independent numpy computation of the evaluator's formulas, hist-chi, FPD/KPD
(against the analytic Fréchet distance, and against jetnet where it is installed), both classifier
protocols on toy vectors, and ``caloflow evaluate`` on two small CaloChallenge files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from caloflow.commands.cli import main
from caloflow.data.io import Showers, read_showers, write_showers
from caloflow.data.simulate import simulate
from caloflow.evaluate import challenge_hist as ch
from caloflow.evaluate import physics_distance as pd
from caloflow.evaluate.challenge import (
    OfficialSettings,
    balanced_vector_split,
    converged_run,
    official_run,
    official_split,
    train_official,
)
from caloflow.geometry import DS1_PHOTONS, DS1_PIONS
from caloflow.radial_features import classifier_inputs, feature_names, radial_features
from tests.helpers import HANG_GUARD_S

# The dataset-1 photon binning as the challenge publishes it (mm; n_alpha), written out here so
# that the numpy reference below does not use caloflow's geometry.
PHOTON_BINNING = [
    (0, (0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
    (1, (0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200), 10),
    (2, (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300, 350, 400), 10),
    (3, (0, 50, 100, 200, 400, 600), 1),
    (12, (0, 100, 200, 400, 1000, 2000), 1),
]


def _cell(geometry, layer_id: int, a: int, r: int) -> int:
    k = geometry.layer_ids.index(layer_id)
    return geometry.layer_slices[k].start + a * geometry.layers[k].shape[1] + r


# ------------------------------------------------------------------------------ features by hand
def test_one_cell_sits_at_its_centre_with_zero_width():
    """Photons layer 2, alpha bin 7 of 10, r bin 10..15 mm: alpha_c = -pi + 7.5 * 2 pi / 10 = pi/2,
    r_c = 12.5 mm, so eta = 0 and phi = 12.5 mm; the widths are 0."""
    v = np.zeros((1, DS1_PHOTONS.n_voxels))
    v[0, _cell(DS1_PHOTONS, 2, 7, 3)] = 500.0
    f = radial_features(v, DS1_PHOTONS, incident_gev=[2.0])
    assert f["E_tot"][0] == 500.0 and f["E_2"][0] == 500.0 and f["E_1"][0] == 0.0
    assert f["E_tot_over_E_inc"][0] == pytest.approx(0.25)
    assert f["EC_eta_2"][0] == pytest.approx(0.0, abs=1e-12)
    assert f["EC_phi_2"][0] == pytest.approx(12.5, rel=1e-12)
    assert f["EC_r_2"][0] == pytest.approx(12.5, rel=1e-12)
    for name in ("width_eta_2", "width_phi_2", "width_r_2"):
        assert f[name][0] == pytest.approx(0.0, abs=1e-6)  # sqrt of a rounding-sized variance
    assert f["sparsity_2"][0] == pytest.approx(1 - 1 / 190)
    # empty layers: the evaluator's 0/(0 + 1e-16) gives centres and widths 0, sparsity 1
    for name in ("EC_eta_1", "EC_phi_1", "width_eta_1", "EC_r_0", "width_r_12"):
        assert f[name][0] == 0.0
    assert f["sparsity_1"][0] == 1.0 and f["sparsity_12"][0] == 1.0


@pytest.mark.parametrize("geometry", [DS1_PHOTONS, DS1_PIONS])
def test_every_alpha_bin_of_every_layer(geometry):
    """Energy in one (layer, alpha, r) cell: centre r_c cos(alpha_c), r_c sin(alpha_c) of that cell."""
    for layer in geometry.layers:
        n_alpha, n_r = layer.shape
        r = n_r // 2
        r_c = 0.5 * (layer.col_edges[r] + layer.col_edges[r + 1])
        for a in range(n_alpha):
            v = np.zeros((1, geometry.n_voxels))
            v[0, _cell(geometry, layer.id, a, r)] = 10.0
            f = radial_features(v, geometry)
            assert f["EC_r_" + str(layer.id)][0] == pytest.approx(r_c, rel=1e-12)
            if n_alpha > 1:
                alpha_c = -math.pi + (a + 0.5) * 2 * math.pi / n_alpha
                assert f[f"EC_eta_{layer.id}"][0] == pytest.approx(
                    r_c * math.cos(alpha_c), abs=1e-9
                )
                assert f[f"EC_phi_{layer.id}"][0] == pytest.approx(
                    r_c * math.sin(alpha_c), abs=1e-9
                )
            else:
                assert f"EC_eta_{layer.id}" not in f  # a layer without angular bins has none


def test_two_cells_centre_and_width_and_the_threshold():
    """30 MeV at alpha bin 0 and 10 MeV at alpha bin 5 of photons layer 1, both at r_c = 1 mm:
    eta = cos(-0.9 pi) and cos(0.1 pi) = -/+ c; centre (10 - 30) c / 40, width 2 c sqrt(30 * 10) / 40.
    A 0.5 MeV voxel is below the 1 MeV threshold and counts nowhere."""
    v = np.zeros((1, DS1_PHOTONS.n_voxels))
    v[0, _cell(DS1_PHOTONS, 1, 0, 0)] = 30.0
    v[0, _cell(DS1_PHOTONS, 1, 5, 0)] = 10.0
    v[0, _cell(DS1_PHOTONS, 1, 2, 7)] = 0.5
    f = radial_features(v, DS1_PHOTONS)
    c = math.cos(0.1 * math.pi)
    assert f["E_1"][0] == 40.0 and f["E_tot"][0] == 40.0
    assert f["EC_eta_1"][0] == pytest.approx(-20 * c / 40, rel=1e-12)
    assert f["width_eta_1"][0] == pytest.approx(2 * c * math.sqrt(300.0) / 40, rel=1e-12)
    s = math.sin(0.1 * math.pi)  # sin(-0.9 pi) = -s, sin(0.1 pi) = s
    assert f["EC_phi_1"][0] == pytest.approx(-20 * s / 40, rel=1e-12)
    assert f["EC_r_1"][0] == pytest.approx(1.0) and f["width_r_1"][0] == pytest.approx(0, abs=1e-6)
    assert f["sparsity_1"][0] == pytest.approx(1 - 2 / 160)
    kept = radial_features(v, DS1_PHOTONS, min_energy_mev=0.0)
    assert kept["E_1"][0] == 40.5 and kept["sparsity_1"][0] == pytest.approx(1 - 3 / 160)


# ------------------------------------------------------------------------------ the cls-* inputs
def _challenge_showers(n: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Toy dataset-1 photon showers: incident energies 2^8..2^22 MeV, per layer a log-normal share
    of the energy spread over the voxels with a falling radial profile, some voxels below 1 MeV."""
    rng = np.random.default_rng(seed)
    e_inc = 2.0 ** rng.integers(8, 23, size=n)
    shares = (0.02, 0.3, 0.6, 0.06, 0.02)
    parts = []
    for (_, edges, n_alpha), share in zip(PHOTON_BINNING, shares):
        n_r = len(edges) - 1
        w = rng.lognormal(0, 1, size=(n, n_alpha, n_r)) * np.exp(-np.arange(n_r) / 2.0)
        w[rng.random(w.shape) < 0.3] = 0.0  # empty voxels
        w /= np.maximum(w.sum(axis=(1, 2), keepdims=True), 1e-300)
        e = e_inc * share * rng.lognormal(0, 0.1, size=n) * (scale if share == 0.6 else 1.0)
        parts.append((w * e[:, None, None]).reshape(n, -1))
    return np.concatenate(parts, axis=1), e_inc


def _write_challenge(path, voxels, e_inc_mev):
    """A file as the challenge wrote its own: float64, gzip, plain h5py."""
    with h5py.File(path, "w") as f:
        f.create_dataset("showers", data=voxels, compression="gzip")
        f.create_dataset("incident_energies", data=e_inc_mev.reshape(-1, 1), compression="gzip")
    return path


def _numpy_reference(voxels: np.ndarray, e_inc: np.ndarray, kind: str) -> np.ndarray:
    """The evaluator's classifier inputs, from the published binning, in plain numpy (MeV, mm)."""
    v = np.where(voxels < 1.0, 0.0, voxels)  # the 1 MeV threshold of dataset 1
    e_inc = e_inc.reshape(-1, 1)
    if kind == "cls-low":
        return np.concatenate([np.log10(e_inc), v / e_inc], axis=1)
    start, layer_e, rep, high = 0, [], [], {k: [] for k in ("ce", "cp", "we", "wp", "cr", "wr")}
    sparsity = []
    for _, edges, n_alpha in PHOTON_BINNING:
        n_r = len(edges) - 1
        size = n_alpha * n_r
        x = v[:, start : start + size]
        start += size
        e = x.sum(1, keepdims=True)
        layer_e.append(e)
        rep.append(np.repeat(e, size, axis=1))
        mid = [(edges[i] + edges[i + 1]) / 2 for i in range(n_r)]
        alphas = np.linspace(-np.pi, np.pi, n_alpha + 1)
        alpha_mid = [(alphas[j] + alphas[j + 1]) / 2 for j in range(n_alpha)]
        r = np.array([mid[i] for j in range(n_alpha) for i in range(n_r)])
        a = np.array([alpha_mid[j] for j in range(n_alpha) for i in range(n_r)])
        for name, coord in (("e", r * np.cos(a)), ("p", r * np.sin(a)), ("r", r)):
            centre = (x * coord).sum(1) / (e[:, 0] + 1e-16)
            width = np.sqrt(np.clip((x * coord**2).sum(1) / (e[:, 0] + 1e-16) - centre**2, 0, None))
            if name == "r" or n_alpha > 1:
                high["c" + name].append(centre[:, None] / 100)
                high["w" + name].append(width[:, None] / 100)
        sparsity.append(1 - (x > 0).mean(1, keepdims=True))
    layer_e = np.concatenate(layer_e, axis=1)
    if kind == "cls-low-normed":
        normed = v / (np.concatenate(rep, axis=1) + 1e-16)
        return np.concatenate([np.log10(e_inc), normed, np.log10(layer_e + 1e-8)], axis=1)
    columns = [np.log10(e_inc), np.log10(layer_e + 1e-8)]
    columns += [np.concatenate(high[k], axis=1) for k in ("ce", "cp", "we", "wp")]
    columns += [np.log10(v.sum(1, keepdims=True) + 1e-8), np.concatenate(sparsity, axis=1)]
    columns += [np.concatenate(high[k], axis=1) for k in ("cr", "wr")]
    return np.concatenate(columns, axis=1)


@pytest.mark.parametrize("kind", ["cls-low", "cls-low-normed", "cls-high"])
def test_classifier_inputs_equal_an_independent_numpy_computation(tmp_path, kind):
    voxels, e_inc = _challenge_showers(40, seed=1)
    path = _write_challenge(tmp_path / "small.hdf5", voxels, e_inc)
    showers = read_showers(path, dtype=np.float64)
    assert showers.geometry == DS1_PHOTONS
    ours = classifier_inputs(showers.voxels, showers.energy, DS1_PHOTONS, kind)
    expected = _numpy_reference(voxels, e_inc, kind)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ hist-chi
def test_separation_power_identical_zero_disjoint_one():
    h = np.array([3.0, 0.0, 5.0, 2.0])
    assert ch.separation(h, 2 * h) == 0.0
    assert ch.separation([1, 2, 0, 0], [0, 0, 4, 1]) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(ch.separation([0, 0], [1, 2]))
    voxels, e_inc = _challenge_showers(200, seed=2)
    f = radial_features(voxels, DS1_PHOTONS, e_inc / 1e3)
    powers = ch.separation_powers(f, f, DS1_PHOTONS, 1.0)
    assert list(powers) == list(feature_names(DS1_PHOTONS))
    assert all(p == 0.0 for p in powers.values())
    assert ch.voxel_separation(voxels, voxels, 1.0) == 0.0
    # per incident energy: the 15 energies, 0 on identical sets
    per_energy = ch.per_energy_separation(
        f["E_tot_over_E_inc"], e_inc, f["E_tot_over_E_inc"], e_inc, DS1_PHOTONS
    )
    assert len(per_energy) == 15 and all(p == 0.0 for p in per_energy.values())


def test_energy_bins_of_the_evaluator():
    """2^k MeV that went through GeV in float64 still lands at k; photons above 2^11 MeV get the
    narrow [0.9, 1.1] bins, pions never."""
    e = 2.0 ** np.arange(8, 23) / 1e3 * 1e3
    assert list(ch.energy_exponent(e)) == list(range(8, 23))
    assert ch.energy_edges(DS1_PHOTONS, 12)[0] == 0.9 and ch.energy_edges(DS1_PHOTONS, 11)[0] == 0.4
    assert ch.energy_edges(DS1_PIONS, 22)[0] == 0.4
    assert ch.feature_edges("EC_eta_12", DS1_PIONS, np.zeros(3), 1.0)[0] == -500.0
    assert ch.feature_edges("width_phi_1", DS1_PIONS, np.zeros(3), 1.0)[-1] == 100.0


# ------------------------------------------------------------------------------ FPD and KPD
def test_fpd_kpd_near_zero_on_identical_sets_and_fpd_is_the_frechet_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 3))
    small = dict(min_samples=2_000, max_samples=10_000)
    value, error = pd.fpd(x, x, **small)
    assert 0.0 <= value < 1e-3 and error >= 0
    mu = np.array([0.5, 0.0, 0.0])
    y = rng.normal(size=(20_000, 3)) + mu
    value, error = pd.fpd(x, y, normalise=False, **small)
    assert value == pytest.approx(mu @ mu, abs=0.02)  # analytic: |mu|^2, equal covariances
    # two Gaussians with variances 1 and 4 in one dimension: (1 - 2)^2 = 1
    assert pd.frechet_distance([0.0], [[1.0]], [0.0], [[4.0]]) == pytest.approx(1.0)
    same, _ = pd.kpd(x, x, batch_size=1_000)
    shifted, shifted_error = pd.kpd(x, y, batch_size=1_000)
    assert abs(same) < 1e-3 and shifted > 10 * abs(same) and shifted > 3 * shifted_error


def test_fpd_kpd_equal_jetnet():
    gen_metrics = pytest.importorskip("jetnet.evaluation.gen_metrics")
    rng = np.random.default_rng(1)
    x, y = rng.lognormal(size=(3_000, 6)), rng.lognormal(size=(3_000, 6)) * 1.05
    args = dict(min_samples=500, max_samples=2_000)
    assert pd.fpd(x, y, **args) == pytest.approx(gen_metrics.fpd(x, y, **args), rel=1e-9)
    ours, theirs = pd.kpd(x, y, batch_size=1_000), gen_metrics.kpd(x, y, batch_size=1_000)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-12)


# ------------------------------------------------------------------------------ the protocols
def _toy(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    offset = np.zeros(5)
    offset[0] = shift
    return rng.normal(size=(n, 5)), rng.normal(size=(n, 5)) + offset


TINY = OfficialSettings(hidden=32, epochs=15, batch_size=100)


def test_official_split_sizes_and_labels():
    ref, gen = np.arange(1003.0)[:, None], -np.arange(1, 1100.0)[:, None]
    split = official_split(ref, gen, (0.6, 0.2, 0.2), np.random.default_rng(0))
    sizes = {k: len(v[1]) for k, v in split.items()}
    assert sizes == {"train": 2 * 601, "test": 2 * 200, "val": 2 * 202}  # int(0.6 n), int(0.2 n)
    for x, y in split.values():
        assert np.all((x[:, 0] >= 0) == (y == 1.0))  # reference = 1, generated = 0
    used = np.concatenate([x[:, 0] for x, _ in split.values()])
    assert len(np.unique(used)) == len(used)  # no shower in two splits


def test_official_protocol_same_and_separated():
    torch.set_num_threads(1)
    ref, same = _toy(1000, 0.0, seed=3)
    same_run = official_run(ref, same, TINY, seed=5)
    assert abs(same_run["auc"] - 0.5) < 0.08 and same_run["jsd"] < 0.1
    assert 1 <= same_run["best_epoch"] <= same_run["epochs_run"] <= TINY.epochs
    ref, far = _toy(1000, 4.0, seed=4)
    far_run = official_run(ref, far, TINY, seed=5)
    assert far_run["auc"] > 0.95 and far_run["jsd"] > 0.5
    assert official_run(ref, far, TINY, seed=5) == far_run  # seeded: the same numbers


def test_official_training_keeps_the_best_test_accuracy_epoch():
    ref, gen = _toy(600, 1.0, seed=6)
    split = official_split(ref, gen, TINY.split, np.random.default_rng(0))
    model, info = train_official(split, TINY, seed=0)
    x, y = split["test"]
    p = model.predict_proba({"inputs": torch.as_tensor(x), "label": torch.as_tensor(y)})
    assert info["best_test_accuracy"] == pytest.approx(np.mean((p > 0.5) == (y > 0.5)))


def test_converged_protocol_separated():
    ref, far = _toy(600, 4.0, seed=7)
    run = converged_run(ref.astype(np.float32), far.astype(np.float32), seed=1, max_epochs=40)
    assert run["auc"] > 0.95 and run["seed"] == 1
    assert 1 <= run["best_epoch"] <= run["epochs_run"] <= 40


def test_weighted_split_keeps_the_rows_and_balances_the_classes():
    """With weights: the rows of the unweighted split, reference weight 1, the generated weights
    scaled so that both classes weigh the same in every split."""
    ref, gen = _toy(200, 1.0, seed=3)
    w = np.random.default_rng(4).uniform(0.1, 3.0, len(gen))
    plain = balanced_vector_split(ref, gen, (0.6, 0.2, 0.2), np.random.default_rng(5))
    weighted = balanced_vector_split(ref, gen, (0.6, 0.2, 0.2), np.random.default_rng(5), w)
    for name, (x, y) in plain.items():
        xw, yw, ww = weighted[name]
        assert np.array_equal(x, xw) and np.array_equal(y, yw)
        assert np.all(ww[y == 1] == 1.0)
        assert ww[y == 0].sum() == pytest.approx(ww[y == 1].sum())
        # the generated weights keep their ratios: the rows are found back by their inputs
        rows = [int(np.flatnonzero((gen == row).all(axis=1))[0]) for row in x[y == 0]]
        assert np.allclose(ww[y == 0] / w[rows], (y == 1).sum() / w[rows].sum())


def test_weighted_converged_test_sees_the_reweighted_sample():
    """Half of the generated rows are from the reference distribution, half far off: unweighted the
    classifier separates them, with the far rows weighted 0 it cannot (AUC near 0.5)."""
    rng = np.random.default_rng(8)
    ref = rng.normal(size=(800, 5))
    gen = np.concatenate([rng.normal(size=(800, 5)), rng.normal(size=(800, 5)) + 4.0])
    w = np.concatenate([np.ones(800), np.zeros(800)])
    order = rng.permutation(len(gen))
    gen, w = gen[order], w[order]
    plain = converged_run(ref, gen, seed=2, max_epochs=30)
    weighted = converged_run(ref, gen, seed=2, max_epochs=30, weights=w)
    assert plain["auc"] > 0.7
    assert abs(weighted["auc"] - 0.5) < 0.1 and weighted["weighted"]
    assert all(0 < e <= 800 for e in weighted["ess"].values())


def test_challenge_backbone_encodes_the_evaluator_inputs_differentiably():
    """The ``challenge`` backbone's unscaled input is :func:`classifier_inputs` (cls-low), its scaled
    training inputs lie in [-1, 1], and the logit has a gradient in the voxels above the threshold only."""
    from caloflow.models import ShowerClassifier

    rng = np.random.default_rng(9)
    voxels = rng.exponential(2.0, size=(40, DS1_PHOTONS.n_voxels)) * (rng.random((40, 1)) < 0.9)
    energy = rng.uniform(1.0, 100.0, 40)
    batch = {"voxels": torch.as_tensor(voxels), "energy": torch.as_tensor(energy)}
    model = ShowerClassifier("challenge", backbone_args={"hidden": 8}, geometry="ds1-photons")
    net = model.net
    expected = classifier_inputs(voxels, energy, DS1_PHOTONS, "cls-low")
    assert np.array_equal(net.raw_inputs(batch).numpy(), expected)
    net.fit_scaling(batch)
    assert float(net.encode(batch).abs().max()) <= 1.0 + 1e-6
    x = batch["voxels"].clone().requires_grad_(True)
    model({"voxels": x, "energy": batch["energy"]}).sum().backward()
    below = x.detach().numpy() < 1.0  # the dataset-1 threshold, 1 MeV
    assert np.all(x.grad.numpy()[below] == 0) and np.any(x.grad.numpy()[~below] != 0)


# ------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def challenge_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("challenge")
    paths = {}
    for name, seed, scale in (("reference", 11, 1.0), ("same", 12, 1.0), ("shifted", 13, 1.3)):
        paths[name] = _write_challenge(d / f"{name}.hdf5", *_challenge_showers(120, seed, scale))
    calogan = simulate("eplus", 20, seed=1, progress=False)
    paths["calogan"] = write_showers(d / "calogan.hdf5", calogan)
    return paths


def test_evaluate_challenge_files_end_to_end(challenge_files, tmp_path):
    out = tmp_path / "eval"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "caloflow.commands.cli", "evaluate",
         "--reference", str(challenge_files["reference"]),
         "--samples", f"same={challenge_files['same']}", f"shifted={challenge_files['shifted']}",
         "--out", str(out), "--classifier", "cls-high", "--protocol", "calochallenge",
         "--epochs", "2", "--runs", "1", "--seed", "3", "--no-progress", "--threads", "1"],
        capture_output=True, text=True, timeout=HANG_GUARD_S, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["settings"]
    assert settings["protocol"] == "calochallenge" and settings["geometry"] == "ds1-photons"
    assert settings["min_energy_mev"] == 1.0 and settings["classifier"]["epochs"] == 2
    for name in ("same", "shifted"):
        sample = metrics["samples"][name]
        result = sample["classifier"]["cls-high"]
        assert result["protocol"] == "calochallenge" and len(result["runs"]) == 1
        assert 0.0 <= result["auc"]["mean"] <= 1.0
        assert set(sample["features"]) == set(feature_names(DS1_PHOTONS))
        assert len(sample["E_tot_over_E_inc_per_energy"]) == 15
        assert sample["physics_distances"]["fpd"]["value"] >= 0.0
        assert len(sample["voxel_share_outliers"]) == 5
    same, shifted = metrics["samples"]["same"], metrics["samples"]["shifted"]
    # 1.3 x the layer-2 energy: its histogram separates far more than a second draw's
    s_same = same["features"]["E_2"]["separation_power"]
    assert shifted["features"]["E_2"]["separation_power"] > 3 * s_same
    figures = {p.name for p in (out / "figures").iterdir()}
    for stem in ("challenge_average_showers", "challenge_energies", "challenge_energy_response"):
        assert f"{stem}.png" in figures and f"{stem}.pdf" in figures
    report = (out / "report.md").read_text()
    assert "protocol `calochallenge`" in report and "| shifted | cls-high |" in report
    assert "Voxels whose mean share of their layer's energy differs most" in report


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--samples", "x={same}", "--classifier", "dnn"], "dnn is not for ds1-photons files"),
        (["--samples", "x={same}", "--preprocessing", "logit"], "--preprocessing: CaloGAN files"),
        (["--samples", "x={calogan}"], "geometry"),
        (["--samples", "x={same}", "--weights", "x={same}"], "--weights"),
    ],
)
def test_challenge_refusals_one_line(challenge_files, tmp_path, capsys, args, expected):
    args = [a.format(**challenge_files) for a in args]
    ref = str(challenge_files["reference"])
    code = main(["evaluate", "--reference", ref, "--out", str(tmp_path / "o"), *args])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_calogan_files_refuse_challenge_options(challenge_files, tmp_path, capsys):
    cg = str(challenge_files["calogan"])
    for extra, expected in (
        (["--protocol", "calochallenge"], "--protocol calochallenge: CaloChallenge files only"),
        (["--classifier", "cls-low"], "cls-low is not for calogan files"),
        (["--min-energy", "1"], "--min-energy: CaloChallenge files only"),
    ):
        code = main(["evaluate", "--reference", cg, "--samples", f"x={cg}", "--out",
                     str(tmp_path / "o"), *extra])  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


def test_showers_of_the_geometry_round_trip_through_the_evaluator_inputs(tmp_path):
    """A file written by caloflow in the challenge format gives the same inputs as the arrays."""
    voxels, e_inc = _challenge_showers(30, seed=9)
    path = write_showers(tmp_path / "w.hdf5", Showers(voxels, e_inc / 1e3, geometry=DS1_PHOTONS))
    back = read_showers(path, dtype=np.float64)
    np.testing.assert_allclose(
        classifier_inputs(back.voxels, back.energy, DS1_PHOTONS, "cls-low"),
        _numpy_reference(voxels.astype(np.float32).astype(np.float64), e_inc, "cls-low"),
        rtol=1e-12,
    )


def test_voxel_share_outliers_find_a_planted_hot_voxel():
    """A sample that moves, in 10 % of its showers, 40 % of layer 1's energy into one voxel (layer
    1, angular bin 9, radial bin 10: flat index 162 of dataset-1 photons) is flagged there first,
    with the mean shares a plain loop over showers and layers gives."""
    rng = np.random.default_rng(0)
    geometry = DS1_PHOTONS
    reference = rng.gamma(0.3, 50.0, size=(2000, geometry.n_voxels))
    reference[rng.random(reference.shape) < 0.5] = 0.0
    sample = reference.copy()
    layer1 = geometry.layer_slices[1]
    hot = layer1.start + 9 * geometry.layer_shapes[1][1] + 10
    for i in range(0, len(sample), 10):
        total = sample[i, layer1].sum()
        sample[i, layer1] *= 0.6
        sample[i, hot] += 0.4 * total
    rows = ch.voxel_share_outliers(reference, sample, geometry, top=3)
    assert hot == 162 and rows[0]["voxel"] == hot
    assert (rows[0]["layer"], rows[0]["alpha_bin"], rows[0]["r_bin"]) == (1, 9, 10)

    def mean_share(voxels, v):
        shares = []
        for shower in voxels:
            total = shower[layer1].sum()
            shares.append(shower[v] / total if total > 0 else 0.0)
        return float(np.mean(shares))

    assert rows[0]["reference_share"] == pytest.approx(mean_share(reference, hot), rel=1e-12)
    assert rows[0]["sample_share"] == pytest.approx(mean_share(sample, hot), rel=1e-12)
    # about 0.1 x 0.4 of layer 1's energy moved there on average
    assert rows[0]["sample_share"] - rows[0]["reference_share"] == pytest.approx(0.04, abs=0.005)
    # identical files: no voxel differs
    same = ch.voxel_share_outliers(reference, reference, geometry, top=1)[0]
    assert same["sample_share"] == same["reference_share"]
