"""The detector geometry as the models carry it: sizes, permutations, checkpoints, refusals; and
no module outside ``caloflow/geometry.py`` that spells the voxel counts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from nflows.transforms import Permutation

from callbacks.model_selection import histogram_score
from caloflow.checkpoints import read_checkpoint
from caloflow.data.datamodule import CaloDataModule
from caloflow.data.io import Showers, ShowerWriter, write_showers
from caloflow.domain import geometry_label, of_file
from caloflow.errors import CaloflowError
from caloflow.flows.build import build_flow2
from caloflow.flows.fast_inverse import fast_inverse
from caloflow.flows.permutations import LayerwiseRandomPermutation, LayerwiseReversal
from caloflow.geometry import CALOGAN, DS1_PHOTONS, DS1_PIONS, get_geometry
from caloflow.models.calogan import CaloGAN
from caloflow.models.classifiers import CNN, ShowerClassifier
from caloflow.models.flows import FlowI, FlowII
from caloflow.sampling import CaloFlow
from caloflow.transforms import EnergyToU
from refine.showers import CaloFlowGenerator
from tests.helpers import REPO, TINY_GAN, perturb, save_checkpoint

# ------------------------------------------------------------------ nobody else knows the counts
#: the voxel counts of the built-in geometries (CaloGAN, its first layer, dataset-1 photons, pions)
COUNTS = re.compile(r"\b(504|288|368|533)\b")
#: the CaloGAN shortcuts of caloflow.geometry (kept for code outside the toolkit)
SHORTCUTS = frozenset({"LAYER_SIZES", "N_VOXELS", "LAYER_SHAPES", "LAYER_SLICES", "N_LAYERS"})
SCANNED = ("caloflow", "refine", "callbacks")


def _modules() -> list[tuple[str, Path]]:
    return [
        (path.relative_to(REPO).as_posix(), path)
        for top in SCANNED
        for path in sorted((REPO / top).rglob("*.py"))
        if path.relative_to(REPO).as_posix() != "caloflow/geometry.py"
    ]


def _count_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [f"{i}: {line.strip()}" for i, line in enumerate(lines, 1) if COUNTS.search(line)]


def _shortcut_uses(path: Path) -> list[str]:
    """``from caloflow.geometry import N_VOXELS`` (and the others) or ``geometry.N_VOXELS``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "caloflow.geometry":
            found += [f"{node.lineno}: imports {a.name}" for a in node.names if a.name in SHORTCUTS]
        elif isinstance(node, ast.Attribute) and node.attr in SHORTCUTS:
            found.append(f"{node.lineno}: uses .{node.attr}")
    return found


def test_no_module_outside_the_geometry_spells_a_voxel_count():
    bad = [f"{rel}:{hit}" for rel, path in _modules() for hit in _count_lines(path)]
    assert not bad, "voxel counts outside caloflow/geometry.py:\n" + "\n".join(bad)


def test_no_module_imports_the_calogan_shortcuts():
    bad = [f"{rel}:{hit}" for rel, path in _modules() for hit in _shortcut_uses(path)]
    assert not bad, "CaloGAN shortcuts instead of a Geometry:\n" + "\n".join(bad)


