"""Faults and refusals of the writing commands, with real subprocesses, real signals and real HDF5
files: SIGTERM/SIGINT/kill -9 during ``caloflow simulate``, stale temporary files, the umask, memory
that does not grow with ``--n``, and the refusals made before any work (disk space, output = input,
an output that cannot be written).

No test asserts on wall-clock time; subprocesses have no time limit or one far above their run time.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from caloflow.atomic import Interrupted, atomic_output, check_interrupted, write_text_atomic
from caloflow.data.io import ShowerWriter, read_showers, write_showers
from caloflow.data.simulate import CHUNK_SIZE, simulate, simulate_to_file
from tests.helpers import run_cli

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
#: big enough that a run is still simulating when the signal comes (minutes on one core)
LONG_N = "200000"


def caloflow(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "caloflow.commands.cli", *args], env=ENV, text=True, **kwargs
    )


def temporaries(folder: Path, stem: str = "x") -> list[Path]:
    return sorted(folder.glob(f".{stem}.*.tmp.hdf5"))


def wait_for_temporary(process: subprocess.Popen, folder: Path) -> Path:
    """Poll until the run's temporary file exists (the write is open, the handlers installed)."""
    while not temporaries(folder):
        assert process.poll() is None, f"the run ended before writing: {process.communicate()}"
        time.sleep(0.05)
    return temporaries(folder)[0]


