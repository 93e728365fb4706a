"""``caloflow evaluate``: compare generated showers with a reference (CaloFlow paper section 5).

    caloflow evaluate --reference geant4_eplus.hdf5 --samples caloflow=gen.hdf5 calogan=gan.hdf5 \
        --out eval/ --classifier dnn,cnn --preprocessing unnormalized,normalized,logit --runs 10

writes ``OUT/figures/`` (PNG and PDF), ``OUT/metrics.json``, ``OUT/report.md`` and the
classifiers' TensorBoard logs under ``OUT/tensorboard/``.

CaloChallenge files (a polar geometry, found from the files; all of one geometry) are evaluated as
the challenge's evaluator does (:mod:`caloflow.commands.evaluate_challenge`): its features,
separation powers, FPD/KPD and the classifiers ``cls-low``, ``cls-low-normed``, ``cls-high`` under
``--protocol converged|calochallenge``.

``--weights NAME=PATH`` gives per-shower weights (e.g. DCTR weights) of the sample NAME: an HDF5
file with a 1-D dataset ``weight`` or a ``.npy`` file, one weight per shower in the sample's order
(cut like the showers by ``--max-showers``). That sample's classifier test, feature histograms,
separation powers, means and profiles are then weighted (:mod:`caloflow.evaluate.weights`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from caloflow.commands import argtypes
from caloflow.data.io import count_showers, read_showers
from caloflow.errors import CaloflowError, DataFormatError
from caloflow.geometry import CHALLENGE_FORMAT

#: Defaults of the paper (appendix A: both architectures, 10 runs; section 5.4 / appendix B).
DEFAULT_CLASSIFIERS = "dnn,cnn"
DEFAULT_PREPROCESSINGS = "unnormalized,normalized,logit"
VOXEL_CLASSIFIERS = ("dnn", "cnn")
#: The classifiers of CaloChallenge files (caloflow.radial_features.CLASSIFIER_INPUTS).
CHALLENGE_CLASSIFIERS = ("cls-low", "cls-low-normed", "cls-high")
#: the "preprocessing" key of the feature classifier's results
FEATURE_INPUTS = "high-level"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_files(parser)
    _add_classifier_options(parser.add_argument_group("classifier test"))
    _add_challenge_options(parser.add_argument_group("CaloChallenge files"))
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default: 0)")
    argtypes.add_threads_option(parser, None)
    argtypes.add_progress_option(parser)


def _add_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference",
        required=True,
        type=argtypes.existing_file,
        help="reference (e.g. GEANT4) showers, CaloGAN or CaloChallenge HDF5 file",
    )
    parser.add_argument(
        "--samples",
        required=True,
        nargs="+",
        metavar="NAME=PATH",
        help="generated showers to judge, each as NAME=PATH (HDF5 of the reference's geometry)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=argtypes.output_dir,
        help="output folder (figures/, metrics.json, report.md)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse (instead of warning) samples of another particle than the reference",
    )
    parser.add_argument(
        "--threshold-reference",
        action="store_true",
        help="apply the sampler's 10 keV voxel cut to the reference showers too",
    )
    parser.add_argument(
        "--max-showers",
        type=argtypes.positive_int,
        default=None,
        help="use at most this many showers of each file (default: all)",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        metavar="NAME=PATH",
        default=None,
        help="per-shower weights (e.g. DCTR) of the sample NAME (one of --samples): an HDF5 file "
        "with a 1-D dataset 'weight', or a .npy file, one finite weight >= 0 per shower; "
        "that sample's classifier test and feature histograms are then weighted",
    )


def _add_classifier_options(group) -> None:
    group.add_argument(
        "--classifier",
        default=None,
        help="comma-separated classifiers or 'none'. CaloGAN files: dnn, cnn (voxels, appendix A), "
        f"features (41 high-level features) (default: {DEFAULT_CLASSIFIERS}); CaloChallenge files: "
        f"{', '.join(CHALLENGE_CLASSIFIERS)} (default: all three)",
    )
    group.add_argument(
        "--preprocessing",
        default=None,
        help="CaloGAN files: comma-separated classifier input preprocessings: unnormalized, "
        f"normalized, logit, logit-normalized (default: {DEFAULT_PREPROCESSINGS})",
    )
    group.add_argument(
        "--protocol",
        default="converged",
        choices=("converged", "calochallenge"),
        help="how the classifiers of CaloChallenge files are trained: 'converged' (early stopping, "
        "--runs runs, mean ± std) or 'calochallenge' (the challenge evaluator's: 50 epochs, best "
        "test-accuracy epoch; for comparison with published numbers) (default: converged)",
    )
    group.add_argument(
        "--runs",
        type=argtypes.positive_int,
        default=10,
        help="classifier runs (seeds) per setting (default: 10)",
    )
    group.add_argument(
        "--epochs",
        type=argtypes.positive_int,
        default=None,
        help="train every classifier for exactly this many epochs, without early stopping "
        "(default: train to convergence: early stopping on the validation loss)",
    )
    group.add_argument(
        "--max-epochs",
        type=argtypes.positive_int,
        default=None,
        help="upper bound of the converging training (default: at least twice the paper's "
        "7,200 optimizer updates, whatever the data size)",
    )
    group.add_argument(
        "--patience",
        type=argtypes.positive_int,
        default=None,
        help="early-stopping patience in epochs (default: 1,200 optimizer updates, >= 10 epochs)",
    )


def _add_challenge_options(group) -> None:
    group.add_argument(
        "--min-energy",
        type=_non_negative_mev,
        default=None,
        metavar="MEV",
        help="CaloChallenge files: voxels below this (MeV) are set to zero in every file before "
        "features and classifiers (default: 1 for dataset 1, 0.5e-3 / 0.033 otherwise)",
    )
    group.add_argument(
        "--geometry",
        default=None,
        help="CaloChallenge files of a geometry that is neither built in nor stored in the files: "
        "its binning XML (default: from the files)",
    )


def _non_negative_mev(value: str) -> float:
    x = argtypes.finite_float(value)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (MeV), got '{value}'")
    return x


def _parse_list(
    value: str, allowed: tuple[str, ...], option: str, allow_none: bool = False
) -> list[str]:
    if allow_none and value.strip().lower() == "none":
        return []
    try:
        return argtypes.comma_list(allowed)(value.lower())
    except argparse.ArgumentTypeError as e:
        raise CaloflowError(f"{option}: {e}" + (" or 'none'" if allow_none else "")) from None


def parse_samples(values: list[str]) -> dict[str, Path]:
    """['NAME=PATH', ...] -> {NAME: PATH}; one-line errors for malformed or repeated names."""
    samples: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise CaloflowError(f"--samples: '{value}' is not NAME=PATH")
        if not NAME_PATTERN.match(name):
            raise CaloflowError(
                f"--samples: bad name '{name}' in '{value}' (letters, digits, _ . + - only)"
            )
        if name in samples or name.lower() == "reference":
            raise CaloflowError(f"--samples: name '{name}' used twice (or reserved)")
        samples[name] = Path(path)
    return samples


def _check_args(args) -> tuple[dict[str, Path], dict[str, np.ndarray], list[str], list[str]]:
    samples = parse_samples(args.samples)
    weight_paths = _parse_weights(args, samples)
    if args.max_showers is not None and args.max_showers < 10:
        raise CaloflowError(f"--max-showers must be >= 10, got {args.max_showers}")
    geometry = _check_files(args, samples)
    if geometry.file_format == CHALLENGE_FORMAT:
        _refuse_calogan_options(args, weight_paths)
    else:
        _refuse_challenge_options(args)
    weights = _load_weights(weight_paths, samples, args.max_showers)
    # torch and lightning load only once the files are known to be good
    from caloflow.models.classifiers import ARCHITECTURES, PREPROCESSINGS

    challenge = geometry.file_format == CHALLENGE_FORMAT
    default = ",".join(CHALLENGE_CLASSIFIERS) if challenge else DEFAULT_CLASSIFIERS
    allowed = ARCHITECTURES + CHALLENGE_CLASSIFIERS
    classifiers = _parse_list(args.classifier or default, allowed, "--classifier", allow_none=True)
    _check_classifier_family(classifiers, challenge, geometry)
    preprocessings = _parse_list(
        args.preprocessing or DEFAULT_PREPROCESSINGS, PREPROCESSINGS, "--preprocessing"
    )
    args.geometry_found = geometry
    return samples, weights, classifiers, preprocessings


def _check_files(args, samples: dict[str, Path]):
    """Every file checked (keys, shapes, at least 10 showers) before any long computation starts,
    errors naming the option; all files must share one geometry, which is returned."""
    from caloflow.data.io import file_geometry

    expected = _expected_geometry(args)
    found = None
    for option, path in [
        ("--reference", Path(args.reference)),
        *((f"--samples {n}=", p) for n, p in samples.items()),
    ]:
        shown = f"{option}{path}" if option.endswith("=") else f"{option} {path}"
        if not path.is_file():
            raise CaloflowError(
                f"{shown}: {'is a directory, expected a file' if path.is_dir() else 'no such file'}"
            )
        try:
            n = count_showers(path, expected)
            geometry = file_geometry(path, expected)
        except DataFormatError as e:
            raise DataFormatError(f"{option.rstrip('=').split()[0]}: {e}") from None
        if n < 10:
            raise CaloflowError(f"{shown}: has {n} showers, need at least 10")
        if found is not None and geometry != found:
            raise CaloflowError(
                f"{shown}: showers of the {geometry.name} geometry, but the reference's are "
                f"{found.name}; compare files of one geometry"
            )
        found = geometry
    return found


def _expected_geometry(args):
    if getattr(args, "geometry", None) is None:
        return None
    from caloflow.geometry import get_geometry

    geometry = get_geometry(args.geometry)
    if geometry.file_format != CHALLENGE_FORMAT:
        raise CaloflowError(
            f"--geometry {args.geometry}: only CaloChallenge geometries need naming; CaloGAN "
            "files are recognised from their keys"
        )
    return geometry


def _refuse_calogan_options(args, weight_paths) -> None:
    """One line for each CaloGAN-only option given with CaloChallenge files."""
    if weight_paths:
        raise CaloflowError("--weights: weighted samples are evaluated for CaloGAN files only")
    if args.threshold_reference:
        raise CaloflowError(
            "--threshold-reference: CaloGAN files only; CaloChallenge files get --min-energy "
            "on every file"
        )
    if args.preprocessing is not None:
        raise CaloflowError(
            "--preprocessing: CaloGAN files only; the CaloChallenge classifiers have their "
            f"inputs ({', '.join(CHALLENGE_CLASSIFIERS)})"
        )


def _refuse_challenge_options(args) -> None:
    """One line for each CaloChallenge-only option given with CaloGAN files."""
    if args.protocol != "converged":
        raise CaloflowError(
            f"--protocol {args.protocol}: CaloChallenge files only (CaloGAN files are judged "
            "with the converged protocol)"
        )
    if args.min_energy is not None:
        raise CaloflowError(
            "--min-energy: CaloChallenge files only (CaloGAN files: the sampler's 10 keV cut, "
            "see --threshold-reference)"
        )


def _check_classifier_family(classifiers: list[str], challenge: bool, geometry) -> None:
    wrong = [c for c in classifiers if (c in CHALLENGE_CLASSIFIERS) != challenge]
    if wrong:
        allowed = CHALLENGE_CLASSIFIERS if challenge else ("dnn", "cnn", "features")
        raise CaloflowError(
            f"--classifier: {','.join(wrong)} is not for {geometry.name} files; use "
            f"{', '.join(allowed)} or 'none'"
        )


def _parse_weights(args, samples: dict[str, Path]) -> dict[str, Path]:
    from caloflow.evaluate.weights import parse_weight_options

    return parse_weight_options(getattr(args, "weights", None), samples)


def _load_weights(
    weight_paths: dict[str, Path], samples: dict[str, Path], max_showers: int | None
) -> dict[str, np.ndarray]:
    """Every sample's weights, read and checked (cut to ``max_showers`` like its showers)."""
    from caloflow.evaluate.weights import load_weights

    return {
        name: load_weights(
            path,
            count_showers(samples[name]),
            option=f"--weights {name}=",
            sample=f"--samples {name}={samples[name]}",
            max_showers=max_showers,
        )
        for name, path in weight_paths.items()
    }


