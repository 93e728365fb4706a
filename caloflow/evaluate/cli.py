"""``caloflow evaluate``: compare generated showers with a reference (CaloFlow paper section 5).

    caloflow evaluate --reference geant4_eplus.hdf5 --samples caloflow=gen.hdf5 calogan=gan.hdf5 \
        --out eval/ --classifier dnn,cnn --preprocessing unnormalized,normalized,logit --runs 10

writes ``OUT/figures/`` (PNG and PDF), ``OUT/metrics.json``, ``OUT/report.md`` and the
classifiers' TensorBoard logs under ``OUT/tensorboard/``.
"""
from __future__ import annotations

import argparse
import logging
import re
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from caloflow.data.io import count_showers, read_showers
from caloflow.errors import CaloflowError

#: Defaults of the paper (appendix A: both architectures, 10 runs; section 5.4 / appendix B).
DEFAULT_CLASSIFIERS = "dnn,cnn"
DEFAULT_PREPROCESSINGS = "unnormalized,normalized,logit"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, help="reference (e.g. GEANT4) showers, CaloGAN HDF5 file")
    parser.add_argument("--samples", required=True, nargs="+", metavar="NAME=PATH",
                        help="generated showers to judge, each as NAME=PATH (CaloGAN HDF5)")
    parser.add_argument("--out", required=True, help="output folder (figures/, metrics.json, report.md)")
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIERS,
                        help=f"comma-separated classifiers (dnn, cnn) or 'none' (default: {DEFAULT_CLASSIFIERS})")
    parser.add_argument("--preprocessing", default=DEFAULT_PREPROCESSINGS,
                        help="comma-separated classifier input preprocessings: unnormalized, normalized, logit, "
                             f"logit-normalized (default: {DEFAULT_PREPROCESSINGS})")
    parser.add_argument("--runs", type=int, default=10, help="classifier runs (seeds) per setting (default: 10)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="classifier epochs (default: 60 for the DNN, 50 for the CNN)")
    parser.add_argument("--max-showers", type=int, default=None,
                        help="use at most this many showers of each file (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _parse_list(value: str, allowed: tuple[str, ...], option: str, allow_none: bool = False) -> list[str]:
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    if allow_none and items == ["none"]:
        return []
    if not items:
        raise CaloflowError(f"{option}: empty list")
    for item in items:
        if item not in allowed:
            raise CaloflowError(f"{option}: unknown value '{item}', choose from {', '.join(allowed)}"
                                + (" or 'none'" if allow_none else ""))
    return list(dict.fromkeys(items))


def parse_samples(values: list[str]) -> dict[str, Path]:
    """['NAME=PATH', ...] -> {NAME: PATH}; one-line errors for malformed or repeated names."""
    samples: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise CaloflowError(f"--samples: '{value}' is not NAME=PATH")
        if not NAME_PATTERN.match(name):
            raise CaloflowError(f"--samples: bad name '{name}' in '{value}' (letters, digits, _ . + - only)")
        if name in samples or name.lower() == "reference":
            raise CaloflowError(f"--samples: name '{name}' used twice (or reserved)")
        samples[name] = Path(path)
    return samples


def _check_args(args) -> tuple[dict[str, Path], list[str], list[str]]:
    samples = parse_samples(args.samples)
    if args.runs < 1:
        raise CaloflowError(f"--runs must be >= 1, got {args.runs}")
    if args.epochs is not None and args.epochs < 1:
        raise CaloflowError(f"--epochs must be >= 1, got {args.epochs}")
    if args.max_showers is not None and args.max_showers < 10:
        raise CaloflowError(f"--max-showers must be >= 10, got {args.max_showers}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CaloflowError(f"--out: {out} exists and is not a folder")
    # every file is checked (keys, shapes) before any long computation starts
    for path in [Path(args.reference), *samples.values()]:
        if count_showers(path) < 10:
            raise CaloflowError(f"{path}: fewer than 10 showers")
    # torch and lightning load only once the files are known to be good
    from caloflow.models.classifiers import ARCHITECTURES, PREPROCESSINGS

    classifiers = _parse_list(args.classifier, ARCHITECTURES, "--classifier", allow_none=True)
    preprocessings = _parse_list(args.preprocessing, PREPROCESSINGS, "--preprocessing")
    return samples, classifiers, preprocessings


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def run(args) -> int:
    samples_paths, classifiers, preprocessings = _check_args(args)
    # heavy imports only after the arguments are known to be good
    from caloflow.evaluate import figures as figs
    from caloflow.evaluate.classifier_test import DEFAULT_EPOCHS, classifier_test
    from caloflow.evaluate.features import compute_features, summarize
    from caloflow.atomic import write_text_atomic
    from caloflow.evaluate.report import feature_metrics, render_report, write_metrics

    _quiet_lightning()
    out = Path(args.out)
    fig_dir = out / "figures"
    log = lambda msg: tqdm.write(f"[evaluate] {msg}")  # noqa: E731

    log(f"reading {args.reference}")
    reference = read_showers(args.reference, stop=args.max_showers)
    samples = {}
    for name, path in samples_paths.items():
        log(f"reading {name} = {path}")
        samples[name] = read_showers(path, stop=args.max_showers)

    log("computing features")
    ref_features = compute_features(reference.voxels)
    sample_features = {n: compute_features(s.voxels) for n, s in tqdm(samples.items(), desc="features", leave=False)}

    metrics: dict = {
        "settings": {"classifiers": classifiers, "preprocessings": preprocessings, "runs": args.runs,
                     "epochs": args.epochs if args.epochs is not None else {c: DEFAULT_EPOCHS[c] for c in classifiers},
                     "max_showers": args.max_showers, "seed": args.seed, "threshold_kev": 10.0,
                     "units": {"energy_features": "MeV", "centroids_widths": "mm", "incident_energy": "GeV"}},
        "reference": {"path": str(args.reference), "n_showers": len(reference),
                      "features": {k: summarize(v) for k, v in ref_features.items()}},
        "samples": {},
    }
    all_sample_features = list(sample_features.values())
    for name, feats in sample_features.items():
        metrics["samples"][name] = {"path": str(samples_paths[name]), "n_showers": len(samples[name]),
                                    "features": feature_metrics(ref_features, feats, all_sample_features)}

    log(f"writing figures to {fig_dir}")
    written: dict[str, list[Path]] = {}
    written.update(figs.feature_figures(ref_features, sample_features, fig_dir))
    written["average_images"] = figs.average_images(reference.voxels, {n: s.voxels for n, s in samples.items()},
                                                    fig_dir)
    index = figs.pick_reference_showers(reference.energy, seed=args.seed)
    neighbours = {}
    for name, s in samples.items():
        neighbours[name] = figs.nearest_neighbours(reference.voxels, reference.energy, index, s.voxels, s.energy)
        metrics["samples"][name]["nearest_neighbours"] = neighbours[name]
    written["nearest_neighbours"] = figs.nearest_neighbour_figure(
        reference.voxels, reference.energy, index, neighbours, {n: s.voxels for n, s in samples.items()}, fig_dir)

    if classifiers:
        total = sum(args.runs * (args.epochs or DEFAULT_EPOCHS[c]) for c in classifiers) * len(preprocessings) \
            * len(samples)
        with tqdm(total=total, desc="classifier epochs", unit="epoch") as bar:
            for name, s in samples.items():
                results = metrics["samples"][name].setdefault("classifier", {})
                for model in classifiers:
                    for pre in preprocessings:
                        bar.set_description(f"{name} {model} {pre}")
                        res = classifier_test(reference, s, model, pre, runs=args.runs, epochs=args.epochs,
                                              seed=args.seed, log_dir=out / "tensorboard",
                                              name=f"{name}_{model}_{pre}", progress=bar)
                        results.setdefault(model, {})[pre] = res
                        log(f"{name} {model} {pre}: AUC {res['auc']['mean']:.3f} ± {res['auc']['std']:.3f}, "
                            f"JSD {res['jsd']['mean']:.3f} ± {res['jsd']['std']:.3f}")

    rel = {k: [str(p.relative_to(out)) for p in v] for k, v in written.items()}
    metrics["figures"] = rel
    write_metrics(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_report(metrics, rel))
    log(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and {sum(len(v) for v in rel.values())} figure files")
    return 0


__all__ = ["add_arguments", "run", "parse_samples"]
