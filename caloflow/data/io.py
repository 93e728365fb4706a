"""Read, validate and write shower files in the CaloGAN and CaloChallenge HDF5 formats.

* CaloGAN (docs/physics.md section 2): ``layer_0`` .. ``layer_2`` images in MeV, ``energy`` (N, 1)
  in GeV and an optional ``overflow`` (N, n_layers) in MeV.
* CaloChallenge (docs/data.md): ``showers`` (N, V) in MeV in the geometry's flat order and
  ``incident_energies`` (N, 1) in MeV; written gzip-compressed with float64 energies, as the
  challenge wrote its own files. caloflow also stores the geometry as a JSON attribute.

The format is found from the keys; GEANT4 files and generated files are read alike, in any float
dtype. Inside caloflow the incident energy is in GeV: CaloChallenge files are converted here.
"""

from __future__ import annotations

import json
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
    CALOGAN,
    CALOGAN_FORMAT,
    CHALLENGE_FORMAT,
    ENERGY_KEY,
    GEV,
    INCIDENT_KEY,
    LAYER_KEYS,
    OVERFLOW_KEY,
    SHOWERS_KEY,
    Geometry,
    challenge_geometry_for_width,
    get_geometry,
)

#: Keys every CaloGAN file holds (``overflow`` is optional).
REQUIRED_KEYS: tuple[str, ...] = LAYER_KEYS + (ENERGY_KEY,)
#: Keys every CaloChallenge file holds.
CHALLENGE_KEYS: tuple[str, ...] = (SHOWERS_KEY, INCIDENT_KEY)
#: The file attribute where caloflow stores a file's geometry (JSON of Geometry.to_dict).
GEOMETRY_ATTR = "geometry"


@dataclass
class Showers:
    """A set of showers in one detector geometry.

    Attributes:
        voxels: (N, V) deposited energy per voxel in MeV, in the geometry's flat order.
        energy: (N,) incident energy in GeV (float64 when read from a CaloChallenge file, so that
            the file's MeV values come back exactly when written).
        overflow: (N, n_layers) energy per layer outside the readout in MeV (zeros where the
            format has none: generated showers, CaloChallenge files).
        geometry: the detector the voxels belong to.
    """

    voxels: np.ndarray
    energy: np.ndarray
    overflow: np.ndarray | None = field(default=None)
    geometry: Geometry = field(default=CALOGAN)

    def __post_init__(self) -> None:
        self.energy = np.asarray(self.energy).reshape(-1)
        if self.overflow is None:
            n_layers = self.geometry.n_layers
            self.overflow = np.zeros((len(self.energy), n_layers), dtype=self.voxels.dtype)

    def __len__(self) -> int:
        return len(self.energy)

    @property
    def layers(self) -> list[np.ndarray]:
        """One (N, rows, cols) image per layer in MeV (:meth:`Geometry.split_layers`)."""
        return self.geometry.split_layers(self.voxels)

    @property
    def layer_energies(self) -> np.ndarray:
        """(N, n_layers) energy deposited in each layer, MeV."""
        return self.geometry.layer_energies(self.voxels)

    def __getitem__(self, index) -> "Showers":
        return Showers(self.voxels[index], self.energy[index], self.overflow[index], self.geometry)

    @staticmethod
    def concatenate(parts: list["Showers"]) -> "Showers":
        geometries = {p.geometry for p in parts}
        if len(geometries) > 1:
            raise ValueError(
                f"cannot concatenate showers of geometries {sorted(g.name for g in geometries)}"
            )
        return Showers(
            np.concatenate([p.voxels for p in parts]),
            np.concatenate([p.energy for p in parts]),
            np.concatenate([p.overflow for p in parts]),
            parts[0].geometry,
        )


def _fail(path, key: str | None, what: str) -> DataFormatError:
    where = f"{path}" if key is None else f"{path}: key '{key}'"
    return DataFormatError(f"{where}: {what}")


def _first_bad_row(mask: np.ndarray) -> int:
    rows = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return int(rows[0])


