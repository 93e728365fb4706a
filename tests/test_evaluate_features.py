"""Features of section 5.2-5.3 against hand-computed values, and the separation power."""
from __future__ import annotations

import math

import numpy as np
import pytest

from caloflow.data.geometry import N_VOXELS, join_layers
from caloflow.data.io import Showers, write_showers
from caloflow.evaluate.features import FEATURE_NAMES, compute_features, shower_features
from caloflow.evaluate.report import feature_metrics
from caloflow.evaluate.separation import histogram_separation, separation_power


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
    expected = {"E0", "E1", "E2", "E_hat", "E0_frac", "E1_frac", "E2_frac", "l_d", "s_d", "sigma_sd"}
    for k in range(3):
        expected |= {f"{f}{k}" for f in ("brightest", "second", "E_ratio", "sparsity", "eta_centroid",
                                          "phi_centroid", "eta_width", "phi_width")}
    assert set(FEATURE_NAMES) == expected


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
    for name in ("brightest2", "second2", "E_ratio2", "eta_centroid2", "phi_centroid2", "eta_width2", "phi_width2"):
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
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(both[name][1:], alone[name], rtol=1e-12, err_msg=name)


def test_from_file_matches_array(tmp_path, hand_shower):
    rng = np.random.default_rng(1)
    voxels = np.concatenate([hand_shower, rng.gamma(0.3, 30.0, (4, N_VOXELS))]).astype(np.float32)
    path = write_showers(tmp_path / "s.hdf5", Showers(voxels, rng.uniform(1, 100, 5)))
    from_file = shower_features(path)
    direct = compute_features(voxels)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(from_file[name], direct[name], rtol=1e-6, equal_nan=True, err_msg=name)
    assert shower_features(path, max_showers=2)["E0"].shape == (2,)
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
