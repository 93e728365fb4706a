"""Read, validate and write the CaloGAN HDF5 format (docs/physics.md section 2).

A file holds ``layer_0`` (N, 3, 96), ``layer_1`` (N, 12, 12), ``layer_2`` (N, 12, 6) in MeV,
``energy`` (N, 1) in GeV and ``overflow`` (N, 3) in MeV. Real GEANT4 files and generated files
are read alike; any float dtype is accepted.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from caloflow.atomic import atomic_output, check_interrupted, deferred_signals
from caloflow.errors import CaloflowError, DataFormatError
from caloflow.geometry import (
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
            raise _fail(
                path,
                key,
                f"wrong shape {tuple(shape)}, expected (N, {', '.join(map(str, expected))})",
            )
        if n is None:
            n, first = shape[0], key
        elif shape[0] != n:
            raise _fail(path, key, f"has {shape[0]} rows but '{first}' has {n}")


def validate_arrays(
    path, arrays: dict[str, np.ndarray], offset: int = 0, rows: np.ndarray | None = None
) -> None:
    """Check shapes, row counts and values; raise :class:`DataFormatError` at the first problem.

    ``offset`` is added to row numbers so that messages name rows of the file, not of a slice;
    ``rows`` (the file row of every array row, for rows read by index) replaces it.
    """
    validate_shapes(path, {k: a.shape for k, a in arrays.items()})

    def row_of(mask: np.ndarray) -> int:
        first = _first_bad_row(mask)
        return int(rows[first]) if rows is not None else offset + first

    for key, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            raise _fail(path, key, f"non-finite value (NaN or inf) in row {row_of(bad)}")
    for key in arrays:
        if key == ENERGY_KEY:
            continue
        bad = arrays[key] < 0
        if bad.any():
            raise _fail(
                path, key, f"negative energy {arrays[key][bad].min():.6g} MeV in row {row_of(bad)}"
            )
    if ENERGY_KEY not in arrays:
        return
    bad = arrays[ENERGY_KEY] <= 0
    if bad.any():
        raise _fail(
            path,
            ENERGY_KEY,
            f"incident energy <= 0 ({arrays[ENERGY_KEY][bad].min():.6g} GeV) in row {row_of(bad)}",
        )


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
            raise _fail(
                path, key, f"missing (file has: {', '.join(sorted(f.keys())) or 'no keys'})"
            )
        if not isinstance(f[key], h5py.Dataset):
            raise _fail(path, key, "is a group, expected a dataset")
        if f[key].dtype.kind not in "fiu":
            raise _fail(path, key, f"dtype {f[key].dtype} is not numeric")


def read_showers(
    path, start: int | None = None, stop: int | None = None, dtype=np.float32
) -> Showers:
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
    if hi > lo:
        voxels = join_layers([arrays[k] for k in LAYER_KEYS])
    else:  # an empty file or slice: no rows to join
        voxels = np.zeros((0, N_VOXELS), dtype=dtype)
    return Showers(voxels, arrays[ENERGY_KEY][:, 0], arrays.get(OVERFLOW_KEY))


#: rows per h5py point selection in :func:`read_rows` (bounded selection cost)
_INDEX_BLOCK = 4096


def _row_indices(rows, n: int, path) -> np.ndarray:
    """``rows`` as a strictly increasing int64 array inside [0, n)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise CaloflowError(
            f"{path}: row index out of range [0, {n}) (got {rows.min()}..{rows.max()})"
        )
    if np.any(np.diff(rows) <= 0):
        raise ValueError("rows must be strictly increasing")
    return rows


def _read_indexed(f: h5py.File, keys, rows: np.ndarray, dtype) -> dict[str, np.ndarray]:
    """The given ``rows`` of every key, read by index (h5py point selection): no other row is read."""
    out = {}
    for k in keys:
        parts = [
            np.asarray(f[k][rows[i : i + _INDEX_BLOCK]], dtype=dtype)
            for i in range(0, len(rows), _INDEX_BLOCK)
        ]
        out[k] = np.concatenate(parts) if parts else np.zeros((0, *f[k].shape[1:]), dtype=dtype)
    return out


def read_rows(path, rows, dtype=np.float32) -> Showers:
    """Read and validate the showers of the file rows ``rows`` (strictly increasing indices).

    Only those rows are read from the file (by index), so the values of every other row never
    reach memory: a held-out split stays unread. Errors name rows of the file.

    Raises:
        DataFormatError: as :func:`read_showers`, for the rows read.
    """
    with _open(path) as f:
        _check_keys(path, f)
        keys = REQUIRED_KEYS + ((OVERFLOW_KEY,) if OVERFLOW_KEY in f else ())
        validate_shapes(path, {k: f[k].shape for k in keys})
        rows = _row_indices(rows, f[ENERGY_KEY].shape[0], path)
        arrays = _read_indexed(f, keys, rows, dtype)
    validate_arrays(path, arrays, rows=rows)
    voxels = (
        join_layers([arrays[k] for k in LAYER_KEYS])
        if len(rows)
        else np.zeros((0, N_VOXELS), dtype=dtype)
    )
    return Showers(voxels, arrays[ENERGY_KEY][:, 0], arrays.get(OVERFLOW_KEY))


