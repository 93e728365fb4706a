"""``python -m refine.laser`` end to end through a real subprocess (tiny config)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent

TINY = """
toy: gaussians
n_train: 8000
n_eval: 20000
bins: 40
baseline:
  class_path: refine.toys.RealNVPBaseline
  init_args: {n_blocks: 4, hidden: 32, n_hidden: 2, lr: 1.0e-3, weight_decay: 1.0e-5, lr_decay: 0.999}
baseline_training: {epochs: 6, batch_size: 500}
classifier:
  class_path: caloflow.models.ShowerClassifier
  init_args: {backbone: mlp, lr: 2.0e-3, lr_decay: 0.999, backbone_args: {hidden: 32, n_hidden: 3}}
classifier_training: {epochs: 10, batch_size: 1000, clip: null}
hmc: {chains: 2000, step_size: 0.05, n_leapfrog: 10, burn_in: 3, init: weighted, clip: null}
refiner:
  class_path: refine.gan.WeightedGANRefiner
  init_args: {aux_dim: 4, hidden: 64, n_hidden: 3, lr: 5.0e-4, betas: [0.5, 0.9], lr_decay: 0.999, n_critic: 4,
              residual: true, ema: null}
refiner_training: {epochs: 60, batch_size: 500}
flow_refiner:
  class_path: refine.flow_refiner.WeightedFlowRefiner
  init_args: {coupling: spline, n_blocks: 4, hidden: 32, n_hidden: 2, lr: 2.0e-3, lr_decay: 0.98}
