"""Histograms and separation powers of the CaloChallenge evaluator (its mode ``hist-chi``).

The separation power of two histograms h1, h2, each normalised to sum 1 over the entries inside the
bins, is S = 1/2 sum_i (h1_i - h2_i)^2 / (h1_i + h2_i + 1e-16) (0: identical, 1: disjoint); entries
outside the bins are left out, as ``numpy.histogram`` leaves them out. Binning, as the evaluator's
plotting code has it for dataset 1 (energies in MeV, lengths in mm):

* ``E_tot_over_E_inc``: 100 equal bins on [0.5, 1.5];
* per incident energy 2^k MeV (k = 8 .. 22; showers with 2^k <= E_inc < 2^(k+1)): 20 equal bins
  on [0.4, 1.4], for photons above 2^11 MeV on [0.9, 1.1];
* layer energies ``E_{id}``: 39 logarithmic bins from the voxel threshold to the largest value in
  the reference;
* centres of energy in eta and phi: 100 bins on [-100, 100] mm ([-500, 500] in layers 12 and 13);
  their widths: 100 bins on [0, 100] mm ([0, 400] in layers 12 and 13);
* the voxel energies of all layers together: 49 logarithmic bins from the threshold to the
  largest reference voxel.

For the features the evaluator draws no histogram of (``E_tot``, the radial centres and widths,
the sparsities) caloflow's choice is: ``E_tot`` like a layer energy; radial centres and widths 100
bins on [0, outer radius of the layer]; the sparsity one bin per possible value k / n_voxels.
Geometries other than dataset 1 (datasets 2 and 3) get the evaluator's [-30, 30] and [0, 30] mm.
"""

from __future__ import annotations

import numpy as np

from caloflow.geometry import Geometry
from caloflow.radial_features import feature_names, is_dataset1

#: Added to the denominator of the separation power, as the evaluator does.
SEPARATION_OFFSET = 1e-16
#: The incident energies of dataset 1: 2^8 .. 2^22 MeV.
DATASET1_ENERGY_EXPONENTS: tuple[int, ...] = tuple(range(8, 23))
#: Layer ids whose centres and widths get the wide ranges (the tile layers 12 and 13 of dataset 1).
WIDE_LAYER_IDS = (12, 13)
N_ENERGY_BINS = 40
N_VOXEL_BINS = 50


def separation(counts1: np.ndarray, counts2: np.ndarray) -> float:
    """S = 1/2 sum (h1 - h2)^2 / (h1 + h2 + 1e-16) of two histograms normalised to sum 1; NaN
    when either has no entry in range (the evaluator's density histogram is then NaN too)."""
    c1, c2 = np.asarray(counts1, np.float64), np.asarray(counts2, np.float64)
    if c1.shape != c2.shape:
        raise ValueError(f"histograms have different shapes {c1.shape} and {c2.shape}")
    if c1.sum() <= 0 or c2.sum() <= 0:
        return float("nan")
    h1, h2 = c1 / c1.sum(), c2 / c2.sum()
    return float(0.5 * np.sum((h1 - h2) ** 2 / (h1 + h2 + SEPARATION_OFFSET)))


def _log_edges(lo: float, hi: float, n_edges: int) -> np.ndarray | None:
    if not (np.isfinite(hi) and hi > lo > 0):
        return None
    return np.logspace(np.log10(lo), np.log10(hi), n_edges)


def _layer_of(name: str, geometry: Geometry):
    layer_id = int(name.rsplit("_", 1)[1])
    return geometry.layers[geometry.layer_ids.index(layer_id)]


def feature_edges(
    name: str, geometry: Geometry, reference: np.ndarray, min_energy_mev: float
) -> np.ndarray | None:
    """Bin edges of one feature of :func:`caloflow.radial_features.feature_names` (module
    docstring); None when no histogram can be drawn (no reference value above the threshold)."""
    ds1 = is_dataset1(geometry)
    if name == "E_tot_over_E_inc":
        return np.linspace(0.5, 1.5, 101)
    if name == "E_tot" or name.startswith("E_"):
        finite = np.asarray(reference, np.float64)
        top = float(finite.max()) if finite.size else float("nan")
        return _log_edges(min_energy_mev, top, N_ENERGY_BINS)
    layer = _layer_of(name, geometry)
    wide = ds1 and layer.id in WIDE_LAYER_IDS
    if name.startswith(("EC_eta", "EC_phi")):
        lim = (-500.0, 500.0) if wide else (-100.0, 100.0) if ds1 else (-30.0, 30.0)
        return np.linspace(*lim, 101)
    if name.startswith(("width_eta", "width_phi")):
        return np.linspace(0.0, 400.0 if wide else 100.0 if ds1 else 30.0, 101)
    if name.startswith(("EC_r", "width_r")):
        return np.linspace(0.0, float(layer.col_edges[-1]), 101)
    if name.startswith("sparsity"):
        return (np.arange(layer.size + 2) - 0.5) / layer.size
    raise ValueError(f"no binning for feature {name!r}")


