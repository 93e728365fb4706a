"""Figures of the CaloFlow paper section 5: feature histograms, average images, nearest neighbours,
and the energy response E_hat/E_inc vs E_inc.

Every figure is written as PNG and PDF, atomically (temporary file, then rename). Histograms are
normalised to unit area, the reference is the filled grey histogram, every sample a line, with
the ratio sample / reference below each panel. Energies are shown in GeV where the paper does.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from caloflow.atomic import atomic_output  # noqa: E402
from caloflow.features import FEATURES, apply_threshold, energy_response  # noqa: E402
from caloflow.geometry import CALOGAN, HALF_WIDTH_MM, split_layers  # noqa: E402

REFERENCE_STYLE = {"color": "0.6", "alpha": 0.6}
SAMPLE_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")
N_BINS = 50

#: Panel layouts of the paper's figures: name -> (title, rows of feature names).
FIGURE_LAYOUTS: dict[str, tuple[str, list[list[str]]]] = {
    "flow1_features": (
        "Layer energies (Flow I)",
        [
            ["E0", "E1", "E2", "E_hat"],
            ["E0_frac", "E1_frac", "E2_frac"],
            ["l_d", "s_d", "sigma_sd"],
        ],
    ),
    "depth_response": (
        "Deepest layer with energy and energy response",
        [["deepest_layer", "E_hat_over_E_inc"]],
    ),
    "flow2_voxels": (
        "Brightest voxels, E_ratio and sparsity (Flow II)",
        [
            [f"{f}{k}" for k in range(CALOGAN.n_layers)]
            for f in ("brightest", "second", "E_ratio", "sparsity")
        ],
    ),
    "flow2_brightest_3_5": (
        "3rd to 5th brightest voxels (Flow II)",
        [[f"brightest{r}{k}" for k in range(CALOGAN.n_layers)] for r in (3, 4, 5)],
    ),
    "centroids": (
        "Energy-weighted centroids (Flow II)",
        [[f"{f}{k}" for k in range(CALOGAN.n_layers)] for f in ("phi_centroid", "eta_centroid")],
    ),
    "centroid_differences": (
        "Centroid differences between layers (Flow II)",
        [[f"{axis}_centroid_diff_{pair}" for pair in ("10", "21")] for axis in ("phi", "eta")],
    ),
    "widths": (
        "Lateral widths (Flow II)",
        [[f"{f}{k}" for k in range(CALOGAN.n_layers)] for f in ("eta_width", "phi_width")],
    ),
}


def save_figure(fig, stem: str | Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically; closes the figure; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(stem).with_suffix(f".{fmt}")
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=100)
        paths.append(path)
    plt.close(fig)
    return paths


def _finite(values: np.ndarray, positive: bool) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return v[v > 0] if positive else v


def histogram_edges(name: str, datasets: list[np.ndarray], bins: int = N_BINS) -> np.ndarray:
    """Common bin edges of one feature for all datasets (in the feature's own units).

    The range spans the 0.05 %-99.95 % quantiles of every dataset, so a few outliers do not
    squash the histogram; logarithmic bins over the positive values for log-scaled features.
    """
    if FEATURES[name].discrete:
        return _integer_edges(datasets)
    log = FEATURES[name].log_x
    lows, highs = [], []
    for data in datasets:
        v = _finite(data, positive=log)
        if v.size:
            lows.append(np.quantile(v, 0.0005))
            highs.append(np.quantile(v, 0.9995))
    if not lows:
        return np.logspace(-3, 0, bins + 1) if log else np.linspace(0.0, 1.0, bins + 1)
    lo, hi = min(lows), max(highs)
    if log:
        hi = hi if hi > lo else lo * 10
        return np.logspace(np.log10(lo), np.log10(hi), bins + 1)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _integer_edges(datasets: list[np.ndarray]) -> np.ndarray:
    """One bin per integer from the smallest to the largest finite value of any dataset."""
    finite = [_finite(d, positive=False) for d in datasets]
    finite = [f for f in finite if f.size]
    if not finite:
        return np.array([-0.5, 0.5])
    lo = np.floor(min(f.min() for f in finite))
    hi = np.ceil(max(f.max() for f in finite))
    return np.arange(lo - 0.5, hi + 1.0, 1.0)


def clipped_histogram(
    values: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Counts of the finite ``values`` in ``edges``, with values outside put into the end bins; with
    ``weights`` (one per value) the sum of the weights in each bin."""
    if weights is None:
        v = _finite(values, positive=False)
        return np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0].astype(np.float64)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != v.shape:
        raise ValueError(f"{len(w)} weights for {len(v)} values")
    keep = np.isfinite(v)
    return np.histogram(np.clip(v[keep], edges[0], edges[-1]), edges, weights=w[keep])[0].astype(
        np.float64
    )