def run(args) -> int:
    """``caloflow evaluate``: read, compute features, draw figures, run the classifier tests, write the outputs.

    Writes ``OUT/figures/``, ``OUT/metrics.json`` and ``OUT/report.md`` (atomically); returns the exit status.
    """
    samples_paths, weights, classifiers, preprocessings = _check_args(args)
    _check_particles(args.reference, samples_paths, args.strict)
    if args.geometry_found.file_format == CHALLENGE_FORMAT:
        from caloflow.commands.evaluate_challenge import run_challenge

        return run_challenge(args, samples_paths, args.geometry_found, classifiers)
    # heavy imports only after the arguments are known to be good
    from caloflow.training import quiet_lightning

    quiet_lightning()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    reference, samples = _read_inputs(
        args.reference, samples_paths, args.max_showers, args.threshold_reference
    )
    ref_features, sample_features = _compute_features(reference, samples, args.progress)
    weight_paths = _parse_weights(args, samples_paths)
    ref_entry, sample_entries = _feature_metrics(
        args.reference,
        reference,
        samples_paths,
        samples,
        ref_features,
        sample_features,
        weights,
        weight_paths,
    )
    metrics: dict = {
        "settings": _settings(args, classifiers, preprocessings),
        "reference": ref_entry,
        "samples": sample_entries,
    }
    if (
        weights
    ):  # (nothing is added without weights: unweighted metrics.json files stay as they were)
        metrics["settings"]["weights"] = {name: str(p) for name, p in weight_paths.items()}
    written, neighbours = _write_figures(
        reference, samples, ref_features, sample_features, out / "figures", args.seed, weights
    )
    for name, nb in neighbours.items():
        metrics["samples"][name]["nearest_neighbours"] = nb
    if classifiers:
        results = _classifier_tests(
            args, reference, samples, classifiers, preprocessings, out / "tensorboard", weights
        )
        for name, per_model in results.items():
            metrics["samples"][name]["classifier"] = per_model
    _write_outputs(out, metrics, written)
    return 0