flow_refiner_training: {epochs: 40, batch_size: 500}
"""


def _run(*args, timeout=HANG_GUARD_S):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "refine.laser", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_laser_cli_refines_gaussians(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    proc = _run(
        "--toy",
        "gaussians",
        "--config",
        str(cfg),
        "--seed",
        "3",
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    scores = results["gaussians"]
    assert set(scores) == {"baseline", "hmc", "laser", "flow", "dctr", "truth"}
    for method in scores.values():
        assert set(method) == {"emd", "jsd"} and all(v >= 0 for v in method.values())
    base = scores["baseline"]
    for method in ("hmc", "laser", "flow", "dctr"):
        assert scores[method]["jsd"] < base["jsd"], scores
    # a GAN this small and short is not reliable in EMD; HMC and DCTR must also win there
    for method in ("hmc", "dctr"):
        assert scores[method]["emd"] < base["emd"], scores
    assert scores["truth"]["jsd"] < min(
        s["jsd"] for s in scores.values() if s is not scores["truth"]
    )
    table = (out / "table.md").read_text()
    assert "| Baseline |" in table and "| LaSeR flow refiner |" in table and "Error floor" in table
    assert (out / "gaussians.png").stat().st_size > 10_000
    for name in ("baseline", "classifier", "laser_refiner", "laser_flow_refiner"):
        assert list((out / "gaussians" / "logs" / name).glob("events.out.tfevents*")), name
    assert not list(out.glob(".*"))  # no temporary files left behind
    # same seed, same numbers
    again = tmp_path / "again"
    proc = _run(
        "--toy",
        "gaussians",
        "--config",
        str(cfg),
        "--seed",
        "3",
        "--out",
        str(again),
        "--threads",
        "1",
        "--no-progress",
    )
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
        (["--toy", "donut", "--print_config", "--config", "missing.yaml"], "missing.yaml"),
    ],
)
def test_laser_cli_bad_options(tmp_path, args, needle):
    args = [a.replace("X", str(tmp_path / "o")) for a in args]
    proc = _run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ("bins: 40", "bins: 40\nlearning_rate: 3", "unknown key 'learning_rate'"),
        ("n_blocks: 4", "n_blockz: 4", "baseline.init_args: unknown key 'n_blockz'"),
        ("n_blocks: 4", "n_blocks: many", "baseline.init_args.n_blocks: expected int, got many"),
        (
            "n_hidden: 3}",
            "n_hidden: 3, depth: 2}",
            "classifier.init_args.backbone_args: unknown key 'depth'",
        ),
        ("backbone: mlp", "backbone: cnn", "classifier.init_args.backbone"),
        (
            "{epochs: 6, batch_size: 500}",
            "{epochs: 6, batch_size: 500, lr: 3}",
            "baseline_training: unknown key 'lr'",
        ),
        ("epochs: 6,", "epochs: -6,", "baseline_training.epochs"),
        ("init: weighted", "init: uniform", "hmc.init"),
        ("refine.gan.WeightedGANRefiner", "refine.toys.RealNVPBaseline", "refiner"),
        ("toy: gaussians", "toy: donut", "not 'gaussians'"),
    ],
)
def test_laser_cli_rejects_bad_config(tmp_path, capsys, old, new, needle):
    """Unknown keys and wrong types: one line naming the key, exit 2 (also with --print_config);
    in-process (``main``) for speed, through a subprocess in the first case."""
    from refine.laser import main

    cfg = tmp_path / "bad.yaml"
    assert old in TINY
    cfg.write_text(TINY.replace(old, new, 1))
    for extra in (["--out", str(tmp_path / "o")], ["--print_config"]):
        argv = ["--toy", "gaussians", "--config", str(cfg), *extra]
        if "learning_rate" in new and "--out" in extra:
            proc = _run(*argv)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            with pytest.raises(SystemExit) as exit_info:
                main(argv)
            code, (out, err) = exit_info.value.code, capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert len(lines) == 1 and needle in lines[0] and str(cfg) in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_laser_print_config_is_jsonargparse_class_path_style(tmp_path):
    """--print_config prints the resolved shipped config: class_path / init_args for the three
    LightningModules (refine's classifier is caloflow's ShowerClassifier), and it reads back unchanged."""
    proc = _run("--toy", "gaussians", "--print_config")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["baseline"]["class_path"] == "refine.toys.RealNVPBaseline"
    assert cfg["classifier"]["class_path"] == "caloflow.models.ShowerClassifier"
    assert cfg["classifier"]["init_args"]["backbone"] == "mlp"
    assert cfg["refiner"]["class_path"] == "refine.gan.WeightedGANRefiner"
    assert cfg["n_eval"] == 2_000_000 and cfg["quick"]["n_eval"] == 100_000
    printed = tmp_path / "printed.yaml"
    printed.write_text(proc.stdout)
    again = _run("--toy", "gaussians", "--config", str(printed), "--print_config")
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr
    # --quick merges the quick section, init_args alone updating the chosen class
    quick = yaml.safe_load(_run("--toy", "gaussians", "--quick", "--print_config").stdout)
    assert (
        quick["quick"] is None
        and quick["n_eval"] == 100_000
        and quick["refiner_training"]["epochs"] == 300
    )
    assert quick["refiner"]["init_args"] == {**cfg["refiner"]["init_args"], "lr_decay": 0.995}


def test_shipped_configs_resolve():
    """Every shipped toy config (and its quick version) builds the classes the protocol uses."""
    from caloflow.models import ShowerClassifier
    from refine.config import TOY_NAMES, build, class_of
    from refine.flow_refiner import WeightedFlowRefiner
    from refine.gan import WeightedGANRefiner
    from refine.toy_laser import load_config
    from refine.toys import RealNVPBaseline

    for toy in TOY_NAMES:
        for quick in (False, True):
            cfg = load_config(toy, quick)
            assert cfg.toy == toy and (cfg.n_eval == 100_000) is quick
            assert class_of(cfg.classifier) is ShowerClassifier
            assert isinstance(
                build(cfg.baseline, n_features=2, shift=[0.0, 0.0], scale=[1.0, 1.0]),
                RealNVPBaseline,
            )
            assert isinstance(build(cfg.refiner, latent_dim=2), WeightedGANRefiner)
            assert isinstance(build(cfg.flow_refiner, latent_dim=2), WeightedFlowRefiner)
