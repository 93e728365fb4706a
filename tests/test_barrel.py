"""The dataset-1 barrel simulator (caloflow.data.barrel): energy conservation, the official energy
mix, reproducibility, a cost that does not grow with the energy, the (r, alpha) binning, the look
in broad strokes, and ``caloflow simulate --dataset ds1-*``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from caloflow.data.barrel import (
    CHALLENGE_COUNTS,
    CHUNK_SIZE,
    SIMULATOR_VERSION,
    _bin,
    _chunk_spots,
    _plan,
    challenge_counts,
    challenge_energies,
    simulate_barrel,
    spots_per_shower,
)
from caloflow.errors import CaloflowError
from caloflow.geometry import DS1_PHOTONS, DS1_PIONS, GEV, read_binning_xml
from tests.helpers import run_cli

CASES = [(DS1_PHOTONS, "gamma"), (DS1_PIONS, "piplus")]
POWERS = 2.0 ** np.arange(8, 23)  # MeV


@pytest.fixture(scope="module")
def showers():
    """Per geometry: 60 showers at each official energy (900), seed 1."""
    energies = np.repeat(POWERS / GEV, 60)
    return {g.name: simulate_barrel(g, len(energies), 1, energies) for g, _ in CASES}


# --- energy conservation ---------------------------------------------------------------------
@pytest.mark.parametrize("geometry, particle", CASES, ids=["photons", "pions"])
def test_energy_conserved_in_every_shower(showers, geometry, particle):
    s = showers[geometry.name]
    assert s.voxels.shape == (len(s), geometry.n_voxels) and s.geometry == geometry
    assert np.isfinite(s.voxels).all() and (s.voxels >= 0).all()
    e_inc = s.energy * GEV
    assert (s.voxels.sum(1) <= e_inc).all()
    # and once written in single precision, as the files are
    assert (s.voxels.astype(np.float32).sum(1, dtype=np.float64) <= e_inc).all()
    # the extremes of the accepted energies too
    edge = simulate_barrel(geometry, 40, 2, np.repeat([0.01, 4194.304], 20))
    assert (edge.voxels.sum(1) <= edge.energy * GEV).all() and (edge.voxels >= 0).all()


# --- the official energy mix -------------------------------------------------------------------
@pytest.mark.parametrize("particle, total", [("gamma", 121_000), ("piplus", 120_800)])
def test_challenge_energies_full_size(particle, total):
    e = challenge_energies(particle)
    assert e.dtype == np.float64 and len(e) == total
    values, counts = np.unique(e, return_counts=True)
    assert np.array_equal(values * GEV, POWERS)  # exactly 2^8 .. 2^22 MeV
    expected = [10_000] * 10 + [
        10_000 if particle == "gamma" else 9_800,
        5_000,
        3_000,
        2_000,
        1_000,
    ]
    assert counts.tolist() == expected == list(CHALLENGE_COUNTS[particle])
    # the geometry names the particle as well; the seed only permutes
    geometry = DS1_PHOTONS if particle == "gamma" else DS1_PIONS
    assert np.array_equal(np.sort(challenge_energies(geometry, seed=5)), np.sort(e))
    assert not np.array_equal(challenge_energies(geometry, seed=5), e)


@pytest.mark.parametrize("n", [1, 7, 15, 120, 121, 200, 1234, 60_001])
def test_challenge_counts_proportional(n):
    for particle in ("gamma", "piplus"):
        official = np.asarray(CHALLENGE_COUNTS[particle])
        counts = challenge_counts(particle, n)
        assert counts.sum() == n and (counts >= 0).all()
        # largest remainder: every count is its quota rounded down or up
        quota = n * official / official.sum()
        assert (np.abs(counts - quota) < 1).all()
        if n >= official.sum() / official.min():
            assert (counts > 0).all()
        e = challenge_energies(particle, n, seed=3)
        assert np.array_equal(np.unique(e * GEV, return_counts=True)[1], counts[counts > 0])


def test_challenge_mix_refuses_an_unknown_particle():
    with pytest.raises(CaloflowError, match="--particle"):
        challenge_energies("eplus")


# --- reproducibility -------------------------------------------------------------------------
def test_same_seed_same_showers_and_prefix():
    e = challenge_energies("gamma", 300, seed=4)
    full = simulate_barrel(DS1_PHOTONS, 300, 4, e)
    short = simulate_barrel(DS1_PHOTONS, 40, 4, e[:40])
    assert np.array_equal(full.voxels, simulate_barrel(DS1_PHOTONS, 300, 4, e).voxels)
    assert np.array_equal(short.voxels, full.voxels[:40])
    assert not np.array_equal(simulate_barrel(DS1_PHOTONS, 40, 5, e[:40]).voxels, short.voxels)
    # a shower depends on its own energy only: changing another row's energy changes nothing else
    other = e.copy()
    other[5] = 4194.304 if e[5] != 4194.304 else 0.256
    changed = simulate_barrel(DS1_PHOTONS, 300, 4, other).voxels
    rows = np.arange(300) != 5
    assert np.array_equal(changed[rows], full.voxels[rows])
    assert not np.array_equal(changed[5], full.voxels[5])


def test_energy_range_prefix_and_bounds():
    a = simulate_barrel(DS1_PIONS, CHUNK_SIZE + 10, 7, None, energy_range=(1.0, 4194.304))
    b = simulate_barrel(DS1_PIONS, 30, 7, None, energy_range=(1.0, 4194.304))
    assert np.array_equal(a.voxels[:30], b.voxels) and np.array_equal(a.energy[:30], b.energy)
    assert (a.energy >= 1.0).all() and (a.energy <= 4194.304).all()
    # log-uniform: about a third of the energies in each third of the decades
    thirds = np.histogram(np.log(a.energy), bins=3, range=(0.0, np.log(4194.304)))[0]
    assert (thirds > 0.2 * len(a)).all()


# --- cost independent of the energy ------------------------------------------------------------
@pytest.mark.parametrize("geometry, particle", CASES, ids=["photons", "pions"])
def test_the_number_of_spots_does_not_grow_with_the_energy(geometry, particle):
    plan = _plan(geometry)
    shapes = []
    for e_gev in (0.256, 4194.304):
        rng = np.random.default_rng([0, 0])
        blocks = _chunk_spots(plan, particle, rng, np.full(CHUNK_SIZE, e_gev))
        shapes.append([x.shape for _, x, _, _ in blocks])
        total = sum(w.size for *_, w in blocks)
        assert total == CHUNK_SIZE * spots_per_shower(geometry, particle)
    assert shapes[0] == shapes[1]
    assert 100 < spots_per_shower(geometry, particle) < 1000


# --- binning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", [DS1_PHOTONS, DS1_PIONS], ids=lambda g: g.name)
def test_a_spot_lands_in_the_voxel_of_its_r_and_alpha(geometry):
    """One spot per (layer, alpha bin, r bin) at the bin's centre: it lands in the voxel
    offset + a * n_r + r, and that voxel's centre (Geometry.voxel_eta / voxel_phi) is the spot."""
    plan = _plan(geometry)
    blocks, expected = [], []
    for k, layer in enumerate(geometry.layers):
        n_alpha, n_r = layer.shape
        a, r = np.meshgrid(np.arange(n_alpha), np.arange(n_r), indexing="ij")
        edges = np.asarray(layer.col_edges)
        radius = 0.5 * (edges[r] + edges[r + 1])
        alpha = -np.pi + (a + 0.5) * 2 * np.pi / n_alpha
        x, y = (radius * np.cos(alpha)).ravel(), (radius * np.sin(alpha)).ravel()
        w = np.arange(1, x.size + 1, dtype=float)  # distinct weights: each voxel is identified
        blocks.append((k, x[None], y[None], w[None]))
        expected.append((geometry.layer_slices[k].start + a * n_r + r).ravel())
    voxels = _bin(plan, 1, blocks)[0]
    index = np.concatenate(expected)
    weights = np.concatenate([b[3][0] for b in blocks])
    assert np.array_equal(np.sort(index), np.arange(geometry.n_voxels))
    assert np.array_equal(voxels[index], weights)
    x = np.concatenate([b[1][0] for b in blocks])
    y = np.concatenate([b[2][0] for b in blocks])
    assert np.allclose(geometry.voxel_eta[index], x) and np.allclose(geometry.voxel_phi[index], y)
    # beyond the last r edge a spot is lost; rows are showers
    far = _bin(plan, 2, [(0, np.array([[1e4], [1.0]]), np.zeros((2, 1)), np.ones((2, 1)))])
    assert far[0].sum() == 0 and far[1, 0] == 1.0 and far.sum() == 1.0