# ------------------------------------------------------------------------------ the two layouts
@dataclass(frozen=True)
class Layout:
    """How one geometry's showers sit in an HDF5 file: the keys, their row shapes, the key of the
    incident energy and its unit (GeV in CaloGAN files, MeV in CaloChallenge files)."""

    geometry: Geometry

    @property
    def challenge(self) -> bool:
        return self.geometry.file_format == CHALLENGE_FORMAT

    @property
    def energy_key(self) -> str:
        return INCIDENT_KEY if self.challenge else ENERGY_KEY

    @property
    def energy_unit(self) -> str:
        return "MeV" if self.challenge else "GeV"

    @property
    def required(self) -> tuple[str, ...]:
        return CHALLENGE_KEYS if self.challenge else REQUIRED_KEYS

    def row_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key the layout writes and the shape of one row of it."""
        g = self.geometry
        if self.challenge:
            return {SHOWERS_KEY: (g.n_voxels,), INCIDENT_KEY: (1,)}
        return {
            **dict(zip(LAYER_KEYS, g.layer_shapes)),
            ENERGY_KEY: (1,),
            OVERFLOW_KEY: (g.n_layers,),
        }

    def keys_in(self, f: h5py.File) -> tuple[str, ...]:
        """The keys to read from ``f``: the required ones and ``overflow`` where present."""
        optional = () if self.challenge or OVERFLOW_KEY not in f else (OVERFLOW_KEY,)
        return self.required + optional

    def to_showers(self, arrays: dict[str, np.ndarray], dtype) -> Showers:
        """File arrays -> :class:`Showers` (incident energy in GeV)."""
        g = self.geometry
        if self.challenge:
            energy = arrays[INCIDENT_KEY][:, 0].astype(np.float64) / GEV
            return Showers(arrays[SHOWERS_KEY].astype(dtype, copy=False), energy, geometry=g)
        n = len(arrays[ENERGY_KEY])
        if n:
            voxels = g.join_layers([arrays[k] for k in LAYER_KEYS])
        else:  # an empty file or slice: no rows to join
            voxels = np.zeros((0, g.n_voxels), dtype=dtype)
        return Showers(voxels, arrays[ENERGY_KEY][:, 0], arrays.get(OVERFLOW_KEY), g)

    def to_arrays(self, voxels: np.ndarray, energy: np.ndarray, overflow) -> dict[str, np.ndarray]:
        """Voxels (n, V) MeV, energy (n,) GeV, overflow (n, n_layers) MeV -> file arrays."""
        energy = np.asarray(energy).reshape(-1, 1)
        if self.challenge:
            return {SHOWERS_KEY: voxels, INCIDENT_KEY: energy.astype(np.float64) * GEV}
        arrays = dict(zip(LAYER_KEYS, self.geometry.split_layers(voxels)))
        arrays[ENERGY_KEY] = energy
        arrays[OVERFLOW_KEY] = overflow
        return arrays

    def file_dtype(self, key: str, dtype) -> np.dtype:
        """CaloChallenge incident energies are stored in float64 (exact powers of two in MeV)."""
        return np.dtype(np.float64) if key == INCIDENT_KEY else np.dtype(dtype)


def _file_format(path, f: h5py.File) -> str:
    keys = set(f.keys())
    if keys & set(CHALLENGE_KEYS):
        return CHALLENGE_FORMAT
    if keys & set(REQUIRED_KEYS):
        return CALOGAN_FORMAT
    raise _fail(
        path,
        None,
        f"neither a CaloGAN file (layer_0..2, energy) nor a CaloChallenge file (showers, "
        f"incident_energies); it has: {', '.join(sorted(keys)) or 'no keys'}",
    )


def _stored_geometry(path, f: h5py.File) -> Geometry | None:
    text = f.attrs.get(GEOMETRY_ATTR)
    if text is None:
        return None
    try:
        return get_geometry(json.loads(text))
    except (ValueError, KeyError, TypeError) as e:
        raise _fail(path, None, f"unreadable attribute '{GEOMETRY_ATTR}' ({e})") from None


def _layout(path, f: h5py.File, geometry: Geometry | None) -> Layout:
    """The layout of an open file: its format from the keys, its geometry from ``geometry`` (what
    the caller expects), the file's own ``geometry`` attribute, or the width of ``showers``."""
    fmt = _file_format(path, f)
    if fmt == CALOGAN_FORMAT:
        if geometry is not None and geometry.file_format != CALOGAN_FORMAT:
            raise _fail(path, None, f"is a CaloGAN file, expected a {geometry.name} file")
        return Layout(CALOGAN)
    _check_keys(path, f, CHALLENGE_KEYS)
    width = f[SHOWERS_KEY].shape[1] if len(f[SHOWERS_KEY].shape) == 2 else None
    found = geometry or _stored_geometry(path, f) or challenge_geometry_for_width(width or -1)
    if found is None and width is None:
        raise _fail(path, SHOWERS_KEY, f"wrong shape {f[SHOWERS_KEY].shape}, expected (N, V)")
    if found is None:
        raise _fail(
            path,
            SHOWERS_KEY,
            f"{width} voxels per shower match no built-in geometry; pass the binning with "
            f"--geometry FILE.xml",
        )
    if found.file_format != CHALLENGE_FORMAT:
        raise _fail(path, None, f"is a CaloChallenge file, expected a {found.name} file")
    return Layout(found)