def read_energies(path, rows, dtype=np.float32) -> np.ndarray:
    """The incident energies (GeV) of the file rows ``rows`` (strictly increasing), read by index and
    validated; the voxels of the file are not read."""
    with _open(path) as f:
        _check_keys(path, f)
        validate_shapes(path, {k: f[k].shape for k in REQUIRED_KEYS})
        rows = _row_indices(rows, f[ENERGY_KEY].shape[0], path)
        arrays = _read_indexed(f, (ENERGY_KEY,), rows, dtype)
    validate_arrays(path, arrays, rows=rows)
    return arrays[ENERGY_KEY][:, 0]


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
        raise DataFormatError(
            f"{path}: voxels have shape {showers.voxels.shape}, expected (N, {N_VOXELS})"
        )
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for key, image in zip(LAYER_KEYS, split_layers(np.asarray(showers.voxels))):
            f.create_dataset(key, data=np.ascontiguousarray(image, dtype=dtype))
        f.create_dataset(ENERGY_KEY, data=np.asarray(showers.energy, dtype=dtype).reshape(-1, 1))
        f.create_dataset(OVERFLOW_KEY, data=np.asarray(showers.overflow, dtype=dtype))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def iter_showers(
    path,
    block_rows: int = 8192,
    start: int | None = None,
    stop: int | None = None,
    dtype=np.float32,
) -> Iterator[Showers]:
    """Read and validate showers ``[start:stop]`` of a CaloGAN file in blocks of ``block_rows``
    (bounded memory); row numbers in error messages refer to the file."""
    lo, hi, _ = slice(start, stop).indices(count_showers(path))
    for begin in range(lo, hi, block_rows):
        yield read_showers(path, begin, min(begin + block_rows, hi), dtype=dtype)


def check_showers(path, stop: int | None = None) -> int:
    """Validate the showers ``[:stop]`` of a CaloGAN file (all of them by default) block by block,
    with the checks of :func:`read_showers`, in bounded memory; returns the file's number of showers.

    For commands that must refuse a bad file before any expensive work (building a Trainer, training).

    Raises:
        DataFormatError: as :func:`read_showers`, naming the file, the key and the first bad row.
    """
    n = count_showers(path)
    for _ in iter_showers(path, stop=stop):
        pass
    return n


# ------------------------------------------------------------------------------ streaming output
#: values per shower in a file: 504 voxels, the incident energy and 3 overflow values
VALUES_PER_SHOWER = N_VOXELS + 1 + N_LAYERS


def estimated_file_size(n: int, dtype=np.float32) -> int:
    """Bytes that ``n`` showers take in a file written here: the values, 2 % and 16 MiB for HDF5's
    metadata and the last, partly filled chunks."""
    return int(n * VALUES_PER_SHOWER * np.dtype(dtype).itemsize * 1.02) + 16 * 2**20