# --- geometries --------------------------------------------------------------------------------
def _xml(path, layers) -> str:
    rows = "".join(
        f'<Layer id="{i}" r_edges="{",".join(map(str, r))}" n_bin_alpha="{a}"/>'
        for i, r, a in layers
    )
    path.write_text(f'<Bins><Bin pid="22" name="photon">{rows}</Bin></Bins>')
    return str(path)


def test_a_binning_xml_with_dataset1_samplings(tmp_path):
    layers = [(la.id, la.col_edges, la.n_alpha) for la in DS1_PHOTONS.layers]
    same = read_binning_xml(_xml(tmp_path / "b.xml", layers))
    assert same.layer_ids == DS1_PHOTONS.layer_ids
    e = challenge_energies("gamma", 50)
    ours = simulate_barrel(same, 50, 3, e, particle="gamma")
    assert np.array_equal(ours.voxels, simulate_barrel(DS1_PHOTONS, 50, 3, e).voxels)
    with pytest.raises(CaloflowError, match="--particle"):
        simulate_barrel(same, 5, 0)
    odd = read_binning_xml(_xml(tmp_path / "c.xml", [(0, (0, 5, 10), 1), (5, (0, 10), 1)]))
    with pytest.raises(CaloflowError, match="layer id 5"):
        simulate_barrel(odd, 5, 0, particle="gamma")