def _weights_of(weights: dict[str, np.ndarray] | None, name: str) -> np.ndarray | None:
    return None if weights is None else weights.get(name)


def _label(name: str, weights: dict[str, np.ndarray] | None) -> str:
    return f"{name} (weighted)" if _weights_of(weights, name) is not None else name


def _fractions(counts: np.ndarray) -> np.ndarray:
    """Counts normalised to sum 1 (the histograms of section 5 compare shapes, per bin)."""
    total = counts.sum()
    return counts / total if total > 0 else counts


def feature_figures(
    reference: dict[str, np.ndarray],
    samples: dict[str, dict[str, np.ndarray]],
    out_dir: str | Path,
    reference_name: str = "Reference",
    weights: dict[str, np.ndarray] | None = None,
) -> dict[str, list[Path]]:
    """One figure per layout of :data:`FIGURE_LAYOUTS`, every panel with its ratio panel below.

    A feature missing from ``reference`` (``E_hat_over_E_inc`` without incident energies) is left
    out, and so is a figure left without panels; a sample without the feature is not drawn in its panel.
    ``weights``: per-shower weights of some samples (by name), whose histograms are then weighted.
    Returns the files written per layout name.
    """
    out: dict[str, list[Path]] = {}
    for fig_name, (title, all_rows) in FIGURE_LAYOUTS.items():
        rows = [r for r in ([n for n in row if n in reference] for row in all_rows) if r]
        if not rows:
            continue
        n_cols = max(len(r) for r in rows)
        fig = plt.figure(figsize=(4.2 * n_cols, 4.0 * len(rows)))
        outer = fig.add_gridspec(
            len(rows),
            n_cols,
            hspace=0.3,
            wspace=0.32,
            left=0.07,
            right=0.98,
            bottom=0.06,
            top=1 - 0.2 / len(rows),
        )
        for i, row in enumerate(rows):
            for j, name in enumerate(row):
                cell = outer[i, j].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
                ax = fig.add_subplot(cell[0])
                rax = fig.add_subplot(cell[1], sharex=ax)
                _feature_panel(ax, rax, name, reference, samples, reference_name, weights)
        fig.suptitle(title, y=0.995)
        out[fig_name] = save_figure(fig, Path(out_dir) / fig_name)
    return out


