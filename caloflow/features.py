"""Physics features of CaloGAN showers: the quantities of the CaloFlow paper sections 5.2 and 5.3,
and the 41 inputs of the high-level-feature classifier of the authors' reference code. (The
features of the CaloChallenge kind, for (r, alpha) geometries, are in their own module.)

Every feature is computed per shower, vectorised over an (N, V) CaloGAN voxel array, after the paper's
10 keV cut (voxels below the threshold are set to zero first, as in the post-processing of
section 4.3, so that real and generated showers are judged alike).

One place for each equation: the feature math lives once, in torch (float64), in
:func:`_shower_quantities`. :func:`compute_features` (numpy in, numpy out, for histograms and
tables) and :func:`high_level_inputs` (torch, differentiable, the classifier's inputs) both call it
and differ only in units, transformations and what an undefined quantity becomes.

Units of :func:`compute_features`: energies (``E0 E1 E2 E_hat l_d``) are in MeV; centroids,
centroid differences and widths in mm, measured from the voxel centres of
:func:`caloflow.geometry.voxel_centres`; everything else is a ratio or an index.

Empty layers: a layer without any voxel above the threshold has no brightest voxel, centroid or
width. Those features (``brightest{k} second{k} brightest3{k} brightest4{k} brightest5{k}
E_ratio{k} eta/phi_centroid{k} eta/phi_width{k}``) are NaN for such a shower, and so is a centroid
difference that involves such a layer; ``E{k}_frac s_d sigma_sd deepest_layer`` are NaN when the
whole shower is empty. NaNs are left out of histograms, means and separation powers.
``sparsity{k}`` of an empty layer is 0 and the layer energies are 0. (The classifier inputs of
:func:`high_level_inputs` use 0 instead of NaN, see there.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from caloflow.data.io import Showers, read_showers
from caloflow.errors import DataFormatError
from caloflow.geometry import (
    CALOGAN,
    GEV,
    KEV,
    THRESHOLD_KEV,
    split_layers,
    voxel_centres,
)
from caloflow.transforms import encode_incident_energy

#: The brightest voxels kept per layer (1st .. 5th), as in the reference classifier.
N_BRIGHTEST = 5


@dataclass(frozen=True)
class FeatureInfo:
    """How a feature is shown: axis label (with unit), log-scaled x axis, scale factor for plotting."""

    label: str
    log_x: bool = False
    #: multiply the feature by this for the figure axis (MeV -> GeV where the paper shows GeV)
    plot_scale: float = 1.0
    group: str = "flow1"
    #: integer-valued feature (one histogram bin per integer)
    discrete: bool = False


def _brightest_name(rank: int, layer: int) -> str:
    """Feature name of the ``rank``-th brightest voxel (1-based) of ``layer``: brightest0, second0, brightest30 ..."""
    return {1: f"brightest{layer}", 2: f"second{layer}"}.get(rank, f"brightest{rank}{layer}")


_ORDINAL = {1: "", 2: "2nd ", 3: "3rd ", 4: "4th ", 5: "5th "}


def _layer_infos() -> dict[str, FeatureInfo]:
    infos = {}
    for k in range(CALOGAN.n_layers):
        for rank in range(1, N_BRIGHTEST + 1):
            infos[_brightest_name(rank, k)] = FeatureInfo(
                f"{_ORDINAL[rank]}brightest voxel / $E_{k}$ (layer {k})", group="voxels"
            )
        infos[f"E_ratio{k}"] = FeatureInfo(
            f"$E_{{\\mathrm{{ratio}},{k}}}$ (layer {k})", group="voxels"
        )
        infos[f"sparsity{k}"] = FeatureInfo(f"sparsity (layer {k})", group="voxels")
        infos[f"eta_centroid{k}"] = FeatureInfo(
            f"$\\langle\\eta_{k}\\rangle$ [mm]", group="centroids"
        )
        infos[f"phi_centroid{k}"] = FeatureInfo(
            f"$\\langle\\phi_{k}\\rangle$ [mm]", group="centroids"
        )
        infos[f"eta_width{k}"] = FeatureInfo(f"$\\sigma_{{\\eta,{k}}}$ [mm]", group="widths")
        infos[f"phi_width{k}"] = FeatureInfo(f"$\\sigma_{{\\phi,{k}}}$ [mm]", group="widths")
    return infos


#: Layer pairs (deeper, shallower) of the centroid differences <x_j> - <x_i>.
CENTROID_DIFF_PAIRS: tuple[tuple[int, int], ...] = ((1, 0), (2, 1))


def _centroid_diff_infos() -> dict[str, FeatureInfo]:
    return {
        f"{axis}_centroid_diff_{j}{i}": FeatureInfo(
            f"$\\langle\\{axis}_{j}\\rangle - \\langle\\{axis}_{i}\\rangle$ [mm]", group="centroids"
        )
        for axis in ("eta", "phi")
        for j, i in CENTROID_DIFF_PAIRS
    }


#: Every feature, in the order of the paper's figures, with its plotting conventions.
#: ``E_hat_over_E_inc`` is only computed when the incident energy is known.
FEATURES: dict[str, FeatureInfo] = {
    **{
        f"E{k}": FeatureInfo(f"$E_{k}$ [GeV]", log_x=True, plot_scale=1e-3)
        for k in range(CALOGAN.n_layers)
    },
    "E_hat": FeatureInfo("$\\hat{E}_{\\mathrm{tot}}$ [GeV]", log_x=True, plot_scale=1e-3),
    **{
        f"E{k}_frac": FeatureInfo(f"$E_{k}/\\hat{{E}}_{{\\mathrm{{tot}}}}$", log_x=True)
        for k in range(CALOGAN.n_layers)
    },
    "l_d": FeatureInfo("$l_d$ [GeV]", log_x=True, plot_scale=1e-3),
    "s_d": FeatureInfo("shower depth $s_d$"),
    "sigma_sd": FeatureInfo("shower depth width $\\sigma_{s_d}$"),
    "deepest_layer": FeatureInfo("deepest layer with energy", discrete=True),
    "E_hat_over_E_inc": FeatureInfo("$\\hat{E}_{\\mathrm{tot}}/E_{\\mathrm{inc}}$"),
    **_layer_infos(),
    **_centroid_diff_infos(),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
#: Features that need the incident energy (absent from :func:`compute_features` without it).
INCIDENT_FEATURES: tuple[str, ...] = ("E_hat_over_E_inc",)

#: Units of the classifier inputs of the reference code: energies in 100 GeV, lengths in 100 mm.
HIGH_LEVEL_ENERGY_UNIT_MEV = 100 * GEV
HIGH_LEVEL_LENGTH_UNIT_MM = 100.0
#: Offset inside the logarithms of the classifier inputs (1e-8 x 100 GeV = 1 keV).
HIGH_LEVEL_LOG_OFFSET = 1e-8

#: Names of the 41 inputs of :func:`high_level_inputs`, in order.
HIGH_LEVEL_INPUTS: tuple[str, ...] = (
    *(f"log10_E{k}" for k in range(CALOGAN.n_layers)),
    "log10_E_hat",
    *(f"log10_E{k}_frac" for k in range(CALOGAN.n_layers)),
    "log10_l_d",
    *(f"log10_phi_width{k}" for k in range(CALOGAN.n_layers)),
    "s_d",
    "sigma_sd",
    *(
        f"{_brightest_name(rank, k)}_x10"
        for k in range(CALOGAN.n_layers)
        for rank in range(1, N_BRIGHTEST + 1)
    ),
    *(f"E_ratio{k}" for k in range(CALOGAN.n_layers)),
    *(f"sparsity{k}" for k in range(CALOGAN.n_layers)),
    *(f"{axis}_centroid{k}_100mm" for k in range(CALOGAN.n_layers) for axis in ("phi", "eta")),
    "log10_E_inc_over_10GeV",
)
assert len(HIGH_LEVEL_INPUTS) == 41


# ----------------------------------------------------------------------------------------------
# The feature math, once (torch, float64, differentiable where it makes sense)
# ----------------------------------------------------------------------------------------------


def threshold_voxels(voxels: Tensor, threshold_kev: float = THRESHOLD_KEV) -> Tensor:
    """``voxels`` (MeV) with every voxel below ``threshold_kev`` set to zero (same dtype; gradient 1 where kept)."""
    return torch.where(
        voxels < threshold_kev * KEV,
        torch.zeros((), dtype=voxels.dtype, device=voxels.device),
        voxels,
    )


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den with den == 0 replaced by 1: finite values and finite gradients; mask the result."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _sqrt_clipped(x: Tensor) -> Tensor:
    """sqrt(max(x, 0)) with a finite gradient everywhere (0 where x <= 0)."""
    positive = x > 0
    return torch.where(
        positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x)
    )


def _shower_quantities(v: Tensor, fill: float) -> dict[str, Tensor]:
    """Every feature of :data:`FEATURE_NAMES` but ``E_hat_over_E_inc`` from thresholded voxels.

    Args:
        v: (N, V) float64 voxels in MeV, already thresholded (every voxel >= 0).
        fill: the value of an undefined quantity (empty layer or shower): NaN for the
            histograms, 0 for the classifier inputs.

    Returns:
        name -> (N,) float64 tensor in the units of :func:`compute_features` (MeV, mm).
    """
    out: dict[str, Tensor] = {}

    def masked(value: Tensor, defined: Tensor) -> Tensor:
        return torch.where(defined, value, torch.full_like(value, fill))

    layers = split_layers(v)
    energies = [layer.sum(dim=(1, 2)) for layer in layers]
    for k, e in enumerate(energies):
        out[f"E{k}"] = e
    e_hat = energies[0] + energies[1] + energies[2]
    out["E_hat"] = e_hat
    shower = e_hat > 0
    for k, e in enumerate(energies):
        out[f"E{k}_frac"] = masked(_divide(e, e_hat), shower)
    out["l_d"] = energies[1] + 2 * energies[2]
    s_d = _divide(out["l_d"], e_hat)
    second_moment = _divide(energies[1] + 4 * energies[2], e_hat)
    out["s_d"] = masked(s_d, shower)
    # the variance is >= 0 analytically; rounding can make it a tiny negative number
    out["sigma_sd"] = masked(_sqrt_clipped(second_moment - s_d**2), shower)

    has_energy = [e > 0 for e in energies]
    # index of the deepest layer with energy: -1 for none, then undefined (fill)
    index = torch.stack(
        [torch.where(h, float(k), -1.0) for k, h in enumerate(has_energy)], dim=1
    ).to(v.dtype)
    out["deepest_layer"] = masked(index.max(dim=1).values, shower)

    raw_centroids: dict[str, Tensor] = {}
    for k, (layer, e, defined) in enumerate(zip(layers, energies, has_energy)):
        flat = layer.reshape(len(layer), -1)
        top = torch.topk(flat, N_BRIGHTEST, dim=1).values  # largest first
        for rank in range(1, N_BRIGHTEST + 1):
            out[_brightest_name(rank, k)] = masked(_divide(top[:, rank - 1], e), defined)
        pair = top[:, 0] + top[:, 1]
        out[f"E_ratio{k}"] = masked(_divide(top[:, 0] - top[:, 1], pair), pair > 0)
        out[f"sparsity{k}"] = (flat > 0).to(v.dtype).mean(dim=1)
        phi, eta = (torch.as_tensor(c, dtype=v.dtype, device=v.device) for c in voxel_centres(k))
        e_phi = layer.sum(dim=2)  # (N, n_phi): energy per phi row
        e_eta = layer.sum(dim=1)  # (N, n_eta)
        for name, centres, profile in (("eta", eta, e_eta), ("phi", phi, e_phi)):
            mean = _divide(profile @ centres, e)
            mean_sq = _divide(profile @ centres**2, e)
            raw_centroids[f"{name}{k}"] = mean
            out[f"{name}_centroid{k}"] = masked(mean, defined)
            out[f"{name}_width{k}"] = masked(_sqrt_clipped(mean_sq - mean**2), defined)
    for axis in ("eta", "phi"):
        for j, i in CENTROID_DIFF_PAIRS:
            diff = raw_centroids[f"{axis}{j}"] - raw_centroids[f"{axis}{i}"]
            out[f"{axis}_centroid_diff_{j}{i}"] = masked(diff, has_energy[j] & has_energy[i])
    return out


def energy_response(e_hat_mev, incident_gev):
    """E_hat / E_inc (dimensionless; E_hat in MeV, E_inc in GeV), NaN where E_inc <= 0. numpy or torch."""
    if isinstance(e_hat_mev, Tensor):
        inc = (
            torch.as_tensor(incident_gev, dtype=e_hat_mev.dtype, device=e_hat_mev.device).reshape(
                -1
            )
            * GEV
        )
        return torch.where(
            inc > 0, _divide(e_hat_mev, inc), torch.full_like(e_hat_mev, float("nan"))
        )
    inc = np.asarray(incident_gev, dtype=np.float64).reshape(-1) * GEV
    out = np.full(np.broadcast(np.asarray(e_hat_mev), inc).shape, np.nan)
    np.divide(e_hat_mev, inc, out=out, where=inc > 0)
    return out


def _check_voxels(shape, exc=ValueError) -> None:
    if len(shape) != 2 or shape[1] != CALOGAN.n_voxels:
        raise exc(f"voxels must have shape (N, {CALOGAN.n_voxels}), got {tuple(shape)}")


def _check_incident(incident: Tensor | np.ndarray, n: int) -> None:
    if incident.shape[0] != n or incident.ndim != 1:
        raise ValueError(
            f"incident energies must have shape ({n},) or ({n}, 1), got {tuple(incident.shape)}"
        )


# ----------------------------------------------------------------------------------------------
# Histogram features (numpy) and classifier inputs (torch)
# ----------------------------------------------------------------------------------------------


def apply_threshold(voxels: np.ndarray, threshold_kev: float = THRESHOLD_KEV) -> np.ndarray:
    """Copy of ``voxels`` (MeV) with every voxel below ``threshold_kev`` set to zero (float64)."""
    return threshold_voxels(
        torch.from_numpy(np.array(voxels, dtype=np.float64)), threshold_kev
    ).numpy()


def compute_features(
    voxels: np.ndarray, threshold_kev: float = THRESHOLD_KEV, incident_gev: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """All features of section 5.2-5.3 (and a few more the reference plots) for each shower.

    Args:
        voxels: (N, V) deposited energies in MeV (CaloGAN flattening order).
        threshold_kev: voxels below this are zeroed first (10 keV, section 4.3).
        incident_gev: (N,) incident energies in GeV; without them ``E_hat_over_E_inc`` is left out.

    Returns:
        name -> (N,) float64 array, names as :data:`FEATURE_NAMES` (in that order):
        ``E0 E1 E2 E_hat`` (MeV), ``E{k}_frac`` = E_k / E_hat, ``l_d`` = E1 + 2 E2 (MeV),
        ``s_d`` = l_d / E_hat, ``sigma_sd`` = sqrt((E1 + 4 E2) / E_hat - s_d^2),
        ``deepest_layer`` (0, 1 or 2: the deepest layer with energy above the cut; NaN for an
        empty shower), ``E_hat_over_E_inc`` = E_hat / E_inc (only with ``incident_gev``), and per
        layer k: ``brightest{k}``, ``second{k}``, ``brightest3{k}``, ``brightest4{k}``,
        ``brightest5{k}`` (1st to 5th largest voxel / E_k), ``E_ratio{k}`` (eq. 5.1),
        ``sparsity{k}`` (fraction of voxels > 0), ``eta_centroid{k}``, ``phi_centroid{k}``
        (eq. 5.2, mm), ``eta_width{k}``, ``phi_width{k}`` (eq. 5.3, mm); then the centroid
        differences ``{eta,phi}_centroid_diff_10`` = <x_1> - <x_0> and ``..._21`` = <x_2> - <x_1>
        (mm). Undefined values (empty layer or shower) are NaN, see the module docstring.
    """
    voxels = np.asarray(voxels)
    _check_voxels(voxels.shape)
    v = threshold_voxels(torch.from_numpy(np.array(voxels, dtype=np.float64)), threshold_kev)
    with torch.no_grad():
        quantities = _shower_quantities(v, fill=float("nan"))
    out = {name: t.numpy() for name, t in quantities.items()}
    if incident_gev is not None:
        incident = np.asarray(incident_gev, dtype=np.float64)
        incident = (
            incident.reshape(-1) if incident.ndim == 2 and incident.shape[1] == 1 else incident
        )
        _check_incident(incident, len(voxels))
        out["E_hat_over_E_inc"] = energy_response(out["E_hat"], incident)
    return {name: out[name] for name in FEATURE_NAMES if name in out}


def high_level_inputs(
    voxels: Tensor, incident_gev: Tensor, threshold_kev: float = THRESHOLD_KEV
) -> Tensor:
    """The 41 inputs of the high-level-feature classifier, as the published CaloFlow code builds them.

    Computed in float64 after the 10 keV cut (voxels below ``threshold_kev`` set to 0), on the
    device of ``voxels``, with plain torch ops: differentiable with respect to the voxels (the
    sparsities and the choice of the brightest voxels are piecewise constant; their gradient is 0
    resp. flows to the chosen voxels).

    Args:
        voxels: (N, V) deposited energies in MeV (tensor or array).
        incident_gev: (N,) or (N, 1) incident energies in GeV.
        threshold_kev: the voxel cut (10 keV, section 4.3).

    Returns:
        (N, 41) float32, columns named by :data:`HIGH_LEVEL_INPUTS`, in this order:

        * 0-10: log10(x + 1e-8) of E0, E1, E2, E_hat (energies in units of 100 GeV, so the
            offset is 1 keV), E0/E_hat, E1/E_hat, E2/E_hat, l_d = E1 + 2 E2 (100 GeV) and the phi
            width of layers 0, 1, 2 (in units of 100 mm);
        * 11-12: s_d = l_d / E_hat and sigma_sd = sqrt((E1 + 4 E2)/E_hat - s_d^2);
        * 13-27: 10 x the 1st..5th brightest voxel / E_k: layer 0 (1st..5th), layer 1, layer 2;
        * 28-30: E_ratio_k = (I1 - I2)/(I1 + I2) of the two brightest voxels, k = 0, 1, 2;
        * 31-33: sparsity_k, the fraction of the layer's voxels above the cut;
        * 34-39: centroids in units of 100 mm: phi_0, eta_0, phi_1, eta_1, phi_2, eta_2;
        * 40: log10(E_inc / 10 GeV), eq. (4.4).

        Empty layer or shower: every undefined quantity (ratios to an empty layer's or shower's
        energy, an empty layer's widths and centroids, E_ratio) is set to 0 *before* the
        transformation, so e.g. an empty layer gives log10 E_k = log10 phi-width = -8 and
        brightest, E_ratio, sparsity and centroids 0. Every input is finite for finite voxels.
    """
    v = torch.as_tensor(voxels)
    _check_voxels(v.shape)
    v = v.to(torch.float64)
    incident = torch.as_tensor(incident_gev, device=v.device).to(torch.float64)
    incident = incident.reshape(-1) if incident.ndim == 2 and incident.shape[1] == 1 else incident
    _check_incident(incident, v.shape[0])
    q = _shower_quantities(threshold_voxels(v, threshold_kev), fill=0.0)
    e_unit, l_unit = HIGH_LEVEL_ENERGY_UNIT_MEV, HIGH_LEVEL_LENGTH_UNIT_MM
    logged = [q[f"E{k}"] / e_unit for k in range(CALOGAN.n_layers)] + [q["E_hat"] / e_unit]
    logged += [q[f"E{k}_frac"] for k in range(CALOGAN.n_layers)] + [q["l_d"] / e_unit]
    logged += [q[f"phi_width{k}"] / l_unit for k in range(CALOGAN.n_layers)]
    columns = [torch.log10(x + HIGH_LEVEL_LOG_OFFSET) for x in logged]
    columns += [q["s_d"], q["sigma_sd"]]
    columns += [
        10.0 * q[_brightest_name(rank, k)]
        for k in range(CALOGAN.n_layers)
        for rank in range(1, N_BRIGHTEST + 1)
    ]
    columns += [q[f"E_ratio{k}"] for k in range(CALOGAN.n_layers)]
    columns += [q[f"sparsity{k}"] for k in range(CALOGAN.n_layers)]
    columns += [
        q[f"{axis}_centroid{k}"] / l_unit
        for k in range(CALOGAN.n_layers)
        for axis in ("phi", "eta")
    ]
    x = torch.stack(columns, dim=1)
    x = torch.cat([x, encode_incident_energy(incident)], dim=1)
    return x.to(torch.float32)


def shower_features(
    source: Showers | np.ndarray | str | Path,
    threshold_kev: float = THRESHOLD_KEV,
    max_showers: int | None = None,
) -> dict[str, np.ndarray]:
    """:func:`compute_features` of a :class:`Showers`, an (N, V) array in MeV or a CaloGAN file.

    Showers and files carry the incident energies, so their features include ``E_hat_over_E_inc``.
    """
    if isinstance(source, (str, Path)):
        source = read_showers(source, stop=max_showers)
    voxels = source.voxels if isinstance(source, Showers) else np.asarray(source)
    incident = source.energy if isinstance(source, Showers) else None
    if max_showers is not None:
        voxels = voxels[:max_showers]
        incident = incident[:max_showers] if incident is not None else None
    _check_voxels(voxels.shape, DataFormatError)
    return compute_features(voxels, threshold_kev, incident_gev=incident)


def summarize(values: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Mean and standard deviation over the finite values (NaN where there are none).

    With ``weights`` (one per value) the weighted mean and standard deviation, sum w x / sum w and
    sqrt(sum w (x - mean)^2 / sum w), over the finite values; ``n`` counts them, ``ess`` is the
    effective sample size (sum w)^2 / sum w^2 of their weights.
    """
    if weights is not None:
        return _weighted_summary(values, weights)
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def _weighted_summary(values: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != v.shape:
        raise ValueError(f"{len(w)} weights for {len(v)} values")
    keep = np.isfinite(v)
    v, w = v[keep], w[keep]
    total = float(w.sum())
    if total <= 0:
        return {"mean": float("nan"), "std": float("nan"), "n": int(v.size), "ess": 0.0}
    mean = float(np.sum(w * v) / total)
    std = float(np.sqrt(np.sum(w * (v - mean) ** 2) / total))
    return {"mean": mean, "std": std, "n": int(v.size), "ess": float(total**2 / np.sum(w * w))}


__all__ = [
    "CENTROID_DIFF_PAIRS",
    "FEATURES",
    "FEATURE_NAMES",
    "FeatureInfo",
    "HIGH_LEVEL_INPUTS",
    "INCIDENT_FEATURES",
    "apply_threshold",
    "compute_features",
    "energy_response",
    "high_level_inputs",
    "shower_features",
    "summarize",
    "threshold_voxels",
]
