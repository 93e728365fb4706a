"""Detector geometries as data: the layers, their binning and the order of the voxels.

A :class:`Geometry` is what a file, a DataModule, a model checkpoint and an evaluation agree on. Two
families are built in:

* ``calogan``: the 2017 CaloGAN detector (three layers of (phi, eta) rectangles, a 480 mm cube);
  files in the CaloGAN format (``layer_0..2``, ``energy`` in GeV, ``overflow``).
* ``ds1-photons``, ``ds1-pions``: the CaloChallenge 2022 dataset-1 detectors (the layers of the
  ATLAS barrel binned in radius r and angle alpha); files in the CaloChallenge format
  (``showers``, ``incident_energies`` in MeV). Any CaloChallenge binning XML is read by
  :func:`read_binning_xml`, so the regular dataset-2/3 layouts load too.

Every layer is a grid of ``rows x cols`` voxels flattened row-major; layers follow one another.
For a CaloGAN layer the rows are phi cells and the columns eta cells; for a CaloChallenge layer the
rows are alpha bins and the columns r bins, so the flat index inside a layer is ``a * n_r + r``
(alpha-major, r-minor), as in the challenge's files. Voxel centres are in mm: for polar layers
``eta = r_c cos(alpha_c)``, ``phi = r_c sin(alpha_c)`` with ``r_c``, ``alpha_c`` the bin centres
(alpha edges ``linspace(-pi, pi, n_alpha + 1)``).

Energies inside caloflow are in MeV (voxels, layer energies, overflow), except the incident
energy, which is in GeV everywhere inside the toolkit; files are converted when read and written
(CaloChallenge files hold MeV). Lengths are in mm.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from caloflow.errors import CaloflowError

#: Energy units, in MeV.
MEV = 1.0
KEV = 1e-3
GEV = 1e3

#: The two layouts of a binning: rectangles in (phi, eta), or rings in (r, alpha).
CARTESIAN = "cartesian"
POLAR = "polar"
#: The two file formats.
CALOGAN_FORMAT = "calogan"
CHALLENGE_FORMAT = "calochallenge"


@dataclass(frozen=True)
class Layer:
    """One readout layer.

    Attributes:
        id: the detector's own layer number (CaloGAN 0-2; ATLAS samplings 0-3, 12-14 in dataset 1).
        kind: ``"cartesian"`` (rows = phi cells, cols = eta cells) or ``"polar"`` (rows = alpha
            bins, cols = r bins).
        row_edges: phi edges in mm (cartesian) or alpha edges in rad (polar).
        col_edges: eta edges in mm (cartesian) or r edges in mm (polar).
    """

    id: int
    kind: str
    row_edges: tuple[float, ...]
    col_edges: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in (CARTESIAN, POLAR):
            raise ValueError(f"layer {self.id}: kind must be cartesian or polar, got {self.kind!r}")
        for name in ("row_edges", "col_edges"):
            edges = np.asarray(getattr(self, name), dtype=float)
            if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
                raise ValueError(f"layer {self.id}: {name} must increase strictly, got {edges}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols): (n_phi, n_eta) or (n_alpha, n_r)."""
        return len(self.row_edges) - 1, len(self.col_edges) - 1

    @property
    def size(self) -> int:
        """Number of voxels."""
        return self.shape[0] * self.shape[1]

    @property
    def n_alpha(self) -> int:
        """Angular bins of a polar layer (1 for a cartesian layer: it has no alpha binning)."""
        return self.shape[0] if self.kind == POLAR else 1

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(eta, phi) of every voxel centre in mm, each (size,), in the flat order of the layer."""
        rows = 0.5 * (np.asarray(self.row_edges[1:]) + np.asarray(self.row_edges[:-1]))
        cols = 0.5 * (np.asarray(self.col_edges[1:]) + np.asarray(self.col_edges[:-1]))
        row, col = np.meshgrid(rows, cols, indexing="ij")
        if self.kind == CARTESIAN:
            return col.reshape(-1), row.reshape(-1)
        return (col * np.cos(row)).reshape(-1), (col * np.sin(row)).reshape(-1)

    def radii(self) -> np.ndarray:
        """Distance of every voxel centre from the shower axis in mm, (size,)."""
        if self.kind == POLAR:
            cols = 0.5 * (np.asarray(self.col_edges[1:]) + np.asarray(self.col_edges[:-1]))
            return np.tile(cols, self.shape[0])
        eta, phi = self.centres()
        return np.hypot(eta, phi)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "row_edges": list(self.row_edges),
            "col_edges": list(self.col_edges),
        }


def polar_layer(layer_id: int, r_edges, n_alpha: int) -> Layer:
    """A CaloChallenge layer: ``r_edges`` in mm and ``n_alpha`` angular bins over (-pi, pi]."""
    alpha = tuple(float(a) for a in np.linspace(-math.pi, math.pi, int(n_alpha) + 1))
    return Layer(int(layer_id), POLAR, alpha, tuple(float(r) for r in r_edges))


def cartesian_layer(layer_id: int, n_phi: int, n_eta: int, half_width_mm: float) -> Layer:
    """A CaloGAN layer: ``n_phi x n_eta`` equal cells over ``[-half_width, half_width]`` mm."""
    phi = np.linspace(-half_width_mm, half_width_mm, n_phi + 1)
    eta = np.linspace(-half_width_mm, half_width_mm, n_eta + 1)
    return Layer(int(layer_id), CARTESIAN, tuple(map(float, phi)), tuple(map(float, eta)))


@dataclass(frozen=True)
class Geometry:
    """A detector: its layers in the order of the flat voxel vector, and its file format.

    Equal geometries compare equal (by value), so a checkpoint and a file can be matched.
    """

    name: str
    layers: tuple[Layer, ...]
    file_format: str

    def __post_init__(self) -> None:
        if self.file_format not in (CALOGAN_FORMAT, CHALLENGE_FORMAT):
            raise ValueError(f"geometry {self.name}: unknown file format {self.file_format!r}")
        if not self.layers:
            raise ValueError(f"geometry {self.name}: no layers")

    # --- sizes and order
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def layer_ids(self) -> tuple[int, ...]:
        return tuple(layer.id for layer in self.layers)

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple(layer.shape for layer in self.layers)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return tuple(layer.size for layer in self.layers)

    @property
    def n_voxels(self) -> int:
        return sum(self.layer_sizes)

    @property
    def layer_slices(self) -> tuple[slice, ...]:
        """Start and stop of each layer in the flat voxel vector."""
        stops = np.cumsum(self.layer_sizes)
        return tuple(slice(int(b - n), int(b)) for b, n in zip(stops, self.layer_sizes))

    @property
    def alpha_binned_layers(self) -> tuple[int, ...]:
        """Positions (not ids) of the layers with more than one angular bin."""
        return tuple(k for k, layer in enumerate(self.layers) if layer.n_alpha > 1)

    # --- voxel positions
    @cached_property
    def voxel_eta(self) -> np.ndarray:
        """(n_voxels,) eta coordinate of every voxel centre, mm."""
        return np.concatenate([layer.centres()[0] for layer in self.layers])

    @cached_property
    def voxel_phi(self) -> np.ndarray:
        """(n_voxels,) phi coordinate of every voxel centre, mm."""
        return np.concatenate([layer.centres()[1] for layer in self.layers])

    @cached_property
    def voxel_r(self) -> np.ndarray:
        """(n_voxels,) distance of every voxel centre from the shower axis, mm."""
        return np.concatenate([layer.radii() for layer in self.layers])

    @cached_property
    def voxel_layer(self) -> np.ndarray:
        """(n_voxels,) position of the layer of every voxel."""
        return np.repeat(np.arange(self.n_layers), self.layer_sizes)

    # --- arrays
    def check_width(self, voxels) -> None:
        """Raise ValueError unless ``voxels`` is (N, n_voxels)."""
        if len(voxels.shape) != 2 or voxels.shape[1] != self.n_voxels:
            raise ValueError(
                f"voxels have shape {tuple(voxels.shape)}, expected (N, {self.n_voxels}) for "
                f"the {self.name} geometry"
            )

    def split_layers(self, voxels: np.ndarray) -> list[np.ndarray]:
        """(N, n_voxels) -> one (N, rows, cols) image per layer (views where possible)."""
        n = voxels.shape[0]
        return [voxels[:, s].reshape(n, *sh) for s, sh in zip(self.layer_slices, self.layer_shapes)]

    def join_layers(self, layers: list[np.ndarray]) -> np.ndarray:
        """One (N, rows, cols) image per layer -> (N, n_voxels) in the flat order."""
        return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in layers], axis=1)

    def layer_energies(self, voxels):
        """Sum of the voxels of each layer, (N, n_voxels) -> (N, n_layers); numpy or torch."""
        parts = [voxels[:, s].sum(1, keepdims=True) for s in self.layer_slices]
        if isinstance(voxels, np.ndarray):
            return np.concatenate(parts, axis=1)
        import torch

        return torch.cat(parts, dim=1)

    # --- persistence
    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-able description (stored in checkpoints and file attributes)."""
        return {
            "name": self.name,
            "file_format": self.file_format,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        layers = tuple(
            Layer(int(x["id"]), x["kind"], tuple(x["row_edges"]), tuple(x["col_edges"]))
            for x in d["layers"]
        )
        return cls(str(d["name"]), layers, str(d["file_format"]))

    def __repr__(self) -> str:
        return f"Geometry({self.name!r}, {self.n_layers} layers, {self.n_voxels} voxels)"


# ------------------------------------------------------------------------------ CaloGAN
#: Transverse half-size of the CaloGAN readout, mm.
HALF_WIDTH_MM = 240.0
#: CaloGAN layer boundaries along the beam (z measured from the front face), mm.
LAYER_DEPTHS_MM: tuple[float, ...] = (0.0, 90.0, 437.0, 480.0)
#: One CaloGAN sampling period: 2 mm Pb + 4 mm LAr.
PERIOD_MM = 6.0
#: Thresholds of the CaloFlow paper (section 4): noise scale and the post-processing cut.
NOISE_KEV = 1.0
THRESHOLD_KEV = 10.0

CALOGAN = Geometry(
    "calogan",
    tuple(
        cartesian_layer(k, rows, cols, HALF_WIDTH_MM)
        for k, (rows, cols) in enumerate(((3, 96), (12, 12), (12, 6)))
    ),
    CALOGAN_FORMAT,
)

#: Keys of the CaloGAN HDF5 format.
LAYER_KEYS: tuple[str, ...] = tuple(f"layer_{k}" for k in range(CALOGAN.n_layers))
ENERGY_KEY = "energy"
OVERFLOW_KEY = "overflow"
#: Keys of the CaloChallenge HDF5 format.
SHOWERS_KEY = "showers"
INCIDENT_KEY = "incident_energies"

# ------------------------------------------------------------------------------ CaloChallenge
_PRESAMPLER_R = (0, 5, 10, 30, 50, 100, 200, 400, 600)
_EM3_R = (0, 50, 100, 200, 400, 600)
_TILE_R = (0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400)

DS1_PHOTONS = Geometry(
    "ds1-photons",
    (
        polar_layer(0, _PRESAMPLER_R, 1),
        polar_layer(1, (0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200), 10),
        polar_layer(
            2,
            (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160)
            + (200, 250, 300, 350, 400),
            10,
        ),
        polar_layer(3, _EM3_R, 1),
        polar_layer(12, (0, 100, 200, 400, 1000, 2000), 1),
    ),
    CHALLENGE_FORMAT,
)
DS1_PIONS = Geometry(
    "ds1-pions",
    (
        polar_layer(0, _PRESAMPLER_R, 1),
        polar_layer(1, (0, 1, 4, 7, 10, 15, 30, 50, 90, 150, 200), 10),
        polar_layer(2, (0, 5, 10, 20, 30, 50, 80, 130, 200, 300, 400), 10),
        polar_layer(3, _EM3_R, 1),
        polar_layer(12, _TILE_R + (1000, 2000), 10),
        polar_layer(13, _TILE_R + (600, 1000, 2000), 10),
        polar_layer(14, (0, 50, 100, 150, 200, 250, 300, 400, 600, 1000, 2000), 1),
    ),
    CHALLENGE_FORMAT,
)

#: The built-in geometries by name.
BUILTIN: dict[str, Geometry] = {g.name: g for g in (CALOGAN, DS1_PHOTONS, DS1_PIONS)}


def read_binning_xml(path, name: str | None = None) -> Geometry:
    """Read a CaloChallenge binning XML (``<Bins><Bin ...><Layer id r_edges n_bin_alpha/>``).

    Layers without radial bins (``r_edges="0"``) hold no voxels and are left out, as in the
    challenge's files. The geometry is named ``name`` or after the file.

    Raises:
        CaloflowError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise CaloflowError(f"{path}: no such file") from None
    except (ET.ParseError, IsADirectoryError, UnicodeDecodeError) as e:
        raise CaloflowError(f"{path}: not a binning XML file ({e})") from None
    layers = []
    for element in root.iter("Layer"):
        try:
            r_edges = [float(s) for s in element.attrib["r_edges"].split(",")]
            n_alpha = int(element.attrib.get("n_bin_alpha", "1"))
            layer_id = int(element.attrib["id"])
            if len(r_edges) > 1:
                layers.append(polar_layer(layer_id, r_edges, n_alpha))
        except (KeyError, ValueError) as e:
            raise CaloflowError(f"{path}: bad <Layer> {dict(element.attrib)} ({e})") from None
    if not layers:
        raise CaloflowError(f"{path}: no <Layer> with radial bins")
    return Geometry(name or path.stem, tuple(layers), CHALLENGE_FORMAT)


def get_geometry(spec: "str | Path | dict | Geometry") -> Geometry:
    """A geometry from a built-in name, a binning XML file, a :meth:`Geometry.to_dict` dict or a
    :class:`Geometry`.

    Raises:
        CaloflowError: an unknown name or an unreadable file, in one line.
    """
    if isinstance(spec, Geometry):
        return spec
    if isinstance(spec, dict):
        return Geometry.from_dict(spec)
    text = str(spec)
    if text in BUILTIN:
        return BUILTIN[text]
    if text.lower().endswith(".xml"):
        return read_binning_xml(text)
    raise CaloflowError(
        f"unknown geometry {text!r}: use one of {', '.join(BUILTIN)} or a binning .xml file"
    )


def challenge_geometry_for_width(width: int) -> Geometry | None:
    """The built-in CaloChallenge geometry with ``width`` voxels, or None."""
    for g in BUILTIN.values():
        if g.file_format == CHALLENGE_FORMAT and g.n_voxels == width:
            return g
    return None


# ------------------------------------------------------------------------------ CaloGAN shortcuts
# The CaloGAN detector's numbers, for the modules that only ever speak CaloGAN (its simulator, the
# CaloGAN baseline, its file format); everything else takes a Geometry.
LAYER_SHAPES: tuple[tuple[int, int], ...] = CALOGAN.layer_shapes
LAYER_SIZES: tuple[int, ...] = CALOGAN.layer_sizes
N_LAYERS = CALOGAN.n_layers
N_VOXELS = CALOGAN.n_voxels
LAYER_SLICES: tuple[slice, ...] = CALOGAN.layer_slices


def voxel_edges(layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges (phi_edges, eta_edges) of a CaloGAN layer in mm."""
    g = CALOGAN.layers[layer]
    return np.asarray(g.row_edges), np.asarray(g.col_edges)


def voxel_centres(layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (phi_centres (rows,), eta_centres (cols,)) of a CaloGAN layer in mm."""
    phi_edges, eta_edges = voxel_edges(layer)
    return 0.5 * (phi_edges[1:] + phi_edges[:-1]), 0.5 * (eta_edges[1:] + eta_edges[:-1])


def split_layers(voxels: np.ndarray) -> list[np.ndarray]:
    """CaloGAN voxels (N, n_voxels) -> one (N, phi, eta) image per layer."""
    return CALOGAN.split_layers(voxels)


def join_layers(layers: list[np.ndarray]) -> np.ndarray:
    """CaloGAN images -> (N, n_voxels) in the CaloGAN flattening order."""
    return CALOGAN.join_layers(layers)


def layer_energies(voxels):
    """CaloGAN layer energies (N, n_layers), MeV; numpy or torch."""
    return CALOGAN.layer_energies(voxels)


__all__ = [
    "MEV",
    "KEV",
    "GEV",
    "CARTESIAN",
    "POLAR",
    "CALOGAN_FORMAT",
    "CHALLENGE_FORMAT",
    "Layer",
    "polar_layer",
    "cartesian_layer",
    "Geometry",
    "HALF_WIDTH_MM",
    "LAYER_DEPTHS_MM",
    "PERIOD_MM",
    "NOISE_KEV",
    "THRESHOLD_KEV",
    "CALOGAN",
    "LAYER_KEYS",
    "ENERGY_KEY",
    "OVERFLOW_KEY",
    "SHOWERS_KEY",
    "INCIDENT_KEY",
    "DS1_PHOTONS",
    "DS1_PIONS",
    "BUILTIN",
    "read_binning_xml",
    "get_geometry",
    "challenge_geometry_for_width",
    "LAYER_SHAPES",
    "LAYER_SIZES",
    "N_LAYERS",
    "N_VOXELS",
    "LAYER_SLICES",
    "voxel_edges",
    "voxel_centres",
    "split_layers",
    "join_layers",
    "layer_energies",
]
