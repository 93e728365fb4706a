"""The CPU presets (configs/cpu/PARTICLE) and ``caloflow benchmark fidelity`` at tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from caloflow.commands.lightning_cli import cli_main
from caloflow.configs import CONFIG_DIR
from caloflow.data.simulate import simulate_to_file
from tests.helpers import run_cli, run_script

PARTICLES = ("eplus", "gamma", "piplus")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """200 simulated showers per particle (tiny data for one preset epoch)."""
    folder = tmp_path_factory.mktemp("presets")
    return {
        p: simulate_to_file(folder / f"{p}.hdf5", p, 200, seed=3, progress=False) for p in PARTICLES
    }


@pytest.mark.parametrize("particle", PARTICLES)
@pytest.mark.parametrize("flow", ["flow1", "flow2"])
def test_preset_trains_one_epoch_on_tiny_data(particle, flow, files, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning"])  # LightningCLI is given its args, not pytest's
    config = CONFIG_DIR / "cpu" / particle / f"{flow}.yaml"
    settings = yaml.safe_load(config.read_text())
    assert settings["data"]["init_args"]["particle"] == particle
    cli = cli_main(
        [
            "fit",
            "-c",
            str(config),
            "--data.path",
            str(files[particle]),
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    model, trainer = cli.model, cli.trainer
    # the preset's recipe reaches the model: reference spline minima, fast training step, its architecture
    init = settings["model"]["init_args"]
    for key in (
        "hidden_features",
        "n_blocks",
        "min_bin_width",
        "min_bin_height",
        "min_derivative",
        "fast_training",
    ):
        assert model.hparams[key] == init[key], key
    assert trainer.current_epoch == 1 and trainer.global_step >= 1
    assert torch.isfinite(trainer.callback_metrics["val_nll"])
    # the model remembers the particle it was trained on
    assert model.domain.particle == particle
    checkpoints = list(Path(tmp_path).rglob("*.ckpt"))
    assert any(c.name.startswith("best-") for c in checkpoints) and any(
        c.name == "last.ckpt" for c in checkpoints
    )
    if (
        flow == "flow2"
    ):  # the snapshots of the AUC-vs-budget curve: every 5 epochs, so none after one epoch
        assert not any(c.name.startswith("snapshot-") for c in checkpoints)
        every = [
            c["init_args"]
            for c in settings["trainer"]["callbacks"]
            if str(c.get("init_args", {}).get("filename", "")).startswith("snapshot-")
        ]
        assert every and every[0]["every_n_epochs"] < settings["trainer"]["max_epochs"]


def test_presets_differ_only_in_the_particle_and_the_epochs():
    """One recipe: the Flow II presets differ in the particle and in the number of epochs with their
    learning-rate milestones (e+ 40 and pi+ 42, each measured on a core of its own; gamma 30)."""
    text = {p: (CONFIG_DIR / "cpu" / p / "flow2.yaml").read_text() for p in PARTICLES}
    settings = {p: yaml.safe_load(t) for p, t in text.items()}
    schedule = {}
    for p in PARTICLES:
        settings[p]["data"]["init_args"].pop("particle")
        settings[p]["trainer"].pop("default_root_dir")
        schedule[p] = (
            settings[p]["trainer"].pop("max_epochs"),
            settings[p]["model"]["init_args"].pop("milestones"),
        )
    assert settings["gamma"] == settings["eplus"] == settings["piplus"]
    assert schedule == {"eplus": (40, [27, 34]), "gamma": (30, [20, 26]), "piplus": (42, [28, 36])}
    flow1 = {
        p: yaml.safe_load((CONFIG_DIR / "cpu" / p / "flow1.yaml").read_text()) for p in PARTICLES
    }
    for p in PARTICLES:
        flow1[p]["data"]["init_args"].pop("particle")
        flow1[p]["trainer"].pop("default_root_dir")
    assert flow1["gamma"] == flow1["eplus"] == flow1["piplus"]


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory) -> Path:
    """The smoke configs with a Flow II snapshot every epoch."""
    folder = tmp_path_factory.mktemp("tiny_configs")
    (folder / "flow1.yaml").write_text((CONFIG_DIR / "smoke" / "flow1.yaml").read_text())
    flow2 = yaml.safe_load((CONFIG_DIR / "smoke" / "flow2.yaml").read_text())
    flow2["trainer"]["callbacks"].append(
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "filename": "snapshot-{epoch:03d}",
                "every_n_epochs": 1,
                "save_top_k": -1,
            },
        }
    )
    (folder / "flow2.yaml").write_text(yaml.safe_dump(flow2))
    return folder


def _fidelity(configs: Path, out: Path, *extra: str):
    return run_cli(
        "caloflow",
        "benchmark",
        "fidelity",
        "--configs",
        str(configs),
        "--out",
        str(out),
        "--n-reference",
        "300",
        "--runs",
        "2",
        "--max-epochs",
        "4",
        "--patience",
        "2",
        *extra,
    )


def test_fidelity_benchmark_end_to_end_and_continues(tiny_configs, tmp_path):
    out = tmp_path / "bench"
    first = _fidelity(tiny_configs, out, "--budgets", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((out / "fidelity.json").read_text())
    (row,) = result["rows"]
    assert row["flow2_epochs"] == 3 and row["runs"] == 2
    assert Path(row["flow2_checkpoint"]).name == "snapshot-epoch=002.ckpt"
    # the wall time is the sum of its measured parts, each positive
    assert row["wall_s"] == pytest.approx(sum(row["wall_s_parts"].values()))
    assert all(v > 0 for v in row["wall_s_parts"].values())
    assert row["wall_s_parts"]["flow2"] <= result["steps"]["flow2"]["wall_s"] + 1e-6
    for key in ("dnn/unnormalized", "dnn/normalized", "features/high-level"):
        auc = row["auc"][key]
        assert len(auc["runs"]) == 2 and 0.0 <= auc["mean"] <= 1.0
        assert auc["mean"] == pytest.approx(sum(auc["runs"]) / 2)
    # the independent reference: another seed, the requested size
    import h5py

    with (
        h5py.File(out / "data" / "eplus_reference.hdf5") as ref,
        h5py.File(out / "data" / "eplus_train.hdf5") as tr,
    ):
        assert len(ref["energy"]) == 300 and len(tr["energy"]) == 2000
        assert not set(ref["energy"][:, 0].tolist()) & set(tr["energy"][:, 0].tolist())
    table = (out / "fidelity.md").read_text()
    assert "| eplus | 3 | 2,000 |" in table and "embedded simulator (not GEANT4)" in table

    # another budget later: the simulation and both fits are reused, the earlier row is kept
    second = _fidelity(tiny_configs, out, "--budgets", "1", "--runs", "1")
    assert second.returncode == 0, second.stderr[-2000:]
    for step in ("simulate", "reference", "flow1", "flow2"):
        assert f"[{step}] done before" in second.stdout
    rows = json.loads((out / "fidelity.json").read_text())["rows"]
    assert [r["flow2_epochs"] for r in rows] == [1, 3] and [r["runs"] for r in rows] == [1, 2]
    assert rows[1]["auc"] == row["auc"]
    assert rows[0]["wall_s_parts"]["flow2"] < rows[1]["wall_s_parts"]["flow2"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--configs", "no/such/folder"], "--configs no/such/folder: no flow1.yaml there"),
        (
            ["--configs", "cpu/eplus", "--budgets", "7"],
            "--budgets: Flow II epoch 7 has no snapshot",
        ),
        (
            ["--configs", "cpu/eplus", "--budgets", "45"],
            "--budgets: Flow II epoch 45 has no snapshot",
        ),
        (["--configs", "cpu/eplus", "--runs", "0"], "--runs"),
    ],
)
def test_fidelity_bad_input_is_one_line_before_any_work(args, needle, tmp_path):
    out = tmp_path / "bench"
    proc = run_cli("caloflow", "benchmark", "fidelity", "--out", str(out), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_fidelity_refuses_an_out_folder_of_another_setup(tiny_configs, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "steps.json").write_text(
        json.dumps({"setup": {"configs": "elsewhere", "particle": "gamma"}, "steps": {}})
    )
    proc = _fidelity(tiny_configs, out)
    assert proc.returncode == 2 and "holds a benchmark of another setup" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["steps.json"]


def test_benchmarks_script_is_the_same_command():
    proc = run_cli("caloflow", "benchmark", "fidelity", "--help")
    script = run_script("benchmarks/fidelity.py", "--help")
    assert proc.returncode == script.returncode == 0
    command_options, script_options = (
        proc.stdout.split("options:")[1],
        script.stdout.split("options:")[1],
    )
    # the command's options and option groups, with the script's own --smoke (tests/test_benchmarks.py)
    # at the end of the first group
    start = script_options.index("\n  --smoke")
    end = script_options.find("\n\n", start)
    end = len(script_options) if end < 0 else end
    assert "--budgets" in script.stdout and "--runs" in command_options
    assert script_options[:start] + script_options[end:] == command_options
