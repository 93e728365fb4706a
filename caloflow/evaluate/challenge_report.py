"""metrics.json entries and report.md of a CaloChallenge-kind evaluation (``caloflow evaluate`` on
CaloChallenge files)."""

from __future__ import annotations

import numpy as np

from caloflow.evaluate import challenge_hist as ch
from caloflow.evaluate.report import FIGURE_CAPTIONS, feature_row, fmt
from caloflow.features import summarize
from caloflow.geometry import GEV, Geometry
from caloflow.radial_features import feature_names, is_dataset1

#: Captions of the figures of :mod:`caloflow.evaluate.challenge_figures`.
CHALLENGE_CAPTIONS = {
    "challenge_average_showers": "Average shower per layer (polar: angle alpha, radius ln(1 + r/mm))",
    "challenge_energies": "Total and layer energies, E_tot/E_inc",
    "challenge_centres": "Centres of energy in eta and phi (layers with angular bins)",
    "challenge_widths": "Widths in eta and phi",
    "challenge_radial": "Radial centres of energy and widths",
    "challenge_sparsity": "Sparsity: fraction of a layer's voxels without energy",
    "challenge_voxel_energies": "Energy distribution of all voxels",
    "challenge_energy_response": "E_tot/E_inc at each incident energy of dataset 1",
}


def sample_entry(
    reference: dict[str, np.ndarray],
    sample: dict[str, np.ndarray],
    reference_voxels: np.ndarray,
    sample_voxels: np.ndarray,
    reference_incident_gev: np.ndarray,
    sample_incident_gev: np.ndarray,
    geometry: Geometry,
    min_energy_mev: float,
) -> dict:
    """One sample's feature numbers: per feature its mean, std and separation power S to the
    reference (``features``), S of the voxel energies (``voxel_energy``), the voxels whose mean share
    of their layer's energy is furthest from the reference's (``voxel_share_outliers``) and, for dataset 1, S of
    E_tot/E_inc at each incident energy (``E_tot_over_E_inc_per_energy``)."""
    powers = ch.separation_powers(reference, sample, geometry, min_energy_mev)
    entry = {
        "features": {
            name: {**summarize(sample[name]), "separation_power": powers[name]} for name in powers
        },
        "voxel_energy": {
            "separation_power": ch.voxel_separation(reference_voxels, sample_voxels, min_energy_mev)
        },
        "voxel_share_outliers": ch.voxel_share_outliers(reference_voxels, sample_voxels, geometry),
    }
    if is_dataset1(geometry) and "E_tot_over_E_inc" in reference:
        entry["E_tot_over_E_inc_per_energy"] = ch.per_energy_separation(
            reference["E_tot_over_E_inc"],
            np.asarray(reference_incident_gev, np.float64) * GEV,
            sample["E_tot_over_E_inc"],
            np.asarray(sample_incident_gev, np.float64) * GEV,
            geometry,
        )
    return entry


def _classifier_lines(metrics: dict, names: list[str]) -> list[str]:
    rows = [
        (n, kind, m)
        for n in names
        for kind, m in metrics["samples"][n].get("classifier", {}).items()
    ]
    if not rows:
        return []
    protocol = metrics["settings"]["protocol"]
    lines = [f"## Classifiers (protocol `{protocol}`)", ""]
    if protocol == "calochallenge":
        lines += [
            "The challenge evaluator's protocol: train / test / validation 60/20/20, the best "
            "test-accuracy epoch of a fixed number, isotonic calibration on test, AUC and "
            "JSD = (ln 2 - BCE)/ln 2 (not clipped) on validation.",
            "",
        ]
    else:
        lines += [
            "caloflow's converged protocol: balanced 60/20/20, early stopping on the validation "
            "loss, best validation-accuracy epoch, isotonic calibration on validation, AUC and JSD "
            "on test.",
            "",
        ]
    lines += ["| sample | input | AUC | JSD | best / run epochs |", "|---|---|---|---|---|"]
    for n, kind, m in rows:
        epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in m["runs"])
        lines.append(
            f"| {n} | {kind} | {m['auc']['mean']:.3f} ± {m['auc']['std']:.3f} "
            f"| {m['jsd']['mean']:.3f} ± {m['jsd']['std']:.3f} | {epochs} |"
        )
    return lines + [""]


