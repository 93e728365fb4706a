"""Physics features of showers: the quantities of the CaloFlow paper sections 5.2 and 5.3.

Every feature is computed per shower, vectorised over an (N, 504) voxel array, after the paper's
10 keV cut (voxels below the threshold are set to zero first, as in the post-processing of
section 4.3, so that real and generated showers are judged alike).

Units: energies (``E0 E1 E2 E_hat l_d``) are in MeV; centroids and widths in mm, measured from
the voxel centres of :func:`caloflow.data.geometry.voxel_centres`; everything else is a ratio.

Empty layers: a layer without any voxel above the threshold has no brightest voxel, centroid or
width. Those features (``brightest{k} second{k} E_ratio{k} eta/phi_centroid{k} eta/phi_width{k}``)
are NaN for such a shower, as are ``E{k}_frac s_d sigma_sd`` when the whole shower is empty;
NaNs are left out of histograms, means and separation powers. ``sparsity{k}`` of an empty layer
is 0 and the layer energies are 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caloflow.data.geometry import KEV, N_LAYERS, N_VOXELS, THRESHOLD_KEV, split_layers, voxel_centres
from caloflow.data.io import Showers, read_showers
from caloflow.errors import DataFormatError


@dataclass(frozen=True)
class FeatureInfo:
    """How a feature is shown: axis label (with unit), log-scaled x axis, scale factor for plotting."""

    label: str
    log_x: bool = False
    #: multiply the feature by this for the figure axis (MeV -> GeV where the paper shows GeV)
    plot_scale: float = 1.0
    group: str = "flow1"


def _layer_infos() -> dict[str, FeatureInfo]:
    infos = {}
    for k in range(N_LAYERS):
        infos[f"brightest{k}"] = FeatureInfo(f"brightest voxel / $E_{k}$ (layer {k})", group="voxels")
        infos[f"second{k}"] = FeatureInfo(f"2nd brightest voxel / $E_{k}$ (layer {k})", group="voxels")
        infos[f"E_ratio{k}"] = FeatureInfo(f"$E_{{\\mathrm{{ratio}},{k}}}$ (layer {k})", group="voxels")
        infos[f"sparsity{k}"] = FeatureInfo(f"sparsity (layer {k})", group="voxels")
        infos[f"eta_centroid{k}"] = FeatureInfo(f"$\\langle\\eta_{k}\\rangle$ [mm]", group="centroids")
        infos[f"phi_centroid{k}"] = FeatureInfo(f"$\\langle\\phi_{k}\\rangle$ [mm]", group="centroids")
        infos[f"eta_width{k}"] = FeatureInfo(f"$\\sigma_{{\\eta,{k}}}$ [mm]", group="widths")
        infos[f"phi_width{k}"] = FeatureInfo(f"$\\sigma_{{\\phi,{k}}}$ [mm]", group="widths")
    return infos


#: Every feature, in the order of the paper's figures, with its plotting conventions.
FEATURES: dict[str, FeatureInfo] = {
    **{f"E{k}": FeatureInfo(f"$E_{k}$ [GeV]", log_x=True, plot_scale=1e-3) for k in range(N_LAYERS)},
    "E_hat": FeatureInfo("$\\hat{E}_{\\mathrm{tot}}$ [GeV]", log_x=True, plot_scale=1e-3),
    **{f"E{k}_frac": FeatureInfo(f"$E_{k}/\\hat{{E}}_{{\\mathrm{{tot}}}}$", log_x=True) for k in range(N_LAYERS)},
    "l_d": FeatureInfo("$l_d$ [GeV]", log_x=True, plot_scale=1e-3),
    "s_d": FeatureInfo("shower depth $s_d$"),
    "sigma_sd": FeatureInfo("shower depth width $\\sigma_{s_d}$"),
    **_layer_infos(),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (undefined for an empty layer or shower)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def apply_threshold(voxels: np.ndarray, threshold_kev: float = THRESHOLD_KEV) -> np.ndarray:
    """Copy of ``voxels`` (MeV) with every voxel below ``threshold_kev`` set to zero (float64)."""
    v = np.array(voxels, dtype=np.float64)
    v[v < threshold_kev * KEV] = 0.0
    return v


def compute_features(voxels: np.ndarray, threshold_kev: float = THRESHOLD_KEV) -> dict[str, np.ndarray]:
    """All features of section 5.2-5.3 for each shower.

    Args:
        voxels: (N, 504) deposited energies in MeV (CaloGAN flattening order).
        threshold_kev: voxels below this are zeroed first (10 keV, section 4.3).

    Returns:
        name -> (N,) float64 array, names as :data:`FEATURE_NAMES`:
        ``E0 E1 E2 E_hat`` (MeV), ``E{k}_frac`` = E_k / E_hat, ``l_d`` = E1 + 2 E2 (MeV),
        ``s_d`` = l_d / E_hat, ``sigma_sd`` = sqrt((E1 + 4 E2) / E_hat - s_d^2) and per layer k:
        ``brightest{k}``, ``second{k}`` (largest and second largest voxel / E_k),
        ``E_ratio{k}`` (eq. 5.1), ``sparsity{k}`` (fraction of voxels > 0), ``eta_centroid{k}``,
        ``phi_centroid{k}`` (eq. 5.2, mm), ``eta_width{k}``, ``phi_width{k}`` (eq. 5.3, mm).
    """
    voxels = np.asarray(voxels)
    if voxels.ndim != 2 or voxels.shape[1] != N_VOXELS:
        raise ValueError(f"voxels must have shape (N, {N_VOXELS}), got {voxels.shape}")
    layers = split_layers(apply_threshold(voxels, threshold_kev))
    out: dict[str, np.ndarray] = {}
    energies = [layer.sum(axis=(1, 2)) for layer in layers]
    for k, e in enumerate(energies):
        out[f"E{k}"] = e
    e_hat = energies[0] + energies[1] + energies[2]
    out["E_hat"] = e_hat
    for k, e in enumerate(energies):
        out[f"E{k}_frac"] = _ratio(e, e_hat)
    out["l_d"] = energies[1] + 2 * energies[2]
    out["s_d"] = _ratio(out["l_d"], e_hat)
    second_moment = _ratio(energies[1] + 4 * energies[2], e_hat)
    # the variance is >= 0 analytically; rounding can make it a tiny negative number
    out["sigma_sd"] = np.sqrt(np.clip(second_moment - out["s_d"] ** 2, 0, None))

    for k, (layer, e) in enumerate(zip(layers, energies)):
        flat = layer.reshape(len(layer), -1)
        top2 = -np.partition(-flat, 1, axis=1)[:, :2]  # largest, second largest
        out[f"brightest{k}"] = _ratio(top2[:, 0], e)
        out[f"second{k}"] = _ratio(top2[:, 1], e)
        out[f"E_ratio{k}"] = _ratio(top2[:, 0] - top2[:, 1], top2[:, 0] + top2[:, 1])
        out[f"sparsity{k}"] = (flat > 0).mean(axis=1)
        phi, eta = voxel_centres(k)  # layer arrays are (phi, eta)
        e_phi = layer.sum(axis=2)  # (N, n_phi): energy per phi row
        e_eta = layer.sum(axis=1)  # (N, n_eta)
        for name, centres, profile in (("eta", eta, e_eta), ("phi", phi, e_phi)):
            mean = _ratio(profile @ centres, e)
            mean_sq = _ratio(profile @ centres**2, e)
            out[f"{name}_centroid{k}"] = mean
            out[f"{name}_width{k}"] = np.sqrt(np.clip(mean_sq - mean**2, 0, None))
    return {name: out[name] for name in FEATURE_NAMES}


def shower_features(source: Showers | np.ndarray | str | Path, threshold_kev: float = THRESHOLD_KEV,
                    max_showers: int | None = None) -> dict[str, np.ndarray]:
    """:func:`compute_features` of a :class:`Showers`, an (N, 504) array in MeV or a CaloGAN file."""
    if isinstance(source, (str, Path)):
        source = read_showers(source, stop=max_showers)
    voxels = source.voxels if isinstance(source, Showers) else np.asarray(source)
    if max_showers is not None:
        voxels = voxels[:max_showers]
    if voxels.ndim != 2 or voxels.shape[1] != N_VOXELS:
        raise DataFormatError(f"voxels have shape {voxels.shape}, expected (N, {N_VOXELS})")
    return compute_features(voxels, threshold_kev)


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation over the finite values (NaN where there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "FeatureInfo",
    "apply_threshold",
    "compute_features",
    "shower_features",
    "summarize",
]
