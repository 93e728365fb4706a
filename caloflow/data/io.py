"""Read, validate and write the CaloGAN HDF5 format (docs/physics.md section 2).

A file holds ``layer_0`` (N, 3, 96), ``layer_1`` (N, 12, 12), ``layer_2`` (N, 12, 6) in MeV,
``energy`` (N, 1) in GeV and ``overflow`` (N, 3) in MeV. Real GEANT4 files and generated files
are read alike; any float dtype is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from caloflow.data.geometry import (
    ENERGY_KEY,
    LAYER_KEYS,
    LAYER_SHAPES,
    N_LAYERS,
    N_VOXELS,
    OVERFLOW_KEY,
    join_layers,
    layer_energies,
    split_layers,
)
from caloflow.atomic import atomic_output
from caloflow.errors import DataFormatError

REQUIRED_KEYS: tuple[str, ...] = LAYER_KEYS + (ENERGY_KEY,)


@dataclass
class Showers:
    """A set of showers.

    Attributes:
        voxels: (N, 504) deposited energy per voxel in MeV, layers 0, 1, 2 flattened in order.
        energy: (N,) incident energy in GeV.
        overflow: (N, 3) energy per layer outside the readout in MeV (zeros for generated showers).
    """

    voxels: np.ndarray
    energy: np.ndarray
    overflow: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.energy = np.asarray(self.energy).reshape(-1)
        if self.overflow is None:
            self.overflow = np.zeros((len(self.energy), N_LAYERS), dtype=self.voxels.dtype)

    def __len__(self) -> int:
        return len(self.energy)

    @property
    def layers(self) -> list[np.ndarray]:
        """Per-layer images [(N, 3, 96), (N, 12, 12), (N, 12, 6)] in MeV."""
        return split_layers(self.voxels)

    @property
    def layer_energies(self) -> np.ndarray:
        """(N, 3) energy deposited in each layer, MeV."""
        return layer_energies(self.voxels)

    def __getitem__(self, index) -> "Showers":
        return Showers(self.voxels[index], self.energy[index], self.overflow[index])

    @staticmethod
    def concatenate(parts: list["Showers"]) -> "Showers":
        return Showers(
            np.concatenate([p.voxels for p in parts]),
            np.concatenate([p.energy for p in parts]),
            np.concatenate([p.overflow for p in parts]),
        )


def _fail(path, key: str | None, what: str) -> DataFormatError:
    where = f"{path}" if key is None else f"{path}: key '{key}'"
    return DataFormatError(f"{where}: {what}")


def _first_bad_row(mask: np.ndarray) -> int:
    rows = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return int(rows[0])


def _expected_shape(key: str) -> tuple[int, ...]:
    if key == ENERGY_KEY:
        return (1,)
    if key == OVERFLOW_KEY:
        return (N_LAYERS,)
    return LAYER_SHAPES[LAYER_KEYS.index(key)]


def validate_shapes(path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Check every key's shape and that all keys have as many rows as 'energy'."""
    n = None
    for key in sorted(shapes, key=lambda k: k != ENERGY_KEY):
        shape = shapes[key]
        expected = _expected_shape(key)
        if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected:
            raise _fail(path, key, f"wrong shape {tuple(shape)}, expected (N, {', '.join(map(str, expected))})")
        if n is None:
            n, first = shape[0], key
        elif shape[0] != n:
            raise _fail(path, key, f"has {shape[0]} rows but '{first}' has {n}")


