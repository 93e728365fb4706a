"""The geometry object, the CaloChallenge file format and the DataModule's geometry."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from caloflow.data.datamodule import CaloDataModule, data_geometry
from caloflow.data.io import (
    Showers,
    ShowerWriter,
    file_geometry,
    read_rows,
    read_showers,
    write_showers,
)
from caloflow.errors import CaloflowError, DataFormatError
from caloflow.geometry import (
    BUILTIN,
    CALOGAN,
    DS1_PHOTONS,
    DS1_PIONS,
    Geometry,
    get_geometry,
    read_binning_xml,
)

# The challenge's binning of dataset 1 (photons), written out as its XML file is, empty layers
# included: the reader must leave those out.
PHOTONS_XML = """<Bins>
  <Bin pid="22" etaMin="0" etaMax="130" name="photon">
    <Layer id="0" r_edges="0,5,10,30,50,100,200,400,600" n_bin_alpha="1" />
    <Layer id="1" r_edges="0,2,4,6,8,10,12,15,20,30,40,50,70,90,120,150,200" n_bin_alpha="10"/>
    <Layer id="2" r_edges="0,2,5,10,15,20,25,30,40,50,60,80,100,130,160,200,250,300,350,400"
      n_bin_alpha="10"/>
    <Layer id="3" r_edges="0,50,100,200,400,600" n_bin_alpha="1" />
    <Layer id="4" r_edges="0" n_bin_alpha="1" />
    <Layer id="12" r_edges="0,100,200,400,1000,2000" n_bin_alpha="1" />
    <Layer id="13" r_edges="0" n_bin_alpha="1" />
  </Bin>