def test_the_scans_find_what_they_look_for(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("from caloflow.geometry import N_VOXELS\nx = g.LAYER_SIZES  # 504 voxels\n")
    assert _count_lines(sample) == ["2: x = g.LAYER_SIZES  # 504 voxels"]
    assert _shortcut_uses(sample) == ["1: imports N_VOXELS", "2: uses .LAYER_SIZES"]
    assert not COUNTS.search("15040, 2880.5, v368, 5330")


# ------------------------------------------------------------------ Flow I and the u-space
def test_u_space_of_four_layers_by_hand_and_back():
    """u_0 = E_hat / E_inc, u_k = E_{k-1} / (E_{k-1} + ... + E_{L-1}): for E = (1, 2, 3, 4) MeV at
    E_inc = 20 MeV, u = (10/20, 1/10, 2/9, 3/7); the inverse gives E back."""
    e = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    incident_gev = torch.tensor([0.02], dtype=torch.float64)
    u = EnergyToU().forward(e, incident_gev)
    expected = torch.tensor([[0.5, 0.1, 2 / 9, 3 / 7]], dtype=torch.float64)
    assert torch.allclose(u, expected, rtol=1e-15, atol=0)
    assert torch.allclose(EnergyToU().inverse(u, incident_gev), e, rtol=1e-14, atol=0)


def test_flow1_has_one_feature_per_layer_and_conserves_energy():
    torch.manual_seed(0)
    flow1 = perturb(FlowI(n_blocks=2, hidden_features=8, num_bins=4, geometry=DS1_PIONS), 0.2, 0)
    incident = torch.tensor([0.256, 1.0, 65.536, 4194.304])
    e = flow1.sample(incident, torch.Generator().manual_seed(0))
    assert flow1.latent_dim == DS1_PIONS.n_layers and e.shape == (4, DS1_PIONS.n_layers)
    assert (e >= 0).all() and (e.double().sum(1) <= incident.double() * 1e3 * (1 + 1e-6)).all()


# ------------------------------------------------------------------ Flow II
def tiny_flow2(geometry, seed: int = 0) -> FlowII:
    torch.manual_seed(seed)
    model = FlowII(n_blocks=2, hidden_features=8, num_bins=4, dropout=0.0, geometry=geometry)
    return perturb(model, 0.2, seed).eval()


def test_flow2_for_ds1_photons_has_one_latent_dimension_per_voxel():
    model = tiny_flow2("ds1-photons")
    assert model.geometry == DS1_PHOTONS and model.latent_dim == DS1_PHOTONS.n_voxels
    assert model.preprocessing.context_features == 1 + DS1_PHOTONS.n_layers
    assert model.hparams["geometry"] == DS1_PHOTONS.to_dict()


@pytest.mark.parametrize("geometry", [DS1_PHOTONS, DS1_PIONS])
def test_flow2_permutations_keep_every_layer_in_its_index_range(geometry):
    flow = build_flow2(geometry, n_blocks=3, hidden_features=4, num_bins=2)
    permutations = [t for t in flow._transform._transforms if isinstance(t, Permutation)]
    assert [type(p) for p in permutations] == [LayerwiseReversal, LayerwiseRandomPermutation]
    reversal, shuffle = (p._permutation.numpy() for p in permutations)
    for s, size in zip(geometry.layer_slices, geometry.layer_sizes):
        assert np.array_equal(reversal[s], np.arange(s.stop - 1, s.start - 1, -1))
        assert np.array_equal(np.sort(shuffle[s]), np.arange(s.start, s.stop))
        if size > 4:  # a shuffle of a real layer moves something
            assert not np.array_equal(shuffle[s], np.arange(s.start, s.stop))


def test_flow2_log_prob_of_ds1_showers_is_finite():
    model = tiny_flow2(DS1_PHOTONS, seed=1)
    rng = np.random.default_rng(0)
    voxels = rng.gamma(0.5, 20.0, (4, DS1_PHOTONS.n_voxels)) + 1e-3
    voxels[3, DS1_PHOTONS.layer_slices[0]] = 0.0  # an empty presampler stays finite too
    incident = torch.tensor([0.256, 8.192, 262.144, 4194.304])
    with torch.no_grad():
        log_prob = model.log_prob(torch.tensor(voxels, dtype=torch.float32), incident)
    assert log_prob.shape == (4,) and torch.isfinite(log_prob).all()


@pytest.mark.parametrize("geometry", [DS1_PHOTONS, DS1_PIONS], ids=lambda g: g.name)
def test_fast_inverse_is_exact_for_dataset1(geometry):
    """The fast inverse equals nflows' inverse (float64, 1e-9) with each dataset-1 detector's
    layer-wise permutations; hidden 24 < V: the first 24 features one after another, the rest at
    once. The inverse is also the forward's inverse."""
    torch.manual_seed(0)
    flow = build_flow2(geometry, hidden_features=24, n_blocks=3, num_bins=4).double().eval()
    perturb(flow, 0.05, seed=6)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(8, geometry.n_voxels, generator=g, dtype=torch.float64)
    context = torch.randn(8, 1 + geometry.n_layers, generator=g, dtype=torch.float64)
    with torch.no_grad():
        reference = flow._transform.inverse(z, context)[0]
        back = flow._transform(reference, context)[0]
    out = fast_inverse(flow, z, context)
    assert (reference - z).abs().max() > 0.3  # the flow really moves the points
    assert (out - reference).abs().max().item() <= 1e-9
    assert (back - z).abs().max().item() <= 1e-9


# ------------------------------------------------------------------ checkpoints
def _ds1_showers(n: int, seed: int = 0) -> Showers:
    rng = np.random.default_rng(seed)
    voxels = rng.gamma(0.5, 20.0, (n, DS1_PHOTONS.n_voxels)).astype(np.float32)
    return Showers(voxels, rng.uniform(1.0, 100.0, n), geometry=DS1_PHOTONS)


@pytest.mark.parametrize("cls", [FlowI, FlowII])
def test_a_fitted_checkpoint_keeps_the_geometry(tmp_path, cls):
    dm = CaloDataModule.from_showers(_ds1_showers(24), batch_size=8, val_fraction=0.25)
    model = cls(n_blocks=1, hidden_features=4, num_blocks=1, num_bins=2, geometry="ds1-photons")
    # a logger: Lightning logs the model's and the DataModule's hyperparameters together, and
    # both take a ``geometry``
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert (Path(trainer.logger.log_dir) / "hparams.yaml").is_file()
    # stored as plain data (read with weights_only=True), the geometry itself, not its name
    assert read_checkpoint(tmp_path / "m.ckpt")["hyper_parameters"]["geometry"] == (
        DS1_PHOTONS.to_dict()
    )
    loaded = cls.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.geometry == DS1_PHOTONS
    assert loaded.domain.geometry.startswith("ds1-photons") and loaded.domain.energy_gev
    state, again = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_a_model_of_a_binning_xml_loads_without_the_file(tmp_path):
    xml = tmp_path / "binning.xml"
    xml.write_text(
        '<Bins><Bin pid="22">\n'
        '<Layer id="0" r_edges="0,5,20" n_bin_alpha="1"/>\n'
        '<Layer id="1" r_edges="0,2,4,8" n_bin_alpha="4"/>\n'
        '<Layer id="4" r_edges="0" n_bin_alpha="1"/>\n'
        "</Bin></Bins>\n"
    )
    model = tiny_flow2(str(xml))
    assert model.geometry.layer_sizes == (2, 12) and model.latent_dim == 14
    path = save_checkpoint(model, tmp_path / "flow2.ckpt")
    xml.unlink()
    loaded = FlowII.load_from_checkpoint(path)
    assert loaded.geometry == get_geometry(model.geometry.to_dict()) == model.geometry


def test_a_checkpoint_from_before_geometries_loads_as_calogan(tmp_path):
    """Checkpoints written before models took a geometry have none in their hyperparameters."""
    model = FlowI(n_blocks=1, hidden_features=4, num_blocks=1, num_bins=2)
    path = tmp_path / "old.ckpt"
    save_checkpoint(model, path)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["hyper_parameters"]["geometry"]
    torch.save(ckpt, path)
    assert FlowI.load_from_checkpoint(path).geometry == CALOGAN


def test_a_model_refuses_data_of_another_geometry(tmp_path):
    dm = CaloDataModule.from_showers(_ds1_showers(24), batch_size=8, val_fraction=0.25)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(
        CaloflowError, match="ds1-photons geometry but the model is built for calogan"
    ):
        trainer.fit(FlowI(n_blocks=1, hidden_features=4, num_blocks=1, num_bins=2), dm)


# ------------------------------------------------------------------ classifiers, CaloGAN, sampler
def _one_line_error(make) -> str:
    with pytest.raises(CaloflowError) as e:
        make()
    message = str(e.value)
    assert "\n" not in message
    return message


def test_calogan_baseline_and_cnn_refuse_other_geometries_in_one_line():
    assert "ds1-photons" in _one_line_error(lambda: CaloGAN(**TINY_GAN, geometry="ds1-photons"))
    assert "ds1-pions" in _one_line_error(lambda: CNN(geometry=DS1_PIONS))
    assert "ds1-photons" in _one_line_error(lambda: ShowerClassifier("cnn", geometry="ds1-photons"))
    assert CaloGAN(**TINY_GAN).geometry == CALOGAN and CNN().geometry == CALOGAN


def test_dnn_classifier_input_follows_the_geometry():
    """The voxels divided by their layer sums, log10(E_inc / 10 GeV) and log10((E_k + 1 keV) /
    100 GeV) + 2 (numpy, float64)."""
    classifier = ShowerClassifier("dnn", "normalized", geometry="ds1-pions")
    rng = np.random.default_rng(2)
    voxels = rng.gamma(0.5, 20.0, (3, DS1_PIONS.n_voxels))
    incident = np.array([0.256, 10.0, 4194.304])
    batch = {"voxels": torch.tensor(voxels), "energy": torch.tensor(incident)}
    inputs = classifier.net.encode(batch).double().numpy()
    sums = np.stack([voxels[:, s].sum(1) for s in DS1_PIONS.layer_slices], axis=1)
    per_voxel = np.concatenate(
        [voxels[:, s] / sums[:, [k]] for k, s in enumerate(DS1_PIONS.layer_slices)], axis=1
    )
    expected = np.concatenate(
        [per_voxel, np.log10(incident / 10)[:, None], np.log10((sums + 1e-3) / 1e5) + 2], axis=1
    )
    assert inputs.shape == (3, DS1_PIONS.n_voxels + 1 + DS1_PIONS.n_layers)
    assert np.allclose(inputs, expected, rtol=1e-6, atol=1e-6)
    assert classifier(batch).shape == (3,)
    assert classifier.hparams["geometry"] == DS1_PIONS.to_dict()


def test_sampler_refuses_flows_of_different_geometries_in_one_line():
    flow1 = FlowI(n_blocks=1, hidden_features=4, num_blocks=1, num_bins=2)
    message = _one_line_error(lambda: CaloFlow(flow1, tiny_flow2("ds1-photons")))
    assert "calogan" in message and "ds1-photons" in message
    with pytest.raises(ValueError, match="calogan geometry, Flow II for ds1-photons"):
        CaloFlowGenerator(flow1, tiny_flow2("ds1-photons"))


def test_sampler_refuses_a_writer_of_another_geometry_before_drawing(tmp_path):
    flow1 = FlowI(n_blocks=1, hidden_features=4, num_blocks=1, num_bins=2, geometry=DS1_PHOTONS)
    sampler = CaloFlow(flow1, tiny_flow2(DS1_PHOTONS))
    with ShowerWriter(tmp_path / "out.hdf5", expected_rows=2) as out:  # a CaloGAN file
        message = _one_line_error(lambda: sampler.sample(np.ones(2, np.float32), out=out))
    assert "calogan" in message and "ds1-photons" in message and out.n == 0


def test_sampler_returns_showers_of_the_flows_geometry():
    torch.manual_seed(0)
    flow1 = perturb(FlowI(n_blocks=2, hidden_features=8, num_bins=4, geometry=DS1_PHOTONS), 0.2, 3)
    sampler = CaloFlow(flow1, tiny_flow2(DS1_PHOTONS, seed=4))
    incident = np.array([0.256, 1.024, 65.536, 4194.304], dtype=np.float32)
    showers = sampler.sample(incident, torch.Generator().manual_seed(0), batch_size=3)
    assert sampler.geometry == DS1_PHOTONS and showers.geometry == DS1_PHOTONS
    assert showers.voxels.shape == (4, DS1_PHOTONS.n_voxels) and np.isfinite(showers.voxels).all()
    # energy conservation: the layer energies sum to at most E_inc, the 10 keV cut only removes
    total = showers.voxels.astype(np.float64).sum(1)
    assert (showers.voxels >= 0).all() and (total <= incident * 1e3 * (1 + 1e-5)).all()


def test_laser_generator_latent_is_layers_then_voxels():
    flow1 = FlowI(n_blocks=1, hidden_features=4, num_blocks=1, num_bins=2, geometry=DS1_PIONS)
    generator = CaloFlowGenerator(flow1, tiny_flow2(DS1_PIONS))
    assert generator.geometry == DS1_PIONS
    assert generator.split == (DS1_PIONS.n_layers, DS1_PIONS.n_voxels)


def test_histogram_score_has_the_layers_of_the_geometry():
    """Identical samples score 0. Showers with all their energy in the first layer against showers
    with all of it in the last: E_0 / E_hat is 1 against 0, E_{L-1} / E_hat 0 against 1, so those
    two histograms separate completely (separation power 1) and a middle layer's (0 and 0) not."""
    rng = np.random.default_rng(3)
    real = rng.gamma(0.5, 20.0, (200, DS1_PIONS.n_voxels))
    score, per_feature = histogram_score(real, real.copy(), bins=10, geometry=DS1_PIONS)
    names = {f"{kind}_{k}" for kind in ("log10E", "frac") for k in range(DS1_PIONS.n_layers)}
    assert set(per_feature) == names and score == 0.0
    first, last = DS1_PIONS.layer_slices[0], DS1_PIONS.layer_slices[-1]
    in_first, in_last = np.zeros_like(real), np.zeros_like(real)
    in_first[:, first], in_last[:, last] = real[:, first], real[:, last]
    _, per_feature = histogram_score(in_first, in_last, bins=10, geometry=DS1_PIONS)
    last_k = DS1_PIONS.n_layers - 1
    assert per_feature["frac_0"] == pytest.approx(1.0)
    assert per_feature[f"frac_{last_k}"] == pytest.approx(1.0) and per_feature["frac_1"] == 0.0


def test_the_domain_of_a_ds1_file_names_the_models_geometry(tmp_path):
    path = write_showers(tmp_path / "ds1.hdf5", _ds1_showers(3))
    assert of_file(path).geometry == geometry_label(DS1_PHOTONS) != geometry_label(CALOGAN)
    assert geometry_label(CALOGAN).startswith("CaloGAN ")
