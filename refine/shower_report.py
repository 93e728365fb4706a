"""The evaluation of ``python -m refine.laser --flow1 ...`` on the held-out evaluation split.

Every method's showers at the evaluation energies (``DIR/showers/METHOD.hdf5``) against the
evaluation split of the reference file, which is read here for the first time:

* **classifier tests** (:func:`caloflow.evaluate.classification.classifier_test`; CaloFlow section
  5.4, appendix A): the voxel DNN on unnormalized and on normalized showers and the high-level
  feature classifier, trained to convergence (early stopping) unless the config fixes the epochs,
  ``evaluation.runs`` seeds each: held-out AUC and JSD = (ln 2 - BCE) / ln 2 after isotonic
  calibration, mean +- std over the runs. DCTR is the weighted test (weighted training, weighted
  AUC and BCE) of the unrefined showers with their weights w;
* **separation powers** S = 1/2 sum (h1 - h2)^2 / (h1 + h2) of the feature histograms
  (:func:`caloflow.evaluate.report.feature_metrics`; DCTR weighted), and their mean per method.

Showers of a polar (CaloChallenge, e.g. dataset-1) geometry get the CaloChallenge tests instead: the
classifiers on the evaluator's ``cls-low``, ``cls-low-normed`` and ``cls-high`` inputs after its
voxel threshold (1 MeV for dataset 1), under the ``converged`` protocol
(:func:`caloflow.evaluate.challenge.challenge_classifier_test`: early stopping, held-out AUC and JSD,
``evaluation.runs`` seeds; DCTR weighted), and the separation powers of the evaluator's features
(:mod:`caloflow.evaluate.challenge_hist`, DCTR weighted).

HMC gives ``hmc.n_hmc`` showers; its tests use as many evaluation showers (balanced classes). Small
tests are weaker, so the row ``unrefined-hmc`` scores the unrefined showers at the same energies (the
first ``n_hmc`` rows of ``unrefined.hdf5``; the chains start from other prior draws at these energies, i.e. from
this distribution) with the same test size: HMC is
judged against that row. A test with few showers trains with smaller batches (at least 10 updates per
epoch, :func:`classifier_batch_size`), so that its converging schedule stays short.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

#: (architecture, preprocessing, key) of the held-out classifier tests of CaloGAN showers
CLASSIFIERS = (
    ("dnn", "unnormalized", "dnn-unnormalized"),
    ("dnn", "normalized", "dnn-normalized"),
    ("features", "high-level", "features"),
)
#: the held-out classifier tests of showers of a polar (CaloChallenge, e.g. dataset-1) geometry:
#: the evaluator's inputs (:func:`caloflow.radial_features.classifier_inputs`), converged protocol
CHALLENGE_CLASSIFIERS = ("cls-low", "cls-low-normed", "cls-high")
TITLES = {
    "unrefined": "Unrefined",
    "dctr": "DCTR (weighted)",
    "rejection": "Rejection sampling",
    "laser": "LaSeR refiner",
    "unrefined-hmc": "Unrefined, HMC energies",
    "hmc": "HMC",
}


def _classifier_entry(result: dict) -> dict[str, Any]:
    """What results.json keeps of one classifier test."""
    entry = {
        "auc": result["auc"],
        "jsd": result["jsd"],
        "converged": result["converged"],
        "n_per_class": result["data"]["n_per_class"],
        "batch_size": result["data"]["batch_size"],
        "epochs": [f"{r['best_epoch']}/{r['epochs_run']}" for r in result["runs"]],
    }
    if result.get("weighted"):
        entry.update(weighted=True, ess=result["ess"])
    return entry


def separation_powers(
    ref_features: dict, features: dict[str, dict], weights: dict[str, np.ndarray]
) -> dict:
    """Per method: ``{"features": {name: S}, "mean": mean S over the features with a finite S}`` on bins
    common to the reference and every method (DCTR weighted)."""
    from caloflow.evaluate.report import feature_metrics

    others = list(features.values())
    out = {}
    for method, feats in features.items():
        metrics = feature_metrics(ref_features, feats, others, weights.get(method))
        powers = {name: m["separation_power"] for name, m in metrics.items()}
        finite = [v for v in powers.values() if v is not None and math.isfinite(v)]
        out[method] = {
            "mean": float(np.mean(finite)) if finite else float("nan"),
            "features": powers,
        }
    return out


#: the fewest optimizer updates per classifier epoch: a small test (HMC's few showers) gets smaller
#: batches, or its converging schedule (patience in updates) would run for thousands of tiny epochs
MIN_UPDATES_PER_EPOCH = 10


def classifier_batch_size(n_per_class: int, batch_size: int) -> int:
    """The batch size of a classifier test with ``n_per_class`` showers per class: the configured one,
    smaller if the training split (60 % of both classes) would give fewer than 10 updates per epoch."""
    from caloflow.evaluate.classification import SPLIT_FRACTIONS

    n_train = 2 * int(round(SPLIT_FRACTIONS[0] * n_per_class))
    return max(1, min(int(batch_size), n_train // MIN_UPDATES_PER_EPOCH))


def method_titles(rounds: int = 1) -> dict[str, str]:
    """The report's rows (method -> title) of a run with ``rounds`` refinement rounds: :data:`TITLES`,
    with one LaSeR row per round (``laser-roundK`` before the last round's ``laser``)."""
    if rounds == 1:
        return dict(TITLES)
    titles: dict[str, str] = {}
    for method, title in TITLES.items():
        if method == "laser":
            for k in range(1, rounds):
                titles[f"laser-round{k}"] = f"{title}, round {k}"
            title = f"{title}, round {rounds}"
        titles[method] = title
    return titles


def failed_methods(failed: dict[str, dict]) -> dict[str, dict]:
    """The rows that have no showers: the ``failed`` methods (name -> their failure entry) and, when
    HMC failed, its like-for-like unrefined row (nothing to compare it with)."""
    rows = dict(failed)
    if "hmc" in failed:
        rows["unrefined-hmc"] = {"reason": "HMC failed: no HMC showers to compare with"}
    return rows


def evaluate_methods(
    run, splits: dict, dctr_weights: np.ndarray, failed: dict[str, dict] | None = None
) -> dict[str, dict]:
    """Held-out classifier tests and separation powers of every method against the evaluation split:
    those of CaloFlow for CaloGAN showers, the CaloChallenge ones (:func:`_challenge_tests`) for a
    polar geometry. A ``failed`` method (name -> failure entry, :func:`refine.shower_laser.attempt`)
    has no showers: its row is ``{"failed": entry}``."""
    from caloflow.data.io import read_rows, read_showers
    from caloflow.radial_features import is_polar

    skipped = failed_methods(failed or {})
    titles = method_titles(getattr(run, "rounds", 1))
    reference = read_rows(run.inputs.reference, splits["evaluation_used"])
    run.say(f"evaluation split: {len(reference)} showers (read now, for the first time)")
    showers = {
        m: read_showers(run.out / "showers" / f"{m}.hdf5")
        for m in titles
        if m != "unrefined-hmc" and m not in skipped
    }
    if "unrefined-hmc" not in skipped:
        showers["unrefined-hmc"] = showers["unrefined"][: len(showers["hmc"])]
    weights = {"dctr": dctr_weights}
    results: dict[str, dict] = {
        m: {"n_showers": len(s), "classifier": {}} for m, s in showers.items()
    }
    challenge = is_polar(reference.geometry)
    for method, sample in showers.items():
        tests = _challenge_tests if challenge else _calogan_tests
        t0 = time.perf_counter()
        for key, res in tests(run, reference, sample, method, weights.get(method)):
            results[method]["classifier"][key] = _classifier_entry(res)
            run.say(
                f"{method} {key}: AUC {res['auc']['mean']:.3f} +- {res['auc']['std']:.3f}, "
                f"JSD {res['jsd']['mean']:.3f} +- {res['jsd']['std']:.3f}"
                + ("" if res["converged"] else " (NOT converged)")
            )
        # what each row's classifier tests cost: the evaluation's share of every method
        results[method]["evaluation_seconds"] = round(time.perf_counter() - t0, 2)
    powers = (
        _challenge_separation(reference, showers, weights)
        if challenge
        else _calogan_separation(reference, showers, weights)
    )
    for method, sep in powers.items():
        results[method]["separation_power"] = sep
    return {m: results[m] if m in results else {"failed": skipped[m]} for m in titles}


def _test_options(run, reference, sample, method: str, key: str, weights) -> dict:
    """The options every classifier test of a method shares: the evaluation config's runs, epochs,
    early stopping and batch size, the run's seed, the logs, the DCTR weights."""
    opts = run.cfg.evaluation
    return {
        "runs": opts.runs,
        "epochs": opts.epochs,
        "seed": run.seed,
        "batch_size": classifier_batch_size(min(len(reference), len(sample)), opts.batch_size),
        "log_dir": run.out / "logs" / "evaluation",
        "name": f"{method}_{key}",
        "max_epochs": opts.max_epochs,
        "patience": opts.patience,
        "weights": weights,
    }


def _calogan_tests(run, reference, sample, method: str, weights):
    """(key, result) of the CaloFlow classifier tests (:data:`CLASSIFIERS`) of one method."""
    from caloflow.evaluate.classification import classifier_test

    for arch, pre, key in CLASSIFIERS:
        options = _test_options(run, reference, sample, method, key, weights)
        yield key, classifier_test(reference, sample, arch, pre, **options)


def _challenge_tests(run, reference, sample, method: str, weights):
    """(key, result) of the CaloChallenge classifier tests (:data:`CHALLENGE_CLASSIFIERS`) of one
    method: converged protocol, the geometry's voxel threshold (1 MeV for dataset 1), DCTR weighted."""
    from caloflow.evaluate.challenge import challenge_classifier_test

    for kind in CHALLENGE_CLASSIFIERS:
        options = _test_options(run, reference, sample, method, kind, weights)
        yield (
            kind,
            challenge_classifier_test(
                reference, sample, reference.geometry, kind, protocol="converged", **options
            ),
        )


def _calogan_separation(reference, showers: dict, weights: dict) -> dict:
    """:func:`separation_powers` of the CaloGAN features (:func:`caloflow.features.compute_features`)."""
    from caloflow.features import compute_features

    ref_features = compute_features(reference.voxels, incident_gev=reference.energy)
    features = {m: compute_features(s.voxels, incident_gev=s.energy) for m, s in showers.items()}
    return separation_powers(ref_features, features, weights)


def _challenge_separation(reference, showers: dict, weights: dict) -> dict:
    """Per method the separation powers of the CaloChallenge features
    (:func:`caloflow.radial_features.radial_features`, the evaluator's bins and voxel threshold;
    DCTR weighted) and their mean over the features with a finite S."""
    from caloflow.evaluate.challenge_hist import separation_powers as challenge_powers
    from caloflow.radial_features import default_min_energy_mev, radial_features

    geometry = reference.geometry
    threshold = default_min_energy_mev(geometry)
    ref_features = radial_features(reference.voxels, geometry, reference.energy, threshold)
    out = {}
    for method, s in showers.items():
        feats = radial_features(s.voxels, geometry, s.energy, threshold)
        powers = challenge_powers(ref_features, feats, geometry, threshold, weights.get(method))
        finite = [v for v in powers.values() if math.isfinite(v)]
        out[method] = {
            "mean": float(np.mean(finite)) if finite else float("nan"),
            "features": powers,
        }
    return out


def _steps(hmc: dict) -> str:
    """The chains' leapfrog steps after burn-in: median (min-max)."""
    step = hmc.get("step_size")
    return (
        "n/a"
        if step is None
        else f"{step['median']:.3g} (chains {step['min']:.3g}-{step['max']:.3g})"
    )


def _hmc_log_w(hmc: dict) -> str:
    """Where the chains went: mean log w at their start, their kept states, and the target's."""
    lw = hmc.get("mean_log_w")
    return (
        "mean log w n/a"
        if lw is None
        else (
            f"mean log w {lw['start']:.3f} at the start (prior draws), {lw['end']:.3f} at the kept states, "
            f"{lw['target']:.3f} for the target q (the unrefined showers weighted by w)"
        )
    )


def _refiner_points_line(points: dict, refiner: str | None = None) -> str:
    """Which LaSeR refiner (class path) and how many weighted latent points it was trained on."""
    kind = "" if refiner is None else f" ({refiner.rsplit('.', 1)[-1]})"
    return (
        f"- LaSeR refiner{kind}: trained on {points['n']} weighted latent points ({points['draws_per_energy']} per "
        f"refinement energy; effective sample size {points['ess_fraction']:.3f} of them)."
    )


def _round_lines(rounds: list[dict]) -> list[str]:
    """One line per refinement round after the first: its weights (from the classifier between the
    refinement split and the previous round's refined showers) and its refiner's training points."""
    return [
        f"- Round {r['round']}: weights of the refined generator's showers: min {r['weights']['min']:.3g}, "
        f"median {r['weights']['median']:.3g}, max {r['weights']['max']:.3g}, effective sample size "
        f"{r['weights']['ess_fraction']:.3f}; refiner started from round {r['round'] - 1}'s, trained on "
        f"{r['refiner_points']['n']} weighted latent points."
        for r in rounds[1:]
    ]


def _refiner_fit_lines(rounds: list[dict]) -> list[str]:
    """One line per round whose refiner kept its best held-out weighted NLL: the gain in nats per point
    against the gain the weights ask for, KL(q || start) = E_q[log w] - log E_p[w] on the same points."""
    lines = []
    for r in rounds:
        fit = r.get("refiner_training") or {}
        if "val_nll_best" not in fit:
            continue
        gain = fit["val_nll_start"] - fit["val_nll_best"]
        kept = (
            f"epoch {fit['best_epoch']}" if fit["best_epoch"] else "its start (no epoch was better)"
        )
        lines.append(
            f"- Round {r['round']} refiner, held-out weighted NLL: {gain:.4f} nats per point below its "
            f"start, of the {fit['target_gain']:.4f} the weights ask for (KL(q || start)); kept: {kept}."
        )
    return lines


def _timing_line(timings: dict[str, float]) -> str:
    """The wall time of every stage, in minutes, and their sum."""
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items())
    return f"- Time per stage (minutes): {stages}; total {sum(timings.values()) / 60:.1f}."


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def failure_text(entry: dict) -> str:
    """A failed method's reason and its measured figures, for its row: ``failed: REASON``."""
    return f"failed: {entry['reason']}"