def validate_arrays(path, arrays: dict[str, np.ndarray], offset: int = 0) -> None:
    """Check shapes, row counts and values; raise :class:`DataFormatError` at the first problem.

    ``offset`` is added to row numbers so that messages name rows of the file, not of a slice.
    """
    validate_shapes(path, {k: a.shape for k, a in arrays.items()})
    for key, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            raise _fail(path, key, f"non-finite value (NaN or inf) in row {offset + _first_bad_row(bad)}")
    for key in arrays:
        if key == ENERGY_KEY:
            continue
        bad = arrays[key] < 0
        if bad.any():
            row = offset + _first_bad_row(bad)
            raise _fail(path, key, f"negative energy {arrays[key][bad].min():.6g} MeV in row {row}")
    bad = arrays[ENERGY_KEY] <= 0
    if bad.any():
        row = offset + _first_bad_row(bad)
        raise _fail(path, ENERGY_KEY, f"incident energy <= 0 ({arrays[ENERGY_KEY][bad].min():.6g} GeV) in row {row}")


def _open(path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise _fail(path, None, "no such file")
    if path.is_dir():
        raise _fail(path, None, "is a directory, not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise _fail(path, None, "not an HDF5 file") from None


def count_showers(path) -> int:
    """Number of showers in a CaloGAN file (after checking its keys and row counts)."""
    with _open(path) as f:
        _check_keys(path, f)
        validate_shapes(path, {k: f[k].shape for k in REQUIRED_KEYS})
        return int(f[ENERGY_KEY].shape[0])


def _check_keys(path, f: h5py.File) -> None:
    for key in REQUIRED_KEYS:
        if key not in f:
            raise _fail(path, key, f"missing (file has: {', '.join(sorted(f.keys())) or 'no keys'})")
        if not isinstance(f[key], h5py.Dataset):
            raise _fail(path, key, "is a group, expected a dataset")
        if f[key].dtype.kind not in "fiu":
            raise _fail(path, key, f"dtype {f[key].dtype} is not numeric")


def read_showers(path, start: int | None = None, stop: int | None = None, dtype=np.float32) -> Showers:
    """Read and validate showers ``[start:stop]`` of a CaloGAN HDF5 file.

    Args:
        path: the file.
        start, stop: row slice (Python semantics); the whole file by default.
        dtype: float dtype of the returned arrays (the file may hold any float or int dtype).
    Raises:
        DataFormatError: missing file, not HDF5, missing key, wrong shape, disagreeing row
            counts, NaN/inf, negative voxel energy or incident energy <= 0.
    """
    with _open(path) as f:
        _check_keys(path, f)
        arrays = {}
        keys = REQUIRED_KEYS + ((OVERFLOW_KEY,) if OVERFLOW_KEY in f else ())
        # shapes and row counts are checked on the metadata, before any data is read
        shapes = {k: f[k].shape for k in keys}
        validate_shapes(path, shapes)
        n = shapes[ENERGY_KEY][0]
        lo, hi, _ = slice(start, stop).indices(n)
        for k in keys:
            arrays[k] = np.asarray(f[k][lo:hi], dtype=dtype)
    validate_arrays(path, arrays, offset=lo)
    voxels = join_layers([arrays[k] for k in LAYER_KEYS])
    return Showers(voxels, arrays[ENERGY_KEY][:, 0], arrays.get(OVERFLOW_KEY))


def write_showers(path, showers: Showers, dtype=np.float32, attrs: dict | None = None) -> Path:
    """Write showers to ``path`` in the CaloGAN format, atomically (temporary file, then rename).

    Args:
        path: destination; parent directories are created.
        showers: voxels in MeV, energy in GeV, overflow in MeV.
        dtype: on-disk float dtype.
        attrs: optional file attributes (e.g. the generator and seed), stored as HDF5 attributes.
    """
    path = Path(path)
    if showers.voxels.shape[1:] != (N_VOXELS,):
        raise DataFormatError(f"{path}: voxels have shape {showers.voxels.shape}, expected (N, {N_VOXELS})")
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for key, image in zip(LAYER_KEYS, split_layers(np.asarray(showers.voxels))):
            f.create_dataset(key, data=np.ascontiguousarray(image, dtype=dtype))
        f.create_dataset(ENERGY_KEY, data=np.asarray(showers.energy, dtype=dtype).reshape(-1, 1))
        f.create_dataset(OVERFLOW_KEY, data=np.asarray(showers.overflow, dtype=dtype))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path
