"""High-level features of showers in a polar (CaloChallenge) geometry, and the three inputs of the
CaloChallenge classifiers, as the challenge's official evaluator defines them.

Every formula lives once, in torch (float64), in :func:`radial_quantities`; the numpy entry points
(:func:`radial_features`, :func:`classifier_inputs`) call it. Any geometry whose layers are all
polar works: the challenge's dataset 1 (photons, pions) and any binning XML.

Units: voxel energies in MeV; the incident energy is GeV inside caloflow and converted to MeV here,
because the evaluator works in MeV (``E_inc [MeV] = 1000 E_inc [GeV]``). Lengths in mm.

Per shower, after voxels below ``min_energy`` (MeV) are set to zero (:func:`apply_min_energy`;
default per geometry: :func:`default_min_energy_mev`):

* ``E_tot`` = sum of all voxels (MeV); ``E_tot_over_E_inc`` = E_tot / E_inc;
* ``E_{id}`` = sum of the voxels of the layer with id ``id`` (MeV), every layer;
* for the layers with more than one angular bin: the centres of energy ``EC_eta_{id}`` =
  sum(eta_i E_i) / (E + 1e-16), ``EC_phi_{id}`` likewise (eta = r_c cos(alpha_c), phi =
  r_c sin(alpha_c) of each voxel centre, :attr:`caloflow.geometry.Geometry.voxel_eta`), and their
  widths ``width_eta_{id}`` = sqrt(max(sum(eta_i^2 E_i) / (E + 1e-16) - EC_eta^2, 0)) (mm);
* every layer: the radial centre of energy ``EC_r_{id}`` and width ``width_r_{id}`` (the same with
  r_c, the radial bin centre), and ``sparsity_{id}`` = 1 - (fraction of the layer's voxels > 0).

Empty layers: the evaluator divides by (E + 1e-16), so an empty layer's centres and widths are 0,
not undefined; its sparsity is 1. Nothing is NaN for finite voxels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from caloflow.errors import CaloflowError
from caloflow.geometry import GEV, POLAR, Geometry

#: The evaluator's offsets: in the denominators of centres and widths, of the normed voxels, and
#: inside the logarithms of energies (MeV).
DENOMINATOR_OFFSET = 1e-16
LOG_OFFSET_MEV = 1e-8
#: Centres and widths enter the high-level classifier in units of 100 mm.
LENGTH_UNIT_MM = 1e2
#: The three classifier inputs of the evaluator (its modes ``cls-low``, ``cls-low-normed``, ``cls-high``).
CLASSIFIER_INPUTS: tuple[str, ...] = ("cls-low", "cls-low-normed", "cls-high")
#: Voxel threshold (MeV) of dataset 1 and of the finer datasets 2 and 3 (0.5 keV / 0.033, the
#: sampling fraction); see :func:`default_min_energy_mev`.
DATASET1_MIN_ENERGY_MEV = 1.0
FINE_MIN_ENERGY_MEV = 0.5e-3 / 0.033


def check_polar(geometry: Geometry) -> None:
    """Raise :class:`CaloflowError` (one line) unless every layer of ``geometry`` is polar."""
    flat = [layer.id for layer in geometry.layers if layer.kind != POLAR]
    if flat:
        raise CaloflowError(
            f"geometry {geometry.name}: CaloChallenge features need polar (r, alpha) layers; "
            f"layers {flat} are not"
        )


def is_polar(geometry: Geometry) -> bool:
    """Whether every layer of ``geometry`` is polar (the CaloChallenge detectors; not CaloGAN)."""
    return all(layer.kind == POLAR for layer in geometry.layers)


def is_dataset1(geometry: Geometry) -> bool:
    """Whether ``geometry`` is one of the challenge's dataset-1 detectors (built-in ``ds1-*``)."""
    return geometry.name.startswith("ds1-")


def default_min_energy_mev(geometry: Geometry) -> float:
    """The voxel threshold (MeV) of the evaluator for this geometry: 1 MeV for dataset 1,
    0.5 keV / 0.033 = 15.2 keV for any other polar geometry (datasets 2 and 3)."""
    return DATASET1_MIN_ENERGY_MEV if is_dataset1(geometry) else FINE_MIN_ENERGY_MEV


def apply_min_energy(voxels: Tensor, min_energy_mev: float) -> Tensor:
    """``voxels`` (MeV) with every voxel below ``min_energy_mev`` set to zero (same dtype)."""
    zero = torch.zeros((), dtype=voxels.dtype, device=voxels.device)
    return torch.where(voxels < min_energy_mev, zero, voxels)


def feature_names(geometry: Geometry) -> tuple[str, ...]:
    """Names of :func:`radial_features`, in order (``E_tot_over_E_inc`` needs the incident energy)."""
    ids = geometry.layer_ids
    binned = [geometry.layers[k].id for k in geometry.alpha_binned_layers]
    return (
        "E_tot",
        "E_tot_over_E_inc",
        *(f"E_{i}" for i in ids),
        *(f"{name}_{i}" for name in ("EC_eta", "EC_phi", "width_eta", "width_phi") for i in binned),
        *(f"{name}_{i}" for name in ("EC_r", "width_r", "sparsity") for i in ids),
    )