def _check_particles(reference_path, samples_paths: dict[str, Path], strict: bool) -> None:
    """Warn in one line (refuse with ``--strict``) when a sample's particle, as its file records it (the
    generator's training domain, or the simulator's particle), is not the reference's."""
    from caloflow.domain import check_particle, of_file

    reference = of_file(reference_path)
    for name, path in samples_paths.items():
        check_particle(reference, of_file(path), f"--samples {name}={path}", strict)


def _log(msg: str) -> None:
    tqdm.write(f"[evaluate] {msg}")


def _read_inputs(
    reference_path, samples_paths: dict[str, Path], max_showers: int | None, threshold: bool = False
):
    """The reference and every sample, each cut to its first ``max_showers`` showers (all if None).

    With ``threshold`` the reference's voxels below 10 keV are set to zero, the cut the sampler applies to
    generated showers (section 4.3); the paper found it changes nothing, and this makes that checkable.
    """
    _log(f"reading {reference_path}")
    reference = read_showers(reference_path, stop=max_showers)
    if threshold:
        from caloflow.data.io import Showers
        from caloflow.features import apply_threshold

        reference = Showers(
            apply_threshold(reference.voxels).astype(reference.voxels.dtype),
            reference.energy,
            reference.overflow,
        )
    samples = {}
    for name, path in samples_paths.items():
        _log(f"reading {name} = {path}")
        samples[name] = read_showers(path, stop=max_showers)
    return reference, samples


