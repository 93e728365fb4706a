"""Figures of the CaloChallenge-kind evaluation: average showers per layer as polar images, the
high-level features' histograms with ratio panels, the voxel-energy distribution, and E_tot/E_inc
at each incident energy of dataset 1.

Histograms use the bins of :mod:`caloflow.evaluate.challenge_hist` (so the figures show what the
separation powers measure), normalised to unit sum; the reference is the filled grey histogram,
every sample a line, the ratio sample / reference below. Written as PNG and PDF, atomically.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from caloflow.evaluate import challenge_hist as ch  # noqa: E402
from caloflow.evaluate.figures import REFERENCE_STYLE, SAMPLE_COLORS, save_figure  # noqa: E402
from caloflow.geometry import Geometry  # noqa: E402
from caloflow.radial_features import apply_min_energy, feature_names  # noqa: E402

#: Feature groups, one figure each: name -> (title, feature stems: the name without its layer id).
FEATURE_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "challenge_energies": ("Energies", ("E_tot", "E")),
    "challenge_centres": ("Centres of energy in eta and phi", ("EC_eta", "EC_phi")),
    "challenge_widths": ("Widths in eta and phi", ("width_eta", "width_phi")),
    "challenge_radial": ("Radial centres of energy and widths", ("EC_r", "width_r")),
    "challenge_sparsity": ("Sparsity (fraction of empty voxels)", ("sparsity",)),
}


#: Angular steps per polar image (alpha bins are drawn as this many wedges in all).
ARC_STEPS = 120


def feature_label(name: str) -> str:
    """Axis label of a feature of :func:`caloflow.radial_features.feature_names`, with its unit."""
    if name == "E_tot_over_E_inc":
        return r"$E_{\mathrm{tot}}/E_{\mathrm{inc}}$"
    if name == "E_tot":
        return r"$E_{\mathrm{tot}}$ [MeV]"
    stem, layer = name.rsplit("_", 1)
    text = {
        "E": f"$E$ layer {layer} [MeV]",
        "EC_eta": rf"$\langle\eta\rangle$ layer {layer} [mm]",
        "EC_phi": rf"$\langle\phi\rangle$ layer {layer} [mm]",
        "width_eta": rf"$\sigma_\eta$ layer {layer} [mm]",
        "width_phi": rf"$\sigma_\phi$ layer {layer} [mm]",
        "EC_r": rf"$\langle r\rangle$ layer {layer} [mm]",
        "width_r": rf"$\sigma_r$ layer {layer} [mm]",
        "sparsity": f"sparsity layer {layer}",
    }
    return text.get(stem, name)


def feature_stem(name: str) -> str:
    """A feature's name without its layer id (``EC_eta_12`` -> ``EC_eta``; ``E_tot`` stays)."""
    stem, _, last = name.rpartition("_")
    return stem if last.isdigit() else name


def _histogram_panel(ax, rax, edges, reference, samples: dict, label: str, log_x: bool) -> None:
    """Unit-sum histograms on ``edges``: the reference filled, each sample a line, ratios below."""
    ref = np.histogram(np.asarray(reference, np.float64).ravel(), edges)[0].astype(np.float64)
    ref = ref / ref.sum() if ref.sum() > 0 else ref
    ax.stairs(ref, edges, fill=True, label="Reference", **REFERENCE_STYLE)
    for color, (name, values) in zip(SAMPLE_COLORS * 10, samples.items()):
        h = np.histogram(np.asarray(values, np.float64).ravel(), edges)[0].astype(np.float64)
        h = h / h.sum() if h.sum() > 0 else h
        ax.stairs(h, edges, color=color, lw=1.4, label=name)
        with np.errstate(divide="ignore", invalid="ignore"):
            rax.stairs(np.where(ref > 0, h / ref, np.nan), edges, color=color, baseline=None)
    ax.set_yscale("log")
    ax.set_ylabel("fraction")
    ax.tick_params(labelbottom=False)
    ax.legend(fontsize=7, frameon=False)
    if log_x:
        ax.set_xscale("log")
    rax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel("ratio", fontsize=8)
    rax.set_xlabel(label)