def _as_float64(x, device=None) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, device=device).to(
        torch.float64
    )


def _incident_mev(incident_gev, n: int, device) -> Tensor:
    """(N,) incident energies in MeV from (N,) or (N, 1) in GeV."""
    e = _as_float64(incident_gev, device).reshape(-1)
    if e.shape[0] != n:
        raise ValueError(f"{e.shape[0]} incident energies for {n} showers")
    return e * GEV


def _centre_and_width(coordinate: Tensor, energy: Tensor, total: Tensor) -> tuple[Tensor, Tensor]:
    """Energy-weighted mean and standard deviation of ``coordinate`` (V,) over a layer's voxels
    ``energy`` (N, V), with the evaluator's 1e-16 in the denominator and the negative variance of
    rounding clipped to 0."""
    den = total + DENOMINATOR_OFFSET
    centre = (energy @ coordinate) / den
    second = (energy @ (coordinate * coordinate)) / den
    return centre, torch.sqrt(torch.clamp(second - centre**2, min=0.0))


def radial_quantities(v: Tensor, geometry: Geometry) -> dict[str, Tensor]:
    """Every feature of :func:`feature_names` but ``E_tot_over_E_inc``, from thresholded voxels.

    Args:
        v: (N, n_voxels) float64 voxels in MeV, already thresholded.
        geometry: a polar geometry.

    Returns:
        name -> (N,) float64 tensor (MeV, mm, fractions), in the order of :func:`feature_names`.
    """
    geometry.check_width(v)
    out: dict[str, Tensor] = {"E_tot": v.sum(dim=1)}
    coords = {
        name: torch.as_tensor(getattr(geometry, f"voxel_{name}"), dtype=v.dtype, device=v.device)
        for name in ("eta", "phi", "r")
    }
    layers = list(zip(geometry.layers, geometry.layer_slices))
    energies = {layer.id: v[:, s].sum(dim=1) for layer, s in layers}
    out.update({f"E_{i}": e for i, e in energies.items()})
    for k, (layer, s) in enumerate(layers):
        # eta and phi only where the layer has angular bins (a single bin has alpha_c = 0)
        axes = ("eta", "phi", "r") if k in geometry.alpha_binned_layers else ("r",)
        for axis in axes:
            centre, width = _centre_and_width(coords[axis][s], v[:, s], energies[layer.id])
            out[f"EC_{axis}_{layer.id}"], out[f"width_{axis}_{layer.id}"] = centre, width
        out[f"sparsity_{layer.id}"] = 1.0 - (v[:, s] > 0).to(v.dtype).mean(dim=1)
    return {name: out[name] for name in feature_names(geometry) if name in out}


def _thresholded(voxels, geometry: Geometry, min_energy_mev: float | None) -> Tensor:
    check_polar(geometry)
    v = _as_float64(voxels)
    geometry.check_width(v)
    threshold = default_min_energy_mev(geometry) if min_energy_mev is None else min_energy_mev
    return apply_min_energy(v, threshold)


def radial_features(
    voxels,
    geometry: Geometry,
    incident_gev=None,
    min_energy_mev: float | None = None,
) -> dict[str, np.ndarray]:
    """The high-level features (module docstring) of each shower, as float64 numpy arrays.

    Args:
        voxels: (N, n_voxels) in MeV, in the geometry's flat order.
        geometry: a polar geometry.
        incident_gev: (N,) or (N, 1) incident energies in GeV; without them ``E_tot_over_E_inc``
            is left out.
        min_energy_mev: voxels below this are zeroed first (default: the geometry's, see
            :func:`default_min_energy_mev`; 0 keeps every voxel).

    Returns:
        name -> (N,) array, in the order of :func:`feature_names`.
    """
    v = _thresholded(voxels, geometry, min_energy_mev)
    with torch.no_grad():
        q = radial_quantities(v, geometry)
        if incident_gev is not None:
            q["E_tot_over_E_inc"] = q["E_tot"] / _incident_mev(incident_gev, len(v), v.device)
    return {name: q[name].numpy() for name in feature_names(geometry) if name in q}


def high_level_columns(geometry: Geometry) -> tuple[str, ...]:
    """Names of the columns of the ``cls-high`` input, in order."""
    ids = geometry.layer_ids
    binned = [geometry.layers[k].id for k in geometry.alpha_binned_layers]
    return (
        "log10_E_inc",
        *(f"log10_E_{i}" for i in ids),
        *(
            f"{name}_{i}/100"
            for name in ("EC_eta", "EC_phi", "width_eta", "width_phi")
            for i in binned
        ),
        "log10_E_tot",
        *(f"sparsity_{i}" for i in ids),
        *(f"{name}_{i}/100" for name in ("EC_r", "width_r") for i in ids),
    )