</Bins>
"""
CHALLENGE_ENERGIES_MEV = 2.0 ** np.arange(8, 23)


def test_dataset1_sizes_and_layers():
    assert DS1_PHOTONS.n_voxels == 8 + 160 + 190 + 5 + 5
    assert DS1_PIONS.n_voxels == 8 + 100 + 100 + 5 + 150 + 160 + 10
    assert DS1_PHOTONS.layer_ids == (0, 1, 2, 3, 12)
    assert DS1_PIONS.layer_ids == (0, 1, 2, 3, 12, 13, 14)
    assert DS1_PHOTONS.alpha_binned_layers == (1, 2)
    assert DS1_PIONS.alpha_binned_layers == (1, 2, 4, 5)
    assert CALOGAN.n_voxels == 3 * 96 + 12 * 12 + 12 * 6
    assert CALOGAN.layer_shapes == ((3, 96), (12, 12), (12, 6))


def _cell_centre(r_edges, n_alpha, a, r):
    """Independent computation: the centre of bin (a, r) of a challenge layer, (eta, phi) in mm."""
    alpha_edges = [-math.pi + 2 * math.pi * k / n_alpha for k in range(n_alpha + 1)]
    alpha = 0.5 * (alpha_edges[a] + alpha_edges[a + 1])
    radius = 0.5 * (r_edges[r] + r_edges[r + 1])
    return radius * math.cos(alpha), radius * math.sin(alpha)


@pytest.mark.parametrize("layer, a, r", [(1, 0, 0), (1, 3, 7), (2, 9, 18), (2, 4, 0), (0, 0, 5)])
def test_alpha_major_order_and_voxel_centres(layer, a, r):
    g = DS1_PHOTONS
    spec = g.layers[layer]
    n_alpha, n_r = spec.shape
    r_edges = spec.col_edges
    index = g.layer_slices[layer].start + a * n_r + r  # the challenge's flat order
    eta, phi = _cell_centre(r_edges, n_alpha, a, r)
    assert g.voxel_eta[index] == pytest.approx(eta, abs=1e-12)
    assert g.voxel_phi[index] == pytest.approx(phi, abs=1e-12)
    assert g.voxel_r[index] == pytest.approx(0.5 * (r_edges[r] + r_edges[r + 1]))
    assert g.voxel_layer[index] == layer
    # the same cell, found through the per-layer image
    shower = np.zeros((1, g.n_voxels))
    shower[0, index] = 1.0
    assert g.split_layers(shower)[layer][0, a, r] == 1.0


def test_binning_xml_equals_the_builtin_geometry(tmp_path):
    path = tmp_path / "binning_dataset_1_photons.xml"
    path.write_text(PHOTONS_XML)
    g = read_binning_xml(path)
    assert g.layers == DS1_PHOTONS.layers and g.file_format == DS1_PHOTONS.file_format
    assert get_geometry(str(path)).n_voxels == DS1_PHOTONS.n_voxels
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_bad_geometries_are_one_line(tmp_path):
    with pytest.raises(CaloflowError, match="unknown geometry 'ds9'"):
        get_geometry("ds9")
    with pytest.raises(CaloflowError, match="no such file"):
        get_geometry(str(tmp_path / "none.xml"))
    bad = tmp_path / "bad.xml"
    bad.write_text("<Bins><Layer id='0' r_edges='0,x' n_bin_alpha='1'/></Bins>")
    with pytest.raises(CaloflowError, match="bad <Layer>"):
        read_binning_xml(bad)
    assert set(BUILTIN) == {"calogan", "ds1-photons", "ds1-pions"}


def _challenge_file(path, voxels, energies_mev, dtype=np.float64):
    """A file written exactly as the challenge wrote its own: plain h5py, float64, gzip."""
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "incident_energies",
            data=np.asarray(energies_mev, dtype).reshape(-1, 1),
            compression="gzip",
        )
        f.create_dataset("showers", data=np.asarray(voxels, dtype), compression="gzip")
    return path


@pytest.mark.parametrize("geometry", [DS1_PHOTONS, DS1_PIONS])
def test_challenge_file_round_trips(tmp_path, geometry):
    rng = np.random.default_rng(1)
    voxels = rng.exponential(5.0, (15, geometry.n_voxels)) * (
        rng.random((15, geometry.n_voxels)) < 0.3
    )
    path = _challenge_file(tmp_path / "in.hdf5", voxels, CHALLENGE_ENERGIES_MEV)
    showers = read_showers(path, dtype=np.float64)
    assert showers.geometry == geometry and file_geometry(path) == geometry
    np.testing.assert_array_equal(showers.voxels, voxels)
    np.testing.assert_array_equal(showers.energy * 1000.0, CHALLENGE_ENERGIES_MEV)  # GeV inside
    by_hand = np.stack([voxels[:, s].sum(1) for s in geometry.layer_slices], 1)
    np.testing.assert_allclose(showers.layer_energies, by_hand)
    out = write_showers(tmp_path / "out.hdf5", showers, dtype=np.float64)
    with h5py.File(out) as f:
        assert set(f) == {"showers", "incident_energies"}
        assert f["showers"].compression == "gzip"
        np.testing.assert_array_equal(f["incident_energies"][:, 0], CHALLENGE_ENERGIES_MEV)
        np.testing.assert_array_equal(f["showers"][:], voxels)
    rows = read_rows(out, [2, 7])
    np.testing.assert_array_equal(rows.energy * 1000.0, CHALLENGE_ENERGIES_MEV[[2, 7]])


def test_streamed_challenge_file_equals_the_one_shot_file(tmp_path):
    rng = np.random.default_rng(2)
    showers = Showers(
        rng.exponential(1.0, (11, DS1_PIONS.n_voxels)).astype(np.float32),
        CHALLENGE_ENERGIES_MEV[:11] / 1000.0,
        geometry=DS1_PIONS,
    )
    with ShowerWriter(tmp_path / "s.hdf5", geometry=DS1_PIONS, block_rows=4) as out:
        out.append(showers[:5])
        out.append(showers.voxels[5:], showers.energy[5:])
    write_showers(tmp_path / "w.hdf5", showers)
    with h5py.File(tmp_path / "s.hdf5") as a, h5py.File(tmp_path / "w.hdf5") as b:
        for key in ("showers", "incident_energies"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
    with pytest.raises(DataFormatError, match="ds1-pions"):
        with ShowerWriter(tmp_path / "x.hdf5", geometry=DS1_PIONS) as out:
            out.append(np.zeros((2, DS1_PHOTONS.n_voxels)), np.ones(2))
    assert not (tmp_path / "x.hdf5").exists()


def _bad_file(path, **change):
    voxels = np.ones((4, DS1_PHOTONS.n_voxels))
    energies = CHALLENGE_ENERGIES_MEV[:4].copy()
    if "voxel" in change:
        voxels[2, 5] = change["voxel"]
    if "energy" in change:
        energies[1] = change["energy"]
    with h5py.File(path, "w") as f:
        if "drop" not in change:
            f.create_dataset(
                "incident_energies", data=energies[: change.get("rows", 4)].reshape(-1, 1)
            )
        f.create_dataset("showers", data=voxels[:, : change.get("width", voxels.shape[1])])
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"drop": True}, "key 'incident_energies': missing"),
        ({"width": 300}, "key 'showers': 300 voxels per shower match no built-in geometry"),
        ({"voxel": np.nan}, "key 'showers': non-finite value .* in row 2"),
        ({"voxel": -1.0}, "key 'showers': negative energy -1 MeV in row 2"),
        ({"energy": 0.0}, r"key 'incident_energies': incident energy <= 0 \(0 MeV\) in row 1"),
        ({"rows": 3}, "has 4 rows but 'incident_energies' has 3"),
    ],
)
def test_bad_challenge_files_get_one_line(tmp_path, change, message):
    path = _bad_file(tmp_path / "bad.hdf5", **change)
    with pytest.raises(DataFormatError, match=message) as e:
        read_showers(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_width_for_another_geometry_is_refused(tmp_path):
    path = _challenge_file(tmp_path / "p.hdf5", np.ones((2, DS1_PHOTONS.n_voxels)), [256, 512])
    with pytest.raises(DataFormatError, match=r"expected \(N, 533\) for the ds1-pions geometry"):
        read_showers(path, geometry="ds1-pions")
    with pytest.raises(DataFormatError, match="is a CaloChallenge file, expected a calogan file"):
        read_showers(path, geometry="calogan")


def test_the_datamodule_serves_the_files_geometry(tmp_path):
    rng = np.random.default_rng(3)
    voxels = rng.exponential(3.0, (40, DS1_PHOTONS.n_voxels))
    path = _challenge_file(tmp_path / "p.hdf5", voxels, rng.choice(CHALLENGE_ENERGIES_MEV, 40))
    dm = CaloDataModule(path=str(path), batch_size=8, noise_kev=0.0)
    assert dm.geometry == DS1_PHOTONS
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["voxels"].shape == (8, DS1_PHOTONS.n_voxels)
    assert batch["layer_energies"].shape == (8, DS1_PHOTONS.n_layers)
    np.testing.assert_allclose(
        batch["layer_energies"].numpy(),
        np.stack(
            [batch["voxels"].double().numpy()[:, s].sum(1) for s in DS1_PHOTONS.layer_slices], 1
        ),
    )
    assert set(np.round(batch["energy"].numpy() * 1000).astype(int)) <= set(
        CHALLENGE_ENERGIES_MEV.astype(int)
    )
    pions = _challenge_file(
        tmp_path / "pi.hdf5", np.ones((40, DS1_PIONS.n_voxels)), np.full(40, 512.0)
    )
    with pytest.raises(
        CaloflowError,
        match="--data.val_path .*ds1-pions geometry, but --data.path holds ds1-photons",
    ):
        data_geometry({"data.path": str(path), "data.val_path": str(pions)})
    with pytest.raises(DataFormatError, match="--data.path: .*expected a calogan file"):
        CaloDataModule(path=str(path), geometry="calogan")


def test_the_embedded_dataset_of_a_challenge_geometry(tmp_path):
    dm = CaloDataModule(
        geometry="ds1-pions", n_simulated=60, cache_dir=str(tmp_path), batch_size=16
    )
    dm.prepare_data()
    (path,) = tmp_path.glob("ds1-pions_n60_seed0_challenge_*.hdf5")
    assert file_geometry(path) == DS1_PIONS
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["voxels"].shape == (16, DS1_PIONS.n_voxels)
    # the challenge's energies: powers of two in MeV
    mev = batch["energy"].double().numpy() * 1000.0
    np.testing.assert_allclose(mev, 2.0 ** np.round(np.log2(mev)), rtol=1e-6)


def test_simulate_takes_the_energies_of_a_file_in_both_detectors(tmp_path):
    from caloflow.data.simulate import simulate
    from tests.helpers import run_cli

    challenge = _challenge_file(
        tmp_path / "ref.hdf5", np.zeros((6, DS1_PIONS.n_voxels)), [2.0**k for k in range(8, 14)]
    )
    calogan = tmp_path / "calogan.hdf5"
    for args, out in (
        (("--dataset", "ds1-pions", "--energies", str(challenge)), "a.hdf5"),
        (("--particle", "eplus", "--energies", str(challenge), "--n", "4"), "b.hdf5"),
    ):
        done = run_cli("caloflow", "simulate", *args, "--out", str(tmp_path / out), "--no-progress")
        assert done.returncode == 0, done.stderr
    a, b = read_showers(tmp_path / "a.hdf5"), read_showers(tmp_path / "b.hdf5")
    np.testing.assert_array_equal(a.energy * 1000.0, 2.0 ** np.arange(8, 14))  # exact, in order
    np.testing.assert_array_equal(b.energy, np.float32(2.0 ** np.arange(8, 12) / 1000.0))
    # given energies change the energies only: the same showers as simulate() with them
    again = simulate("eplus", 4, 0, energies=2.0 ** np.arange(8, 12) / 1000.0, progress=False)
    np.testing.assert_array_equal(b.voxels, again.voxels.astype(np.float32))
    bad = run_cli(
        "caloflow",
        "simulate",
        "--particle",
        "eplus",
        "--energies",
        "challenge",
        "--n",
        "3",
        "--out",
        str(calogan),
    )
    assert (
        bad.returncode != 0
        and "belongs to dataset 1" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    assert not calogan.exists()


def test_generate_follows_a_challenge_reference(tmp_path):
    """Generated files of a dataset-1 model have the reference's events and energies exactly (what
    the challenge's evaluator needs), in the CaloChallenge format; --energies challenge gives the
    official mix scaled to --n."""
    from tests.helpers import run_cli, save_checkpoint, tiny_flows

    flow1, flow2 = tiny_flows(torch.float32, seed=0, geometry="ds1-photons")
    f1 = save_checkpoint(flow1, tmp_path / "f1.ckpt")
    f2 = save_checkpoint(flow2, tmp_path / "f2.ckpt")
    energies = np.repeat(2.0 ** np.arange(8, 23), 2)
    reference = _challenge_file(
        tmp_path / "ref.hdf5", np.ones((30, DS1_PHOTONS.n_voxels)), energies
    )
    for energies_option, n, out in (
        (str(reference), 30, "gen.hdf5"),
        ("challenge", 150, "mix.hdf5"),
    ):
        done = run_cli(
            "caloflow", "generate", "--flow1", f1, "--flow2", f2, "--energies", energies_option,
            "--n", str(n), "--batch-size", "70", "--out", str(tmp_path / out), "--no-progress",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "gen.hdf5") as f:
        assert set(f) == {"showers", "incident_energies"}
        assert f["showers"].shape == (30, DS1_PHOTONS.n_voxels)
        np.testing.assert_array_equal(f["incident_energies"][:, 0], energies)
    mix = read_showers(tmp_path / "mix.hdf5")
    assert mix.geometry == DS1_PHOTONS
    values, counts = np.unique(mix.energy * 1000.0, return_counts=True)
    np.testing.assert_array_equal(values, 2.0 ** np.arange(8, 23))
    assert counts.sum() == 150 and counts[0] >= counts[-1] >= 1
    calogan_flows = tiny_flows(torch.float32, seed=0)
    g1 = save_checkpoint(calogan_flows[0], tmp_path / "g1.ckpt")
    g2 = save_checkpoint(calogan_flows[1], tmp_path / "g2.ckpt")
    bad = run_cli(
        "caloflow", "generate", "--flow1", g1, "--flow2", g2, "--energies", "challenge",
        "--n", "5", "--out", str(tmp_path / "bad.hdf5"),
    )  # fmt: skip
    assert bad.returncode != 0 and "belongs to dataset 1" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.hdf5").exists()


def test_a_regular_dataset2_binning_loads_from_its_xml(tmp_path):
    """The challenge's dataset-2 layout (45 layers of 9 radial x 16 angular bins) from its XML:
    6,480 voxels; its files are read with that geometry, and refused in one line without it."""
    r_edges = "0,4.65,9.3,13.95,18.6,23.25,27.9,32.55,37.2,41.85"
    layers = "\n".join(
        f'<Layer id="{k}" r_edges="{r_edges}" n_bin_alpha="16" />' for k in range(45)
    )
    xml = tmp_path / "binning_dataset_2.xml"
    xml.write_text(f'<Bins><Bin pid="11" name="electron">\n{layers}\n</Bin></Bins>\n')
    g = get_geometry(str(xml))
    assert (g.n_layers, g.n_voxels, g.layer_shapes[0]) == (45, 45 * 9 * 16, (16, 9))
    assert g.alpha_binned_layers == tuple(range(45))
    voxels = np.zeros((3, g.n_voxels))
    voxels[1, g.layer_slices[44].start + 15 * 9 + 8] = 7.0  # last layer, last alpha, last r bin
    path = _challenge_file(tmp_path / "ds2.hdf5", voxels, [1000.0, 2000.0, 4000.0])
    with pytest.raises(DataFormatError, match="pass the binning with --geometry FILE.xml"):
        read_showers(path)
    showers = read_showers(path, geometry=str(xml))
    assert showers.geometry == g
    assert showers.layers[44][1, 15, 8] == 7.0 and showers.layer_energies[1, 44] == 7.0
