"""CaloDataModule: split, physical showers for every model, labelled classifier data, fresh per-serve noise,
determinism, embedded default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloflow.data import CaloDataModule, read_showers
from caloflow.data.io import Showers
from caloflow.errors import CaloflowError, DataFormatError
from caloflow.geometry import LAYER_SLICES


def dm(path, **kw) -> CaloDataModule:
    kw.setdefault("batch_size", 50)
    module = CaloDataModule(path=str(path), **kw)
    module.setup("fit")
    return module


def test_split_is_70_30_disjoint_and_complete(eplus_file):
    m = dm(eplus_file, noise_kev=0.0)
    assert len(m.train_set) == 420 and len(m.val_set) == 180
    data = read_showers(eplus_file)
    rows = {tuple(np.round(v[:40], 4)) for v in data.voxels}
    train = {tuple(np.round(v[:40].numpy(), 4)) for v in m.train_set.voxels}
    val = {tuple(np.round(v[:40].numpy(), 4)) for v in m.val_set.voxels}
    assert not train & val and train | val == rows


def test_separate_validation_file(eplus_file):
    m = dm(eplus_file, val_path=str(eplus_file), max_showers=100)
    assert len(m.train_set) == 100 and len(m.val_set) == 100


def test_showers_batches_and_fresh_noise(eplus_file):
    m = dm(eplus_file, noise_kev=1.0)
    raw = m.train_set.voxels[:8]
    first = m.train_set.__getitems__(list(range(8)))
    second = m.train_set.__getitems__(list(range(8)))
    for batch in (first, second):
        noise = batch["voxels"] - raw
        # uniform [0, 1 keV) on every voxel (float32 rounding of the sum aside)
        assert noise.min() >= -1e-5 and noise.max() < 1e-3 + 1e-5 and noise.abs().mean() > 2e-4
        # layer energies are computed after the noise
        sums = torch.stack([batch["voxels"][:, s].double().sum(1) for s in LAYER_SLICES], 1)
        assert batch["layer_energies"].dtype == torch.float64 and torch.allclose(
            batch["layer_energies"], sums
        )
    assert not torch.equal(first["voxels"], second["voxels"])  # fresh every time an item is served
    assert batch["energy"].shape == (8,)


def test_validation_noise_is_fixed_and_switchable(eplus_file):
    m = dm(eplus_file, noise_kev=1.0)
    a, b = m.val_set.__getitems__([0, 1, 2]), m.val_set.__getitems__([0, 1, 2])
    assert torch.equal(a["voxels"], b["voxels"]) and not torch.equal(
        a["voxels"], m.val_set.voxels[:3]
    )
    quiet = dm(eplus_file, noise_kev=1.0, noise_validation=False)
    assert torch.equal(quiet.val_set.__getitems__([0])["voxels"], quiet.val_set.voxels[:1])
    none = dm(eplus_file, noise_kev=0.0)
    assert torch.equal(none.train_set.__getitems__([0, 1])["voxels"], none.train_set.voxels[:2])


def test_noise_is_fresh_per_epoch_through_the_loader(eplus_file):
    for workers in (0, 1):
        m = dm(eplus_file, noise_kev=1.0, num_workers=workers, batch_size=420)
        loader = m.train_dataloader()
        epochs = [next(iter(loader)) for _ in range(2)]
        order = [torch.argsort(e["energy"]) for e in epochs]
        v0, v1 = (e["voxels"][o] for e, o in zip(epochs, order))
        assert torch.allclose(v0, v1, atol=1.01e-3) and not torch.allclose(v0, v1, atol=1e-6)


def test_batches_are_physical_showers_for_every_model(eplus_file):
    """No representation switch: the same batch feeds Flow I, Flow II, CaloGAN and the classifiers."""
    m = dm(eplus_file, noise_kev=0.0)
    batch = m.train_set.__getitems__([0, 1, 2])
    assert set(batch) == {"voxels", "layer_energies", "energy"}
    data = read_showers(eplus_file)
    row = int(np.argmin(np.abs(data.energy - batch["energy"][0].item())))
    assert np.allclose(batch["voxels"][0].numpy(), data.voxels[row]) and batch["voxels"].shape == (
        3,
        504,
    )


def test_classifier_mode_serves_balanced_labelled_showers(eplus_file):
    data = read_showers(eplus_file)
    reference, generated = data[:300], Showers(data.voxels[300:550] * 1.1, data.energy[300:550])
    m = CaloDataModule.from_showers(reference, generated, batch_size=64, noise_kev=0.0, seed=2)
    m.setup("fit")
    sizes = {name: len(ds) for name, ds in m.datasets.items()}
    assert sizes == {"train": 300, "val": 100, "test": 100}  # 60/20/20 of 250 per class
    for name, ds in m.datasets.items():
        labels = ds.labels.numpy()
        assert labels.sum() == len(labels) / 2  # balanced in every split
        # label 1 = reference: those showers come from the reference set, 0 from the generated one
        ref_energies = set(np.round(reference.energy, 5))
        gen_energies = set(np.round(generated.energy, 5))
        served = np.round(ds.energy.numpy(), 5)
        assert all(e in ref_energies for e in served[labels == 1])
        assert all(e in gen_energies for e in served[labels == 0])
    batch = next(iter(m.train_dataloader()))
    assert (
        set(batch) == {"voxels", "layer_energies", "energy", "label"} and len(batch["label"]) == 64
    )
    everything = np.concatenate([ds.energy.numpy() for ds in m.datasets.values()])
    assert len(np.unique(np.round(everything, 6))) == 500  # the three splits are disjoint


def test_same_seed_same_batches(eplus_file):
    def first_batch(seed):
        torch.manual_seed(123)
        return next(iter(dm(eplus_file, seed=seed).train_dataloader()))["voxels"]

    assert torch.equal(first_batch(3), first_batch(3)) and not torch.equal(
        first_batch(3), first_batch(4)
    )


def test_embedded_default_is_simulated_once_and_reused(tmp_path):
    m = CaloDataModule(
        path=None, particle="gamma", n_simulated=64, cache_dir=str(tmp_path), batch_size=16
    )
    m.prepare_data()
    files = list(tmp_path.glob("*.hdf5"))
    assert len(files) == 1 and "gamma_n64" in files[0].name
    stamp = files[0].stat().st_mtime_ns
    again = CaloDataModule(
        path=None, particle="gamma", n_simulated=64, cache_dir=str(tmp_path), batch_size=16
    )
    again.prepare_data()
    again.setup("fit")
    assert files[0].stat().st_mtime_ns == stamp and len(again.train_set) + len(again.val_set) == 64


def test_bad_options_fail_early(tmp_path, eplus_file):
    with pytest.raises(DataFormatError, match="no such file"):
        CaloDataModule(path=str(tmp_path / "missing.hdf5"))
    with pytest.raises(CaloflowError, match="val_fraction"):
        CaloDataModule(path=str(eplus_file), val_fraction=1.5)
    with pytest.raises(CaloflowError, match="noise_kev"):
        CaloDataModule(path=str(eplus_file), noise_kev=-1)
