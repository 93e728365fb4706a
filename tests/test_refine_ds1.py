"""LaSeR on a CaloFlow of CaloChallenge dataset 1 (``python -m refine.laser`` on ds1-photons).

Real tiny models: random-initialised ds1-photons Flow I / Flow II (weights perturbed) saved as
Lightning checkpoints, a small simulated ds1-photons reference (CaloChallenge format), the tiny
config of the CaloGAN tests; the run is a real subprocess.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from caloflow.data.barrel import simulate_barrel_to_file
from caloflow.data.io import file_geometry, read_energies, read_showers
from caloflow.geometry import get_geometry
from tests.helpers import run_cli, save_checkpoint, tiny_flows
from tests.test_refine_showers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 4
N_REFERENCE = 120
DS1 = get_geometry("ds1-photons")


def _run(*args) -> subprocess.CompletedProcess:
    return run_cli("refine.laser", *map(str, args))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny ds1-photons flows, a 120-shower simulated ds1-photons reference and the tiny config."""
    d = tmp_path_factory.mktemp("ds1")
    flow1, flow2 = tiny_flows(geometry="ds1-photons")
    config = d / "tiny.yaml"
    config.write_text(TINY)
    return {
        "flow1": Path(save_checkpoint(flow1, d / "f1.ckpt")),
        "flow2": Path(save_checkpoint(flow2, d / "f2.ckpt")),
        "reference": simulate_barrel_to_file(
            d / "ref.hdf5", DS1, N_REFERENCE, seed=5, progress=False
        ),
        "config": config,
    }


def test_ds1_run_end_to_end(files, tmp_path):
    """Every output; the showers in the ds1-photons geometry (CaloChallenge format) at the reference's
    evaluation energies; the refiner on R^(L + V) of the geometry; the CaloChallenge classifiers
    (cls-low, cls-low-normed, cls-high) in results.json and as the table's columns, with AUC in [0, 1];
    the weight classifier reads the cls-low input."""
    out = tmp_path / "out"
    proc = _run(
        "--flow1", files["flow1"], "--flow2", files["flow2"], "--reference", files["reference"],
        "--out", out, "--config", files["config"], "--seed", SEED, "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    splits = json.loads((out / "splits.json").read_text())
    ckpt = torch.load(out / "refiner.ckpt", weights_only=True)
    assert ckpt["laser"]["latent_dim"] == DS1.n_layers + DS1.n_voxels
    energies = read_energies(files["reference"], splits["evaluation_used"])
    for method in ("unrefined", "dctr", "rejection", "hmc", "laser"):
        path = out / "showers" / f"{method}.hdf5"
        assert file_geometry(path) == DS1, method
        showers = read_showers(path)
        assert showers.voxels.shape[1] == DS1.n_voxels and showers.geometry == DS1
        n = 12 if method == "hmc" else len(energies)
        assert np.allclose(showers.energy, energies[:n], rtol=1e-6), method
        assert (showers.voxels > 0).any(), method
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["geometry"] == "ds1-photons"
    kinds = ["cls-low", "cls-low-normed", "cls-high"]
    for method, entry in results["methods"].items():
        assert list(entry["classifier"]) == kinds, method
        for test in entry["classifier"].values():
            assert 0 <= test["auc"]["mean"] <= 1 and math.isfinite(test["auc"]["mean"])
            assert math.isfinite(test["jsd"]["mean"])
        assert entry["separation_power"]["mean"] >= 0
    dctr = results["methods"]["dctr"]["classifier"]["cls-low"]
    # effective sample sizes of the generated weights per split: at most the split's showers
    assert dctr["weighted"] and all(0 < v <= dctr["n_per_class"] for v in dctr["ess"].values())
    table = (out / "table.md").read_text()
    assert all(f"{k} AUC | {k} JSD" in table for k in kinds)
    assert "dnn-unnormalized" not in table
    logs = out / "logs" / "weight_classifier"
    assert list(logs.rglob("hparams.yaml"))
    assert "backbone: challenge" in next(logs.rglob("hparams.yaml")).read_text()


def test_mismatched_geometry_is_one_line(files, tmp_path, capsys):
    """ds1-photons flows with a CaloGAN reference, or with ds1-pions flows: refused in one line, exit 2,
    before any output."""
    from caloflow.data.simulate import simulate_to_file
    from refine.laser import main

    calogan = simulate_to_file(tmp_path / "calogan.hdf5", "eplus", 30, seed=1, progress=False)
    pions = save_checkpoint(tiny_flows(geometry="ds1-pions")[1], tmp_path / "pions_f2.ckpt")
    for flow2, reference, needle in (
        (files["flow2"], calogan, "--reference"),
        (pions, files["reference"], "ds1-pions"),
    ):
        argv = [
            "--flow1", files["flow1"], "--flow2", flow2, "--reference", reference,
            "--out", tmp_path / "out", "--config", files["config"],
        ]  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1 and needle in lines[0], lines
        assert "Traceback" not in lines[0]
        assert not (tmp_path / "out").exists()
