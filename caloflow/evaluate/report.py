"""metrics.json and report.md of ``caloflow evaluate`` (written atomically)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from caloflow.atomic import write_text_atomic
from caloflow.evaluate.figures import clipped_histogram, histogram_edges
from caloflow.evaluate.separation import histogram_separation
from caloflow.features import FEATURE_NAMES, summarize


def _json_safe(obj):
    """NaN and inf are not JSON: they become null."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def feature_metrics(
    reference: dict[str, np.ndarray],
    sample: dict[str, np.ndarray],
    others: list[dict[str, np.ndarray]] | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, dict]:
    """Per feature: the sample's mean and std (finite values) and its separation power to the reference.

    The separation power is computed on the same bins as the figures (common to the reference and
    ``others``, i.e. all samples), with out-of-range values counted in the end bins. With ``weights``
    (one per shower of ``sample``) the sample's histograms, mean and std are weighted (the bins stay
    those of the unweighted values).
    """
    out = {}
    # features that need the incident energy are there only when it was given to compute_features
    for name in (n for n in FEATURE_NAMES if n in reference and n in sample):
        other_values = [o[name] for o in (others or []) if name in o]
        edges = histogram_edges(name, [reference[name], sample[name]] + other_values)
        h_ref, h_sample = (
            clipped_histogram(reference[name], edges),
            clipped_histogram(sample[name], edges, weights),
        )
        sep = (
            histogram_separation(h_ref, h_sample)
            if h_ref.sum() > 0 and h_sample.sum() > 0
            else float("nan")
        )
        out[name] = {**summarize(sample[name], weights), "separation_power": sep}
    return out


def write_metrics(path: str | Path, metrics: dict) -> Path:
    return write_text_atomic(
        path, json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n"
    )


def fmt(x, digits: int = 3) -> str:
    """A number for a report table: ``digits`` decimals, or significant digits when it is very
    large or small; ``n/a`` for None, NaN and inf."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (abs(x) < 1e-3 and x != 0) else f"{x:.{digits}f}"


def feature_row(name: str, reference: dict, metrics: dict, names: list[str]) -> str:
    """The table row of one feature: the reference's mean ± std (``reference``: its summary), then
    every sample's mean ± std and separation power (``n/a`` where the sample lacks it)."""
    cells = [f"`{name}`", f"{fmt(reference['mean'])} ± {fmt(reference['std'])}"]
    for n in names:
        f = metrics["samples"][n]["features"].get(name)
        cells += (
            [f"{fmt(f['mean'])} ± {fmt(f['std'])}", fmt(f["separation_power"])]
            if f
            else ["n/a", "n/a"]
        )
    return "| " + " | ".join(cells) + " |"


#: Captions of the figure groups written by ``caloflow.evaluate.figures`` (keys of ``figures``).
FIGURE_CAPTIONS = {
    "flow1_features": "Layer energies, energy fractions, l_d, s_d and sigma_sd (paper figs. 11-13)",
    "depth_response": "Deepest layer with energy above the cut, and E_hat/E_inc",
    "flow2_voxels": "Brightest and second brightest voxel, E_ratio, sparsity (paper figs. 14-16)",
    "flow2_brightest_3_5": "3rd, 4th and 5th brightest voxel per layer (inputs of the reference feature classifier)",
    "centroids": "Centroids in phi and eta (paper figs. 17-19)",
    "centroid_differences": "Centroid differences between layers, <x_1> - <x_0> and <x_2> - <x_1>",
    "energy_response": "E_hat/E_inc vs E_inc: mean and standard deviation in bins of the incident energy",
    "widths": "Lateral widths in eta and phi (paper figs. 17-19)",
    "average_images": "Average showers per layer (paper figs. 5-7)",
    "nearest_neighbours": "Nearest neighbours (paper figs. 8-10)",
}


