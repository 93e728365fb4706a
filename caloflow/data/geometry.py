"""The CaloGAN detector: layer shapes, voxel centres and units.

Energies inside caloflow are in MeV (voxels, layer energies, overflow), except the incident
energy, which is in GeV as in the CaloGAN files. Lengths are in mm.
"""

from __future__ import annotations

import numpy as np

#: Energy units, in MeV.
MEV = 1.0
KEV = 1e-3
GEV = 1e3

#: (phi, eta) shape of each calorimeter layer.
LAYER_SHAPES: tuple[tuple[int, int], ...] = ((3, 96), (12, 12), (12, 6))
LAYER_SIZES: tuple[int, ...] = tuple(r * c for r, c in LAYER_SHAPES)  # 288, 144, 72
N_LAYERS = len(LAYER_SHAPES)
N_VOXELS = sum(LAYER_SIZES)  # 504
#: Start and stop index of each layer in the flattened 504-voxel vector.
LAYER_SLICES: tuple[slice, ...] = tuple(
    slice(int(a), int(b))
    for a, b in zip(np.cumsum((0,) + LAYER_SIZES[:-1]), np.cumsum(LAYER_SIZES))
)

#: Transverse half-size of the readout and the longitudinal extent of the cube, mm.
HALF_WIDTH_MM = 240.0
#: Layer boundaries along the beam (z measured from the front face), mm.
LAYER_DEPTHS_MM: tuple[float, ...] = (0.0, 90.0, 437.0, 480.0)
#: One sampling period: 2 mm Pb + 4 mm LAr.
PERIOD_MM = 6.0

#: Thresholds of the paper (section 4): noise scale and the post-processing cut.
NOISE_KEV = 1.0
THRESHOLD_KEV = 10.0

#: Keys of the CaloGAN HDF5 format.
LAYER_KEYS: tuple[str, ...] = tuple(f"layer_{k}" for k in range(N_LAYERS))
ENERGY_KEY = "energy"
OVERFLOW_KEY = "overflow"


def voxel_edges(layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges (phi_edges, eta_edges) of a layer in mm: ``linspace(-240, 240, n + 1)``."""
    rows, cols = LAYER_SHAPES[layer]
    return (
        np.linspace(-HALF_WIDTH_MM, HALF_WIDTH_MM, rows + 1),
        np.linspace(-HALF_WIDTH_MM, HALF_WIDTH_MM, cols + 1),
    )


def voxel_centres(layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (phi_centres (rows,), eta_centres (cols,)) of a layer in mm."""
    phi_edges, eta_edges = voxel_edges(layer)
    return 0.5 * (phi_edges[1:] + phi_edges[:-1]), 0.5 * (eta_edges[1:] + eta_edges[:-1])


def split_layers(voxels: np.ndarray) -> list[np.ndarray]:
    """(N, 504) -> [(N, 3, 96), (N, 12, 12), (N, 12, 6)] (views where possible)."""
    n = voxels.shape[0]
    return [voxels[:, s].reshape(n, *shape) for s, shape in zip(LAYER_SLICES, LAYER_SHAPES)]


def join_layers(layers: list[np.ndarray]) -> np.ndarray:
    """[(N, 3, 96), (N, 12, 12), (N, 12, 6)] -> (N, 504) in the CaloGAN flattening order."""
    return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in layers], axis=1)


def layer_energies(voxels):
    """Sum of the voxels of each layer: (N, 504) -> (N, 3). Works for numpy arrays and tensors."""
    parts = [voxels[:, s].sum(1, keepdims=True) for s in LAYER_SLICES]
    if isinstance(voxels, np.ndarray):
        return np.concatenate(parts, axis=1)
    import torch

    return torch.cat(parts, dim=1)


__all__ = [
    "MEV",
    "KEV",
    "GEV",
    "LAYER_SHAPES",
    "LAYER_SIZES",
    "N_LAYERS",
    "N_VOXELS",
    "LAYER_SLICES",
    "HALF_WIDTH_MM",
    "LAYER_DEPTHS_MM",
    "PERIOD_MM",
    "NOISE_KEV",
    "THRESHOLD_KEV",
    "LAYER_KEYS",
    "ENERGY_KEY",
    "OVERFLOW_KEY",
    "voxel_edges",
    "voxel_centres",
    "split_layers",
    "join_layers",
    "layer_energies",
]
