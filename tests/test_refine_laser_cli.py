"""``python -m refine.laser`` end to end through a real subprocess (tiny config)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY = """
toy: gaussians
n_train: 8000
n_eval: 20000
bins: 40
flow: {n_blocks: 4, hidden: 32, n_hidden: 2, lr: 1.0e-3, weight_decay: 1.0e-5, lr_decay: 0.999, epochs: 6, batch_size: 500}
classifier: {hidden: 32, n_hidden: 3, lr: 2.0e-3, lr_decay: 0.999, epochs: 10, batch_size: 1000, clip: null}
hmc: {chains: 2000, step_size: 0.05, n_leapfrog: 10, burn_in: 3, init: weighted, clip: null}
gan: {aux_dim: 4, hidden: 64, n_hidden: 3, lr: 5.0e-4, betas: [0.5, 0.9], lr_decay: 0.999, n_critic: 4,
      residual: true, ema: null, epochs: 60, batch_size: 500}
"""


def _run(*args, timeout=170):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "refine.laser", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_laser_cli_refines_gaussians(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    proc = _run("--toy", "gaussians", "--config", str(cfg), "--seed", "3", "--out", str(out), "--threads", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    scores = results["gaussians"]
    assert set(scores) == {"baseline", "hmc", "laser", "dctr", "truth"}
    for method in scores.values():
        assert set(method) == {"emd", "jsd"} and all(v >= 0 for v in method.values())
    base = scores["baseline"]
    for method in ("hmc", "laser", "dctr"):
        assert scores[method]["jsd"] < base["jsd"], scores
    # a GAN this small and short is not reliable in EMD; HMC and DCTR must also win there
    for method in ("hmc", "dctr"):
        assert scores[method]["emd"] < base["emd"], scores
    assert scores["truth"]["jsd"] < min(s["jsd"] for s in scores.values() if s is not scores["truth"])
    table = (out / "table.md").read_text()
    assert "| Baseline |" in table and "Error floor" in table
    assert (out / "gaussians.png").stat().st_size > 10_000
    for name in ("baseline", "classifier", "laser_refiner"):
        assert list((out / "gaussians" / "logs" / name).glob("events.out.tfevents*")), name
    assert not list(out.glob(".*"))  # no temporary files left behind
    # same seed, same numbers
    again = tmp_path / "again"
    proc = _run("--toy", "gaussians", "--config", str(cfg), "--seed", "3", "--out", str(again), "--threads", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((again / "results.json").read_text()) == results


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--toy", "moons", "--out", "X"], "--toy"),
        (["--toy", "gaussians"], "--out"),
        (["--toy", "all", "--config", "c.yaml", "--out", "X"], "--config"),
        (["--toy", "donut", "--config", "missing.yaml", "--out", "X"], "missing.yaml"),
        (["--toy", "donut", "--seed", "-1", "--out", "X"], "--seed"),
    ],
)
def test_laser_cli_bad_options(tmp_path, args, needle):
    args = [a.replace("X", str(tmp_path / "o")) for a in args]
    proc = _run(*args, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_laser_cli_rejects_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.replace("bins: 40", "bins: 40\nlearning_rate: 3"))
    proc = _run("--toy", "gaussians", "--config", str(cfg), "--out", str(tmp_path / "o"), timeout=60)
    assert proc.returncode == 2 and "learning_rate" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_laser_quick_gaussians_meets_the_target(tmp_path):
    """The shipped ``--quick`` config (100k points) refines the four Gaussians to <= 0.35 x the
    baseline JSD with HMC and with the LaSeR refiner, and every refinement beats the baseline in EMD."""
    out = tmp_path / "quick"
    proc = _run("--toy", "gaussians", "--quick", "--seed", "0", "--out", str(out), "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads((out / "results.json").read_text())["gaussians"]
    base = scores["baseline"]
    for method in ("hmc", "laser"):
        assert scores[method]["jsd"] <= 0.35 * base["jsd"], scores
    for method in ("hmc", "laser", "dctr"):
        assert scores[method]["emd"] < base["emd"], scores
    details = json.loads((out / "details.json").read_text())
    assert details["quick"] is True and details["toys"]["gaussians"]["n_eval"] == 100_000