def _expected_shape(layout: Layout, key: str) -> tuple[int, ...]:
    return layout.row_shapes()[key]


def validate_shapes(path, shapes: dict[str, tuple[int, ...]], layout: Layout | None = None) -> None:
    """Check every key's shape against the layout (CaloGAN by default) and that all keys have as
    many rows as the incident energy."""
    layout = layout or Layout(CALOGAN)
    n = None
    for key in sorted(shapes, key=lambda k: k != layout.energy_key):
        shape = shapes[key]
        expected = _expected_shape(layout, key)
        if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected:
            what = f"wrong shape {tuple(shape)}, expected (N, {', '.join(map(str, expected))})"
            if layout.challenge and key == SHOWERS_KEY:
                what += f" for the {layout.geometry.name} geometry"
            raise _fail(path, key, what)
        if n is None:
            n, first = shape[0], key
        elif shape[0] != n:
            raise _fail(path, key, f"has {shape[0]} rows but '{first}' has {n}")


def validate_arrays(
    path,
    arrays: dict[str, np.ndarray],
    offset: int = 0,
    rows: np.ndarray | None = None,
    layout: Layout | None = None,
) -> None:
    """Check shapes, row counts and values; raise :class:`DataFormatError` at the first problem.

    ``offset`` is added to row numbers so that messages name rows of the file, not of a slice;
    ``rows`` (the file row of every array row, for rows read by index) replaces it.
    """
    layout = layout or Layout(CALOGAN)
    validate_shapes(path, {k: a.shape for k, a in arrays.items()}, layout)

    def row_of(mask: np.ndarray) -> int:
        first = _first_bad_row(mask)
        return int(rows[first]) if rows is not None else offset + first

    for key, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            raise _fail(path, key, f"non-finite value (NaN or inf) in row {row_of(bad)}")
    energy_key = layout.energy_key
    for key in arrays:
        if key == energy_key:
            continue
        bad = arrays[key] < 0
        if bad.any():
            raise _fail(
                path, key, f"negative energy {arrays[key][bad].min():.6g} MeV in row {row_of(bad)}"
            )
    if energy_key not in arrays:
        return
    bad = arrays[energy_key] <= 0
    if bad.any():
        low = arrays[energy_key][bad].min()
        raise _fail(
            path,
            energy_key,
            f"incident energy <= 0 ({low:.6g} {layout.energy_unit}) in row {row_of(bad)}",
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


def _check_keys(path, f: h5py.File, keys) -> None:
    for key in keys:
        if key not in f:
            raise _fail(
                path, key, f"missing (file has: {', '.join(sorted(f.keys())) or 'no keys'})"
            )
        if not isinstance(f[key], h5py.Dataset):
            raise _fail(path, key, "is a group, expected a dataset")
        if f[key].dtype.kind not in "fiu":
            raise _fail(path, key, f"dtype {f[key].dtype} is not numeric")


def _open_layout(path, f: h5py.File, geometry) -> tuple[Layout, tuple[str, ...]]:
    """The file's layout and the keys to read, after checking keys, shapes and row counts (on
    the metadata, before any data is read)."""
    layout = _layout(path, f, None if geometry is None else get_geometry(geometry))
    _check_keys(path, f, layout.required)
    keys = layout.keys_in(f)
    validate_shapes(path, {k: f[k].shape for k in keys}, layout)
    return layout, keys


def file_geometry(path, geometry: "Geometry | str | None" = None) -> Geometry:
    """The geometry of a shower file: CaloGAN for CaloGAN files; for CaloChallenge files the
    ``geometry`` given, the file's own ``geometry`` attribute, or the built-in geometry with as
    many voxels. Keys and shapes are checked; no data is read.

    Raises:
        DataFormatError: not a shower file, or a width that matches no (or not the given) geometry.
    """
    with _open(path) as f:
        return _open_layout(path, f, geometry)[0].geometry


def count_showers(path, geometry: "Geometry | str | None" = None) -> int:
    """Number of showers in a file (after checking its keys, shapes and row counts)."""
    with _open(path) as f:
        layout, _ = _open_layout(path, f, geometry)
        return int(f[layout.energy_key].shape[0])


def read_showers(
    path,
    start: int | None = None,
    stop: int | None = None,
    dtype=np.float32,
    geometry: "Geometry | str | None" = None,
) -> Showers:
    """Read and validate showers ``[start:stop]`` of a CaloGAN or CaloChallenge HDF5 file.

    The format is found from the keys; the geometry as in :func:`file_geometry`.

    Args:
        path: the file.
        start, stop: row slice (Python semantics); the whole file by default.
        dtype: float dtype of the returned voxels (the file may hold any float or int dtype).
        geometry: the geometry the caller expects (needed for CaloChallenge files of a
            geometry that is not built in and not stored in the file).
    Raises:
        DataFormatError: missing file, not HDF5, missing key, wrong shape, disagreeing row
            counts, NaN/inf, negative voxel energy or incident energy <= 0.
    """
    with _open(path) as f:
        layout, keys = _open_layout(path, f, geometry)
        n = f[layout.energy_key].shape[0]
        lo, hi, _ = slice(start, stop).indices(n)
        arrays = {k: np.asarray(f[k][lo:hi], dtype=layout.file_dtype(k, dtype)) for k in keys}
    validate_arrays(path, arrays, offset=lo, layout=layout)
    return layout.to_showers(arrays, dtype)


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


def read_rows(path, rows, dtype=np.float32, geometry: "Geometry | str | None" = None) -> Showers:
    """Read and validate the showers of the file rows ``rows`` (strictly increasing indices).

    Only those rows are read from the file (by index), so the values of every other row never
    reach memory: a held-out split stays unread. Errors name rows of the file.

    Raises:
        DataFormatError: as :func:`read_showers`, for the rows read.
    """
    with _open(path) as f:
        layout, keys = _open_layout(path, f, geometry)
        rows = _row_indices(rows, f[layout.energy_key].shape[0], path)
        arrays = {k: _read_indexed(f, (k,), rows, layout.file_dtype(k, dtype))[k] for k in keys}
    validate_arrays(path, arrays, rows=rows, layout=layout)
    return layout.to_showers(arrays, dtype)


def read_energies(path, rows, dtype=np.float32) -> np.ndarray:
    """The incident energies (GeV) of the file rows ``rows`` (strictly increasing), read by index and
    validated; the voxels of the file are not read."""
    with _open(path) as f:
        layout, _ = _open_layout(path, f, None)
        key = layout.energy_key
        rows = _row_indices(rows, f[key].shape[0], path)
        arrays = _read_indexed(f, (key,), rows, layout.file_dtype(key, dtype))
    validate_arrays(path, arrays, rows=rows, layout=layout)
    energy = arrays[key][:, 0]
    return energy / GEV if layout.challenge else energy


def _check_voxels(path, voxels: np.ndarray, geometry: Geometry) -> None:
    if voxels.ndim != 2 or voxels.shape[1] != geometry.n_voxels:
        raise DataFormatError(
            f"{path}: voxels have shape {voxels.shape}, expected (N, {geometry.n_voxels}) for the "
            f"{geometry.name} geometry"
        )


def _dataset_options(layout: Layout) -> dict:
    # CaloChallenge files are gzip-compressed, as the challenge wrote its own
    return {"compression": "gzip"} if layout.challenge else {}


def _geometry_attrs(geometry: Geometry) -> dict:
    """The geometry stored with a CaloChallenge file (CaloGAN files are recognised by their keys)."""
    if geometry.file_format != CHALLENGE_FORMAT:
        return {}
    return {GEOMETRY_ATTR: json.dumps(geometry.to_dict())}


def write_showers(path, showers: Showers, dtype=np.float32, attrs: dict | None = None) -> Path:
    """Write showers to ``path`` in their geometry's format, atomically (temporary file, then
    rename).

    Args:
        path: destination; parent directories are created.
        showers: voxels in MeV, energy in GeV, overflow in MeV; a CaloChallenge geometry is
            written as ``showers`` and ``incident_energies`` (MeV, float64), gzip-compressed.
        dtype: on-disk float dtype of the voxels.
        attrs: optional file attributes (e.g. the generator and seed), stored as HDF5 attributes.
    """
    path = Path(path)
    layout = Layout(showers.geometry)
    voxels = np.asarray(showers.voxels)
    _check_voxels(path, voxels, showers.geometry)
    arrays = layout.to_arrays(voxels, showers.energy, showers.overflow)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for key, a in arrays.items():
            data = np.ascontiguousarray(a, dtype=layout.file_dtype(key, dtype))
            f.create_dataset(key, data=data, **_dataset_options(layout))
        for k, v in {**_geometry_attrs(showers.geometry), **(attrs or {})}.items():
            f.attrs[k] = v
    return path


def iter_showers(
    path,
    block_rows: int = 8192,
    start: int | None = None,
    stop: int | None = None,
    dtype=np.float32,
    geometry: "Geometry | str | None" = None,
) -> Iterator[Showers]:
    """Read and validate showers ``[start:stop]`` of a shower file in blocks of ``block_rows``
    (bounded memory); row numbers in error messages refer to the file."""
    lo, hi, _ = slice(start, stop).indices(count_showers(path, geometry))
    for begin in range(lo, hi, block_rows):
        yield read_showers(path, begin, min(begin + block_rows, hi), dtype=dtype, geometry=geometry)


def check_showers(path, stop: int | None = None, geometry: "Geometry | str | None" = None) -> int:
    """Validate the showers ``[:stop]`` of a shower file (all of them by default) block by block,
    with the checks of :func:`read_showers`, in bounded memory; returns the file's number of showers.

    For commands that must refuse a bad file before any expensive work (building a Trainer, training).

    Raises:
        DataFormatError: as :func:`read_showers`, naming the file, the key and the first bad row.
    """
    n = count_showers(path, geometry)
    for _ in iter_showers(path, stop=stop, geometry=geometry):
        pass
    return n


# ------------------------------------------------------------------------------ streaming output
def values_per_shower(geometry: Geometry = CALOGAN) -> int:
    """Values one shower takes in a file: its voxels, the incident energy and (CaloGAN) the
    overflow of every layer."""
    return sum(int(np.prod(shape)) for shape in Layout(geometry).row_shapes().values())


def estimated_file_size(n: int, dtype=np.float32, geometry: Geometry = CALOGAN) -> int:
    """Bytes that ``n`` showers take in a file written here (uncompressed): the values, 2 % and
    16 MiB for HDF5's metadata and the last, partly filled chunks."""
    itemsize = np.dtype(dtype).itemsize
    return int(n * values_per_shower(geometry) * itemsize * 1.02) + 16 * 2**20


def _size(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n_bytes < 1000 or unit == "PB":
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000
    raise AssertionError


def check_disk_space(
    path, n: int, what: str | None = None, dtype=np.float32, geometry: Geometry = CALOGAN
) -> None:
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
    need = estimated_file_size(n, dtype, geometry)
    if need > free:
        raise CaloflowError(
            f"{what or f'--n {n}'}: the output needs about {_size(need)} on disk but {folder} has only "
            f"{_size(free)} free"
        )


class ShowerWriter:
    """Write a shower file (the geometry's format) block by block, in bounded memory, atomically.

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
        geometry: the detector; a CaloChallenge geometry writes ``showers`` and
            ``incident_energies`` (MeV, float64), gzip-compressed, and stores the geometry.
    """

    def __init__(
        self,
        path,
        dtype=np.float32,
        attrs: dict | None = None,
        block_rows: int = 4096,
        expected_rows: int | None = None,
        geometry: Geometry = CALOGAN,
    ):
        if block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.geometry = geometry
        self._layout = Layout(geometry)
        self.attrs = {**_geometry_attrs(geometry), **(attrs or {})}
        self.block_rows = int(block_rows)
        self.expected_rows = expected_rows
        self.n = 0  # showers appended so far (written or buffered)
        self._file = None
        self._atomic = None
        self._buffer: dict[str, np.ndarray] = {}
        self._buffered = 0

    # --- layout
    def _row_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._layout.row_shapes()

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
                dtype = self._layout.file_dtype(key, self.dtype)
                self._file.create_dataset(
                    key,
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    dtype=dtype,
                    chunks=(self._chunk_rows(shape), *shape),
                    **_dataset_options(self._layout),
                )
                self._buffer[key] = np.empty((self.block_rows, *shape), dtype=dtype)
        except BaseException:
            self._close_file()
            if not self._atomic.__exit__(*sys.exc_info()):
                raise
        return self

    # --- writing
    def append(self, showers: Showers | np.ndarray, energy=None, overflow=None) -> None:
        """Append showers: a :class:`Showers` of the writer's geometry, or voxels (n, V) MeV,
        energy (n,) GeV and overflow (n, n_layers) MeV (zeros if omitted)."""
        if self._file is None:
            raise RuntimeError("ShowerWriter.append outside its 'with' block")
        check_interrupted()
        if isinstance(showers, Showers):
            if showers.geometry != self.geometry:
                raise DataFormatError(
                    f"{self.path}: showers of the {showers.geometry.name} geometry, the file is "
                    f"{self.geometry.name}"
                )
            voxels, energy, overflow = showers.voxels, showers.energy, showers.overflow
        else:
            voxels = showers
        voxels = np.asarray(voxels)
        _check_voxels(self.path, voxels, self.geometry)
        n, n_layers = len(voxels), self.geometry.n_layers
        energy = np.asarray(energy).reshape(-1)
        overflow = np.zeros((n, n_layers)) if overflow is None else np.asarray(overflow)
        if len(energy) != n or overflow.shape != (n, n_layers):
            raise DataFormatError(
                f"{self.path}: {n} voxel rows but energy {energy.shape} and overflow {overflow.shape}"
            )
        arrays = self._layout.to_arrays(voxels, energy, overflow)
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
        start = self._file[self._layout.energy_key].shape[0]
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
    "CHALLENGE_KEYS",
    "GEOMETRY_ATTR",
    "Layout",
    "file_geometry",
    "values_per_shower",
    "estimated_file_size",
    "check_disk_space",
    "ShowerWriter",
]