def datasets(path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        return (
            {k: (f[k].dtype, f[k].shape, f[k][()].tobytes()) for k in f},
            {k: np.asarray(v).tolist() for k, v in f.attrs.items()},
        )


def one_line_error(result, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- signals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_simulate_leaves_nothing(tmp_path, signum):
    p = caloflow(
        "simulate",
        "--particle",
        "eplus",
        "--n",
        LONG_N,
        "--out",
        str(tmp_path / "x.hdf5"),
        "--no-progress",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_temporary(p, tmp_path)
    p.send_signal(signum)
    _, err = p.communicate()
    assert p.returncode == 130, err
    assert err.strip() == "caloflow: error: interrupted"
    assert list(tmp_path.iterdir()) == []  # no temporary file, no output


def test_kill9_leaves_a_temporary_that_the_rerun_removes(tmp_path):
    out = tmp_path / "x.hdf5"
    p = caloflow(
        "simulate",
        "--particle",
        "gamma",
        "--n",
        LONG_N,
        "--out",
        str(out),
        "--no-progress",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stale = wait_for_temporary(p, tmp_path)
    p.kill()
    p.wait()
    assert stale.exists() and not out.exists()  # what kill -9 leaves
    args = ["simulate", "--particle", "gamma", "--n", "300", "--seed", "4", "--no-progress"]
    rerun = run_cli("caloflow", *args, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(tmp_path.iterdir()) == [out]
    clean = run_cli("caloflow", *args, "--out", str(tmp_path / "clean" / "x.hdf5"))
    assert clean.returncode == 0, clean.stderr
    assert datasets(out) == datasets(tmp_path / "clean" / "x.hdf5")
    assert len(read_showers(out)) == 300


def test_only_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = os.getppid()  # the process that runs this test
    names = {
        f".x.{dead.pid}.abcdefgh.tmp.hdf5": False,  # its process is gone: removed
        ".x.abc_1234.tmp.hdf5": False,  # left by an older caloflow (no pid): removed
        f".x.{live}.abcdefgh.tmp.hdf5": True,  # a live process is writing it: kept
        f".y.{dead.pid}.abcdefgh.tmp.hdf5": True,  # another target: kept
        f".x.y.{dead.pid}.abcdefgh.tmp.hdf5": True,  # the target x.y.hdf5: kept
        f".x.{dead.pid}.abcdefgh.tmp.h5": True,  # another suffix: kept
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    write_text_atomic(tmp_path / "x.hdf5", "done")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {name for name, kept in names.items() if kept} | {"x.hdf5"}


def test_signal_in_process_removes_the_temporary_and_restores_handlers(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted):
        with atomic_output(tmp_path / "x.txt") as tmp:
            tmp.write_text("partial")
            signal.raise_signal(signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
    assert {s: signal.getsignal(s) for s in before} == before  # the caller's handlers are back


class _InterruptsInDel:
    def __del__(self):
        raise Interrupted(signal.SIGINT)


def test_interrupt_swallowed_by_a_destructor_is_not_lost(tmp_path, capfd):
    """A Ctrl-C that lands in a __del__ (h5py's close paths) used to print "Exception ignored" and be
    forgotten; now it is silent and raised at the next append, and nothing is left."""
    with pytest.raises(Interrupted):
        with ShowerWriter(tmp_path / "x.hdf5") as out:
            out.append(np.ones((2, 504)), np.ones(2))
            _InterruptsInDel()
            gc.collect()
            out.append(np.ones((2, 504)), np.ones(2))
    assert list(tmp_path.iterdir()) == []
    assert "Exception ignored" not in capfd.readouterr().err
    check_interrupted()  # nothing pending once the write is over


# --- permissions -----------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umask(tmp_path, umask, mode):
    out = tmp_path / "x.hdf5"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "caloflow.commands.cli",
            "simulate",
            "--particle",
            "eplus",
            "--n",
            "5",
            "--out",
            str(out),
            "--no-progress",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        umask=umask,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == mode
    old = os.umask(umask)
    try:
        text = write_text_atomic(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert text.stat().st_mode & 0o777 == mode


# --- streaming -------------------------------------------------------------------------------
def test_streamed_file_equals_the_in_memory_one(tmp_path):
    n = 3 * CHUNK_SIZE + 5
    streamed = simulate_to_file(tmp_path / "streamed.hdf5", "piplus", n, seed=9, progress=False)
    in_memory = write_showers(
        tmp_path / "memory.hdf5", simulate("piplus", n, seed=9, progress=False)
    )
    a, _ = datasets(streamed)
    b, _ = datasets(in_memory)
    assert a == b


def _peak_rss_kb(*args: str) -> int:
    """Peak resident memory (KB) of one ``caloflow`` run, from the kernel's accounting of that child."""
    p = caloflow(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, err
    return usage.ru_maxrss


def test_peak_memory_does_not_grow_with_n(tmp_path):
    small = _peak_rss_kb(
        "simulate",
        "--particle",
        "eplus",
        "--n",
        "10000",
        "--out",
        str(tmp_path / "s.hdf5"),
        "--no-progress",
    )
    large = _peak_rss_kb(
        "simulate",
        "--particle",
        "eplus",
        "--n",
        "40000",
        "--out",
        str(tmp_path / "l.hdf5"),
        "--no-progress",
    )
    assert len(read_showers(tmp_path / "l.hdf5", start=39990)) == 10
    # held in memory, 30,000 more showers would take > 120 MB (float64) on top
    assert large < 1.3 * small + 50_000, (small, large)


# --- refusals before any work ----------------------------------------------------------------
def test_simulate_too_big_for_the_disk(tmp_path):
    out = tmp_path / "out" / "x.hdf5"
    result = run_cli(
        "caloflow", "simulate", "--particle", "eplus", "--n", str(10**12), "--out", str(out)
    )
    line = one_line_error(result)
    assert (
        line.startswith("caloflow: error: --n 1000000000000: the output needs about")
        and "free" in line
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["under a file", "a directory", "folder name", "special file"])
def test_simulate_unwritable_output(tmp_path, case):
    (tmp_path / "file").write_text("x")
    out = {
        "under a file": tmp_path / "file" / "x.hdf5",
        "a directory": tmp_path,
        "folder name": f"{tmp_path}/new/",
        "special file": "/dev/null",
    }[case]
    result = run_cli("caloflow", "simulate", "--particle", "eplus", "--n", "5", "--out", str(out))
    line = one_line_error(result)
    assert line.startswith("caloflow simulate: error: --out:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_simulate_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run_cli(
            "caloflow",
            "simulate",
            "--particle",
            "eplus",
            "--n",
            "5",
            "--out",
            str(folder / "x.hdf5"),
        )
        assert "permission denied" in one_line_error(result)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, eplus_file):
    """Tiny Flow I and Flow II checkpoints (one training step each)."""
    import lightning as L

    from caloflow.data import CaloDataModule
    from caloflow.models import FlowI, FlowII

    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, model in (
        ("flow1", FlowI(n_blocks=1, hidden_features=8, num_blocks=1)),
        ("flow2", FlowII(n_blocks=1, hidden_features=8, num_blocks=1)),
    ):
        trainer = L.Trainer(
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            default_root_dir=root,
        )
        trainer.fit(model, CaloDataModule(path=str(eplus_file), batch_size=64))
        paths[name] = root / f"{name}.ckpt"
        trainer.save_checkpoint(paths[name])
    return paths


def _flows(checkpoints) -> list[str]:
    return ["--flow1", str(checkpoints["flow1"]), "--flow2", str(checkpoints["flow2"])]


def test_generate_streams_the_in_memory_showers(tmp_path, checkpoints, eplus_file):
    import torch

    from caloflow import CaloFlow
    from caloflow.sampling import requested_energies

    model = CaloFlow.load(checkpoints["flow1"], checkpoints["flow2"])
    for extra, energies in (
        (["--n", "150", "--seed", "3"], requested_energies(150, None, (1.0, 100.0), 3)),
        (
            ["--energies", str(eplus_file), "--seed", "3"],
            requested_energies(None, eplus_file, None, 3),
        ),
    ):
        out = tmp_path / "x.hdf5"
        result = run_cli(
            "caloflow",
            "generate",
            *_flows(checkpoints),
            *extra,
            "--batch-size",
            "64",
            "--out",
            str(out),
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
        expected = model.sample(energies, torch.Generator().manual_seed(3), batch_size=64)
        got = read_showers(out)
        assert np.array_equal(got.voxels, expected.voxels.astype(np.float32))
        assert np.array_equal(got.energy, expected.energy.astype(np.float32))


def test_generate_too_big_for_the_disk(tmp_path, checkpoints):
    out = tmp_path / "out" / "x.hdf5"
    result = run_cli(
        "caloflow", "generate", *_flows(checkpoints), "--n", str(10**12), "--out", str(out)
    )
    assert one_line_error(result).startswith(
        "caloflow: error: --n 1000000000000: the output needs about"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "dotted path", "checkpoint"])
def test_generate_refuses_to_overwrite_an_input(tmp_path, checkpoints, eplus_file, how):
    energies = tmp_path / "e.hdf5"
    shutil.copy(eplus_file, energies)
    before = energies.read_bytes()
    if how == "symlink":
        out = tmp_path / "link.hdf5"
        out.symlink_to(energies)
    elif how == "hard link":
        out = tmp_path / "hard.hdf5"
        os.link(energies, out)
    elif how == "dotted path":
        out = tmp_path / "missing" / ".." / "e.hdf5"
    elif how == "checkpoint":
        out = checkpoints["flow2"]
    else:
        out = energies
    listing = sorted(p.name for p in tmp_path.iterdir())
    ckpt_before = checkpoints["flow2"].read_bytes()
    result = run_cli(
        "caloflow", "generate", *_flows(checkpoints), "--energies", str(energies), "--out", str(out)
    )
    line = one_line_error(result)
    assert "is the same file as" in line and "refusing to overwrite an input" in line
    assert energies.read_bytes() == before and checkpoints["flow2"].read_bytes() == ckpt_before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
