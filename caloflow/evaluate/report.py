"""metrics.json and report.md of ``caloflow evaluate`` (written atomically)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from caloflow.atomic import write_text_atomic
from caloflow.evaluate.features import FEATURE_NAMES, summarize
from caloflow.evaluate.figures import clipped_histogram, histogram_edges
from caloflow.evaluate.separation import histogram_separation


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


def feature_metrics(reference: dict[str, np.ndarray], sample: dict[str, np.ndarray],
                    others: list[dict[str, np.ndarray]] | None = None) -> dict[str, dict]:
    """Per feature: the sample's mean and std (finite values) and its separation power to the reference.

    The separation power is computed on the same bins as the figures (common to the reference and
    ``others``, i.e. all samples), with out-of-range values counted in the end bins.
    """
    out = {}
    for name in FEATURE_NAMES:
        edges = histogram_edges(name, [reference[name], sample[name]] + [o[name] for o in (others or [])])
        h_ref, h_sample = clipped_histogram(reference[name], edges), clipped_histogram(sample[name], edges)
        sep = histogram_separation(h_ref, h_sample) if h_ref.sum() > 0 and h_sample.sum() > 0 else float("nan")
        out[name] = {**summarize(sample[name]), "separation_power": sep}
    return out


def write_metrics(path: str | Path, metrics: dict) -> Path:
    return write_text_atomic(path, json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n")


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (abs(x) < 1e-3 and x != 0) else f"{x:.{digits}f}"


def render_report(metrics: dict, figures: dict[str, list[str]]) -> str:
    """A self-contained markdown summary of ``metrics`` with the figures linked (relative paths)."""
    ref = metrics["reference"]
    names = list(metrics["samples"])
    lines = ["# Evaluation report", ""]
    lines += ["Reference: `{}` ({} showers). Samples: {}.".format(
        ref["path"], ref["n_showers"],
        ", ".join(f"**{n}** `{metrics['samples'][n]['path']}` ({metrics['samples'][n]['n_showers']} showers)"
                  for n in names)), ""]
    lines += ["Features follow the CaloFlow paper (arXiv:2106.05285) sections 5.2-5.3, computed after a "
              "10 keV cut on every voxel; energies in MeV, centroids and widths in mm. Separation power "
              "S = 1/2 sum (h1 - h2)^2 / (h1 + h2) on the figure binning: 0 identical, 1 disjoint.", ""]

    classifier_rows = []
    for n in names:
        for model, per_pre in metrics["samples"][n].get("classifier", {}).items():
            for pre, m in per_pre.items():
                classifier_rows.append((n, model, pre, m))
    if classifier_rows:
        settings = metrics.get("settings", {})
        lines += ["## Classifier test (section 5.4, appendix A)", ""]
        lines += [f"Reference vs sample, balanced, split 60/20/20; best validation-accuracy epoch, isotonic "
                  f"calibration on validation; AUC and JSD = (ln 2 - BCE)/ln 2 on test. Mean and std over "
                  f"{settings.get('runs', '?')} run(s); epochs: {settings.get('epochs', 'paper default')}. "
                  "AUC 0.5 / JSD 0: indistinguishable; 1 / 1: perfectly separable.", ""]
        lines += ["| sample | classifier | preprocessing | AUC | JSD |", "|---|---|---|---|---|"]
        for n, model, pre, m in classifier_rows:
            lines.append(f"| {n} | {model.upper()} | {pre} | {m['auc']['mean']:.3f} ± {m['auc']['std']:.3f} "
                         f"| {m['jsd']['mean']:.3f} ± {m['jsd']['std']:.3f} |")
        lines.append("")

    lines += ["## Features", "", "Mean ± std of each feature (NaN for empty layers left out) and separation power "
              "S of each sample to the reference.", ""]
    header = "| feature | reference | " + " | ".join(f"{n} | S({n})" for n in names) + " |"
    lines += [header, "|" + "---|" * (2 + 2 * len(names))]
    for name in FEATURE_NAMES:
        r = ref["features"][name]
        cells = [f"`{name}`", f"{_fmt(r['mean'])} ± {_fmt(r['std'])}"]
        for n in names:
            f = metrics["samples"][n]["features"][name]
            cells += [f"{_fmt(f['mean'])} ± {_fmt(f['std'])}", _fmt(f["separation_power"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    worst = []
    for n in names:
        feats = metrics["samples"][n]["features"]
        ranked = sorted((v["separation_power"] for v in feats.values() if v["separation_power"] is not None
                         and math.isfinite(v["separation_power"])), reverse=True)
        top = sorted(feats, key=lambda k: -(feats[k]["separation_power"] or 0))[:3]
        worst.append(f"- **{n}**: mean S = {_fmt(float(np.mean(ranked)) if ranked else float('nan'))}; "
                     f"largest: " + ", ".join(f"`{k}` ({_fmt(feats[k]['separation_power'])})" for k in top))
    lines += ["Summary of separation powers:", ""] + worst + [""]

    nn_rows = [(n, nb) for n in names for nb in metrics["samples"][n].get("nearest_neighbours", [])]
    if nn_rows:
        lines += ["## Nearest neighbours (section 5.1)", "",
                  "Euclidean distance (504 voxels) from chosen reference showers to their nearest generated shower "
                  "of similar incident energy.", "",
                  "| sample | reference E [GeV] | neighbour E [GeV] | distance [GeV] |", "|---|---|---|---|"]
        for n, nb in nn_rows:
            lines.append(f"| {n} | {nb['reference_energy_gev']:.2f} | {nb['neighbour_energy_gev']:.2f} | "
                         f"{nb['distance_mev'] / 1e3:.3f} |")
        lines.append("")

    lines += ["## Figures", ""]
    captions = {
        "flow1_features": "Layer energies, energy fractions, l_d, s_d and sigma_sd (paper figs. 11-13)",
        "flow2_voxels": "Brightest and second brightest voxel, E_ratio, sparsity (paper figs. 14-16)",
        "centroids": "Centroids in phi and eta (paper figs. 17-19)",
        "widths": "Lateral widths in eta and phi (paper figs. 17-19)",
        "average_images": "Average showers per layer (paper figs. 5-7)",
        "nearest_neighbours": "Nearest neighbours (paper figs. 8-10)",
    }
    for key, paths in figures.items():
        png = next((p for p in paths if p.endswith(".png")), paths[0])
        pdf = next((p for p in paths if p.endswith(".pdf")), None)
        lines += [f"### {captions.get(key, key)}", "", f"![{key}]({png})"
                  + (f" ([PDF]({pdf}))" if pdf else ""), ""]
    lines += ["## Units and conventions", "",
              "- Energies E0, E1, E2, E_hat, l_d in MeV in the tables (GeV on the figure axes).",
              "- `E{k}_frac` = E_k/E_hat; `s_d` = l_d/E_hat with l_d = E1 + 2 E2; "
              "`sigma_sd` = sqrt((E1 + 4 E2)/E_hat - s_d^2).",
              "- `brightest{k}`, `second{k}`: largest and second largest voxel divided by E_k; "
              "`E_ratio{k}` = (I1 - I2)/(I1 + I2); `sparsity{k}`: fraction of voxels above the cut.",
              "- Centroids and widths: energy-weighted means and standard deviations of voxel centres, mm.",
              ""]
    return "\n".join(lines)