def _compute_features(reference, samples: dict, progress: bool = True) -> tuple[dict, dict]:
    """The paper's high-level features (sections 5.2-5.3; MeV, mm) of the reference and of each sample,
    with E_hat / E_inc from the incident energies."""
    from caloflow.features import compute_features

    _log("computing features")
    ref_features = compute_features(reference.voxels, incident_gev=reference.energy)
    sample_features = {
        n: compute_features(s.voxels, incident_gev=s.energy)
        for n, s in tqdm(samples.items(), desc="features", leave=False, disable=not progress)
    }
    return ref_features, sample_features


def _settings(args, classifiers: list[str], preprocessings: list[str]) -> dict:
    """metrics.json's "settings": what was run, the 10 keV voxel cut, and the units of the numbers."""
    from caloflow.evaluate import classification as ct

    training = (
        {"schedule": "fixed", "epochs": args.epochs}
        if args.epochs is not None
        else {
            "schedule": "early stopping on val_loss, best val_acc epoch kept",
            "max_epochs": args.max_epochs
            or f"max(2 x paper epochs, 2 x {ct.PAPER_UPDATES} updates)",
            "patience": args.patience
            or f"max({ct.MIN_PATIENCE_EPOCHS} epochs, {ct.PATIENCE_UPDATES} updates)",
        }
    )
    return {
        "classifiers": classifiers,
        "preprocessings": preprocessings,
        "runs": args.runs,
        "seeds": [args.seed + r for r in range(args.runs)],
        "split": list(ct.SPLIT_FRACTIONS),
        "batch_size": 1000,
        "optimizer": "Adam, lr 5e-4",
        "training": training,
        "calibration": "isotonic regression on the validation split",
        "max_showers": args.max_showers,
        "seed": args.seed,
        "threshold_kev": 10.0,
        "threshold_reference": bool(args.threshold_reference),
        "units": {"energy_features": "MeV", "centroids_widths": "mm", "incident_energy": "GeV"},
    }


