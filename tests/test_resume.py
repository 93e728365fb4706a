"""Exact resume: a fit killed with SIGKILL and resumed with ``--ckpt_path last``
ends with the same weights and optimiser state, bit for bit, as an uninterrupted fit with the same
seed; and data that no fit can use are refused before the run's folder is created.

The kill is timed by polling the run's ``last.ckpt`` (no wall-clock limits): it lands while a
later epoch is running, so the resumed fit starts from the previous epoch end, as after a kill at
an arbitrary moment.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from callbacks.resume import AtomicCheckpointIO, collect_random_states, set_random_states
from caloflow.checkpoints import find_last_checkpoint
from caloflow.data import CaloDataModule
from tests.helpers import REPO, run_cli

EPOCHS = 4
#: a guard against a hung subprocess, not a performance limit (the slowest fit here: Flow II, four
#: smoke epochs)
HANG_GUARD_S = 1800


def fit_argv(config: str, root: Path, data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "caloflow.commands.lightning_cli",
        "fit",
        "-c",
        str(REPO / "configs" / "smoke" / config),
        "--trainer.default_root_dir",
        str(root),
        "--data.path",
        str(data),
        "--trainer.max_epochs",
        str(EPOCHS),
        *extra,
    ]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def fit(argv: list[str]) -> None:
    proc = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def last_epoch(root: Path) -> int:
    """Epoch of the newest ``last.ckpt`` under ``root`` (-1 if none); written atomically, so always whole."""
    path = find_last_checkpoint(root)
    return -1 if path is None else load(path)["epoch"]


def fit_until_killed(argv: list[str], root: Path, epoch: int, log: Path) -> int:
    """Start the fit, SIGKILL it as soon as a ``last.ckpt`` of ``epoch`` or later exists; returns that epoch."""
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=err)
        seen, deadline = -1, time.monotonic() + HANG_GUARD_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                seen = last_epoch(root)
                if seen >= epoch:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None and seen < epoch:  # hung: do not leave it behind
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the fit was not killed (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
    )
    return seen


def assert_same(a, b, where: str = "") -> None:
    """Equal nested checkpoint content; tensors bit for bit."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), (
            f"{where}: differs by up to {(a.double() - b.double()).abs().max().item():.3g}"
        )
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_training_state(resumed: dict, uninterrupted: dict) -> None:
    assert (resumed["epoch"], resumed["global_step"]) == (
        uninterrupted["epoch"],
        uninterrupted["global_step"],
    )
    assert_same(resumed["state_dict"], uninterrupted["state_dict"], "state_dict")
    assert_same(resumed["optimizer_states"], uninterrupted["optimizer_states"], "optimizer_states")
    assert_same(resumed["lr_schedulers"], uninterrupted["lr_schedulers"], "lr_schedulers")
    # the streams continued alike: data order, training noise and the global generators end equal
    assert_same(resumed["CaloDataModule"], uninterrupted["CaloDataModule"], "CaloDataModule")
    assert_same(
        resumed["callbacks"]["ExactResume"],
        uninterrupted["callbacks"]["ExactResume"],
        "ExactResume",
    )


@pytest.mark.parametrize("config, kills", [("flow1.yaml", (1, 2)), ("flow2.yaml", (1,))])
def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path, eplus_file, config, kills):
    """Flow I is killed twice (the second time while resumed), Flow II (dropout) once."""
    quiet = tmp_path / "quiet"
    fit(fit_argv(config, quiet, eplus_file))
    uninterrupted = load(quiet / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert uninterrupted["epoch"] == EPOCHS - 1

    root, resume, reached = tmp_path / "killed", [], -1
    for i, epoch in enumerate(kills):
        target = max(epoch, reached + 1)
        if target >= EPOCHS - 1:
            break
        reached = fit_until_killed(
            fit_argv(config, root, eplus_file, *resume), root, target, tmp_path / f"kill{i}.log"
        )
        assert target <= reached < EPOCHS - 1
        resume = ["--ckpt_path", "last"]
    fit(fit_argv(config, root, eplus_file, *resume))
    versions = sorted(p.name for p in (root / "lightning_logs").iterdir())
    assert len(versions) >= 2, versions  # killed at least once, resumed into a new version
    final = find_last_checkpoint(root)
    assert final.parent.parent.name == versions[-1], final
    assert_same_training_state(load(final), uninterrupted)


# --- the pieces, in process ------------------------------------------------------------------------
def test_datamodule_state_continues_the_data_order_and_the_noise(eplus_file):
    def fresh():
        m = CaloDataModule(path=str(eplus_file), batch_size=100, seed=5, noise_kev=1.0)
        m.setup("fit")
        return m

    straight = fresh()
    loader = straight.train_dataloader()
    epochs = [list(loader) for _ in range(3)]
    # each epoch a new order and new noise, not a replay of the first
    assert not torch.equal(epochs[0][0]["energy"], epochs[1][0]["energy"])

    first = fresh()
    for _ in list(first.train_dataloader()):
        pass
    state = first.state_dict()
    assert set(state) == {"shuffle_generator", "train_noise_generator"}

    for before_setup in (False, True):
        resumed = CaloDataModule(path=str(eplus_file), batch_size=100, seed=5, noise_kev=1.0)
        if not before_setup:
            resumed.setup("fit")
        resumed.load_state_dict(state)
        resumed.setup("fit")
        loader = resumed.train_dataloader()
        for expected in epochs[1:]:
            assert_same(list(loader), expected)


def test_random_states_round_trip_and_load_without_pickles(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    (
        torch.rand(3),
        np.random.normal(),
        random.random(),
    )  # numpy's cached Gaussian is part of the state
    state = collect_random_states()
    expected = torch.rand(5), np.random.normal(size=5), [random.random() for _ in range(5)]
    path = tmp_path / "states.pt"
    AtomicCheckpointIO().save_checkpoint({"states": state}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["states.pt"]  # no temporary file left
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    set_random_states(torch.load(path, weights_only=True)["states"])
    assert torch.equal(torch.rand(5), expected[0])
    assert np.array_equal(np.random.normal(size=5), expected[1])
    assert [random.random() for _ in range(5)] == expected[2]


# --- data refused before the run's folder exists (no empty lightning_logs/version_N) -----------
@pytest.fixture
def empty_file(tmp_path, eplus_file) -> Path:
    path = tmp_path / "empty.hdf5"
    with h5py.File(eplus_file) as src, h5py.File(path, "w") as dst:
        for key in src:
            dst.create_dataset(key, data=src[key][:0])
    return path


@pytest.mark.parametrize(
    "options, message",
    [
        (["--data.max_showers", "0"], "--data.max_showers must be >= 1"),
        (["--data.path", "EMPTY"], "empty.hdf5: no showers to use"),
        (["--data.max_showers", "1"], "1 showers (--data.max_showers 1) are too few to split"),
        (
            ["--data.max_showers", "3", "--data.val_fraction", "0.1"],
            "3 showers (--data.max_showers 3) are too few",
        ),
    ],
)
def test_unusable_data_are_refused_before_the_run_folder_exists(
    tmp_path, eplus_file, empty_file, options, message
):
    root = tmp_path / "run"
    options = [str(empty_file) if o == "EMPTY" else o for o in options]
    proc = run_cli(
        "lightning",
        "fit",
        "-c",
        str(REPO / "configs" / "smoke" / "flow1.yaml"),
        "--trainer.default_root_dir",
        str(root),
        "--data.path",
        str(eplus_file),
        *options,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    assert not root.exists(), sorted(str(p) for p in root.rglob("*"))