def energy_edges(geometry: Geometry, exponent: int) -> np.ndarray:
    """Bins of E_tot/E_inc at E_inc = 2^exponent MeV (module docstring)."""
    if "photons" in geometry.name and exponent - DATASET1_ENERGY_EXPONENTS[0] > 3:
        return np.linspace(0.9, 1.1, 21)
    return np.linspace(0.4, 1.4, 21)


def energy_exponent(incident_mev: np.ndarray) -> np.ndarray:
    """floor(log2 E_inc / MeV) per shower; a relative 1e-9 of slack so that 2^k MeV that went
    through a GeV float (2^k (1 - 1e-16) MeV) still counts as 2^k."""
    e = np.asarray(incident_mev, np.float64).reshape(-1)
    return np.floor(np.log2(e) + 1e-9).astype(np.int64)


def voxel_edges(reference_voxels: np.ndarray, min_energy_mev: float) -> np.ndarray | None:
    """Bins of the voxel-energy distribution (module docstring)."""
    return _log_edges(min_energy_mev, float(np.max(reference_voxels)), N_VOXEL_BINS)


def _counts(values: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    values = np.asarray(values, np.float64).reshape(-1)
    w = None if weights is None else np.asarray(weights, np.float64).reshape(-1)
    return np.histogram(values, edges, weights=w)[0].astype(np.float64)


def separation_powers(
    reference: dict[str, np.ndarray],
    sample: dict[str, np.ndarray],
    geometry: Geometry,
    min_energy_mev: float,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """S of every feature the two dicts share (:func:`caloflow.radial_features.feature_names`
    order), on the bins of :func:`feature_edges`; NaN where no histogram can be drawn.
    ``weights``: one per shower of ``sample`` (e.g. DCTR weights), its histograms weighted."""
    out = {}
    for name in (n for n in feature_names(geometry) if n in reference and n in sample):
        edges = feature_edges(name, geometry, reference[name], min_energy_mev)
        out[name] = (
            float("nan")
            if edges is None
            else separation(_counts(reference[name], edges), _counts(sample[name], edges, weights))
        )
    return out


def per_energy_separation(
    reference_response: np.ndarray,
    reference_incident_mev: np.ndarray,
    sample_response: np.ndarray,
    sample_incident_mev: np.ndarray,
    geometry: Geometry,
) -> dict[str, float]:
    """S of E_tot/E_inc at each incident energy 2^k MeV of dataset 1, keyed ``"2^k MeV"``; NaN at an
    energy without showers in either set."""
    ref_k, gen_k = energy_exponent(reference_incident_mev), energy_exponent(sample_incident_mev)
    out = {}
    for k in DATASET1_ENERGY_EXPONENTS:
        edges = energy_edges(geometry, k)
        out[f"2^{k} MeV"] = separation(
            _counts(np.asarray(reference_response)[ref_k == k], edges),
            _counts(np.asarray(sample_response)[gen_k == k], edges),
        )
    return out


def layer_shares(voxels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Each voxel's share of its layer's energy, shower by shower (0 where the layer is empty):
    Flow II's per-layer normalisation (:class:`caloflow.transforms.LayerNormalization`), in float64."""
    import torch

    from caloflow.transforms import LayerNormalization

    v = torch.as_tensor(np.asarray(voxels, np.float64))
    return LayerNormalization(geometry.layer_sizes)(v).numpy()


def voxel_share_outliers(
    reference_voxels: np.ndarray, sample_voxels: np.ndarray, geometry: Geometry, top: int = 5
) -> list[dict]:
    """The ``top`` voxels whose mean share of their layer's energy differs most (in absolute terms)
    between sample and reference: a generator that puts a layer's energy into the wrong voxel
    shows here even when every high-level feature is close. Each row: the flat voxel index, its
    layer id, angular and radial bin, and the two mean shares."""
    ref = layer_shares(reference_voxels, geometry).mean(0)
    gen = layer_shares(sample_voxels, geometry).mean(0)
    rows = []
    for v in np.argsort(-np.abs(gen - ref), kind="stable")[:top]:
        k = int(geometry.voxel_layer[v])
        alpha, r = divmod(int(v) - geometry.layer_slices[k].start, geometry.layer_shapes[k][1])
        rows.append(
            {
                "voxel": int(v),
                "layer": int(geometry.layer_ids[k]),
                "alpha_bin": alpha,
                "r_bin": r,
                "reference_share": float(ref[v]),
                "sample_share": float(gen[v]),
            }
        )
    return rows


def voxel_separation(
    reference_voxels: np.ndarray, sample_voxels: np.ndarray, min_energy_mev: float
) -> float:
    """S of the energy distributions of all voxels (MeV) of the two sets (module docstring)."""
    edges = voxel_edges(reference_voxels, min_energy_mev)
    if edges is None:
        return float("nan")
    return separation(_counts(reference_voxels, edges), _counts(sample_voxels, edges))


__all__ = [
    "SEPARATION_OFFSET",
    "DATASET1_ENERGY_EXPONENTS",
    "WIDE_LAYER_IDS",
    "N_ENERGY_BINS",
    "N_VOXEL_BINS",
    "separation",
    "feature_edges",
    "energy_edges",
    "energy_exponent",
    "voxel_edges",
    "separation_powers",
    "per_energy_separation",
    "voxel_separation",
]