def _feature_metrics(
    reference_path,
    reference,
    samples_paths: dict[str, Path],
    samples: dict,
    ref_features: dict,
    sample_features: dict,
    weights: dict[str, np.ndarray] | None = None,
    weight_paths: dict[str, Path] | None = None,
) -> tuple[dict, dict]:
    """metrics.json's "reference" and "samples" entries: file, shower count and feature summaries.

    Each sample's separation powers are computed on bins common to the reference and all samples; a
    weighted sample's histograms and summaries are weighted, and its entry records ``"weighted": true``
    and its ``"weights"`` (file, count, sum, range, effective sample size).
    """
    from caloflow.evaluate.report import feature_metrics
    from caloflow.evaluate.weights import weight_summary
    from caloflow.features import summarize

    weights, weight_paths = weights or {}, weight_paths or {}
    ref_entry = {
        "path": str(reference_path),
        "n_showers": len(reference),
        "features": {k: summarize(v) for k, v in ref_features.items()},
    }
    all_sample_features = list(sample_features.values())
    sample_entries = {}
    for name, feats in sample_features.items():
        w = weights.get(name)
        sample_entries[name] = {"path": str(samples_paths[name]), "n_showers": len(samples[name])}
        if w is not None:
            sample_entries[name]["weighted"] = True
            sample_entries[name]["weights"] = {"path": str(weight_paths[name]), **weight_summary(w)}
        sample_entries[name]["features"] = feature_metrics(
            ref_features, feats, all_sample_features, w
        )
    return ref_entry, sample_entries


