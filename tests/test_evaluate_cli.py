"""``caloflow evaluate`` end to end through a real subprocess, and its one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from caloflow.commands.cli import main
from caloflow.data.io import Showers, write_showers
from caloflow.data.simulate import simulate
from caloflow.features import FEATURE_NAMES
from caloflow.geometry import join_layers, split_layers
from tests.helpers import HANG_GUARD_S

N = 1200


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    ref = simulate("eplus", N, seed=21, progress=False)
    gen = simulate("eplus", N, seed=22, progress=False)
    layers = [x.copy() for x in split_layers(gen.voxels)]
    layers[0] *= 2.0  # a generator that puts twice the energy into layer 0
    paths = {
        "reference": write_showers(d / "reference.hdf5", ref),
        "good": write_showers(d / "good.hdf5", gen),
        "bad": write_showers(d / "bad.hdf5", Showers(join_layers(layers), gen.energy)),
    }
    with h5py.File(d / "broken.hdf5", "w") as f:  # no layer_2
        f["layer_0"] = np.zeros((20, 3, 96))
        f["layer_1"] = np.zeros((20, 12, 12))
        f["energy"] = np.ones((20, 1))
    paths["broken"] = d / "broken.hdf5"
    return paths


def _caloflow(*args, timeout=HANG_GUARD_S):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "caloflow.commands.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_evaluate_end_to_end(files, tmp_path):
    out = tmp_path / "eval"
    proc = _caloflow(
        "evaluate",
        "--reference",
        files["reference"],
        "--samples",
        f"good={files['good']}",
        f"bad={files['bad']}",
        "--out",
        out,
        "--classifier",
        "dnn",
        "--preprocessing",
        "unnormalized,normalized",
        "--runs",
        "2",
        "--epochs",
        "2",
        "--seed",
        "3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "classifier epochs" in proc.stderr or "epoch" in proc.stderr  # progress is shown

    figures = sorted(p.name for p in (out / "figures").iterdir())
    for stem in (
        "flow1_features",
        "flow2_voxels",
        "centroids",
        "widths",
        "average_images",
        "nearest_neighbours",
    ):
        assert f"{stem}.png" in figures and f"{stem}.pdf" in figures
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
    assert not [p for p in out.rglob("*.tmp")]  # nothing half-written left behind

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["samples"]) == {"good", "bad"}
    assert metrics["reference"]["n_showers"] == N
    e0_ref = metrics["reference"]["features"]["E0"]["mean"]
    for name in ("good", "bad"):
        sample = metrics["samples"][name]
        assert set(sample["features"]) == set(
            FEATURE_NAMES
        )  # E_hat_over_E_inc too: the energies are known
        for feat in sample["features"].values():
            assert {"mean", "std", "separation_power"} <= set(feat)
        for model in ("dnn",):
            for pre in ("unnormalized", "normalized"):
                m = sample["classifier"][model][pre]
                assert 0.0 <= m["auc"]["mean"] <= 1.0 and m["auc"]["std"] >= 0.0
                assert 0.0 <= m["jsd"]["mean"] <= 1.0
                assert len(m["runs"]) == 2
        assert len(sample["nearest_neighbours"]) == 5
    good, bad = metrics["samples"]["good"], metrics["samples"]["bad"]
    # the layer-0 energy of the distorted sample is twice the reference's; its histograms separate
    assert bad["features"]["E0"]["mean"] == pytest.approx(2 * e0_ref, rel=0.1)
    assert (
        bad["features"]["E0_frac"]["separation_power"]
        > 5 * good["features"]["E0_frac"]["separation_power"]
    )
    assert (
        bad["classifier"]["dnn"]["normalized"]["auc"]["mean"]
        > good["classifier"]["dnn"]["normalized"]["auc"]["mean"]
    )
    assert math.isfinite(good["features"]["s_d"]["separation_power"])

    report = (out / "report.md").read_text()
    assert "| good | DNN | unnormalized |" in report and "`sigma_sd`" in report
    for stem in ("flow1_features", "average_images", "nearest_neighbours"):
        assert f"(figures/{stem}.png)" in report
    assert list((out / "tensorboard").glob("good_dnn_normalized/run1/events.out.tfevents.*"))


def test_evaluate_features_classifier_protocol_and_threshold(files, tmp_path):
    """--classifier features, converged training, the full protocol in metrics.json, --threshold-reference."""
    out = tmp_path / "eval"
    proc = _caloflow(
        "evaluate",
        "--reference",
        files["reference"],
        "--samples",
        f"bad={files['bad']}",
        "--out",
        out,
        "--classifier",
        "features",
        "--runs",
        "2",
        "--patience",
        "5",
        "--seed",
        "4",
        "--threshold-reference",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["settings"]
    assert settings["threshold_reference"] is True and settings["seeds"] == [4, 5]
    assert settings["split"] == [0.6, 0.2, 0.2] and settings["training"]["patience"] == 5
    result = metrics["samples"]["bad"]["classifier"]["features"]["high-level"]
    assert result["data"]["n_per_class"] == N and result["data"]["test"] == 2 * round(0.2 * N)
    for run, seed in zip(result["runs"], (4, 5)):
        assert (
            run["seed"] == seed and run["converged"] and 1 <= run["best_epoch"] <= run["epochs_run"]
        )
        assert run["epochs_run"] < run["max_epochs"]
    assert result["auc"]["mean"] > 0.9  # twice the layer-0 energy: the features see it at once
    report = (out / "report.md").read_text()
    assert "| bad | FEATURES | high-level |" in report and "| yes |" in report
    assert "energy_response.png" in sorted(p.name for p in (out / "figures").iterdir())


def test_threshold_reference_cuts_the_reference_like_the_sampler(files):
    from caloflow.commands.evaluate import _read_inputs
    from caloflow.data.io import read_showers

    raw = read_showers(files["reference"])
    small = (raw.voxels > 0) & (raw.voxels < 0.01)  # below 10 keV
    assert small.any()
    cut, _ = _read_inputs(files["reference"], {}, None, threshold=True)
    same, _ = _read_inputs(files["reference"], {}, None, threshold=False)
    assert (cut.voxels[small] == 0).all() and np.array_equal(cut.voxels[~small], raw.voxels[~small])
    assert np.array_equal(same.voxels, raw.voxels)


def _one_line_error(proc_or_err: str) -> str:
    lines = [line for line in proc_or_err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc_or_err
    assert "Traceback" not in proc_or_err
    return lines[0]


def test_missing_file_subprocess(files, tmp_path):
    proc = _caloflow(
        "evaluate",
        "--reference",
        tmp_path / "nope.hdf5",
        "--samples",
        f"x={files['good']}",
        "--out",
        tmp_path / "o",
        "--classifier",
        "none",
    )
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "nope.hdf5" in line and "no such file" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--samples", "{good}"], "is not NAME=PATH"),
        (["--samples", "a={good}", "a={bad}"], "used twice"),
        (["--samples", "x={broken}"], "layer_2"),
        (["--samples", "x={good}", "--classifier", "dnn,rnn"], "unknown value 'rnn'"),
        (["--samples", "x={good}", "--preprocessing", "zscore"], "unknown value 'zscore'"),
        (["--samples", "x={good}", "--runs", "0"], "--runs"),
    ],
)
def test_bad_input_one_line(files, tmp_path, capsys, args, expected):
    args = [a.format(**files) for a in args]
    code = main(
        ["evaluate", "--reference", str(files["reference"]), "--out", str(tmp_path / "o"), *args]
    )
    assert code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert expected in line
    assert not (tmp_path / "o").exists()


def test_evaluate_warns_or_refuses_another_particle(tmp_path):
    gamma = write_showers(
        tmp_path / "gamma.hdf5",
        simulate("gamma", 50, seed=3, progress=False),
        attrs={"particle": "gamma"},
    )
    eplus = write_showers(
        tmp_path / "eplus.hdf5",
        simulate("eplus", 50, seed=4, progress=False),
        attrs={"particle": "eplus"},
    )
    args = ["evaluate", "--reference", eplus, "--samples", f"g={gamma}", "--classifier", "none"]
    warned = _caloflow(*args, "--out", tmp_path / "warned")
    assert warned.returncode == 0, warned.stderr[-2000:]
    lines = [line for line in warned.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and "gamma showers, but the other side is eplus" in lines[0]
    refused = _caloflow(*args, "--out", tmp_path / "refused", "--strict")
    assert (
        refused.returncode == 2
        and "Traceback" not in refused.stderr
        and not (tmp_path / "refused").exists()
    )
