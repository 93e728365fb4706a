"""``caloflow evaluate --weights``: per-shower weights of a sample (e.g. DCTR) in the classifier test and
the feature histograms, with real HDF5 files and the real command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from caloflow.data.datamodule import CaloDataModule
from caloflow.data.io import Showers, write_showers
from caloflow.data.simulate import simulate
from caloflow.evaluate.classification import (
    binary_cross_entropy,
    calibrated_metrics,
    classifier_data,
    jsd_from_bce,
)
from caloflow.evaluate.weights import effective_sample_size
from caloflow.features import compute_features, summarize
from tests.helpers import HANG_GUARD_S

#: the known answer: the sample's incident energies are drawn with a fraction A below the middle
#: E_MID of the reference's uniform 1-100 GeV, 1 - A above it, so p_sample / p_ref = 2 A resp. 2 (1 - A)
#: and the exact weights are w = p_ref / p_sample = 1 / (2 A) and 1 / (2 (1 - A))
N_KNOWN, A, E_MID = 3000, 0.8, 50.5


def _caloflow(*args, timeout=HANG_GUARD_S):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "caloflow.commands.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _write_weights(path, w, key="weight"):
    with h5py.File(path, "w") as f:
        f[key] = w
    return path


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """Reference: uniform E_inc; sample: the same simulator with a distorted E_inc density; exact weights."""
    d = tmp_path_factory.mktemp("weighted")
    n_low = int(round(A * N_KNOWN))
    low = simulate("eplus", n_low, seed=32, energy_range=(1.0, E_MID), progress=False)
    high = simulate("eplus", N_KNOWN - n_low, seed=33, energy_range=(E_MID, 100.0), progress=False)
    order = np.random.default_rng(0).permutation(N_KNOWN)
    weights = np.concatenate([np.full(n_low, 0.5 / A), np.full(N_KNOWN - n_low, 0.5 / (1 - A))])[
        order
    ]
    return {
        "reference": write_showers(
            d / "reference.hdf5", simulate("eplus", N_KNOWN, seed=31, progress=False)
        ),
        "sample": write_showers(d / "sample.hdf5", Showers.concatenate([low, high])[order]),
        "weights": _write_weights(d / "dctr.h5", weights),
        "w": weights,
    }


def _null_auc_sigma(n_reference: float, n_generated: float) -> float:
    """Standard deviation of the (weighted) Mann-Whitney AUC of a fixed score when both classes have the
    same distribution: sqrt((1/n_1 + 1/n_2) / 12), with n_2 the effective sample size of the weighted class
    (ties from the isotonic calibration only make it smaller)."""
    return math.sqrt((1.0 / n_reference + 1.0 / n_generated) / 12.0)


def test_known_answer_weights_restore_the_reference(known, tmp_path):
    """Exact weights p_ref/p_sample of a sample with a distorted E_inc spectrum: the weighted classifier
    test cannot tell it from the reference (AUC 0.5 within 4 sigma), the unweighted one can (AUC > 0.5 by
    more than 4 sigma; 0.65 for a perfect classifier of E_inc); the weighted histograms agree too."""
    out = tmp_path / "eval"
    # the same file twice: unweighted ("plain") and weighted ("dctr") in one run, on the same splits
    proc = _caloflow(
        "evaluate",
        "--reference",
        known["reference"],
        "--samples",
        f"plain={known['sample']}",
        f"dctr={known['sample']}",
        "--weights",
        f"dctr={known['weights']}",
        "--out",
        out,
        "--classifier",
        "features",
        "--runs",
        "1",
        "--max-epochs",
        "60",
        "--patience",
        "8",
        "--seed",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["weights"] == {"dctr": str(known["weights"])}
    plain, dctr = metrics["samples"]["plain"], metrics["samples"]["dctr"]
    assert "weighted" not in plain and "weights" not in plain
    assert dctr["weighted"] is True
    assert dctr["weights"]["n"] == N_KNOWN and dctr["weights"]["path"] == str(known["weights"])
    # ESS of the two weight values: N / (A / (4 A^2) + (1 - A) / (4 (1 - A)^2)) = N / 1.5625 here
    assert dctr["weights"]["ess"] == pytest.approx(effective_sample_size(known["w"]), rel=1e-12)
    assert dctr["weights"]["ess"] == pytest.approx(N_KNOWN / 1.5625, rel=0.01)

    w_res = dctr["classifier"]["features"]["high-level"]
    u_res = plain["classifier"]["features"]["high-level"]
    assert w_res["weighted"] is True and "weighted" not in u_res
    run = w_res["runs"][0]
    assert run["weighted"] is True and set(run["ess"]) == {"train", "val", "test"}
    n_test = w_res["data"]["test"] // 2  # showers per class in the test split
    assert 0 < run["ess"]["test"] < n_test and run["ess"] == w_res["ess"]
    sigma_w = _null_auc_sigma(n_test, run["ess"]["test"])
    sigma_u = _null_auc_sigma(n_test, n_test)
    assert abs(w_res["auc"]["mean"] - 0.5) < 4 * sigma_w, (w_res["auc"], sigma_w)
    assert u_res["auc"]["mean"] > 0.5 + 4 * sigma_u, (u_res["auc"], sigma_u)
    assert w_res["jsd"]["mean"] < u_res["jsd"]["mean"]

    # weighted histograms: E_inc-driven features match the reference again
    for name in ("E_hat", "E1", "l_d"):
        assert (
            dctr["features"][name]["separation_power"]
            < plain["features"][name]["separation_power"] / 4
        )
    ref, f_w = metrics["reference"]["features"]["E_hat"], dctr["features"]["E_hat"]
    error = math.hypot(ref["std"] / math.sqrt(ref["n"]), f_w["std"] / math.sqrt(f_w["ess"]))
    assert (
        abs(f_w["mean"] - ref["mean"])
        < 4 * error
        < abs(plain["features"]["E_hat"]["mean"] - ref["mean"])
    )

    report = (out / "report.md").read_text()
    assert "| dctr (weighted, test ESS" in report and "| plain | FEATURES |" in report
    assert f"weighted by `{known['weights']}`" in report


def test_weighted_metrics_agree_with_independent_computations():
    """Fixed scores: weighted AUC against a pairwise sum and sklearn, weighted JSD by hand, and integer
    weights against repeated rows (calibration, AUC, JSD, accuracy all at once)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    y_val, y_test = np.repeat([0.0, 1.0], [150, 130]), np.repeat([0.0, 1.0], [140, 120])
    p_val = np.round(rng.beta(2 + y_val, 2.5 - y_val), 2)  # rounded: ties, handled as 1/2
    p_test = np.round(rng.beta(2 + y_test, 2.5 - y_test), 2)
    w_val, w_test = (
        rng.integers(0, 4, len(y_val)).astype(float),
        rng.integers(0, 4, len(y_test)).astype(float),
    )
    w_val[y_val == 1] = w_test[y_test == 1] = 1.0  # reference weight 1, as in the classifier test

    m = calibrated_metrics(p_val, y_val, p_test, y_test, w_val=w_val, w_test=w_test)
    pos, neg = y_test == 1, y_test == 0
    greater = (p_test[pos][:, None] > p_test[neg][None, :]) + 0.5 * (
        p_test[pos][:, None] == p_test[neg][None, :]
    )
    pairwise = np.sum(w_test[pos][:, None] * w_test[neg][None, :] * greater) / (
        w_test[pos].sum() * w_test[neg].sum()
    )
    assert m["auc_uncalibrated"] == pytest.approx(pairwise, rel=1e-12)
    assert m["auc_uncalibrated"] == pytest.approx(
        roc_auc_score(y_test, p_test, sample_weight=w_test), rel=1e-12
    )
    assert m["auc_uncalibrated"] != pytest.approx(
        roc_auc_score(y_test, p_test), rel=1e-6
    )  # the weights matter
    p = np.clip(p_test, 1e-6, 1 - 1e-6)
    bce = -np.sum(w_test * (y_test * np.log(p) + (1 - y_test) * np.log(1 - p))) / w_test.sum()
    assert m["jsd_uncalibrated"] == pytest.approx((math.log(2) - bce) / math.log(2), rel=1e-12)
    assert binary_cross_entropy(p_test, y_test, w_test) == pytest.approx(bce, rel=1e-12)

    # integer weights = repeated rows: the same isotonic fit, AUC, BCE and accuracy
    rep_val, rep_test = w_val.astype(int), w_test.astype(int)
    m_rep = calibrated_metrics(
        np.repeat(p_val, rep_val),
        np.repeat(y_val, rep_val),
        np.repeat(p_test, rep_test),
        np.repeat(y_test, rep_test),
    )
    for key in ("auc", "jsd_raw", "auc_uncalibrated", "jsd_uncalibrated", "test_accuracy"):
        assert m[key] == pytest.approx(m_rep[key], rel=1e-9, abs=1e-12), key
    # unit weights change nothing
    ones = calibrated_metrics(
        p_val, y_val, p_test, y_test, w_val=np.ones(len(y_val)), w_test=np.ones(len(y_test))
    )
    plain = calibrated_metrics(p_val, y_val, p_test, y_test)
    for key, value in plain.items():
        assert ones[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert jsd_from_bce(math.log(2)) == 0.0
    with pytest.raises(ValueError):
        calibrated_metrics(p_val, y_val, p_test, y_test, w_val=w_val)


@pytest.fixture(scope="module")
def small_pair():
    reference = simulate("eplus", 120, seed=41, progress=False)
    generated = simulate("eplus", 100, seed=42, progress=False)
    # tag each generated shower by its incident energy, so that a split's rows can be traced back
    generated.energy = np.arange(1, 101, dtype=np.float64)
    return reference, generated


def test_weighted_split_follows_the_showers_and_balances_each_split(small_pair):
    reference, generated = small_pair
    w = np.random.default_rng(3).uniform(0.0, 3.0, 100)
    dm = classifier_data(reference, generated, batch_size=32, seed=5, weights=w)
    plain = classifier_data(reference, generated, batch_size=32, seed=5)
    dm.setup()
    plain.setup()
    assert isinstance(plain, CaloDataModule) and not hasattr(plain, "generated_weights")
    for name, ds in dm.datasets.items():
        twin = plain.datasets[name]
        # the same showers in the same splits as the unweighted test with the same seed
        assert torch.equal(ds.voxels, twin.voxels) and torch.equal(ds.labels, twin.labels)
        is_ref = ds.labels.numpy() == 1
        assert np.all(ds.sample_weights[is_ref] == 1.0)
        gen_w = ds.sample_weights[~is_ref]
        original = w[ds.energy.numpy()[~is_ref].astype(int) - 1]
        # each generated shower keeps its own weight, scaled so both classes weigh the same in the split
        assert gen_w.sum() == pytest.approx(is_ref.sum(), rel=1e-12)
        assert gen_w == pytest.approx(original * is_ref.sum() / original.sum(), rel=1e-12)
        assert dm.effective_sample_sizes()[name] == pytest.approx(
            original.sum() ** 2 / np.sum(original**2)
        )
    batch = next(iter(dm.train_dataloader()))
    assert (
        set(batch) >= {"voxels", "energy", "label", "weight"}
        and batch["weight"].dtype == torch.float32
    )
    assert "weight" not in next(iter(plain.train_dataloader()))

    # --max-showers: the weights are cut like the showers (the first rows)
    cut = classifier_data(reference, generated, seed=5, weights=w, max_showers=60)
    cut.setup()
    for ds in cut.datasets.values():
        gen = ds.labels.numpy() == 0
        rows = ds.energy.numpy()[gen].astype(int) - 1
        assert rows.max() < 60
        assert ds.sample_weights[gen] == pytest.approx(
            w[rows] * (~gen).sum() / w[rows].sum(), rel=1e-12
        )
    with pytest.raises(ValueError, match="weights"):
        classifier_data(reference, generated, seed=5, weights=w[:99])
    # a split whose generated showers all weigh 0 cannot be balanced: one clear error, no division by 0
    from caloflow.errors import CaloflowError

    with pytest.raises(CaloflowError, match="all have weight 0"):
        classifier_data(reference, generated, seed=5, weights=np.r_[1.0, np.zeros(99)]).setup()


def test_weighted_validation_loss_and_accuracy_are_exact_over_batches(small_pair):
    """The validation loss that early stopping monitors is sum w BCE / sum w over the whole validation set,
    whatever the batches (their weight sums differ), and val_acc the weighted accuracy."""
    import lightning as L

    from caloflow.models.classifiers import ShowerClassifier

    reference, generated = small_pair
    w = np.random.default_rng(4).uniform(0.0, 5.0, 100)
    dm = classifier_data(reference, generated, batch_size=7, seed=1, weights=w)
    dm.setup()
    L.seed_everything(0, verbose=False)
    model = ShowerClassifier("features", backbone_args={"hidden": 16, "n_hidden_layers": 1})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    logged = trainer.validate(model, dataloaders=dm.val_dataloader(), verbose=False)[0]
    val = dm.datasets["val"].__getitems__(range(len(dm.datasets["val"])))
    logits = model.logits(val).double()
    y, weight = val["label"].double(), torch.as_tensor(dm.datasets["val"].sample_weights)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    assert logged["val_loss"] == pytest.approx(float((weight * bce).sum() / weight.sum()), rel=1e-5)
    correct = ((torch.sigmoid(logits) > 0.5).double() == y).double()
    assert logged["val_acc"] == pytest.approx(
        float((weight * correct).sum() / weight.sum()), rel=1e-5
    )
    assert (
        "val_auc" not in logged
    )  # torchmetrics' AUROC cannot weight: not logged rather than wrong


def test_weighted_feature_summaries_and_histograms():
    from caloflow.evaluate.figures import clipped_histogram, response_profile

    values = np.array([1.0, 2.0, np.nan, 4.0, 10.0])
    w = np.array([1.0, 3.0, 5.0, 0.0, 1.0])
    s = summarize(values, w)
    assert s["mean"] == pytest.approx((1 + 6 + 10) / 5)
    assert s["std"] == pytest.approx(
        math.sqrt((1 * (1 - 3.4) ** 2 + 3 * (2 - 3.4) ** 2 + (10 - 3.4) ** 2) / 5)
    )
    assert s["n"] == 4 and s["ess"] == pytest.approx(25 / 11)
    assert summarize(values, np.ones(5))["mean"] == pytest.approx(summarize(values)["mean"])
    edges = np.array([0.0, 1.5, 3.0, 6.0])
    assert clipped_histogram(values, edges, w).tolist() == [
        1.0,
        3.0,
        1.0,
    ]  # 10 clipped into the last bin
    assert clipped_histogram(values, edges).tolist() == [1.0, 1.0, 2.0]
    prof = response_profile(
        [1.0, 1.2, 3.0], [1.0, 3.0, 5.0], np.array([0.0, 2.0, 4.0]), weights=[3.0, 1.0, 2.0]
    )
    assert prof["mean"].tolist() == pytest.approx([1.5, 5.0]) and prof["n"].tolist() == [2, 1]
    assert prof["std"][0] == pytest.approx(math.sqrt((3 * 0.25 + 2.25) / 4)) and np.isnan(
        prof["std"][1]
    )


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_weights")
    reference = write_showers(d / "reference.hdf5", simulate("eplus", 40, seed=51, progress=False))
    sample = write_showers(d / "sample.hdf5", simulate("eplus", 30, seed=52, progress=False))
    ok = np.linspace(0.5, 1.5, 30)
    files = {"reference": reference, "sample": sample, "dir": d}
    files["ok"] = _write_weights(d / "ok.h5", ok)
    files["short"] = _write_weights(d / "short.h5", ok[:29])
    files["nokey"] = _write_weights(d / "nokey.h5", ok, key="weights")
    files["twod"] = _write_weights(d / "twod.h5", ok[:, None])
    files["strings"] = _write_weights(d / "strings.h5", np.array([b"a"] * 30))
    files["zeros"] = _write_weights(d / "zeros.h5", np.zeros(30))
    files["zero_head"] = _write_weights(d / "zero_head.h5", np.r_[np.zeros(12), np.ones(18)])
    for name, values in (
        ("nan", np.r_[ok[:7], np.nan, ok[8:]]),
        ("inf", np.r_[ok[:3], np.inf, ok[4:]]),
        ("negative", np.r_[ok[:5], -0.25, ok[6:]]),
        ("npy_short", ok[: 31 - 3]),
    ):
        np.save(d / f"{name}.npy", values)
        files[name] = d / f"{name}.npy"
    (d / "text.h5").write_text("not hdf5\n")
    files["text"] = d / "text.h5"
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    files["garbage"] = d / "garbage.npy"
    return files


@pytest.mark.parametrize(
    "weights, extra, expected",
    [
        (["other={ok}"], [], "unknown sample 'other'"),
        (["{ok}"], [], "is not NAME=PATH"),
        (["s={ok}", "s={ok}"], [], "given twice"),
        (["s={dir}/missing.h5"], [], "missing.h5: no such file"),
        (["s={dir}"], [], "is a directory"),
        (["s={text}"], [], "text.h5: not an HDF5 file"),
        (["s={nokey}"], [], "nokey.h5: no dataset 'weight' (file has: weights)"),
        (["s={short}"], [], "short.h5: has 29 weights, but --samples s="),
        (["s={npy_short}"], [], "npy_short.npy: has 28 weights"),
        (["s={twod}"], [], "twod.h5: weights must be a 1-D array, got shape (30, 1)"),
        (["s={strings}"], [], "strings.h5: dataset 'weight' has dtype"),
        (["s={nan}"], [], "nan.npy: 1 non-finite weight(s), first at row 7"),
        (["s={inf}"], [], "inf.npy: 1 non-finite weight(s), first at row 3"),
        (["s={negative}"], [], "negative.npy: 1 negative weight(s), first at row 5 (-0.25)"),
        (["s={zeros}"], [], "zeros.h5: all weights are zero"),
        (
            ["s={zero_head}"],
            ["--max-showers", "12"],
            "all weights of the first 12 showers (--max-showers 12) are zero",
        ),
        (["s={garbage}"], [], "garbage.npy: not a readable .npy array"),
    ],
)
def test_bad_weights_one_line_no_traceback_nothing_written(
    bad_files, tmp_path, weights, extra, expected
):
    out = tmp_path / "o"
    proc = _caloflow(
        "evaluate",
        "--reference",
        bad_files["reference"],
        "--samples",
        f"s={bad_files['sample']}",
        "--weights",
        *[w.format(**bad_files) for w in weights],
        *extra,
        "--out",
        out,
        "--classifier",
        "none",
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("caloflow: error: --weights") and expected in lines[0], lines[0]
    assert not out.exists()


def test_max_showers_cuts_the_weights_like_the_showers(bad_files, tmp_path):
    """A weight file with one weight per shower of the file, --max-showers 20: the first 20 weights are used,
    checked, and weight the features of the 20 showers read (the command's own steps, in process)."""
    import argparse

    from caloflow.commands import evaluate as cli

    w = np.r_[np.linspace(0.5, 1.5, 20), np.full(10, 100.0)]
    path = _write_weights(tmp_path / "w.h5", w)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--reference",
            str(bad_files["reference"]),
            "--samples",
            f"s={bad_files['sample']}",
            "--weights",
            f"s={path}",
            "--max-showers",
            "20",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    samples, weights, _, _ = cli._check_args(args)
    assert weights["s"].tolist() == w[:20].tolist()
    reference, showers = cli._read_inputs(args.reference, samples, args.max_showers)
    ref_features, sample_features = cli._compute_features(reference, showers)
    _, entries = cli._feature_metrics(
        args.reference,
        reference,
        samples,
        showers,
        ref_features,
        sample_features,
        weights,
        {"s": path},
    )
    entry = entries["s"]
    assert (
        entry["n_showers"] == 20 and entry["weights"]["n"] == 20 and entry["weights"]["max"] == 1.5
    )
    assert entry["weighted"] is True and entry["weights"]["path"] == str(path)
    assert entry["weights"]["ess"] == pytest.approx(effective_sample_size(w[:20]))
    e_hat = compute_features(showers["s"].voxels, incident_gev=showers["s"].energy)["E_hat"]
    assert entry["features"]["E_hat"]["mean"] == pytest.approx(
        np.average(e_hat, weights=w[:20]), rel=1e-9
    )
    assert not (tmp_path / "o").exists()