def _write_figures(
    reference,
    samples: dict,
    ref_features: dict,
    sample_features: dict,
    fig_dir: Path,
    seed: int,
    weights: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, list[Path]], dict[str, list]]:
    """Feature histograms, average showers and nearest neighbours (paper figs. 5-19) as PNG and PDF;
    weighted samples' histograms, profiles and averages are weighted.

    Returns the files written per figure group, and each sample's nearest neighbours of the reference
    showers picked with ``seed`` (energies in GeV, distance in MeV).
    """
    from caloflow.evaluate import figures as figs

    _log(f"writing figures to {fig_dir}")
    weights = weights or None
    written: dict[str, list[Path]] = {}
    written.update(figs.feature_figures(ref_features, sample_features, fig_dir, weights=weights))
    written["energy_response"] = figs.energy_response_figure(
        ref_features,
        sample_features,
        reference.energy,
        {n: s.energy for n, s in samples.items()},
        fig_dir,
        weights=weights,
    )
    written["average_images"] = figs.average_images(
        reference.voxels, {n: s.voxels for n, s in samples.items()}, fig_dir, weights=weights
    )
    index = figs.pick_reference_showers(reference.energy, seed=seed)
    neighbours = {}
    for name, s in samples.items():
        neighbours[name] = figs.nearest_neighbours(
            reference.voxels, reference.energy, index, s.voxels, s.energy
        )
    written["nearest_neighbours"] = figs.nearest_neighbour_figure(
        reference.voxels,
        reference.energy,
        index,
        neighbours,
        {n: s.voxels for n, s in samples.items()},
        fig_dir,
    )
    return written, neighbours


def _classifier_tests(
    args,
    reference,
    samples: dict,
    classifiers: list[str],
    preprocessings: list[str],
    log_dir: Path,
    weights: dict[str, np.ndarray] | None = None,
) -> dict[str, dict]:
    """Reference-vs-sample classifier test (section 5.4, appendix A) of every sample, classifier and
    preprocessing: ``{sample: {classifier: {preprocessing: AUC and JSD, mean and std over runs}}}``.

    The feature classifier has no voxel preprocessing: its one entry is keyed ``high-level``. A sample
    with ``weights`` gets the weighted test (:mod:`caloflow.evaluate.classification`).
    """
    from caloflow.evaluate.classification import classifier_test

    weights = weights or {}
    results: dict[str, dict] = {}
    with tqdm(desc="classifier epochs", unit="epoch", disable=not args.progress) as bar:
        for name, s in samples.items():
            per_model = results.setdefault(name, {})
            for model in classifiers:
                for pre in preprocessings if model in VOXEL_CLASSIFIERS else [FEATURE_INPUTS]:
                    bar.set_description(f"{name} {model} {pre}")
                    res = classifier_test(
                        reference,
                        s,
                        model,
                        pre,
                        runs=args.runs,
                        epochs=args.epochs,
                        seed=args.seed,
                        log_dir=log_dir,
                        name=f"{name}_{model}_{pre}",
                        progress=bar,
                        max_epochs=args.max_epochs,
                        patience=args.patience,
                        weights=weights.get(name),
                    )
                    per_model.setdefault(model, {})[pre] = res
                    _log(_summary_line(name, model, pre, res))
    return results


def _summary_line(name: str, model: str, pre: str, res: dict) -> str:
    """One log line per setting: AUC, JSD, the epochs chosen / run, and whether every run converged."""
    best = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in res["runs"])
    flag = (
        "converged"
        if res["converged"]
        else "NOT CONVERGED (best epoch = last allowed, or no early stop)"
    )
    if res.get("weighted"):
        flag += f"; weighted, test ESS {res['ess']['test']:.0f}"
    return (
        f"{name} {model} {pre}: AUC {res['auc']['mean']:.3f} ± {res['auc']['std']:.3f}, "
        f"JSD {res['jsd']['mean']:.3f} ± {res['jsd']['std']:.3f}; best/run epochs {best}; {flag}"
    )


def _write_outputs(out: Path, metrics: dict, written: dict[str, list[Path]]) -> None:
    """metrics.json (with the figures' paths relative to ``out``) and report.md, each written atomically."""
    from caloflow.atomic import write_text_atomic
    from caloflow.evaluate.report import render_report, write_metrics

    rel = {k: [str(p.relative_to(out)) for p in v] for k, v in written.items()}
    metrics["figures"] = rel
    write_metrics(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_report(metrics, rel))
    _log(
        f"wrote {out / 'metrics.json'}, {out / 'report.md'} and {sum(len(v) for v in rel.values())} figure files"
    )


__all__ = ["add_arguments", "run", "parse_samples"]