def _feature_panel(
    ax, rax, name: str, reference, samples, reference_name: str, weights=None
) -> None:
    info = FEATURES[name]
    scale = info.plot_scale
    samples = {n: s for n, s in samples.items() if name in s}
    edges = histogram_edges(name, [reference[name]] + [s[name] for s in samples.values()])
    ref_counts = clipped_histogram(reference[name], edges)
    ref_density = _fractions(ref_counts)
    x_edges = edges * scale
    ax.stairs(ref_density, x_edges, fill=True, label=reference_name, **REFERENCE_STYLE)
    for color, (sample_name, feats) in zip(SAMPLE_COLORS * 10, samples.items()):
        counts = clipped_histogram(feats[name], edges, _weights_of(weights, sample_name))
        density = _fractions(counts)
        ax.stairs(density, x_edges, color=color, lw=1.4, label=_label(sample_name, weights))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref_density > 0, density / ref_density, np.nan)
        rax.stairs(ratio, x_edges, color=color, lw=1.2, baseline=None)
    ax.set_yscale("log")
    ax.set_ylabel("fraction of showers")
    if info.log_x:
        ax.set_xscale("log")
        rax.xaxis.set_minor_formatter(NullFormatter())
    if info.discrete:
        rax.set_xticks(0.5 * (edges[1:] + edges[:-1]) * scale)
    ax.tick_params(which="both", labelbottom=False)
    ax.legend(fontsize=7, frameon=False)
    rax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel("ratio", fontsize=8)
    rax.set_xlabel(info.label)


N_RESPONSE_BINS = 10