def _distance_lines(metrics: dict, names: list[str]) -> list[str]:
    lines = [
        "## FPD and KPD of the cls-high features (x 10^3)",
        "",
        "| sample | FPD | KPD |",
        "|---|---|---|",
    ]
    for n in names:
        d = metrics["samples"][n]["physics_distances"]
        lines.append(
            f"| {n} | {1e3 * d['fpd']['value']:.3f} ± {1e3 * d['fpd']['error']:.3f} "
            f"| {1e3 * d['kpd']['value']:.3f} ± {1e3 * d['kpd']['error']:.3f} |"
        )
    return lines + [""]


def _separation_lines(metrics: dict, names: list[str], geometry_features: list[str]) -> list[str]:
    ref = metrics["reference"]["features"]
    lines = [
        "## Features and separation powers",
        "",
        "S = 1/2 sum (h1 - h2)^2 / (h1 + h2) of unit-sum histograms on the evaluator's bins "
        "(0: identical, 1: disjoint). Energies in MeV, lengths in mm.",
        "",
        "| feature | reference | " + " | ".join(f"{n} | S({n})" for n in names) + " |",
        "|" + "---|" * (2 + 2 * len(names)),
    ]
    for name in (f for f in geometry_features if f in ref):
        lines.append(feature_row(name, ref[name], metrics, names))
    voxel = " | ".join(
        f"S = {fmt(metrics['samples'][n]['voxel_energy']['separation_power'])}" for n in names
    )
    lines += ["", f"Voxel energies: {voxel}.", ""]
    lines += _share_lines(metrics, names)
    per_energy = [n for n in names if "E_tot_over_E_inc_per_energy" in metrics["samples"][n]]
    if per_energy:
        keys = list(metrics["samples"][per_energy[0]]["E_tot_over_E_inc_per_energy"])
        lines += ["S of E_tot/E_inc per incident energy:", ""]
        lines += [
            "| E_inc | " + " | ".join(per_energy) + " |",
            "|" + "---|" * (1 + len(per_energy)),
        ]
        for key in keys:
            values = [
                fmt(metrics["samples"][n]["E_tot_over_E_inc_per_energy"][key]) for n in per_energy
            ]
            lines.append(f"| {key} | " + " | ".join(values) + " |")
        lines.append("")
    return lines


def _share_lines(metrics: dict, names: list[str]) -> list[str]:
    """The voxels whose mean share of their layer's energy is furthest from the reference's."""
    rows = [(n, r) for n in names for r in metrics["samples"][n].get("voxel_share_outliers", [])]
    if not rows:
        return []
    lines = [
        "Voxels whose mean share of their layer's energy differs most from the reference's:",
        "",
        "| sample | voxel | layer | alpha bin | r bin | reference | sample | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in rows:
        ratio = (
            r["sample_share"] / r["reference_share"] if r["reference_share"] > 0 else float("inf")
        )
        lines.append(
            f"| {n} | {r['voxel']} | {r['layer']} | {r['alpha_bin']} | {r['r_bin']} | "
            f"{fmt(r['reference_share'])} | {fmt(r['sample_share'])} | {ratio:.2f} |"
        )
    return lines + [""]


def render_challenge_report(
    metrics: dict, figures: dict[str, list[str]], geometry: Geometry
) -> str:
    """Markdown summary of a CaloChallenge-kind ``metrics`` with the figures (paths relative)."""
    names = list(metrics["samples"])
    ref = metrics["reference"]
    settings = metrics["settings"]
    lines = [
        "# Evaluation report (CaloChallenge kind)",
        "",
        f"Geometry `{settings['geometry']}`. Reference: `{ref['path']}` ({ref['n_showers']} "
        "showers). Samples: "
        + ", ".join(
            f"**{n}** `{metrics['samples'][n]['path']}` ({metrics['samples'][n]['n_showers']} "
            "showers)"
            for n in names
        )
        + f". Voxels below {settings['min_energy_mev']:g} MeV are set to zero in every file.",
        "",
    ]
    lines += _classifier_lines(metrics, names)
    lines += _distance_lines(metrics, names)
    lines += _separation_lines(metrics, names, list(feature_names(geometry)))
    lines += ["## Figures", ""]
    captions = {**FIGURE_CAPTIONS, **CHALLENGE_CAPTIONS}
    for key, paths in figures.items():
        png = next((p for p in paths if p.endswith(".png")), paths[0])
        pdf = next((p for p in paths if p.endswith(".pdf")), None)
        link = f" ([PDF]({pdf}))" if pdf else ""
        lines += [f"### {captions.get(key, key)}", "", f"![{key}]({png}){link}", ""]
    return "\n".join(lines)


__all__ = ["CHALLENGE_CAPTIONS", "sample_entry", "render_challenge_report"]