def _method_row(title: str, entry: dict, keys: list[str], ms: float) -> str:
    """One row of the table: the classifier tests, mean separation power and ms / shower, or the
    failure that left the method without showers."""
    if "failed" in entry:
        return f"| {title} | 0 | {failure_text(entry['failed'])} |" + " |" * (2 * len(keys) + 1)
    cells = [
        f"{_cell(entry['classifier'][k]['auc'])} | {_cell(entry['classifier'][k]['jsd'])}"
        for k in keys
    ]
    return (
        f"| {title} | {entry['n_showers']} | "
        + " | ".join(cells)
        + f" | {entry['separation_power']['mean']:.4f} | {ms:.3g} |"
    )


def _rejection_line(results: dict) -> str:
    rejection = results["rejection"]
    if "failed" in rejection:
        return f"- Rejection sampling: {failure_text(rejection['failed'])}."
    return (
        f"- Rejection sampling: acceptance {rejection['acceptance']:.3f} "
        f"(w_max {rejection['w_max']:.3g}, the {results['settings']['w_max_quantile']} quantile "
        "of the training weights)."
    )


def _hmc_line(hmc: dict) -> str:
    if "failed" in hmc:
        return f"- HMC: {failure_text(hmc['failed'])}."
    return (
        f"- HMC: acceptance {hmc['acceptance']:.3f} after burn-in, "
        f"{hmc['n_showers']} chains, leapfrog step {_steps(hmc)}; {_hmc_log_w(hmc)}."
    )