def response_edges(incident_gev: list[np.ndarray], bins: int = N_RESPONSE_BINS) -> np.ndarray:
    """Common, equal-width E_inc bins (GeV) spanning every dataset's finite incident energies."""
    finite = [_finite(e, positive=False) for e in incident_gev]
    finite = [f for f in finite if f.size]
    if not finite:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = min(f.min() for f in finite), max(f.max() for f in finite)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def response_profile(
    incident_gev: np.ndarray,
    response: np.ndarray,
    edges: np.ndarray,
    weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Profile of ``response`` in bins of ``incident_gev``: per bin the mean and (population) std of the
    finite responses and their count; mean NaN for an empty bin, std NaN for fewer than 2 entries.
    Incident energies outside ``edges`` are left out. With ``weights`` (one per shower) the weighted
    mean and std per bin (``n`` still counts the showers; NaN where the bin's weights sum to 0)."""
    e = np.asarray(incident_gev, dtype=np.float64).reshape(-1)
    r = np.asarray(response, dtype=np.float64).reshape(-1)
    keep = np.isfinite(e) & np.isfinite(r) & (e >= edges[0]) & (e <= edges[-1])
    if weights is not None:
        return _weighted_profile(
            e[keep], r[keep], np.asarray(weights, dtype=np.float64).reshape(-1)[keep], edges
        )
    e, r = e[keep], r[keep]
    index = np.clip(np.searchsorted(edges, e, side="right") - 1, 0, len(edges) - 2)
    n_bins = len(edges) - 1
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    total = np.bincount(index, weights=r, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        square = np.bincount(index, weights=(r - mean[index]) ** 2, minlength=n_bins)
        std = np.where(count > 1, np.sqrt(square / count), np.nan)
    return {"mean": mean, "std": std, "n": count}


def _weighted_profile(
    e: np.ndarray, r: np.ndarray, w: np.ndarray, edges: np.ndarray
) -> dict[str, np.ndarray]:
    index = np.clip(np.searchsorted(edges, e, side="right") - 1, 0, len(edges) - 2)
    n_bins = len(edges) - 1
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    sum_w = np.bincount(index, weights=w, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(
            sum_w > 0, np.bincount(index, weights=w * r, minlength=n_bins) / sum_w, np.nan
        )
        square = np.bincount(index, weights=w * (r - mean[index]) ** 2, minlength=n_bins)
        std = np.where((count > 1) & (sum_w > 0), np.sqrt(square / sum_w), np.nan)
    return {"mean": mean, "std": std, "n": count}


def _reference_response(ax, stat: str, edges: np.ndarray, ref: dict, reference_name: str) -> None:
    """The reference's profile ``stat`` of the energy response (with a ± std band for the mean)."""
    centres = 0.5 * (edges[1:] + edges[:-1])
    if stat == "mean":
        ax.fill_between(
            centres,
            ref["mean"] - ref["std"],
            ref["mean"] + ref["std"],
            step="mid",
            label=f"{reference_name} (± std)",
            **REFERENCE_STYLE,
        )
    label = reference_name if stat == "std" else None
    ax.step(centres, ref[stat], where="mid", color="0.35", lw=1.2, label=label)


def _sample_responses(
    ax, rax, stat: str, edges: np.ndarray, ref: dict, profiles: dict, weights
) -> None:
    """Each sample's profile ``stat`` (points, slightly offset per sample so that their error bars
    do not overlap) and its ratio to the reference's below."""
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    for i, (color, (name, prof)) in enumerate(zip(SAMPLE_COLORS * 10, profiles.items())):
        offset = (i + 1) * 0.08 * width / max(len(profiles), 1)
        if stat == "mean":
            ax.errorbar(
                centres + offset,
                prof["mean"],
                yerr=prof["std"],
                fmt="o",
                ms=3.5,
                color=color,
                capsize=2,
                lw=1.0,
                label=f"{_label(name, weights)} (± std)",
            )
        else:
            ax.plot(
                centres + offset, prof["std"], "o", ms=3.5, color=color, label=_label(name, weights)
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref[stat] > 0, prof[stat] / ref[stat], np.nan)
        rax.plot(centres + offset, ratio, "o-", ms=3, lw=1.0, color=color)


def energy_response_figure(
    reference: dict[str, np.ndarray],
    samples: dict[str, dict[str, np.ndarray]],
    reference_incident_gev: np.ndarray,
    sample_incident_gev: dict[str, np.ndarray],
    out_dir: str | Path,
    reference_name: str = "Reference",
    bins: int = N_RESPONSE_BINS,
    weights: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """E_hat/E_inc vs E_inc: mean (left) and standard deviation (right) of E_hat/E_inc in bins of E_inc,
    reference (grey band: mean ± std) against each sample, with the ratio sample / reference below.

    Args:
        reference, samples: feature dicts of :func:`caloflow.features.compute_features` (their
            ``E_hat``, MeV, is used; the incident energy need not have been passed to it).
        reference_incident_gev, sample_incident_gev: incident energies (GeV) of the reference and of
            each sample (same names as ``samples``).
        weights: per-shower weights of some samples (by name): their profiles are weighted.

    Writes ``energy_response.png`` and ``.pdf`` in ``out_dir``; returns their paths.
    """
    ref_response = energy_response(reference["E_hat"], reference_incident_gev)
    responses = {
        n: (
            np.asarray(sample_incident_gev[n]).reshape(-1),
            energy_response(f["E_hat"], sample_incident_gev[n]),
        )
        for n, f in samples.items()
    }
    edges = response_edges(
        [np.asarray(reference_incident_gev)] + [e for e, _ in responses.values()], bins
    )
    ref = response_profile(reference_incident_gev, ref_response, edges)
    profiles = {
        name: response_profile(inc, resp, edges, _weights_of(weights, name))
        for name, (inc, resp) in responses.items()
    }
    fig = plt.figure(figsize=(11, 5.2))
    outer = fig.add_gridspec(1, 2, wspace=0.3, left=0.08, right=0.98, bottom=0.11, top=0.9)
    for j, (stat, ylabel) in enumerate(
        (
            ("mean", r"mean of $\hat{E}_{\mathrm{tot}}/E_{\mathrm{inc}}$"),
            ("std", r"std of $\hat{E}_{\mathrm{tot}}/E_{\mathrm{inc}}$"),
        )
    ):
        cell = outer[0, j].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        ax = fig.add_subplot(cell[0])
        rax = fig.add_subplot(cell[1], sharex=ax)
        _reference_response(ax, stat, edges, ref, reference_name)
        _sample_responses(ax, rax, stat, edges, ref, profiles, weights)
        ax.set_ylabel(ylabel)
        ax.tick_params(which="both", labelbottom=False)
        ax.legend(fontsize=7, frameon=False)
        rax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        rax.set_ylim(*((0.9, 1.1) if stat == "mean" else (0.5, 1.5)))
        rax.set_ylabel("ratio", fontsize=8)
        rax.set_xlabel(r"$E_{\mathrm{inc}}$ [GeV]")
    fig.suptitle(
        r"Energy response $\hat{E}_{\mathrm{tot}}/E_{\mathrm{inc}}$ in bins of $E_{\mathrm{inc}}$ "
        "(after the voxel cut)"
    )
    return save_figure(fig, Path(out_dir) / "energy_response")


def average_images(
    reference_voxels: np.ndarray,
    samples: dict[str, np.ndarray],
    out_dir: str | Path,
    reference_name: str = "Reference",
    threshold_kev: float = 10.0,
    weights: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """Average energy per voxel (MeV, log colour scale): rows reference and samples, columns layers.

    ``weights``: per-shower weights of some samples (by name), whose averages are then weighted."""
    rows = {reference_name: reference_voxels, **samples}

    def mean(name: str, layer: np.ndarray) -> np.ndarray:
        w = _weights_of(weights, name) if name in samples else None
        return layer.mean(0) if w is None else np.average(layer, axis=0, weights=w)

    means = {
        name: [mean(name, layer) for layer in split_layers(apply_threshold(v, threshold_kev))]
        for name, v in rows.items()
    }
    fig, axes = plt.subplots(
        len(rows),
        CALOGAN.n_layers,
        figsize=(4.2 * CALOGAN.n_layers, 3.4 * len(rows)),
        squeeze=False,
    )
    extent = (-HALF_WIDTH_MM, HALF_WIDTH_MM, -HALF_WIDTH_MM, HALF_WIDTH_MM)
    for k in range(CALOGAN.n_layers):
        positive = np.concatenate([m[k][m[k] > 0] for m in means.values()] + [np.array([1e-3])])
        norm = LogNorm(vmin=max(positive.min(), 1e-3), vmax=max(positive.max(), 1e-2))
        for i, (name, layers) in enumerate(means.items()):
            ax = axes[i, k]
            cmap = plt.get_cmap("viridis").copy()
            cmap.set_bad("white")  # voxels that are zero in every shower stand out
            image = np.ma.masked_less_equal(layers[k], 0)
            im = ax.imshow(
                image,
                norm=norm,
                cmap=cmap,
                extent=extent,
                aspect="auto",
                origin="lower",
                interpolation="nearest",
            )
            ax.set_title(
                f"{_label(name, weights) if name in samples else name}, layer {k}", fontsize=10
            )
            ax.set_xlabel(r"$\eta$ [mm]")
            ax.set_ylabel(r"$\phi$ [mm]")
            fig.colorbar(im, ax=ax, label="mean energy [MeV]")
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / "average_images")


def pick_reference_showers(
    energy: np.ndarray, targets=(5.0, 10.0, 20.0, 50.0, 95.0), seed: int = 0, candidates: int = 20
) -> np.ndarray:
    """Index of one reference shower near each target energy (GeV), drawn among the closest ones."""
    rng = np.random.default_rng(seed)
    energy = np.asarray(energy, dtype=np.float64)
    picks = []
    for e in targets:
        closest = np.argsort(np.abs(energy - e))[: min(candidates, len(energy))]
        picks.append(int(rng.choice(closest)))
    return np.array(picks)


def nearest_neighbours(
    reference_voxels: np.ndarray,
    reference_energy: np.ndarray,
    index: np.ndarray,
    sample_voxels: np.ndarray,
    sample_energy: np.ndarray,
    pool: int = 2000,
    window: float = 0.05,
    min_candidates: int = 10,
) -> list[dict]:
    """Euclidean nearest neighbour (all voxels, MeV) of each chosen reference shower among generated
    showers of similar incident energy (section 5.1: 2000 samples at the same energy).

    Candidates are the generated showers within ``window`` (relative) of the reference energy, at
    most the ``pool`` closest in energy; at least the ``min_candidates`` closest ones.
    """
    out = []
    sample_energy = np.asarray(sample_energy, dtype=np.float64)
    for i in index:
        e = float(reference_energy[i])
        order = np.argsort(np.abs(sample_energy - e), kind="stable")
        inside = int(np.sum(np.abs(sample_energy - e) <= window * e))
        candidates = order[: min(max(inside, min_candidates), pool, len(sample_energy))]
        diff = sample_voxels[candidates].astype(np.float64) - reference_voxels[i].astype(np.float64)
        d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        best = int(candidates[np.argmin(d)])
        out.append(
            {
                "reference_index": int(i),
                "reference_energy_gev": e,
                "neighbour_index": best,
                "neighbour_energy_gev": float(sample_energy[best]),
                "distance_mev": float(d.min()),
                "energy_window_gev": [
                    float(sample_energy[candidates].min()),
                    float(sample_energy[candidates].max()),
                ],
            }
        )
    return out


def nearest_neighbour_figure(
    reference_voxels: np.ndarray,
    reference_energy: np.ndarray,
    index: np.ndarray,
    neighbours: dict[str, list[dict]],
    sample_voxels: dict[str, np.ndarray],
    out_dir: str | Path,
    reference_name: str = "Reference",
) -> list[Path]:
    """Rows: the chosen reference showers; columns: reference layers 0-2, then each sample's neighbour."""
    sources = [reference_name] + list(neighbours)
    n_rows, n_cols = len(index), CALOGAN.n_layers * len(sources)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.1 * n_cols, 2.2 * n_rows), squeeze=False)
    extent = (-HALF_WIDTH_MM, HALF_WIDTH_MM, -HALF_WIDTH_MM, HALF_WIDTH_MM)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    for r, i in enumerate(index):
        showers = [reference_voxels[i]] + [
            sample_voxels[n][neighbours[n][r]["neighbour_index"]] for n in neighbours
        ]
        images = [
            split_layers(np.asarray(s, dtype=np.float64)[None])[k][0]
            for s in showers
            for k in range(CALOGAN.n_layers)
        ]
        for k in range(CALOGAN.n_layers):
            layer_images = images[k :: CALOGAN.n_layers]
            positive = np.concatenate([im[im > 0] for im in layer_images] + [np.array([1e-2])])
            norm = LogNorm(vmin=max(positive.min(), 1e-2), vmax=max(positive.max(), 1e-1))
            for s, (source, image) in enumerate(zip(sources, layer_images)):
                ax = axes[r, s * CALOGAN.n_layers + k]
                ax.imshow(
                    np.ma.masked_less_equal(image, 0),
                    norm=norm,
                    cmap=cmap,
                    extent=extent,
                    aspect="auto",
                    origin="lower",
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if s == 0:
                    title = f"{source} L{k}, {reference_energy[i]:.1f} GeV"
                else:
                    nb = neighbours[source][r]
                    title = (
                        f"{source} L{k}, {nb['neighbour_energy_gev']:.1f} GeV\n"
                        f"d = {nb['distance_mev'] / 1e3:.2f} GeV"
                    )
                ax.set_title(title, fontsize=7)
                if s * CALOGAN.n_layers + k == 0:
                    ax.set_ylabel(r"$\phi$ (480 mm)", fontsize=7)
                if r == n_rows - 1:
                    ax.set_xlabel(r"$\eta$ (480 mm)", fontsize=7)
    fig.suptitle(
        "Reference showers and their Euclidean nearest neighbours (all voxels, log colour scale, MeV)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / "nearest_neighbours")


__all__ = [
    "REFERENCE_STYLE",
    "SAMPLE_COLORS",
    "N_BINS",
    "FIGURE_LAYOUTS",
    "save_figure",
    "histogram_edges",
    "clipped_histogram",
    "feature_figures",
    "N_RESPONSE_BINS",
    "response_edges",
    "response_profile",
    "energy_response_figure",
    "average_images",
    "pick_reference_showers",
    "nearest_neighbours",
    "nearest_neighbour_figure",
]
