"""Features of section 5.2-5.3 and the 41 high-level classifier inputs against hand-computed values,
a frozen copy of the original numpy features, and the separation power."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caloflow.data.io import Showers, read_showers, write_showers
from caloflow.data.simulate import simulate
from caloflow.evaluate import figures
from caloflow.evaluate.report import feature_metrics, render_report
from caloflow.evaluate.separation import histogram_separation, separation_power
from caloflow.features import (
    FEATURE_NAMES,
    FEATURES,
    HIGH_LEVEL_INPUTS,
    compute_features,
    high_level_inputs,
    shower_features,
)
from caloflow.geometry import N_VOXELS, join_layers, split_layers, voxel_centres

OLD_NAMES = [
    "E0",
    "E1",
    "E2",
    "E_hat",
    "E0_frac",
    "E1_frac",
    "E2_frac",
    "l_d",
    "s_d",
    "sigma_sd",
] + [
    f"{f}{k}"
    for k in range(3)
    for f in (
        "brightest",
        "second",
        "E_ratio",
        "sparsity",
        "eta_centroid",
        "phi_centroid",
        "eta_width",
        "phi_width",
    )
]


# ---- frozen copy of the numpy features as they were before the torch rewrite (do not edit) ----
def _old_ratio(num, den):
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _old_compute_features(voxels, threshold_kev=10.0):
    v = np.array(voxels, dtype=np.float64)
    v[v < threshold_kev * 1e-3] = 0.0
    layers = split_layers(v)
    out = {}
    energies = [layer.sum(axis=(1, 2)) for layer in layers]
    for k, e in enumerate(energies):
        out[f"E{k}"] = e
    e_hat = energies[0] + energies[1] + energies[2]
    out["E_hat"] = e_hat
    for k, e in enumerate(energies):
        out[f"E{k}_frac"] = _old_ratio(e, e_hat)
    out["l_d"] = energies[1] + 2 * energies[2]
    out["s_d"] = _old_ratio(out["l_d"], e_hat)
    second_moment = _old_ratio(energies[1] + 4 * energies[2], e_hat)
    out["sigma_sd"] = np.sqrt(np.clip(second_moment - out["s_d"] ** 2, 0, None))
    for k, (layer, e) in enumerate(zip(layers, energies)):
        flat = layer.reshape(len(layer), -1)
        top2 = -np.partition(-flat, 1, axis=1)[:, :2]
        out[f"brightest{k}"] = _old_ratio(top2[:, 0], e)
        out[f"second{k}"] = _old_ratio(top2[:, 1], e)
        out[f"E_ratio{k}"] = _old_ratio(top2[:, 0] - top2[:, 1], top2[:, 0] + top2[:, 1])
        out[f"sparsity{k}"] = (flat > 0).mean(axis=1)
        phi, eta = voxel_centres(k)
        e_phi = layer.sum(axis=2)
        e_eta = layer.sum(axis=1)
        for name, centres, profile in (("eta", eta, e_eta), ("phi", phi, e_phi)):
            mean = _old_ratio(profile @ centres, e)
            mean_sq = _old_ratio(profile @ centres**2, e)
            out[f"{name}_centroid{k}"] = mean
            out[f"{name}_width{k}"] = np.sqrt(np.clip(mean_sq - mean**2, 0, None))
    return out


# ---- end of the frozen copy ----


def _expected_high_level(voxels: np.ndarray, incident_gev: np.ndarray) -> np.ndarray:
    """The 41 inputs built by hand from the frozen numpy features (NaN -> 0 before transforming)."""
    f = {k: np.nan_to_num(v, nan=0.0) for k, v in _old_compute_features(voxels).items()}
    v = np.array(voxels, dtype=np.float64)
    v[v < 0.01] = 0.0
    cols = [
        np.log10(x + 1e-8)
        for x in (
            f["E0"] / 1e5,
            f["E1"] / 1e5,
            f["E2"] / 1e5,
            f["E_hat"] / 1e5,
            f["E0_frac"],
            f["E1_frac"],
            f["E2_frac"],
            f["l_d"] / 1e5,
            f["phi_width0"] / 100,
            f["phi_width1"] / 100,
            f["phi_width2"] / 100,
        )
    ]
    cols += [f["s_d"], f["sigma_sd"]]
    for layer in split_layers(v):
        flat = layer.reshape(len(layer), -1)
        top5 = np.sort(flat, axis=1)[:, ::-1][:, :5]
        e = flat.sum(axis=1, keepdims=True)
        cols += list((10 * np.where(e > 0, top5 / np.where(e > 0, e, 1), 0.0)).T)
    cols += [f[f"E_ratio{k}"] for k in range(3)] + [f[f"sparsity{k}"] for k in range(3)]
    cols += [f[f"{a}_centroid{k}"] / 100 for k in range(3) for a in ("phi", "eta")]
    cols += [np.log10(np.asarray(incident_gev, dtype=np.float64) / 10)]
    return np.stack(cols, axis=1)


def read_energy(path) -> np.ndarray:
    return read_showers(path).energy.astype(np.float64)


@pytest.fixture(scope="module")
def simulated() -> Showers:
    """e+, gamma and pi+ showers, some with empty layers, and two empty showers (float32, as in files)."""
    parts = [
        simulate(p, n, seed=s, progress=False)
        for p, n, s in (("eplus", 300, 11), ("gamma", 150, 12), ("piplus", 150, 13))
    ]
    showers = Showers.concatenate(parts)
    voxels = showers.voxels.copy()
    voxels[:5, 432:] = 0.0  # layer 2 empty
    voxels[5:10, 288:432] = 0.0  # layer 1 empty
    voxels[10:15, :288] = 0.0  # layer 0 empty
    voxels[15:17] = 0.0  # empty showers
    return Showers(voxels.astype(np.float32), showers.energy)


def _empty_layers(n: int = 1) -> list[np.ndarray]:
    return [np.zeros((n, 3, 96)), np.zeros((n, 12, 12)), np.zeros((n, 12, 6))]


@pytest.fixture
def hand_shower() -> np.ndarray:
    """Layer 0: 100 MeV at (phi 1, eta 47), 50 MeV at (1, 48), a 5 keV voxel (below the cut).
    Layer 1: 300 MeV at (5, 5), 100 MeV at (6, 6). Layer 2: only a 5 keV voxel (empty after the cut)."""
    layers = _empty_layers()
    layers[0][0, 1, 47] = 100.0
    layers[0][0, 1, 48] = 50.0
    layers[0][0, 0, 0] = 0.005
    layers[1][0, 5, 5] = 300.0
    layers[1][0, 6, 6] = 100.0
    layers[2][0, 3, 3] = 0.005
    return join_layers(layers)


def test_names_cover_the_paper_quantities():
    expected = set(OLD_NAMES) | {"deepest_layer", "E_hat_over_E_inc"}
    for k in range(3):
        expected |= {f"brightest{r}{k}" for r in (3, 4, 5)}
    expected |= {f"{a}_centroid_diff_{p}" for a in ("eta", "phi") for p in ("10", "21")}
    assert set(FEATURE_NAMES) == expected and len(FEATURE_NAMES) == len(expected) == 49
    assert set(FEATURES) == set(FEATURE_NAMES)
    assert FEATURES["deepest_layer"].discrete
    assert (
        "[mm]" in FEATURES["eta_centroid_diff_10"].label and "3rd" in FEATURES["brightest31"].label
    )
    # every feature is drawn in some figure
    drawn = {n for _, rows in figures.FIGURE_LAYOUTS.values() for row in rows for n in row}
    assert drawn == set(FEATURE_NAMES)


def test_features_by_hand(hand_shower):
    f = {k: v[0] for k, v in compute_features(hand_shower).items()}
    # energies in MeV after the 10 keV cut
    assert f["E0"] == pytest.approx(150.0)
    assert f["E1"] == pytest.approx(400.0)
    assert f["E2"] == 0.0
    assert f["E_hat"] == pytest.approx(550.0)
    assert f["E0_frac"] == pytest.approx(150 / 550)
    assert f["E1_frac"] == pytest.approx(400 / 550)
    assert f["E2_frac"] == 0.0
    assert f["l_d"] == pytest.approx(400.0)  # E1 + 2 E2
    s_d = 400 / 550
    assert f["s_d"] == pytest.approx(s_d)
    assert f["sigma_sd"] == pytest.approx(math.sqrt(400 / 550 - s_d**2))
    # layer 0: eta cells are 5 mm wide, centres -2.5 and +2.5 mm; the phi row 1 is centred at 0
    assert f["brightest0"] == pytest.approx(100 / 150)
    assert f["second0"] == pytest.approx(50 / 150)
    assert f["E_ratio0"] == pytest.approx((100 - 50) / (100 + 50))
    assert f["sparsity0"] == pytest.approx(2 / 288)
    eta0 = (100 * -2.5 + 50 * 2.5) / 150
    assert f["eta_centroid0"] == pytest.approx(eta0)
    assert f["eta_width0"] == pytest.approx(math.sqrt((100 * 6.25 + 50 * 6.25) / 150 - eta0**2))
    assert f["phi_centroid0"] == pytest.approx(0.0, abs=1e-9)
    assert f["phi_width0"] == pytest.approx(0.0, abs=1e-6)
    # layer 1: 40 mm cells, index 5 -> -20 mm, index 6 -> +20 mm in both directions
    assert f["brightest1"] == pytest.approx(300 / 400)
    assert f["second1"] == pytest.approx(100 / 400)
    assert f["E_ratio1"] == pytest.approx(0.5)
    assert f["sparsity1"] == pytest.approx(2 / 144)
    for axis in ("eta", "phi"):
        assert f[f"{axis}_centroid1"] == pytest.approx(-10.0)
        assert f[f"{axis}_width1"] == pytest.approx(math.sqrt(400.0 - 100.0))
    # layer 2 is empty after the cut: ratios, centroids, widths undefined, sparsity 0
    assert f["sparsity2"] == 0.0
    for name in (
        "brightest2",
        "second2",
        "E_ratio2",
        "eta_centroid2",
        "phi_centroid2",
        "eta_width2",
        "phi_width2",
    ):
        assert np.isnan(f[name]), name


def test_layer2_geometry_and_threshold_argument():
    layers = _empty_layers()
    layers[2][0, 0, 5] = 30.0  # phi -220 mm, eta +200 mm (80 mm cells in eta)
    layers[2][0, 11, 5] = 10.0  # phi +220 mm
    f = {k: v[0] for k, v in compute_features(join_layers(layers)).items()}
    assert f["eta_centroid2"] == pytest.approx(200.0)
    assert f["eta_width2"] == pytest.approx(0.0, abs=1e-6)
    assert f["phi_centroid2"] == pytest.approx((30 * -220 + 10 * 220) / 40)
    assert f["phi_width2"] == pytest.approx(math.sqrt(220.0**2 - 110.0**2))
    assert f["s_d"] == pytest.approx(2.0) and f["sigma_sd"] == pytest.approx(0.0, abs=1e-6)
    # a 15 MeV threshold keeps only the 30 MeV voxel
    g = {k: v[0] for k, v in compute_features(join_layers(layers), threshold_kev=15e3).items()}
    assert g["E2"] == pytest.approx(30.0) and g["E_ratio2"] == pytest.approx(1.0)


def test_empty_shower_gives_nan_not_errors():
    f = compute_features(np.zeros((2, N_VOXELS)))
    assert all(f[f"E{k}"][0] == 0 for k in range(3)) and f["E_hat"][0] == 0
    for name in ("E0_frac", "s_d", "sigma_sd", "brightest0", "eta_width1"):
        assert np.isnan(f[name]).all(), name
    assert (f["sparsity1"] == 0).all()


def test_vectorised_rows_are_independent(hand_shower):
    rng = np.random.default_rng(0)
    other = rng.gamma(0.5, 20.0, (3, N_VOXELS))
    both = compute_features(np.concatenate([hand_shower, other]))
    alone = compute_features(other)
    assert set(both) == set(alone) == set(FEATURE_NAMES) - {"E_hat_over_E_inc"}
    for name in alone:
        np.testing.assert_allclose(both[name][1:], alone[name], rtol=1e-12, err_msg=name)


def test_from_file_matches_array(tmp_path, hand_shower):
    rng = np.random.default_rng(1)
    voxels = np.concatenate([hand_shower, rng.gamma(0.3, 30.0, (4, N_VOXELS))]).astype(np.float32)
    path = write_showers(tmp_path / "s.hdf5", Showers(voxels, rng.uniform(1, 100, 5)))
    from_file = shower_features(path)
    direct = compute_features(voxels)
    assert set(from_file) == set(FEATURE_NAMES)  # files carry the incident energy
    for name in direct:
        np.testing.assert_allclose(
            from_file[name], direct[name], rtol=1e-6, equal_nan=True, err_msg=name
        )
    np.testing.assert_allclose(
        from_file["E_hat_over_E_inc"], direct["E_hat"] / (read_energy(path) * 1e3), rtol=1e-6
    )
    short = shower_features(path, max_showers=2)
    assert short["E0"].shape == short["E_hat_over_E_inc"].shape == (2,)
    with pytest.raises(ValueError):
        compute_features(np.zeros((3, 500)))


def test_separation_power_known_values():
    rng = np.random.default_rng(2)
    a = rng.normal(size=1000)
    assert separation_power(a, a.copy()) == 0.0
    assert separation_power(a, a + 100.0) == pytest.approx(1.0)
    assert histogram_separation([3, 0, 0], [0, 0, 7]) == pytest.approx(1.0)
    # h1 = (1/2, 1/2), h2 = (1, 0): 1/2 [(1/2)^2 / (3/2) + (1/2)^2 / (1/2)] = 1/3
    assert histogram_separation([1, 1], [2, 0]) == pytest.approx(1 / 3)


def test_feature_metrics_identical_and_shifted(hand_shower):
    rng = np.random.default_rng(3)
    voxels = rng.gamma(0.4, 50.0, (500, N_VOXELS))
    ref = compute_features(voxels)
    same = feature_metrics(ref, compute_features(voxels.copy()))
    assert all(v["separation_power"] == 0.0 for v in same.values())
    assert same["E0"]["mean"] == pytest.approx(np.mean(ref["E0"]))
    scaled = voxels.copy()
    scaled[:, :288] *= 10.0  # layer 0 energies 10x: disjoint E0 histograms
    shifted = feature_metrics(ref, compute_features(scaled))
    assert shifted["E0"]["separation_power"] > 0.95
    assert shifted["E2"]["separation_power"] == 0.0


# ---- old features unchanged, new features by hand ----


def test_old_features_unchanged_on_simulated_showers(simulated):
    old = _old_compute_features(simulated.voxels)
    new = compute_features(simulated.voxels)
    for name in OLD_NAMES:
        assert np.array_equal(np.isnan(old[name]), np.isnan(new[name])), name
        np.testing.assert_allclose(
            new[name], old[name], rtol=1e-12, atol=1e-9, equal_nan=True, err_msg=name
        )
    # the empty layers and showers are NaN where they were
    assert np.isnan(new["brightest2"][:5]).all() and np.isnan(new["eta_width1"][5:10]).all()
    assert np.isnan(new["s_d"][15:17]).all() and np.isfinite(new["s_d"][17:]).all()


def test_new_features_on_simulated_showers(simulated):
    f = compute_features(simulated.voxels, incident_gev=simulated.energy)
    old = _old_compute_features(simulated.voxels)
    v = np.array(simulated.voxels, dtype=np.float64)
    v[v < 0.01] = 0.0
    for k, layer in enumerate(split_layers(v)):
        flat = layer.reshape(len(layer), -1)
        top = np.sort(flat, axis=1)[:, ::-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            for r in (3, 4, 5):
                np.testing.assert_allclose(
                    f[f"brightest{r}{k}"], top[:, r - 1] / flat.sum(1), rtol=1e-12, equal_nan=True
                )
    for a in ("eta", "phi"):
        np.testing.assert_allclose(
            f[f"{a}_centroid_diff_10"],
            old[f"{a}_centroid1"] - old[f"{a}_centroid0"],
            rtol=1e-12,
            atol=1e-12,
            equal_nan=True,
        )
        np.testing.assert_allclose(
            f[f"{a}_centroid_diff_21"],
            old[f"{a}_centroid2"] - old[f"{a}_centroid1"],
            rtol=1e-12,
            atol=1e-12,
            equal_nan=True,
        )
    assert (
        np.isnan(f["eta_centroid_diff_21"][:5]).all()
        and np.isnan(f["phi_centroid_diff_10"][5:15]).all()
    )
    assert (f["deepest_layer"][:5] == 1).all() and (f["deepest_layer"][5:15] == 2).all()
    assert np.isnan(f["deepest_layer"][15:17]).all()
    np.testing.assert_allclose(
        f["E_hat_over_E_inc"], old["E_hat"] / (simulated.energy * 1e3), rtol=1e-12
    )
    # e+ showers deposit most of their energy; nothing deposits more than the incident energy
    assert (f["E_hat_over_E_inc"][17:300] > 0.8).all() and (f["E_hat_over_E_inc"] <= 1).all()


def test_new_features_by_hand(hand_shower):
    f = {k: v[0] for k, v in compute_features(hand_shower, incident_gev=np.array([1.1])).items()}
    eta0 = (100 * -2.5 + 50 * 2.5) / 150
    assert f["eta_centroid_diff_10"] == pytest.approx(-10.0 - eta0)
    assert f["phi_centroid_diff_10"] == pytest.approx(-10.0)  # phi row 1 of layer 0 is centred at 0
    assert np.isnan(f["eta_centroid_diff_21"]) and np.isnan(
        f["phi_centroid_diff_21"]
    )  # layer 2 empty
    assert f["deepest_layer"] == 1.0
    assert f["E_hat_over_E_inc"] == pytest.approx(550.0 / 1100.0)
    # two voxels in layers 0 and 1: the 3rd-5th brightest are 0, but defined; empty layer 2: NaN
    for r in (3, 4, 5):
        assert f[f"brightest{r}0"] == 0.0 and f[f"brightest{r}1"] == 0.0
        assert np.isnan(f[f"brightest{r}2"])
    assert "E_hat_over_E_inc" not in compute_features(hand_shower)


def test_brightest_ranks_deepest_layer_and_centroid_differences():
    layers = _empty_layers(3)
    # shower 0: six voxels in layer 0 (total 210 MeV) and one in layer 2
    for (phi, eta), e in zip(
        [(0, 0), (1, 10), (2, 20), (0, 30), (1, 40), (2, 50)], [60, 50, 40, 30, 20, 10]
    ):
        layers[0][0, phi, eta] = e
    layers[2][0, 6, 0] = 5.0  # phi +20 mm, eta -200 mm
    layers[0][1, 1, 48] = 7.0  # shower 1: layer 0 only
    # shower 2: layers 1 and 2, centroids (phi, eta) = (-20, +20) and (+20, -40) mm
    layers[1][2, 5, 6] = 10.0
    layers[2][2, 6, 2] = 10.0
    f = compute_features(join_layers(layers))
    for r, e in zip(range(1, 6), [60, 50, 40, 30, 20]):
        name = {1: "brightest0", 2: "second0"}.get(r, f"brightest{r}0")
        assert f[name][0] == pytest.approx(e / 210), name
    np.testing.assert_array_equal(f["deepest_layer"], [2.0, 0.0, 2.0])
    # layer 1 empty in showers 0 and 1: no differences to layer 1
    assert (
        np.isnan(f["eta_centroid_diff_10"][:2]).all()
        and np.isnan(f["eta_centroid_diff_21"][:2]).all()
    )
    assert f["phi_centroid_diff_21"][2] == pytest.approx(40.0)
    assert f["eta_centroid_diff_21"][2] == pytest.approx(-60.0)
    assert np.isnan(f["eta_centroid_diff_10"][2])  # layer 0 empty
    assert f["E_ratio0"][0] == pytest.approx(10 / 110)


# ---- the 41 inputs of the high-level-feature classifier ----


def test_high_level_inputs_match_an_independent_computation(simulated):
    x = high_level_inputs(torch.as_tensor(simulated.voxels), torch.as_tensor(simulated.energy))
    assert x.shape == (len(simulated), 41) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    expected = _expected_high_level(simulated.voxels, simulated.energy)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(x.numpy(), expected, rtol=2e-6, atol=2e-6)
    # numpy inputs and an (N, 1) incident energy give the same
    y = high_level_inputs(simulated.voxels, simulated.energy.reshape(-1, 1))
    assert torch.equal(x, y)


def test_high_level_names_and_layout():
    assert len(HIGH_LEVEL_INPUTS) == 41 and len(set(HIGH_LEVEL_INPUTS)) == 41
    assert HIGH_LEVEL_INPUTS[:4] == ("log10_E0", "log10_E1", "log10_E2", "log10_E_hat")
    assert HIGH_LEVEL_INPUTS[8:13] == (
        "log10_phi_width0",
        "log10_phi_width1",
        "log10_phi_width2",
        "s_d",
        "sigma_sd",
    )
    assert HIGH_LEVEL_INPUTS[13:18] == (
        "brightest0_x10",
        "second0_x10",
        "brightest30_x10",
        "brightest40_x10",
        "brightest50_x10",
    )
    assert HIGH_LEVEL_INPUTS[34:36] == ("phi_centroid0_100mm", "eta_centroid0_100mm")
    assert HIGH_LEVEL_INPUTS[-1] == "log10_E_inc_over_10GeV"


def test_high_level_inputs_by_hand(hand_shower):
    """Hand shower: layer 0 100 + 50 MeV (one phi row), layer 1 300 + 100 MeV, layer 2 empty; E_inc 1 GeV."""
    x = high_level_inputs(torch.as_tensor(hand_shower), torch.tensor([1.0]))[0].double().numpy()
    got = dict(zip(HIGH_LEVEL_INPUTS, x))
    approx = lambda v: pytest.approx(v, rel=1e-6, abs=1e-6)  # noqa: E731 (float32 outputs)
    assert got["log10_E0"] == approx(math.log10(150 / 1e5 + 1e-8))
    assert got["log10_E2"] == approx(-8.0)  # empty layer: 0 before the log
    assert got["log10_E_hat"] == approx(math.log10(550 / 1e5 + 1e-8))
    assert got["log10_E1_frac"] == approx(math.log10(400 / 550 + 1e-8))
    assert got["log10_E2_frac"] == approx(-8.0)
    assert got["log10_l_d"] == approx(math.log10(400 / 1e5 + 1e-8))
    assert got["log10_phi_width0"] == approx(-8.0)  # a single phi row: width 0
    assert got["log10_phi_width1"] == approx(math.log10(math.sqrt(300.0) / 100 + 1e-8))
    assert got["log10_phi_width2"] == approx(-8.0)  # empty layer
    assert got["s_d"] == approx(400 / 550)
    assert got["sigma_sd"] == approx(math.sqrt(400 / 550 - (400 / 550) ** 2))
    assert [got[n] for n in HIGH_LEVEL_INPUTS[13:18]] == [
        approx(10 * 100 / 150),
        approx(10 * 50 / 150),
        0,
        0,
        0,
    ]
    assert [got[n] for n in HIGH_LEVEL_INPUTS[18:23]] == [approx(7.5), approx(2.5), 0, 0, 0]
    assert [got[n] for n in HIGH_LEVEL_INPUTS[23:28]] == [0, 0, 0, 0, 0]  # empty layer 2
    assert (got["E_ratio0"], got["E_ratio1"], got["E_ratio2"]) == (approx(1 / 3), approx(0.5), 0)
    assert (got["sparsity0"], got["sparsity1"], got["sparsity2"]) == (
        approx(2 / 288),
        approx(2 / 144),
        0,
    )
    eta0 = (100 * -2.5 + 50 * 2.5) / 150
    assert [got[n] for n in HIGH_LEVEL_INPUTS[34:40]] == [
        approx(0),
        approx(eta0 / 100),
        approx(-0.1),
        approx(-0.1),
        0,
        0,
    ]
    assert got["log10_E_inc_over_10GeV"] == approx(-1.0)


def test_high_level_empty_shower_is_finite():
    x = high_level_inputs(torch.zeros(2, N_VOXELS), torch.tensor([10.0, 100.0])).numpy()
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[:, :11], -8.0, rtol=1e-6)
    np.testing.assert_array_equal(x[:, 11:40], 0.0)
    np.testing.assert_allclose(x[:, 40], [0.0, 1.0], atol=1e-7)


def test_high_level_gradient_flows_to_the_voxels(hand_shower, simulated):
    v = torch.tensor(hand_shower, dtype=torch.float64, requires_grad=True)
    x = high_level_inputs(v, torch.tensor([1.0]))
    column = HIGH_LEVEL_INPUTS.index("brightest0_x10")
    (grad,) = torch.autograd.grad(x[0, column], v)
    g = split_layers(grad.numpy())
    # d/dI1 of 10 I1/(I1 + I2) = 10 I2/E0^2, d/dI2 = -10 I1/E0^2; below-threshold and other-layer voxels: 0
    assert g[0][0, 1, 47] == pytest.approx(10 * 50 / 150**2, rel=1e-5)
    assert g[0][0, 1, 48] == pytest.approx(-10 * 100 / 150**2, rel=1e-5)
    assert g[0][0, 0, 0] == 0.0 and np.abs(g[1]).sum() == 0.0 and np.abs(g[2]).sum() == 0.0
    # the whole input vector, on simulated and empty showers: finite gradients reaching every layer
    sim = torch.tensor(simulated.voxels[:40], requires_grad=True)
    out = high_level_inputs(sim, torch.as_tensor(simulated.energy[:40]))
    (grad,) = torch.autograd.grad(out.sum(), sim)
    assert torch.isfinite(grad).all()
    for s in split_layers(grad[20:].numpy()):
        assert np.abs(s).sum() > 0
    empty = torch.zeros(2, N_VOXELS, requires_grad=True)
    (grad,) = torch.autograd.grad(high_level_inputs(empty, torch.tensor([5.0, 6.0])).sum(), empty)
    assert torch.isfinite(grad).all()


def test_high_level_gradcheck():
    rng = np.random.default_rng(4)
    v = torch.tensor(
        rng.gamma(0.5, 30.0, (2, N_VOXELS)) + 0.05, requires_grad=True
    )  # all above the cut, no ties
    # one smooth combination of the float64 internals, checked against finite differences
    weights = torch.tensor(rng.normal(size=41))
    f = lambda x: (high_level_inputs(x, torch.tensor([20.0, 60.0])).double() * weights).sum()  # noqa: E731
    (grad,) = torch.autograd.grad(f(v), v)
    direction = torch.tensor(rng.normal(size=(2, N_VOXELS))) * 1e-3
    with torch.no_grad():
        numeric = (f(v + direction) - f(v - direction)) / 2
    assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=2e-2)


def test_high_level_rejects_bad_shapes():
    with pytest.raises(ValueError):
        high_level_inputs(torch.zeros(3, 500), torch.ones(3))
    with pytest.raises(ValueError):
        high_level_inputs(torch.zeros(3, N_VOXELS), torch.ones(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_high_level_on_cuda(simulated):
    cpu = high_level_inputs(torch.as_tensor(simulated.voxels), torch.as_tensor(simulated.energy))
    gpu = high_level_inputs(
        torch.as_tensor(simulated.voxels).cuda(), torch.as_tensor(simulated.energy).cuda()
    )
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


# ---- figures and report with the new features ----


def test_response_profile_known_values():
    edges = np.array([0.0, 10.0, 20.0, 30.0])
    prof = figures.response_profile(
        np.array([1.0, 2.0, 15.0, 30.0, 31.0, np.nan]),
        np.array([0.5, 0.7, 0.9, 0.8, 9.0, 1.0]),
        edges,
    )
    np.testing.assert_allclose(prof["mean"], [0.6, 0.9, 0.8])
    np.testing.assert_allclose(prof["std"][0], 0.1)
    assert np.isnan(prof["std"][1:]).all()  # fewer than two entries
    np.testing.assert_array_equal(prof["n"], [2, 1, 1])


def test_energy_response_figure_and_new_panels(tmp_path, simulated, monkeypatch):
    ref = compute_features(simulated.voxels[:300], incident_gev=simulated.energy[:300])
    gen = compute_features(simulated.voxels[300:], incident_gev=simulated.energy[300:])
    paths = figures.energy_response_figure(
        ref, {"gen": gen}, simulated.energy[:300], {"gen": simulated.energy[300:]}, tmp_path
    )
    assert [p.name for p in paths] == ["energy_response.png", "energy_response.pdf"]
    assert all(p.stat().st_size > 5_000 for p in paths)
    # one bin per integer over the values present (no shower of `simulated` stops in layer 0)
    edges = figures.histogram_edges("deepest_layer", [ref["deepest_layer"], gen["deepest_layer"]])
    np.testing.assert_array_equal(edges, [0.5, 1.5, 2.5])
    edges = figures.histogram_edges(
        "deepest_layer", [ref["deepest_layer"], np.array([0.0, np.nan])]
    )
    np.testing.assert_array_equal(edges, [-0.5, 0.5, 1.5, 2.5])
    layouts = {k: figures.FIGURE_LAYOUTS[k] for k in ("depth_response", "centroid_differences")}
    monkeypatch.setattr(figures, "FIGURE_LAYOUTS", layouts)
    written = figures.feature_figures(ref, {"gen": gen}, tmp_path)
    assert set(written) == set(layouts) and all(p.exists() for v in written.values() for p in v)
    # without the incident energy: the E_hat/E_inc panel is left out, the figure still drawn
    no_inc = compute_features(simulated.voxels[:300])
    assert set(figures.feature_figures(no_inc, {"gen": no_inc}, tmp_path / "b")) == set(layouts)


def test_metrics_and_report_without_incident_energy(simulated):
    with_inc = compute_features(simulated.voxels[:200], incident_gev=simulated.energy[:200])
    without = compute_features(simulated.voxels[200:400])
    m = feature_metrics(with_inc, without, [with_inc, without])
    assert "E_hat_over_E_inc" not in m and "deepest_layer" in m and "brightest52" in m
    m2 = feature_metrics(with_inc, with_inc)
    assert m2["E_hat_over_E_inc"]["separation_power"] == 0.0
    metrics = {
        "reference": {
            "path": "r.h5",
            "n_showers": 200,
            "features": {k: {"mean": 1.0, "std": 0.1} for k in with_inc},
        },
        "samples": {"s": {"path": "s.h5", "n_showers": 200, "features": m}},
    }
    report = render_report(metrics, {"energy_response": ["figures/energy_response.png"]})
    assert "`E_hat_over_E_inc` | 1.000 ± 0.100 | n/a | n/a |" in report
    assert "`eta_centroid_diff_10`" in report and "E_hat/E_inc vs E_inc" in report
