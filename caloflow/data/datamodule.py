"""The one Lightning DataModule of caloflow: physical showers for every model.

Flow I, Flow II, the CaloGAN baseline and the real-vs-generated classifiers all train on the
same batches of physical showers; each model encodes them into its own representation (the
preprocessing modules it owns), so nothing here depends on the model. A batch is

    {"voxels": (B, V) MeV float32, "layer_energies": (B, n_layers) MeV float64, "energy": (B,) GeV}

in the detector geometry of the data (:attr:`CaloDataModule.geometry`, from the files: CaloGAN or
a CaloChallenge geometry)

plus ``"label"`` (1 = reference, 0 = generated) when the module serves a classifier.

Two ways to use it:

* **one file** (generators): a CaloGAN or CaloChallenge file (or the embedded simulator's default, simulated
  once into a cache) split 70/30 into training and validation, or a separate validation file;
* **reference + generated** (classifiers, ``generated=...``): the same number of showers of each
  kind, labelled, split 60/20/20 into training, validation and test per class so that every split
  stays balanced (paper appendix A).

Noise (paper section 4.2, step 1): uniform [0, ``noise_kev``) keV is added to every voxel of a
training item each time it is served, and the layer energies are computed after the noise (in
float64, so that they are the exact sums of the float32 voxels). Validation and test items get
one fixed noise draw (validation NLLs are comparable between epochs), unless
``noise_validation=False``.

Exact resume: the training order comes from one shuffling generator for the life of the module
and the noise from the training set's generator; :meth:`CaloDataModule.state_dict` (saved by
Lightning in every checkpoint) holds both states, so a fit resumed from a checkpoint serves the
same batches with the same noise as an uninterrupted one (with ``num_workers: 0``; worker
processes draw the noise from their own generators). The global random states are saved by
:class:`callbacks.ExactResume`.

Data that no run can use (an empty file, too few showers to split) are refused in the
constructor, before a Trainer creates its log folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from caloflow.data.io import Showers, check_showers, file_geometry, read_showers
from caloflow.errors import CaloflowError, DataFormatError
from caloflow.geometry import CALOGAN, KEV, Geometry, get_geometry

Particle = Literal["eplus", "gamma", "piplus"]
#: Label of reference (real) showers; generated showers get 0. One convention for every classifier.
REFERENCE_LABEL = 1.0
GENERATED_LABEL = 0.0


def default_cache_dir() -> Path:
    """``$CALOFLOW_CACHE``, else ``~/.cache/caloflow``."""
    return Path(os.environ.get("CALOFLOW_CACHE", Path.home() / ".cache" / "caloflow"))


def embedded_dataset(
    particle: str,
    n: int,
    seed: int = 0,
    energy_range: tuple[float, float] = (1.0, 100.0),
    cache_dir=None,
    geometry: Geometry = CALOGAN,
) -> Path:
    """Path of the embedded-simulator dataset for these settings, simulating it once if it is not
    cached: the CaloGAN simulator for ``particle`` in ``energy_range`` (GeV), or for a
    CaloChallenge geometry the barrel simulator at the challenge's energy mix (``particle`` and
    ``energy_range`` then follow from the geometry)."""
    if geometry == CALOGAN:
        from caloflow.data.simulate import SIMULATOR_VERSION, simulate_to_file

        lo, hi = energy_range
        name = f"{particle}_n{n}_seed{seed}_E{lo:g}-{hi:g}_sim{SIMULATOR_VERSION}.hdf5"
        what = f"{n} {particle} showers"
    else:
        from caloflow.data.barrel import SIMULATOR_VERSION, simulate_barrel_to_file

        name = f"{geometry.name}_n{n}_seed{seed}_challenge_sim{SIMULATOR_VERSION}.hdf5"
        what = f"{n} {geometry.name} showers"
    path = Path(cache_dir or default_cache_dir()) / name
    if path.exists():
        rank_zero_info(f"caloflow: using cached simulated dataset {path}")
        return path
    rank_zero_info(f"caloflow: simulating {what} into {path} (done once, then reused)")
    if geometry == CALOGAN:
        simulate_to_file(path, particle, n, seed=seed, energy_range=(lo, hi))
    else:
        simulate_barrel_to_file(path, geometry, n, seed=seed, progress=False)
    return path


def _batch_identity(batch):
    # __getitems__ already returns a collated batch
    return batch


class ShowerDataset(Dataset):
    """Physical showers served whole batches at a time (``__getitems__``), with optional per-serve noise.

    Args:
        showers: voxels in MeV, energy in GeV.
        noise_kev: width of the uniform voxel noise in keV; 0 for none.
        fresh_noise: draw new noise every time an item is served (training); otherwise one fixed
            draw per item, made here from ``seed`` (validation).
        seed: seeds the noise when the data are served in the main process; in worker processes
            the worker's torch seed (set by Lightning from the global seed) is used.
        labels: optional (N,) class labels, served as ``"label"``.
    """

    def __init__(
        self,
        showers: Showers,
        noise_kev: float = 0.0,
        fresh_noise: bool = True,
        seed: int = 0,
        labels: np.ndarray | None = None,
    ):
        self.geometry = showers.geometry
        self.voxels = torch.as_tensor(np.asarray(showers.voxels, dtype=np.float32))
        self.energy = torch.as_tensor(np.asarray(showers.energy, dtype=np.float32))
        self.labels = (
            None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.float32))
        )
        self.noise = noise_kev * KEV
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed_noise = None
        if self.noise > 0 and not fresh_noise:
            self.fixed_noise = torch.rand(self.voxels.shape, generator=self.generator) * self.noise

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
            voxels = voxels + (
                self._noise(voxels.shape) if self.fixed_noise is None else self.fixed_noise[index]
            )
        batch = {
            "voxels": voxels,
            "layer_energies": self.geometry.layer_energies(voxels.double()),
            "energy": energy,
        }
        if self.labels is not None:
            batch["label"] = self.labels[index]
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def split_bounds(
    n_reference: int, n_generated: int, fractions: tuple[float, float, float]
) -> tuple[int, dict[str, tuple[int, int]]]:
    """The classifier test's balanced split sizes: n = the smaller class, and per class the rows
    ``[start, stop)`` of ``train`` (round(f_train n)), ``val`` (round(f_val n)) and ``test`` (the rest)."""
    n = min(n_reference, n_generated)
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return n, {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n),
    }


def balanced_split(
    reference: Showers, generated: Showers, fractions: Sequence[float], rng: np.random.Generator
) -> dict[str, tuple[Showers, np.ndarray]]:
    """The classifier test's data: n = min(len) showers of each kind, split per class by ``fractions``.

    Returns ``{"train" | "val" | "test": (showers, labels)}``, reference first within each split,
    labels :data:`REFERENCE_LABEL` / :data:`GENERATED_LABEL`.
    """
    n, bounds = split_bounds(len(reference), len(generated), fractions)
    parts: dict[str, list[tuple[Showers, np.ndarray]]] = {name: [] for name in bounds}
    for label, showers in ((REFERENCE_LABEL, reference), (GENERATED_LABEL, generated)):
        index = rng.permutation(len(showers))[:n]
        for name, (lo, hi) in bounds.items():
            parts[name].append((showers[index[lo:hi]], np.full(hi - lo, label, np.float32)))
    return {
        name: (Showers.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))
        for name, pieces in parts.items()
    }


class CaloDataModule(L.LightningDataModule):
    """Physical showers for every model of caloflow (see the module docstring).

    Args:
        path: CaloGAN or CaloChallenge HDF5 file (with ``generated``: the reference file). ``None``: the embedded
            default, simulated once for ``particle`` into ``cache_dir`` and reused.
        particle: ``eplus``, ``gamma`` or ``piplus`` (names the embedded dataset).
        generated: generated showers to tell from ``path`` (classifier mode, labelled batches).
        val_path: a separate validation file; otherwise ``val_fraction`` of ``path`` is held out.
        val_fraction: held-out fraction for validation (paper: 30,000 of 100,000).
        split: training / validation / test fractions per class in classifier mode (paper: 60/20/20).
        max_showers: read only the first ``max_showers`` rows of each file (small runs).
        batch_size: paper: 175 for the flows, 1,000 for the classifiers.
        num_workers: DataLoader worker processes.
        seed: seeds the split, the shuffling and the noise.
        noise_kev: uniform noise width in keV per voxel (paper: 1 keV for the flows); 0 disables it.
        noise_validation: also add (fixed) noise to the validation and test showers.
        n_simulated: size of the embedded dataset (paper: 100,000 per particle).
        simulation_seed: seed of the embedded dataset (part of its cache name).
        energy_range: incident-energy range in GeV of the embedded dataset.
        cache_dir: where the embedded dataset is kept (default ``$CALOFLOW_CACHE`` or ``~/.cache/caloflow``).
        geometry: the detector the data must be in (a built-in name such as ``calogan`` or
            ``ds1-photons``, or a binning ``.xml`` file); ``None``: whatever the files hold (all
            files must agree). Needed for CaloChallenge files of a geometry that is neither
            built in nor stored in the file.
    """

    def __init__(
        self,
        path: str | None = None,
        particle: Particle = "eplus",
        generated: str | None = None,
        val_path: str | None = None,
        val_fraction: float = 0.3,
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
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
        geometry: str | None = None,
    ):
        super().__init__()
        _check_options(val_fraction, val_path, split, noise_kev, batch_size, max_showers)
        files = {"data.path": path, "data.generated": generated, "data.val_path": val_path}
        files = {option: p for option, p in files.items() if p is not None}
        #: the detector of every file served (:func:`data_geometry`)
        self.geometry = data_geometry(files, geometry)
        counts = {}
        # fail at start-up, before the Trainer is built, when a given file is unusable (every row
        # that will be read is checked: keys, shapes, NaN/inf, negative energies)
        for option, p in files.items():
            try:
                counts[option] = (p, check_showers(p, stop=max_showers, geometry=self.geometry))
            except DataFormatError as e:
                raise DataFormatError(f"--{option}: {e}") from None
        if path is None:
            counts["data.n_simulated"] = ("(embedded dataset)", n_simulated)
        # before the Trainer's logger creates a version folder that would stay empty
        _check_sizes(counts, max_showers, val_fraction, generated is not None)
        self.save_hyperparameters()
        self._in_memory: dict[str, Showers] = {}
        self.datasets: dict[str, ShowerDataset] = {}
        # the training data order: one generator for the life of the module, so that epochs (and
        # a resumed run, see state_dict) continue its stream instead of replaying the first order
        self.shuffle_generator = torch.Generator().manual_seed(seed)
        self._restored_noise: torch.Tensor | None = None

    @classmethod
    def from_showers(
        cls, showers: Showers, generated: Showers | None = None, **kwargs
    ) -> "CaloDataModule":
        """The same DataModule over showers already in memory (``showers`` plays the role of ``path``)."""
        dm = cls(**kwargs)
        if generated is not None and generated.geometry != showers.geometry:
            raise CaloflowError(
                f"generated showers of the {generated.geometry.name} geometry, reference "
                f"{showers.geometry.name}"
            )
        dm.geometry = showers.geometry
        dm._in_memory = (
            {"path": showers} if generated is None else {"path": showers, "generated": generated}
        )
        return dm

    @property
    def labelled(self) -> bool:
        """Classifier mode: reference and generated showers, labelled."""
        return self.hparams.generated is not None or "generated" in self._in_memory

    @property
    def data_path(self) -> Path:
        h = self.hparams
        if h.path is not None:
            return Path(h.path)
        return embedded_dataset(
            h.particle,
            h.n_simulated,
            h.simulation_seed,
            tuple(h.energy_range),
            h.cache_dir,
            self.geometry,
        )

    def prepare_data(self) -> None:
        # on one process only: simulate the embedded default if it is not cached yet
        if self.hparams.path is None and not self._in_memory:
            _ = self.data_path

    def _read(self, key: str) -> Showers:
        stop = self.hparams.max_showers
        if key in self._in_memory:
            showers = self._in_memory[key]
            return showers if stop is None else showers[:stop]
        path = self.data_path if key == "path" else Path(self.hparams[key])
        showers = read_showers(path, stop=stop, geometry=self.geometry)
        if len(showers) == 0:
            raise CaloflowError(f"--data.{key} {path}: no showers to use")
        return showers

    def split(self) -> dict[str, tuple[Showers, np.ndarray | None]]:
        """``{"train" | "val" [| "test"]: (showers, labels or None)}``."""
        h = self.hparams
        showers = self._read("path")
        if self.labelled:
            generated = self._read("generated")
            if min(len(showers), len(generated)) < 10:
                raise CaloflowError(
                    f"need at least 10 showers of each kind, got {len(showers)} reference and "
                    f"{len(generated)} generated"
                )
            return balanced_split(showers, generated, h.split, np.random.default_rng(h.seed))
        if h.val_path is not None:
            return {"train": (showers, None), "val": (self._read("val_path"), None)}
        order = np.random.default_rng(h.seed).permutation(len(showers))
        n_val = int(round(h.val_fraction * len(showers)))
        if n_val == 0 or n_val == len(showers):
            raise CaloflowError(
                f"{self.data_path}: {len(showers)} showers are too few to split {h.val_fraction:g}"
            )
        return {
            "train": (showers[np.sort(order[n_val:])], None),
            "val": (showers[np.sort(order[:n_val])], None),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        held_out_noise = h.noise_kev if h.noise_validation else 0.0
        for i, (name, (showers, labels)) in enumerate(self.split().items()):
            training = name == "train"
            self.datasets[name] = ShowerDataset(
                showers,
                h.noise_kev if training else held_out_noise,
                fresh_noise=training,
                seed=h.seed + i,
                labels=labels,
            )
        if self._restored_noise is not None:
            self.train_set.generator.set_state(self._restored_noise)
            self._restored_noise = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The random state of the training stream, saved in every checkpoint of a fit: the state of the
        shuffling generator and of the training set's noise generator at that point (an epoch end for
        the configs' ``last.ckpt``), so that a resumed fit serves the same batches with the same noise
        as an uninterrupted one."""
        state = {"shuffle_generator": self.shuffle_generator.get_state()}
        if "train" in self.datasets:
            state["train_noise_generator"] = self.train_set.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Continue the stream of :meth:`state_dict` (before or after :meth:`setup`; Lightning calls it
        after ``setup`` and before the training loader is built)."""
        if "shuffle_generator" in state_dict:
            self.shuffle_generator.set_state(state_dict["shuffle_generator"])
        noise = state_dict.get("train_noise_generator")
        if noise is not None:
            if "train" in self.datasets:
                self.train_set.generator.set_state(noise)
            else:
                self._restored_noise = noise

    @property
    def train_set(self) -> ShowerDataset:
        return self.datasets["train"]

    @property
    def val_set(self) -> ShowerDataset:
        return self.datasets["val"]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            self.datasets[name],
            batch_size=h.batch_size,
            shuffle=shuffle,
            num_workers=h.num_workers,
            collate_fn=_batch_identity,
            persistent_workers=h.num_workers > 0,
            generator=self.shuffle_generator if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "val", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def data_geometry(files: dict[str, str], geometry: str | None = None) -> Geometry:
    """The one geometry of the files ``{option: path}``: ``geometry`` if given (every file must be
    in it), else what the files hold (they must agree); CaloGAN when there are no files and no
    ``geometry`` (the embedded default).

    Raises:
        CaloflowError: an unknown geometry, a file in another geometry, or files that disagree,
            in one line naming the option.
    """
    expected = None if geometry is None else get_geometry(geometry)
    found: dict[str, Geometry] = {}
    for option, p in files.items():
        try:
            found[option] = file_geometry(p, expected)
        except DataFormatError as e:
            raise DataFormatError(f"--{option}: {e}") from None
    if expected is None and found:
        first, expected = next(iter(found.items()))
        for option, g in found.items():
            if g != expected:
                raise CaloflowError(
                    f"--{option} {files[option]}: showers of the {g.name} geometry, but "
                    f"--{first} holds {expected.name}"
                )
    return CALOGAN if expected is None else expected


def _check_options(val_fraction, val_path, split, noise_kev, batch_size, max_showers) -> None:
    """One-line errors for option values no run can use."""
    if not 0 < val_fraction < 1 and val_path is None:
        raise CaloflowError(f"--data.val_fraction must be in (0, 1), got {val_fraction}")
    if len(split) != 3 or min(split) < 0 or not 0 < split[0] < 1 or abs(sum(split) - 1) > 1e-6:
        raise CaloflowError(
            f"--data.split must be three fractions >= 0 that sum to 1, got {list(split)}"
        )
    if noise_kev < 0:
        raise CaloflowError(f"--data.noise_kev must be >= 0, got {noise_kev}")
    if batch_size < 1:
        raise CaloflowError(f"--data.batch_size must be >= 1, got {batch_size}")
    if max_showers is not None and max_showers < 1:
        raise CaloflowError(f"--data.max_showers must be >= 1, got {max_showers}")


def _check_sizes(
    counts: dict[str, tuple[object, int]], max_showers, val_fraction, labelled: bool
) -> None:
    """One-line errors for data that no run can use (``counts``: option -> (file, number of showers))."""
    for option, (path, n) in counts.items():
        if n < 1:
            raise CaloflowError(f"--{option} {path}: no showers to use")
    used = {
        option: n if max_showers is None else min(n, max_showers)
        for option, (_, n) in counts.items()
    }
    key = "data.path" if "data.path" in counts else "data.n_simulated"
    if key not in counts:
        return
    n = used[key]
    source = f"{counts[key][0]}: {n} showers" + (
        f" (--data.max_showers {max_showers})" if n < counts[key][1] else ""
    )
    if labelled:
        if "data.generated" in used and min(n, used["data.generated"]) < 10:
            raise CaloflowError(
                f"need at least 10 showers of each kind, got {n} reference and "
                f"{used['data.generated']} generated"
            )
    elif "data.val_path" not in used:
        n_val = int(round(val_fraction * n))
        if n_val == 0 or n_val == n:
            raise CaloflowError(
                f"{source} are too few to split with --data.val_fraction {val_fraction:g}"
            )


__all__ = [
    "REFERENCE_LABEL",
    "split_bounds",
    "GENERATED_LABEL",
    "default_cache_dir",
    "embedded_dataset",
    "ShowerDataset",
    "balanced_split",
    "data_geometry",
    "CaloDataModule",
]