def _panel_grid(n: int, title: str):
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = plt.figure(figsize=(4.2 * cols, 3.8 * rows))
    outer = fig.add_gridspec(rows, cols, hspace=0.35, wspace=0.3)
    fig.suptitle(title)
    for k in range(n):
        cell = outer[k // cols, k % cols].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        ax = fig.add_subplot(cell[0])
        yield fig, ax, fig.add_subplot(cell[1], sharex=ax)


def feature_figures(
    reference: dict[str, np.ndarray],
    samples: dict[str, dict[str, np.ndarray]],
    geometry: Geometry,
    min_energy_mev: float,
    out_dir: str | Path,
) -> dict[str, list[Path]]:
    """One figure per :data:`FEATURE_GROUPS` entry (features without bins are left out)."""
    names = [n for n in feature_names(geometry) if n in reference]
    out = {}
    for fig_name, (title, prefixes) in FEATURE_GROUPS.items():
        members = []
        for name in (n for n in names if feature_stem(n) in prefixes):
            edges = ch.feature_edges(name, geometry, reference[name], min_energy_mev)
            if edges is not None:
                members.append((name, edges))
        if fig_name == "challenge_energies" and "E_tot_over_E_inc" in reference:
            members.append(
                ("E_tot_over_E_inc", ch.feature_edges("E_tot_over_E_inc", geometry, [], 0))
            )
        if not members:
            continue
        fig = None
        for (fig, ax, rax), (name, edges) in zip(_panel_grid(len(members), title), members):
            log_x = name.startswith("E_") and name != "E_tot_over_E_inc"
            sample_values = {n: s[name] for n, s in samples.items() if name in s}
            _histogram_panel(
                ax, rax, edges, reference[name], sample_values, feature_label(name), log_x
            )
        out[fig_name] = save_figure(fig, Path(out_dir) / fig_name)
    return out


def voxel_energy_figure(
    reference_voxels: np.ndarray,
    samples: dict[str, np.ndarray],
    min_energy_mev: float,
    out_dir: str | Path,
) -> list[Path]:
    """The energy distribution of all voxels (MeV, after the threshold), with ratio panel."""
    edges = ch.voxel_edges(reference_voxels, min_energy_mev)
    if edges is None:  # no reference voxel above the threshold: nothing to draw against
        edges = np.logspace(np.log10(min_energy_mev), np.log10(min_energy_mev) + 1, 2)
    ((fig, ax, rax),) = list(_panel_grid(1, "Voxel energies"))
    _histogram_panel(ax, rax, edges, reference_voxels, samples, "voxel energy [MeV]", True)
    return save_figure(fig, Path(out_dir) / "challenge_voxel_energies")


def energy_response_figure(
    reference_response: np.ndarray,
    reference_incident_mev: np.ndarray,
    samples: dict[str, tuple[np.ndarray, np.ndarray]],
    geometry: Geometry,
    out_dir: str | Path,
) -> list[Path]:
    """E_tot/E_inc at each incident energy 2^k MeV of dataset 1 (15 panels, without ratios).

    ``samples``: name -> (E_tot/E_inc, incident energy in MeV) per shower.
    """
    fig, axes = plt.subplots(4, 4, figsize=(14, 12))
    ref_k = ch.energy_exponent(reference_incident_mev)
    gen_k = {n: ch.energy_exponent(e) for n, (_, e) in samples.items()}
    for ax, k in zip(axes.flat, ch.DATASET1_ENERGY_EXPONENTS):
        edges = ch.energy_edges(geometry, k)
        ref = np.histogram(np.asarray(reference_response)[ref_k == k], edges)[0]
        ax.stairs(ref / max(ref.sum(), 1), edges, fill=True, label="Reference", **REFERENCE_STYLE)
        for color, (name, (resp, _)) in zip(SAMPLE_COLORS * 10, samples.items()):
            h = np.histogram(np.asarray(resp)[gen_k[name] == k], edges)[0]
            ax.stairs(h / max(h.sum(), 1), edges, color=color, lw=1.4, label=name)
        ax.set_title(f"$E_{{inc}}$ = $2^{{{k}}}$ MeV", fontsize=9)
        ax.set_xlabel(r"$E_{\mathrm{tot}}/E_{\mathrm{inc}}$", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].axis("off")
    axes.flat[-1].legend(handles, labels, loc="center")
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / "challenge_energy_response")


def average_polar_images(
    reference_voxels: np.ndarray,
    samples: dict[str, np.ndarray],
    geometry: Geometry,
    min_energy_mev: float,
    out_dir: str | Path,
) -> list[Path]:
    """Mean energy per voxel (MeV, log colours shared per layer) as polar images: rows reference and
    samples, columns layers; angle alpha, radius ln(1 + r / mm) so that the small inner bins show."""
    import torch
    from matplotlib.colors import LogNorm

    rows = {"Reference": reference_voxels, **samples}
    means = {
        name: apply_min_energy(torch.as_tensor(np.asarray(v, np.float64)), min_energy_mev)
        .mean(0)
        .numpy()
        for name, v in rows.items()
    }
    n_layers = geometry.n_layers
    fig, axes = plt.subplots(
        len(rows), n_layers, figsize=(2.6 * n_layers, 2.8 * len(rows)),
        subplot_kw={"projection": "polar"}, squeeze=False,
    )  # fmt: skip
    for k, (layer, s) in enumerate(zip(geometry.layers, geometry.layer_slices)):
        positive = np.concatenate([m[s][m[s] > 0] for m in means.values()] + [np.array([1e-3])])
        top = max(positive.max(), 1e-2)
        # six decades below the brightest voxel are enough to see the shape
        norm = LogNorm(vmin=max(positive.min(), top * 1e-6), vmax=top)
        # each alpha bin drawn as several thin wedges: polar quads have straight sides, and a layer
        # with one alpha bin would otherwise be a single degenerate quad from -pi to pi
        sub = -(-ARC_STEPS // layer.shape[0])
        alpha = np.linspace(layer.row_edges[0], layer.row_edges[-1], layer.shape[0] * sub + 1)
        theta, radius = np.meshgrid(alpha, np.log1p(layer.col_edges), indexing="ij")
        for i, (name, mean) in enumerate(means.items()):
            ax = axes[i, k]
            image = np.repeat(mean[s].reshape(layer.shape), sub, axis=0)
            image = np.ma.masked_less_equal(image, 0)
            mesh = ax.pcolormesh(theta, radius, image, norm=norm, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, layer {layer.id}", fontsize=8)
        fig.colorbar(mesh, ax=axes[:, k].tolist(), shrink=0.6, label="mean energy [MeV]")
    return save_figure(fig, Path(out_dir) / "challenge_average_showers")


__all__ = [
    "FEATURE_GROUPS",
    "ARC_STEPS",
    "feature_label",
    "feature_stem",
    "feature_figures",
    "voxel_energy_figure",
    "energy_response_figure",
    "average_polar_images",
]