def _header_section(metrics: dict, names: list[str]) -> list[str]:
    """Title, the files compared (with shower counts) and how features and S are defined."""
    ref = metrics["reference"]
    lines = ["# Evaluation report", ""]
    lines += [
        "Reference: `{}` ({} showers). Samples: {}.".format(
            ref["path"],
            ref["n_showers"],
            ", ".join(
                f"**{n}** `{metrics['samples'][n]['path']}` ({metrics['samples'][n]['n_showers']} showers"
                + _weights_note(metrics["samples"][n])
                + ")"
                for n in names
            ),
        ),
        "",
    ]
    if any(metrics["samples"][n].get("weighted") for n in names):
        lines += [
            "A weighted sample is judged with its per-shower weights (`--weights`): its feature means, "
            "widths, histograms and separation powers, its energy-response profile and average images, "
            "and its classifier test (weighted loss, calibration, AUC and JSD; the generated class scaled "
            "to the reference's total weight in each split) use them. ESS = (sum w)^2 / sum w^2 is the "
            "effective number of showers.",
            "",
        ]
    lines += [
        "Features follow the CaloFlow paper (arXiv:2106.05285) sections 5.2-5.3, computed after a "
        "10 keV cut on every voxel; energies in MeV, centroids and widths in mm. Separation power "
        "S = 1/2 sum (h1 - h2)^2 / (h1 + h2) on the figure binning: 0 identical, 1 disjoint.",
        "",
    ]
    return lines


def _weights_note(sample: dict) -> str:
    """``, weighted by `PATH` (ESS ...)`` for a weighted sample, else nothing."""
    w = sample.get("weights")
    if not sample.get("weighted") or not w:
        return ""
    return f", weighted by `{w['path']}`, ESS {w['ess']:.0f}"