def table_markdown(results: dict[str, Any]) -> str:
    """The report: one row per method (held-out AUC and JSD per classifier, mean separation power,
    sampling time per shower), then the acceptances and the weights."""
    from caloflow.evaluate.classification import MIN_PATIENCE_EPOCHS, PATIENCE_UPDATES

    methods = results["methods"]
    keys = list(methods["unrefined"]["classifier"])  # the classifiers of this run, in order
    head = (
        "| Method | showers | "
        + " | ".join(f"{k} AUC | {k} JSD" for k in keys)
        + " | mean sep. power | ms / shower |"
    )
    lines = [
        "# LaSeR on showers: held-out evaluation",
        "",
        f"Classifier tests against the evaluation split ({results['splits']['evaluation_used']} showers, "
        "never seen by the refinement): AUC and JSD, mean ± std over "
        f"{results['settings']['evaluation_runs']} runs (0.5 / 0: indistinguishable). "
        "DCTR is the weighted test of the unrefined showers.",
        "",
        head,
        "|---" * (4 + 2 * len(keys)) + "|",
    ]
    per_shower = results["sampling"]["seconds_per_shower"]
    for method, title in method_titles(results["settings"].get("rounds", 1)).items():
        ms = 1e3 * per_shower.get(method, per_shower["unrefined"])
        lines.append(_method_row(title, methods[method], keys, ms))
    unconverged = [
        f"{m} {k}"
        for m, e in methods.items()
        for k, c in e.get("classifier", {}).items()
        if not c["converged"]
    ]
    epochs = results["settings"].get("evaluation_epochs")
    patience = results["settings"].get("evaluation_patience")
    stopping = (
        f"{patience} epochs"
        if patience
        else (
            f"the classifier test's default, max({MIN_PATIENCE_EPOCHS} epochs, {PATIENCE_UPDATES} updates)"
        )
    )
    training = (
        f"- Classifier tests: a fixed {epochs} epochs each (evaluation.epochs), not trained to convergence."
        if epochs
        else f"- Classifier tests: early stopping after {stopping} without a lower validation loss; "
        "not converged: " + (", ".join(unconverged) if unconverged else "none") + "."
    )
    w = results["weights"]
    lines += [
        "",
        _rejection_line(results),
        _refiner_points_line(results["refiner_points"], results["settings"].get("refiner")),
        *_round_lines(results.get("rounds", [])),
        *_refiner_fit_lines(results.get("rounds", [])),
        _hmc_line(results["hmc"]),
        f"- Weights w = exp(logit) on {w['n']} refinement showers: min {w['min']:.3g}, median {w['median']:.3g}, "
        f"max {w['max']:.3g}, effective sample size {w['ess_fraction']:.3f} of them.",
        training,
        _timing_line(results.get("timings_s", {})),
        "",
    ]
    return "\n".join(lines)


def write_outputs(out: Path, results: dict) -> None:
    """``results.json`` (NaN as null) and ``table.md``, atomically."""
    from caloflow.atomic import write_text_atomic
    from caloflow.evaluate.report import write_metrics

    write_metrics(out / "results.json", results)
    write_text_atomic(out / "table.md", table_markdown(results))


__all__ = [
    "CLASSIFIERS",
    "CHALLENGE_CLASSIFIERS",
    "TITLES",
    "separation_powers",
    "MIN_UPDATES_PER_EPOCH",
    "classifier_batch_size",
    "method_titles",
    "failed_methods",
    "evaluate_methods",
    "failure_text",
    "table_markdown",
    "write_outputs",
]
