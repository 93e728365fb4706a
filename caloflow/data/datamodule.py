"""The shared Lightning DataModule of caloflow (Flow I, Flow II, CaloGAN, classifiers).

It reads a CaloGAN-format file (or simulates the embedded default once into a cache), splits it
70/30 into training and validation (or takes a separate validation file) and serves batches in
one of three representations:

* ``"showers"``: ``{"voxels": (B, 504) MeV, "layer_energies": (B, 3) MeV, "energy": (B,) GeV}``
* ``"flow1"``: ``{"x": (B, 3), "context": (B, 1), "energy"}`` via :class:`caloflow.transforms.FlowIPreprocessing`
* ``"flow2"``: ``{"x": (B, 504), "context": (B, 4), "energy"}`` via :class:`caloflow.transforms.FlowIIPreprocessing`

Noise (paper section 4.2, step 1): uniform [0, ``noise_kev``) keV is added to every voxel of a
training item each time it is served, and the layer energies are computed after the noise.
Validation items get one fixed noise draw (so the validation NLL is comparable between epochs),
unless ``noise_validation=False``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from caloflow.data.geometry import KEV, layer_energies
from caloflow.data.io import Showers, count_showers, read_showers
from caloflow.errors import CaloflowError, DataFormatError
from caloflow.transforms import FlowIIPreprocessing, FlowIPreprocessing

Particle = Literal["eplus", "gamma", "piplus"]
Representation = Literal["showers", "flow1", "flow2"]


def default_cache_dir() -> Path:
    """``$CALOFLOW_CACHE``, else ``~/.cache/caloflow``."""
    return Path(os.environ.get("CALOFLOW_CACHE", Path.home() / ".cache" / "caloflow"))


def embedded_dataset(
    particle: str, n: int, seed: int = 0, energy_range: tuple[float, float] = (1.0, 100.0), cache_dir=None
) -> Path:
    """Path of the embedded-simulator dataset for these settings, simulating it once if it is not cached."""
    from caloflow.data.simulate import SIMULATOR_VERSION, simulate_to_file

    lo, hi = energy_range
    name = f"{particle}_n{n}_seed{seed}_E{lo:g}-{hi:g}_sim{SIMULATOR_VERSION}.hdf5"
    path = Path(cache_dir or default_cache_dir()) / name
    if path.exists():
        rank_zero_info(f"caloflow: using cached simulated dataset {path}")
    else:
        rank_zero_info(f"caloflow: simulating {n} {particle} showers into {path} (done once, then reused)")
        simulate_to_file(path, particle, n, seed=seed, energy_range=(lo, hi))
    return path


def _batch_identity(batch):
    # __getitems__ already returns a collated batch
    return batch


class ShowerDataset(Dataset):
    """Showers served whole batches at a time (``__getitems__``), with optional per-serve noise.

    Args:
        showers: voxels in MeV, energy in GeV.
        representation: ``"showers"``, ``"flow1"`` or ``"flow2"``.
        noise_kev: width of the uniform voxel noise in keV; 0 for none.
        fresh_noise: draw new noise every time an item is served (training); otherwise one fixed
            draw per item, made here from ``seed`` (validation).
        seed: seeds the noise when the data are served in the main process; in worker processes
            the worker's torch seed (set by Lightning from the global seed) is used.
    """

    def __init__(
        self,
        showers: Showers,
        representation: Representation = "showers",
        noise_kev: float = 0.0,
        fresh_noise: bool = True,
        seed: int = 0,
    ):
        self.voxels = torch.as_tensor(np.asarray(showers.voxels, dtype=np.float32))
        self.energy = torch.as_tensor(np.asarray(showers.energy, dtype=np.float32))
        self.representation = representation
        self.noise = noise_kev * KEV
        self.fresh_noise = fresh_noise
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed_noise = None
        if self.noise > 0 and not fresh_noise:
            self.fixed_noise = torch.rand(self.voxels.shape, generator=self.generator) * self.noise
        self.flow1 = FlowIPreprocessing()
        self.flow2 = FlowIIPreprocessing()

    def __len__(self) -> int:
        return len(self.energy)

    def _noise(self, shape) -> torch.Tensor:
        if torch.utils.data.get_worker_info() is not None:
            return torch.rand(shape) * self.noise
        return torch.rand(shape, generator=self.generator) * self.noise

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        voxels, energy = self.voxels[index], self.energy[index]
        if self.noise > 0:
            voxels = voxels + (self._noise(voxels.shape) if self.fixed_noise is None else self.fixed_noise[index])
        if self.representation == "showers":
            return {"voxels": voxels, "layer_energies": layer_energies(voxels), "energy": energy}
        if self.representation == "flow1":
            x, context = self.flow1.forward(layer_energies(voxels.double()), energy)
        else:
            x, context = self.flow2.forward(voxels, energy)
        return {"x": x.float(), "context": context.float(), "energy": energy}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


class CaloDataModule(L.LightningDataModule):
    """CaloGAN-format showers for every model of caloflow.

    Args:
        path: CaloGAN HDF5 file. ``None``: the embedded default, simulated once for ``particle``
            into ``cache_dir`` and reused.
        particle: ``eplus``, ``gamma`` or ``piplus`` (names the embedded dataset).
        representation: what a batch holds (see the module docstring).
        val_path: a separate validation file; otherwise ``val_fraction`` of ``path`` is held out.
        val_fraction: held-out fraction for validation (paper: 30,000 of 100,000).
        max_showers: read only the first ``max_showers`` rows of ``path`` (small runs).
        batch_size: paper: 175 for the flows.
        num_workers: DataLoader worker processes.
        seed: seeds the split and the noise.
        noise_kev: uniform noise width in keV per voxel (paper: 1 keV); 0 disables it.
        noise_validation: also add (fixed) noise to the validation showers.
        n_simulated: size of the embedded dataset (paper: 100,000 per particle).
        simulation_seed: seed of the embedded dataset (part of its cache name).
        energy_range: incident-energy range in GeV of the embedded dataset.
        cache_dir: where the embedded dataset is kept (default ``$CALOFLOW_CACHE`` or ``~/.cache/caloflow``).
    """

    def __init__(
        self,
        path: str | None = None,
        particle: Particle = "eplus",
        representation: Representation = "showers",
        val_path: str | None = None,
        val_fraction: float = 0.3,
        max_showers: int | None = None,
        batch_size: int = 175,
        num_workers: int = 0,
        seed: int = 0,
        noise_kev: float = 1.0,
        noise_validation: bool = True,
        n_simulated: int = 100_000,
        simulation_seed: int = 0,
        energy_range: tuple[float, float] = (1.0, 100.0),
        cache_dir: str | None = None,
    ):
        super().__init__()
        if not 0 < val_fraction < 1 and val_path is None:
            raise CaloflowError(f"--data.val_fraction must be in (0, 1), got {val_fraction}")
        if noise_kev < 0:
            raise CaloflowError(f"--data.noise_kev must be >= 0, got {noise_kev}")
        if batch_size < 1:
            raise CaloflowError(f"--data.batch_size must be >= 1, got {batch_size}")
        # fail at start-up, not after the trainer is built, when a given file is unusable
        for option, p in (("data.path", path), ("data.val_path", val_path)):
            if p is not None:
                try:
                    count_showers(p)
                except DataFormatError as e:
                    raise DataFormatError(f"--{option}: {e}") from None
        self.save_hyperparameters()
        self.train_set: ShowerDataset | None = None
        self.val_set: ShowerDataset | None = None

    @property
    def data_path(self) -> Path:
        h = self.hparams
        if h.path is not None:
            return Path(h.path)
        return embedded_dataset(h.particle, h.n_simulated, h.simulation_seed, tuple(h.energy_range), h.cache_dir)

    def prepare_data(self) -> None:
        # on one process only: simulate the embedded default if it is not cached yet
        if self.hparams.path is None:
            _ = self.data_path

    def _read(self, path) -> Showers:
        return read_showers(path, stop=self.hparams.max_showers)

    def split(self) -> tuple[Showers, Showers]:
        """(training, validation) showers."""
        h = self.hparams
        showers = self._read(self.data_path)
        if h.val_path is not None:
            return showers, self._read(h.val_path)
        order = np.random.default_rng(h.seed).permutation(len(showers))
        n_val = int(round(h.val_fraction * len(showers)))
        if n_val == 0 or n_val == len(showers):
            raise CaloflowError(f"{self.data_path}: {len(showers)} showers are too few to split {h.val_fraction:g}")
        return showers[np.sort(order[n_val:])], showers[np.sort(order[:n_val])]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        train, val = self.split()
        self.train_set = ShowerDataset(train, h.representation, h.noise_kev, fresh_noise=True, seed=h.seed)
        self.val_set = ShowerDataset(
            val, h.representation, h.noise_kev if h.noise_validation else 0.0, fresh_noise=False, seed=h.seed + 1
        )

    def _loader(self, dataset: ShowerDataset, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            dataset,
            batch_size=h.batch_size,
            shuffle=shuffle,
            num_workers=h.num_workers,
            collate_fn=_batch_identity,
            persistent_workers=h.num_workers > 0,
            generator=torch.Generator().manual_seed(h.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