def _classifier_section(metrics: dict, names: list[str]) -> list[str]:
    """AUC and JSD (mean ± std over runs) of every sample / classifier / preprocessing, with the epochs
    each run chose and ran and whether it converged; empty without any."""
    rows = [
        (n, model, pre, m)
        for n in names
        for model, per_pre in metrics["samples"][n].get("classifier", {}).items()
        for pre, m in per_pre.items()
    ]
    if not rows:
        return []
    settings = metrics.get("settings", {})
    training = settings.get("training", {})
    lines = ["## Classifier test (section 5.4, appendix A)", ""]
    lines += [
        f"Reference vs sample, balanced, split 60/20/20; trained with {training.get('schedule', '?')}; "
        f"isotonic calibration on validation; AUC and JSD = (ln 2 - BCE)/ln 2 on test. Mean and std over "
        f"{settings.get('runs', '?')} run(s). AUC 0.5 / JSD 0: indistinguishable; 1 / 1: perfectly "
        "separable. A run that did not converge (best epoch = last allowed, or no early stop) is "
        "optimistic for the generator: its AUC is a lower bound.",
        "",
    ]
    lines += [
        "| sample | classifier | preprocessing | AUC | JSD | best / run epochs | converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, model, pre, m in rows:
        epochs = ", ".join(
            f"{r.get('best_epoch', '?')}/{r.get('epochs_run', '?')}" for r in m.get("runs", [])
        )
        converged = {True: "yes", False: "**no**"}.get(m.get("converged"), "?")
        shown = f"{n} (weighted, test ESS {m['ess']['test']:.0f})" if m.get("weighted") else n
        lines.append(
            f"| {shown} | {model.upper()} | {pre} | {m['auc']['mean']:.3f} ± {m['auc']['std']:.3f} "
            f"| {m['jsd']['mean']:.3f} ± {m['jsd']['std']:.3f} | {epochs} | {converged} |"
        )
    lines.append("")
    return lines


def _feature_table(metrics: dict, names: list[str]) -> list[str]:
    """One row per feature: reference mean ± std, then each sample's mean ± std and its S."""
    ref = metrics["reference"]
    lines = [
        "## Features",
        "",
        "Mean ± std of each feature (NaN for empty layers left out) and separation power "
        "S of each sample to the reference.",
        "",
    ]
    header = "| feature | reference | " + " | ".join(f"{n} | S({n})" for n in names) + " |"
    lines += [header, "|" + "---|" * (2 + 2 * len(names))]
    for name in (n for n in FEATURE_NAMES if n in ref["features"]):
        lines.append(feature_row(name, ref["features"][name], metrics, names))
    lines.append("")
    return lines


def _separation_summary(metrics: dict, names: list[str]) -> list[str]:
    """Per sample: the mean S over the features with a finite S, and the three largest S."""
    worst = []
    for n in names:
        feats = metrics["samples"][n]["features"]
        ranked = sorted(
            (
                v["separation_power"]
                for v in feats.values()
                if v["separation_power"] is not None and math.isfinite(v["separation_power"])
            ),
            reverse=True,
        )
        # an undefined S (None once read back from metrics.json) ranks as 0
        top = sorted(feats, key=lambda k: -(feats[k]["separation_power"] or 0))[:3]
        worst.append(
            f"- **{n}**: mean S = {fmt(float(np.mean(ranked)) if ranked else float('nan'))}; "
            f"largest: " + ", ".join(f"`{k}` ({fmt(feats[k]['separation_power'])})" for k in top)
        )
    return ["Summary of separation powers:", ""] + worst + [""]


def _nearest_neighbour_section(metrics: dict, names: list[str]) -> list[str]:
    """Energies (GeV) and distance (GeV) of each chosen reference shower's nearest generated shower."""
    rows = [(n, nb) for n in names for nb in metrics["samples"][n].get("nearest_neighbours", [])]
    if not rows:
        return []
    lines = [
        "## Nearest neighbours (section 5.1)",
        "",
        "Euclidean distance (all voxels) from chosen reference showers to their nearest generated shower "
        "of similar incident energy.",
        "",
        "| sample | reference E [GeV] | neighbour E [GeV] | distance [GeV] |",
        "|---|---|---|---|",
    ]
    for n, nb in rows:
        lines.append(
            f"| {n} | {nb['reference_energy_gev']:.2f} | {nb['neighbour_energy_gev']:.2f} | "
            f"{nb['distance_mev'] / 1e3:.3f} |"
        )
    lines.append("")
    return lines


def _figures_section(figures: dict[str, list[str]]) -> list[str]:
    """Each figure group inline as its PNG (else its first file), with a link to the PDF when there is one."""
    lines = ["## Figures", ""]
    for key, paths in figures.items():
        png = next((p for p in paths if p.endswith(".png")), paths[0])
        pdf = next((p for p in paths if p.endswith(".pdf")), None)
        lines += [
            f"### {FIGURE_CAPTIONS.get(key, key)}",
            "",
            f"![{key}]({png})" + (f" ([PDF]({pdf}))" if pdf else ""),
            "",
        ]
    return lines


def _conventions_section() -> list[str]:
    """Units and the definitions of the feature names (paper sections 5.2-5.3)."""
    return [
        "## Units and conventions",
        "",
        "- Energies E0, E1, E2, E_hat, l_d in MeV in the tables (GeV on the figure axes).",
        "- `E{k}_frac` = E_k/E_hat; `s_d` = l_d/E_hat with l_d = E1 + 2 E2; "
        "`sigma_sd` = sqrt((E1 + 4 E2)/E_hat - s_d^2).",
        "- `brightest{k}`, `second{k}`: largest and second largest voxel divided by E_k; "
        "`E_ratio{k}` = (I1 - I2)/(I1 + I2); `sparsity{k}`: fraction of voxels above the cut.",
        "- `brightest3{k}`, `brightest4{k}`, `brightest5{k}`: 3rd to 5th largest voxel divided by E_k.",
        "- Centroids and widths: energy-weighted means and standard deviations of voxel centres, mm; "
        "`eta_centroid_diff_10` = <eta_1> - <eta_0>, `eta_centroid_diff_21` = <eta_2> - <eta_1> "
        "(likewise phi), mm.",
        "- `deepest_layer`: index (0-2) of the deepest layer with energy above the cut; "
        "`E_hat_over_E_inc` = E_hat / E_inc (dimensionless).",
        "- Undefined values (empty layer or shower) are left out of means and S.",
        "",
    ]


def render_report(metrics: dict, figures: dict[str, list[str]]) -> str:
    """A self-contained markdown summary of ``metrics`` with the figures linked (relative paths).

    ``metrics`` is the dict written to metrics.json (energies in MeV, nearest-neighbour energies in GeV);
    ``figures`` maps a figure group to its files, relative to the report. Sections without data (no
    classifier test, no nearest neighbours) are left out.
    """
    names = list(metrics["samples"])
    return "\n".join(
        _header_section(metrics, names)
        + _classifier_section(metrics, names)
        + _feature_table(metrics, names)
        + _separation_summary(metrics, names)
        + _nearest_neighbour_section(metrics, names)
        + _figures_section(figures)
        + _conventions_section()
    )


__all__ = [
    "fmt",
    "feature_row",
    "feature_metrics",
    "write_metrics",
    "FIGURE_CAPTIONS",
    "render_report",
]
