"""``caloflow evaluate`` on CaloChallenge files (the part of the command for polar geometries).

    caloflow evaluate --reference dataset_1_photons_2.hdf5 --samples flow=gen.hdf5 --out eval/ \
        --protocol calochallenge --classifier cls-low,cls-high

The reference and every sample are read in float64 and their voxels below ``--min-energy`` set to
zero; then the high-level features (:mod:`caloflow.radial_features`), their separation powers and
that of the voxel energies (and, for dataset 1, of E_tot/E_inc at each incident energy), FPD and KPD
of the ``cls-high`` features, the figures, and the classifiers under ``--protocol``. Writes
``OUT/metrics.json`` (with the protocol and the geometry), ``OUT/report.md`` and ``OUT/figures/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from caloflow.data.io import Showers, read_showers


def _log(msg: str) -> None:
    tqdm.write(f"[evaluate] {msg}")


def _read(path, max_showers: int | None, geometry, min_energy_mev: float) -> Showers:
    """The file's first ``max_showers`` showers in float64 (the official files' dtype), voxels
    below the threshold set to zero."""
    import torch

    from caloflow.radial_features import apply_min_energy

    showers = read_showers(path, stop=max_showers, dtype=np.float64, geometry=geometry)
    voxels = apply_min_energy(torch.from_numpy(showers.voxels), min_energy_mev).numpy()
    return Showers(voxels, showers.energy, geometry=showers.geometry)


def _settings(args, geometry, classifiers: list[str], min_energy_mev: float) -> dict:
    from dataclasses import asdict

    from caloflow.evaluate.challenge import OfficialSettings

    settings = {
        "geometry": geometry.name,
        "protocol": args.protocol,
        "classifiers": classifiers,
        "runs": args.runs,
        "seeds": [args.seed + r for r in range(args.runs)],
        "min_energy_mev": min_energy_mev,
        "max_showers": args.max_showers,
        "seed": args.seed,
        "units": {"energies": "MeV", "lengths": "mm", "incident_energy_in_files": "MeV"},
    }
    if args.protocol == "calochallenge":
        official = OfficialSettings()
        settings["classifier"] = {
            **asdict(official),
            "epochs": args.epochs or official.epochs,
            "split": list(official.split),
        }
    else:
        settings["classifier"] = {
            "epochs": args.epochs,
            "max_epochs": args.max_epochs,
            "patience": args.patience,
        }
    return settings


def _feature_metrics(reference, samples, paths, args, geometry, min_energy_mev) -> tuple:
    """Features, separation powers and FPD/KPD of every sample; also returns the feature dicts."""
    from caloflow.evaluate.challenge_report import sample_entry
    from caloflow.evaluate.physics_distance import physics_distances
    from caloflow.features import summarize
    from caloflow.radial_features import classifier_inputs, radial_features

    def features(s: Showers) -> dict:
        return radial_features(s.voxels, geometry, s.energy, min_energy_mev)

    def high(s: Showers) -> np.ndarray:
        return classifier_inputs(s.voxels, s.energy, geometry, "cls-high", min_energy_mev)

    _log("computing features")
    ref_features, ref_high = features(reference), high(reference)
    ref_entry = {
        "path": str(args.reference),
        "n_showers": len(reference),
        "features": {k: summarize(v) for k, v in ref_features.items()},
    }
    entries, sample_features = {}, {}
    for name, s in samples.items():
        sample_features[name] = features(s)
        entry = {"path": str(paths[name]), "n_showers": len(s)}
        entry.update(
            sample_entry(
                ref_features, sample_features[name], reference.voxels, s.voxels,
                reference.energy, s.energy, geometry, min_energy_mev,
            )
        )  # fmt: skip
        _log(f"FPD and KPD of {name}")
        entry["physics_distances"] = physics_distances(ref_high, high(s))
        entries[name] = entry
    return ref_entry, entries, ref_features, sample_features


def _figures(reference, samples, ref_features, sample_features, geometry, min_energy, fig_dir):
    from caloflow.evaluate import challenge_figures as cf
    from caloflow.geometry import GEV
    from caloflow.radial_features import is_dataset1

    _log(f"writing figures to {fig_dir}")
    written = {
        "challenge_average_showers": cf.average_polar_images(
            reference.voxels, {n: s.voxels for n, s in samples.items()}, geometry, min_energy,
            fig_dir,
        ),
        **cf.feature_figures(ref_features, sample_features, geometry, min_energy, fig_dir),
        "challenge_voxel_energies": cf.voxel_energy_figure(
            reference.voxels, {n: s.voxels for n, s in samples.items()}, min_energy, fig_dir
        ),
    }  # fmt: skip
    if is_dataset1(geometry):
        written["challenge_energy_response"] = cf.energy_response_figure(
            ref_features["E_tot_over_E_inc"],
            reference.energy * GEV,
            {
                n: (f["E_tot_over_E_inc"], samples[n].energy * GEV)
                for n, f in sample_features.items()
            },
            geometry,
            fig_dir,
        )
    return written


def _classifiers(args, reference, samples, geometry, classifiers, min_energy, log_dir) -> dict:
    from caloflow.evaluate.challenge import challenge_classifier_test

    results: dict[str, dict] = {}
    with tqdm(desc="classifier epochs", unit="epoch", disable=not args.progress) as bar:
        for name, s in samples.items():
            for kind in classifiers:
                bar.set_description(f"{name} {kind}")
                res = challenge_classifier_test(
                    reference, s, geometry, kind, protocol=args.protocol, runs=args.runs,
                    seed=args.seed, min_energy_mev=min_energy, epochs=args.epochs,
                    max_epochs=args.max_epochs, patience=args.patience, log_dir=log_dir,
                    name=f"{name}_{kind}", progress=bar,
                )  # fmt: skip
                results.setdefault(name, {})[kind] = res
                _log(
                    f"{name} {kind} ({args.protocol}): AUC {res['auc']['mean']:.3f} ± "
                    f"{res['auc']['std']:.3f}, JSD {res['jsd']['mean']:.3f} ± {res['jsd']['std']:.3f}"
                )
    return results


def run_challenge(args, samples_paths: dict[str, Path], geometry, classifiers: list[str]) -> int:
    """The CaloChallenge-kind evaluation (module docstring); returns the exit status."""
    from caloflow.radial_features import default_min_energy_mev
    from caloflow.training import quiet_lightning

    quiet_lightning()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    min_energy = default_min_energy_mev(geometry) if args.min_energy is None else args.min_energy
    expected = getattr(args, "geometry", None) and geometry
    _log(f"reading {args.reference} ({geometry.name}; voxels below {min_energy:g} MeV set to 0)")
    reference = _read(args.reference, args.max_showers, expected, min_energy)
    samples = {
        n: _read(p, args.max_showers, expected, min_energy) for n, p in samples_paths.items()
    }
    ref_entry, entries, ref_features, sample_features = _feature_metrics(
        reference, samples, samples_paths, args, geometry, min_energy
    )
    metrics = {
        "settings": _settings(args, geometry, classifiers, min_energy),
        "reference": ref_entry,
        "samples": entries,
    }
    written = _figures(
        reference, samples, ref_features, sample_features, geometry, min_energy, out / "figures"
    )
    if classifiers:
        results = _classifiers(
            args, reference, samples, geometry, classifiers, min_energy, out / "tensorboard"
        )
        for name, per_kind in results.items():
            metrics["samples"][name]["classifier"] = per_kind
    _write_outputs(out, metrics, written, geometry)
    return 0


def _write_outputs(out: Path, metrics: dict, written: dict, geometry) -> None:
    from caloflow.atomic import write_text_atomic
    from caloflow.evaluate.challenge_report import render_challenge_report
    from caloflow.evaluate.report import write_metrics

    rel = {k: [str(Path(p).relative_to(out)) for p in v] for k, v in written.items()}
    metrics["figures"] = rel
    write_metrics(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_challenge_report(metrics, rel, geometry))
    _log(
        f"wrote {out / 'metrics.json'}, {out / 'report.md'} and {sum(map(len, rel.values()))} figures"
    )


__all__ = ["run_challenge"]