def _high_level(q: dict[str, Tensor], log_e_inc: Tensor, geometry: Geometry) -> Tensor:
    ids = geometry.layer_ids
    binned = [geometry.layers[k].id for k in geometry.alpha_binned_layers]
    columns = [log_e_inc] + [torch.log10(q[f"E_{i}"] + LOG_OFFSET_MEV) for i in ids]
    for name in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
        columns += [q[f"{name}_{i}"] / LENGTH_UNIT_MM for i in binned]
    columns.append(torch.log10(q["E_tot"] + LOG_OFFSET_MEV))
    columns += [q[f"sparsity_{i}"] for i in ids]
    for name in ("EC_r", "width_r"):
        columns += [q[f"{name}_{i}"] / LENGTH_UNIT_MM for i in ids]
    return torch.stack(columns, dim=1)


def classifier_input_size(geometry: Geometry, kind: str) -> int:
    """Columns d of the ``kind`` input of :func:`classifier_inputs` for ``geometry``."""
    if kind == "cls-low":
        return 1 + geometry.n_voxels
    if kind == "cls-low-normed":
        return 1 + geometry.n_voxels + geometry.n_layers
    if kind == "cls-high":
        return len(high_level_columns(geometry))
    raise ValueError(f"unknown classifier input {kind!r}, choose from {CLASSIFIER_INPUTS}")


def classifier_input_tensor(
    voxels,
    incident_gev,
    geometry: Geometry,
    kind: str,
    min_energy_mev: float | None = None,
) -> Tensor:
    """:func:`classifier_inputs` as a float64 tensor that keeps the autograd graph of ``voxels``
    (a LaSeR weight w(x) = exp(classifier(x)) is differentiated in x): voxels below the threshold
    get zero gradient; the rest enter ``cls-low`` linearly (v / E_inc)."""
    if kind not in CLASSIFIER_INPUTS:
        raise ValueError(f"unknown classifier input {kind!r}, choose from {CLASSIFIER_INPUTS}")
    v = _thresholded(voxels, geometry, min_energy_mev)
    e_inc = _incident_mev(incident_gev, len(v), v.device)
    log_e_inc = torch.log10(e_inc)
    if kind == "cls-low":
        return torch.cat([log_e_inc[:, None], v / e_inc[:, None]], dim=1)
    if kind == "cls-low-normed":
        layer_e = geometry.layer_energies(v)
        per_voxel = torch.repeat_interleave(layer_e, torch.as_tensor(geometry.layer_sizes), dim=1)
        return torch.cat(
            [
                log_e_inc[:, None],
                v / (per_voxel + DENOMINATOR_OFFSET),
                torch.log10(layer_e + LOG_OFFSET_MEV),
            ],
            dim=1,
        )
    return _high_level(radial_quantities(v, geometry), log_e_inc, geometry)


def classifier_inputs(
    voxels,
    incident_gev,
    geometry: Geometry,
    kind: str,
    min_energy_mev: float | None = None,
) -> np.ndarray:
    """The input of one classifier of the evaluator, (N, d) float64, after the voxel threshold.

    With E_inc the incident energy in MeV, v the thresholded voxels (MeV) and E_k the layer energies:

    * ``cls-low``: [log10 E_inc, v / E_inc] (d = 1 + n_voxels);
    * ``cls-low-normed``: [log10 E_inc, v / (E_k + 1e-16) of each voxel's layer,
      log10(E_k + 1e-8)] (d = 1 + n_voxels + n_layers);
    * ``cls-high``: [log10 E_inc, log10(E_k + 1e-8), the eta and phi centres of energy and widths
      of the alpha-binned layers / 100 mm, log10(E_tot + 1e-8), the sparsities, the radial centres
      and widths / 100 mm] (:func:`high_level_columns`); these are also the features of FPD and KPD.

    Args:
        voxels: (N, n_voxels) in MeV.
        incident_gev: (N,) or (N, 1) incident energies in GeV.
        geometry: a polar geometry.
        kind: one of :data:`CLASSIFIER_INPUTS`.
        min_energy_mev: the voxel threshold (default: the geometry's).
    """
    with torch.no_grad():
        return classifier_input_tensor(voxels, incident_gev, geometry, kind, min_energy_mev).numpy()


__all__ = [
    "DENOMINATOR_OFFSET",
    "LOG_OFFSET_MEV",
    "LENGTH_UNIT_MM",
    "CLASSIFIER_INPUTS",
    "DATASET1_MIN_ENERGY_MEV",
    "FINE_MIN_ENERGY_MEV",
    "check_polar",
    "is_polar",
    "is_dataset1",
    "default_min_energy_mev",
    "apply_min_energy",
    "feature_names",
    "radial_quantities",
    "radial_features",
    "high_level_columns",
    "classifier_input_size",
    "classifier_input_tensor",
    "classifier_inputs",
]