def _size(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n_bytes < 1000 or unit == "PB":
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000
    raise AssertionError


def check_disk_space(path, n: int, what: str | None = None, dtype=np.float32) -> None:
    """Refuse, before any work, ``n`` showers whose file would not fit on the disk that holds ``path``.

    Raises:
        CaloflowError: one line starting with ``what`` (default ``--n N``), the size needed and the
            space free.
    """
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # nothing to measure against; the write itself will tell
    need = estimated_file_size(n, dtype)
    if need > free:
        raise CaloflowError(
            f"{what or f'--n {n}'}: the output needs about {_size(need)} on disk but {folder} has only "
            f"{_size(free)} free"
        )


class ShowerWriter:
    """Write a CaloGAN file block by block, in bounded memory, atomically.

    ::

        with ShowerWriter("out.hdf5", attrs={"seed": 0}) as out:
            for part in parts:                  # Showers, or out.append(voxels, energy, overflow)
                out.append(part)
            out.attrs["redrawn_nonfinite"] = 3  # attributes are written when the block ends

    The datasets are resizable (``maxshape=(None, ...)``) and chunked; rows are gathered in a
    buffer of ``block_rows`` and written a block at a time, so memory does not grow with the number
    of showers. Everything goes to a temporary file next to ``path`` (:func:`caloflow.atomic.atomic_output`):
    the file appears at ``path`` only when the ``with`` block ends without error; on an error,
    SIGINT or SIGTERM nothing is left. The values are those :func:`write_showers` writes for the
    same showers.

    Args:
        path: destination; parent directories are created.
        dtype: on-disk float dtype.
        attrs: file attributes (also settable through :attr:`attrs` until the end).
        block_rows: showers held in memory before a write.
        expected_rows: the number of showers, if known: small files then get small HDF5 chunks
            (a chunk is allocated whole).
    """

    def __init__(
        self,
        path,
        dtype=np.float32,
        attrs: dict | None = None,
        block_rows: int = 4096,
        expected_rows: int | None = None,
    ):
        if block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.attrs = dict(attrs or {})
        self.block_rows = int(block_rows)
        self.expected_rows = expected_rows
        self.n = 0  # showers appended so far (written or buffered)
        self._file = None
        self._atomic = None
        self._buffer: dict[str, np.ndarray] = {}
        self._buffered = 0

    # --- layout
    def _row_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**dict(zip(LAYER_KEYS, LAYER_SHAPES)), ENERGY_KEY: (1,), OVERFLOW_KEY: (N_LAYERS,)}

    def _chunk_rows(self, row_shape) -> int:
        rows, row_bytes = self.block_rows, int(np.prod(row_shape)) * self.dtype.itemsize
        while (
            rows > 1 and rows * row_bytes > 2**20
        ):  # chunks of at most 1 MiB that divide the block
            rows //= 2
        if self.expected_rows is not None:
            rows = max(1, min(rows, int(self.expected_rows)))
        return rows

    def __enter__(self) -> "ShowerWriter":
        self._atomic = atomic_output(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            for key, shape in self._row_shapes().items():
                self._file.create_dataset(
                    key,
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    dtype=self.dtype,
                    chunks=(self._chunk_rows(shape), *shape),
                )
                self._buffer[key] = np.empty((self.block_rows, *shape), dtype=self.dtype)
        except BaseException:
            self._close_file()
            if not self._atomic.__exit__(*sys.exc_info()):
                raise
        return self

    # --- writing
    def append(self, showers: Showers | np.ndarray, energy=None, overflow=None) -> None:
        """Append showers: a :class:`Showers`, or voxels (n, 504) MeV, energy (n,) GeV and overflow
        (n, 3) MeV (zeros if omitted)."""
        if self._file is None:
            raise RuntimeError("ShowerWriter.append outside its 'with' block")
        check_interrupted()
        if isinstance(showers, Showers):
            voxels, energy, overflow = showers.voxels, showers.energy, showers.overflow
        else:
            voxels = showers
        voxels = np.asarray(voxels)
        if voxels.ndim != 2 or voxels.shape[1] != N_VOXELS:
            raise DataFormatError(
                f"{self.path}: voxels have shape {voxels.shape}, expected (N, {N_VOXELS})"
            )
        n = len(voxels)
        energy = np.asarray(energy).reshape(-1)
        overflow = np.zeros((n, N_LAYERS)) if overflow is None else np.asarray(overflow)
        if len(energy) != n or overflow.shape != (n, N_LAYERS):
            raise DataFormatError(
                f"{self.path}: {n} voxel rows but energy {energy.shape} and overflow {overflow.shape}"
            )
        arrays = dict(zip(LAYER_KEYS, split_layers(voxels)))
        arrays[ENERGY_KEY] = energy.reshape(-1, 1)
        arrays[OVERFLOW_KEY] = overflow
        done = 0
        while done < n:
            take = min(n - done, self.block_rows - self._buffered)
            for key, a in arrays.items():
                self._buffer[key][self._buffered : self._buffered + take] = a[done : done + take]
            self._buffered += take
            done += take
            if self._buffered == self.block_rows:
                self._flush()
        self.n += n

    def _flush(self) -> None:
        if not self._buffered:
            return
        check_interrupted()
        start = self._file[ENERGY_KEY].shape[0]
        for key, buffer in self._buffer.items():
            dataset = self._file[key]
            dataset.resize(start + self._buffered, axis=0)
            dataset[start:] = buffer[: self._buffered]
        self._buffered = 0

    # --- the end
    def _close_file(self) -> None:
        if self._file is not None:
            with deferred_signals():  # an HDF5 close cut short leaves noise, not a file
                f, self._file = self._file, None
                f.close()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._flush()
                for k, v in self.attrs.items():
                    self._file.attrs[k] = v
                self._close_file()
            except BaseException:
                exc_type, exc, tb = sys.exc_info()
                try:
                    self._close_file()
                except Exception:
                    pass
                if not self._atomic.__exit__(exc_type, exc, tb):
                    raise
                return False
            return bool(self._atomic.__exit__(None, None, None))
        try:
            self._close_file()
        except Exception:
            pass  # the first error is the one to report
        return bool(self._atomic.__exit__(exc_type, exc, tb))


__all__ = [
    "REQUIRED_KEYS",
    "Showers",
    "validate_shapes",
    "validate_arrays",
    "count_showers",
    "read_showers",
    "read_rows",
    "read_energies",
    "write_showers",
    "iter_showers",
    "check_showers",
    "VALUES_PER_SHOWER",
    "estimated_file_size",
    "check_disk_space",
    "ShowerWriter",
]
