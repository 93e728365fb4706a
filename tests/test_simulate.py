"""The embedded GFlash-style simulator: physics targets (docs/physics.md section 4), reproducibility,
the file it writes and the ``caloflow simulate`` command."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from caloflow.data.io import read_showers
from caloflow.data.simulate import (
    CHUNK_SIZE,
    PARTICLES,
    SIMULATOR_VERSION,
    _moyal,
    _pair_fraction,
    simulate,
    simulate_to_file,
)
from caloflow.errors import CaloflowError
from caloflow.geometry import (
    GEV,
    KEV,
    LAYER_KEYS,
    LAYER_SLICES,
    THRESHOLD_KEV,
    split_layers,
    voxel_centres,
)
from tests.helpers import HANG_GUARD_S

N = 2560


@pytest.fixture(scope="module")
def showers():
    return {p: simulate(p, N, seed=11, progress=False) for p in PARTICLES}


# --- independent feature computations (numpy, from the voxel centres) ----------------------
def _cut(voxels):
    return np.where(voxels >= THRESHOLD_KEV * KEV, voxels, 0.0)


def _fractions(s):
    layers = s.layer_energies
    return layers / layers.sum(1, keepdims=True)


def _occupancy(s, k):
    return (_cut(s.voxels)[:, LAYER_SLICES[k]] > 0).mean(1)


def _moments(s, k, axis):
    """Energy-weighted centroid and width (mm) along phi (axis 0, rows) or eta (axis 1, cols)
    of layer k, for the showers with energy in that layer."""
    image = split_layers(_cut(s.voxels))[k]
    profile = image.sum(axis=2 if axis == 0 else 1)
    centres = voxel_centres(k)[axis]
    total = profile.sum(1)
    p = profile[total > 0] / total[total > 0, None]
    mean = p @ centres
    return mean, np.sqrt(np.maximum(p @ centres**2 - mean**2, 0.0))


# --- validity and energy conservation --------------------------------------------------------
@pytest.mark.parametrize("particle", PARTICLES)
def test_valid_and_energy_conserving(showers, particle):
    s = showers[particle]
    assert s.voxels.shape == (N, 504) and s.overflow.shape == (N, 3) and s.energy.shape == (N,)
    assert np.isfinite(s.voxels).all() and np.isfinite(s.overflow).all()
    assert (s.voxels >= 0).all() and (s.overflow >= 0).all()
    assert (s.energy >= 1.0).all() and (s.energy <= 100.0).all()
    # incident energies cover the range uniformly (Kolmogorov distance to U(1, 100))
    e = np.sort(s.energy)
    assert np.abs(np.arange(1, N + 1) / N - (e - 1.0) / 99.0).max() < 0.05
    e_inc = s.energy * GEV
    assert (s.voxels.sum(1) <= e_inc).all()
    assert (s.voxels.sum(1) + s.overflow.sum(1) <= e_inc).all()
    # and still so once written in single precision
    assert (
        s.voxels.astype(np.float32).sum(1) <= s.energy.astype(np.float32) * np.float32(GEV)
    ).all()


# --- e+ ------------------------------------------------------------------------------------
def test_eplus_layer_fractions_and_containment(showers):
    s = showers["eplus"]
    f = _fractions(s)
    med = np.median(f, 0)
    assert 0.10 < med[0] < 0.22
    assert 0.72 < med[1] < 0.90
    assert 2e-4 < med[2] < 0.01
    assert np.quantile(f[:, 2], 0.99) < 0.05  # layer 2 is essentially below 0.05
    containment = s.voxels.sum(1) / (s.energy * GEV)
    assert np.median(containment) > 0.95 and containment.min() > 0.85


def test_eplus_occupancy_and_widths(showers):
    s = showers["eplus"]
    occ = [np.median(_occupancy(s, k)) for k in range(3)]
    assert 0.4 < occ[0] < 0.65
    assert 0.8 < occ[1] <= 1.0
    assert 0.2 < occ[2] < 0.5
    assert 14.0 < np.median(_moments(s, 0, 0)[1]) < 22.0
    assert 26.0 < np.median(_moments(s, 1, 0)[1]) < 31.0
    # occupancy grows with energy: more particles reach more cells
    low, high = s.energy < 20, s.energy > 80
    assert _occupancy(s, 1)[low].mean() < _occupancy(s, 1)[high].mean()


def test_eplus_geometry_of_the_pencil_beam(showers):
    """The beam hits the corner of the four central cells of layers 1 and 2 and the boundary of
    the two central eta strips of layer 0: those cells are the brightest and share equally."""
    l0, l1, l2 = split_layers(showers["eplus"].voxels)
    # layer 0: the central phi row holds nearly everything; strips 47 and 48 are the brightest
    assert l0[:, 1].sum() / l0.sum() > 0.97
    strips = l0.sum((0, 1))
    assert set(np.argsort(strips)[-2:]) == {47, 48}
    assert abs(strips[47] / strips[48] - 1.0) < 0.05
    for image, (r, c), tolerance in ((l1, (6, 6), 0.1), (l2, (6, 3), 0.3)):
        mean = image.mean(0)
        centre = mean[r - 1 : r + 1, c - 1 : c + 1]
        assert np.sort(mean.ravel())[-4:].min() == centre.min()  # the four are the brightest
        assert np.abs(centre / centre.mean() - 1.0).max() < tolerance


def test_eplus_depth_grows_with_energy(showers):
    """Shower maximum moves deeper as ln E: the layer-0 fraction falls with energy."""
    s = showers["eplus"]
    f0 = _fractions(s)[:, 0]
    assert np.median(f0[s.energy < 10]) > np.median(f0[s.energy > 50]) + 0.05


# --- gamma ---------------------------------------------------------------------------------
def test_gamma_converts_later_than_eplus(showers):
    fe, fg = _fractions(showers["eplus"]), _fractions(showers["gamma"])
    assert np.median(fg[:, 0]) < np.median(fe[:, 0]) - 0.015
    spread = lambda x: np.subtract(*np.quantile(np.log10(np.maximum(x, 1e-6)), [0.9, 0.1]))  # noqa: E731
    assert spread(fg[:, 0]) > spread(fe[:, 0]) + 0.1
    assert np.quantile(fg[:, 0], 0.02) < np.quantile(fe[:, 0], 0.02) / 3
    assert np.median(showers["gamma"].voxels.sum(1) / (showers["gamma"].energy * GEV)) > 0.95


# --- pi+ -----------------------------------------------------------------------------------
def test_piplus_mips_leakage_sparsity(showers):
    s, e = showers["piplus"], showers["eplus"]
    e_hat = s.voxels.sum(1)
    energetic = s.energy > 10
    mip = e_hat < 600.0  # MeV: a minimum-ionising track through the 480 mm stack leaves ~350
    assert 0.15 < mip[energetic].mean() < 0.5
    layers = s.layer_energies[energetic & mip & (e_hat > 250.0)]
    # the most probable track deposits: ~70 MeV in 90 mm (layer 0), ~250-300 MeV in 347 mm
    assert 40 < np.median(layers[:, 0]) < 100
    assert 180 < np.median(layers[:, 1]) < 350
    contained = e_hat / (s.energy * GEV)
    assert np.median(contained) < 0.7
    assert np.median(contained) < np.median(e.voxels.sum(1) / (e.energy * GEV)) - 0.3
    assert np.median(_occupancy(s, 0)) < 0.1
    # layer-2 fractions spread towards 1 (late and non-interacting pions)
    assert np.quantile(_fractions(s)[:, 2], 0.9) > 0.2
    # hadronic showers are wider than EM ones in layer 1
    showering = e_hat > 2000.0
    assert showering.mean() > 0.3
    width_pi = _moments(s[showering], 1, 0)[1]
    width_e = _moments(e, 1, 0)[1]
    assert np.median(width_pi) > np.median(width_e) + 2.0


@pytest.mark.parametrize("particle", PARTICLES)
def test_centroids_centred(showers, particle):
    s = showers[particle]
    for k in range(3):
        for axis in (0, 1):
            mean, _ = _moments(s, k, axis)
            # zero within 4 standard errors (the faint, wide layer 2 has ~1 mm ones)
            standard_error = mean.std() / np.sqrt(len(mean))
            assert abs(mean.mean()) < min(4.0 * standard_error + 0.3, 5.0), (k, axis)


# --- sampling building blocks against their known distributions ---------------------------
def test_pair_fraction_distribution():
    x = _pair_fraction(np.random.default_rng(0), 200_000)
    assert (x >= 0).all() and (x < 1).all()
    # pdf (1 - 4/3 x(1-x)) / (7/9): E[x(1-x)] = 11/70, symmetric about 1/2
    assert abs(np.mean(x * (1 - x)) - 11 / 70) < 1e-3
    assert abs(np.mean(x) - 0.5) < 3e-3


def test_moyal_straggling():
    v = _moyal(np.random.default_rng(1), 400_000, 3.4, 0.8)
    # median = mpv - width ln(median of chi2_1 = 0.45494), mean = mpv + width (gamma + ln 2)
    assert abs(np.median(v) - (3.4 - 0.8 * np.log(0.454936))) < 0.01
    assert abs(np.mean(v) - (3.4 + 0.8 * (np.euler_gamma + np.log(2)))) < 0.02
    hist, edges = np.histogram(v, bins=np.linspace(2, 5, 61))
    assert abs(edges[np.argmax(hist)] + 0.025 - 3.4) < 0.15  # the most probable value


# --- reproducibility -----------------------------------------------------------------------
def _datasets(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()].tobytes() for k in f.keys()}, dict(f.attrs)


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = simulate_to_file(tmp_path / "a.h5", "piplus", 70, seed=5, progress=False)
    b = simulate_to_file(tmp_path / "b.h5", "piplus", 70, seed=5, progress=False)
    c = simulate_to_file(tmp_path / "c.h5", "piplus", 70, seed=6, progress=False)
    da, attrs = _datasets(a)
    db, _ = _datasets(b)
    dc, _ = _datasets(c)
    assert set(da) == set(LAYER_KEYS) | {"energy", "overflow"}
    assert da == db
    assert all(da[k] != dc[k] for k in da)
    assert (
        attrs["particle"] == "piplus"
        and attrs["seed"] == 5
        and attrs["simulator"] == SIMULATOR_VERSION
    )


def test_prefix_independent_of_n_and_chunking():
    """A run is the prefix of any longer run: chunks have their own streams and are always
    simulated whole, so n (and where the last chunk ends) does not change the numbers."""
    short = simulate("gamma", CHUNK_SIZE + 7, seed=3, progress=False)
    long = simulate("gamma", 3 * CHUNK_SIZE + 1, seed=3, progress=False)
    assert np.array_equal(short.voxels, long.voxels[: len(short)])
    assert np.array_equal(short.energy, long.energy[: len(short)])
    assert np.array_equal(short.overflow, long.overflow[: len(short)])
    # the chunks themselves are different showers
    assert not np.array_equal(long.voxels[:CHUNK_SIZE], long.voxels[CHUNK_SIZE : 2 * CHUNK_SIZE])


def test_energy_range_respected():
    s = simulate("eplus", 200, seed=2, energy_range=(20.0, 30.0), progress=False)
    assert (s.energy >= 20.0).all() and (s.energy <= 30.0).all()
    assert s.energy.min() < 21.0 and s.energy.max() > 29.0
    e_hat = s.voxels.sum(1)
    assert (e_hat <= s.energy * GEV).all() and np.median(e_hat / (s.energy * GEV)) > 0.95


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(particle="muon", n=10), "--particle"),
        (dict(particle="eplus", n=0), "--n"),
        (dict(particle="eplus", n=10, energy_range=(0.0, 10.0)), "--energy-range"),
        (dict(particle="eplus", n=10, energy_range=(50.0, 5.0)), "--energy-range"),
        (dict(particle="eplus", n=10, seed=-1), "--seed"),
    ],
)
def test_bad_arguments_raise(kwargs, option):
    with pytest.raises(CaloflowError, match=option):
        simulate(progress=False, **kwargs)


# --- the command line ----------------------------------------------------------------------
def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "caloflow.commands.cli", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def test_cli_writes_a_valid_file(tmp_path):
    out = tmp_path / "sub" / "gamma.h5"
    r = _cli(
        "--particle",
        "gamma",
        "--n",
        "50",
        "--seed",
        "4",
        "--out",
        str(out),
        "--energy-range",
        "10",
        "20",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    s = read_showers(out)
    assert len(s) == 50 and (s.energy >= 10).all() and (s.energy <= 20).all()
    ref = simulate("gamma", 50, seed=4, energy_range=(10, 20), progress=False)
    assert np.array_equal(s.voxels, ref.voxels.astype(np.float32))
    assert np.array_equal(s.energy, ref.energy.astype(np.float32))
    assert (s.voxels.sum(1) <= s.energy * GEV).all()
    with h5py.File(out, "r") as f:
        assert f.attrs["simulator"] == SIMULATOR_VERSION and f.attrs["particle"] == "gamma"
    assert [p.name for p in out.parent.iterdir()] == ["gamma.h5"]  # no temporary left behind


@pytest.mark.parametrize(
    "args, option",
    [
        (["--particle", "proton", "--n", "5"], "--particle"),
        (["--particle", "eplus", "--n", "0"], "--n"),
        (["--particle", "eplus", "--n", "many"], "--n"),
        (["--particle", "eplus", "--n", "5", "--energy-range", "10", "5"], "--energy-range"),
    ],
)
def test_cli_bad_options_one_line(tmp_path, args, option):
    out = tmp_path / "x.h5"
    r = _cli(*args, "--out", str(out))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()