# --- the look, in broad strokes ---------------------------------------------------------------
def _ratio(s, e_mev):
    rows = s.energy * GEV == e_mev
    return s.voxels[rows].sum(1) / e_mev


def test_photons_and_pions_look_different(showers):
    photons, pions = showers["ds1-photons"], showers["ds1-pions"]
    for e_mev in POWERS[4:]:  # photons: nearly everything seen above 4 GeV; pions much less
        assert 0.9 < np.median(_ratio(photons, e_mev)) < 1.0
        assert np.median(_ratio(pions, e_mev)) < np.median(_ratio(photons, e_mev)) - 0.1
    # photons deepen with energy: the strips' share falls
    f = photons.layer_energies / photons.voxels.sum(1, keepdims=True)
    low, high = photons.energy < 2.0, photons.energy > 500.0
    assert np.median(f[low, 1]) > np.median(f[high, 1]) + 0.2
    assert np.median(f[high, 2]) > 0.8
    # pions reach the tile; photons hardly
    tile = [k for k, i in enumerate(DS1_PIONS.layer_ids) if i >= 12]
    assert np.median(pions.layer_energies[pions.energy > 10][:, tile].sum(1)) > 1000.0


def test_showers_are_not_rotationally_symmetric_at_low_energy(showers):
    s = showers["ds1-photons"]
    per_alpha = s.layers[2].sum(2)  # middle layer: energy per alpha bin
    share = per_alpha.max(1) / np.maximum(per_alpha.sum(1), 1e-12)
    low, high = s.energy < 1.0, s.energy > 500.0
    # a rotationally symmetric shower puts 1/10 into every alpha bin
    assert np.median(share[low]) > 0.2 and np.median(share[high]) < 0.15


# --- the command line ------------------------------------------------------------------------
def test_cli_writes_a_challenge_file(tmp_path):
    out = tmp_path / "photons.hdf5"
    r = run_cli("caloflow", "simulate", "--dataset", "ds1-photons", "--n", "200", "--out", str(out))
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {"showers", "incident_energies"}
        voxels, e_mev = f["showers"][()], f["incident_energies"][()]
        assert f.attrs["simulator"] == SIMULATOR_VERSION and f.attrs["particle"] == "gamma"
    assert voxels.shape == (200, DS1_PHOTONS.n_voxels) and e_mev.shape == (200, 1)
    assert e_mev.dtype == np.float64 and np.isin(e_mev, POWERS).all()  # MeV, exactly
    assert np.array_equal(np.unique(e_mev, return_counts=True)[1], challenge_counts("gamma", 200))
    ref = simulate_barrel(DS1_PHOTONS, 200, 0)
    assert np.array_equal(e_mev[:, 0], ref.energy * GEV)
    assert np.array_equal(voxels, ref.voxels.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["photons.hdf5"]


@pytest.mark.parametrize(
    "args, option",
    [
        (["--dataset", "ds1-pions", "--particle", "gamma"], "--particle"),
        (["--dataset", "ds1-pions", "--energy-range", "1", "5000"], "--energy-range"),
        (["--dataset", "ds1-photons", "--geometry", __file__], "--geometry"),
        (["--particle", "eplus", "--energies", "challenge"], "--energies"),
        ([], "--particle"),
        (["--geometry", __file__, "--particle", "gamma"], "--geometry"),
    ],
)
def test_cli_bad_options_one_line(tmp_path, args, option):
    out = tmp_path / "x.hdf5"
    r = run_cli("caloflow", "simulate", "--n", "5", "--out", str(out), *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and option in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
