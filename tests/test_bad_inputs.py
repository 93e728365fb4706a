"""Bad inputs to every command: each is refused with ONE line on stderr naming the
option, file or key, a non-zero exit (2), no traceback, and nothing written.

Every case runs as a real subprocess (``python -m caloflow.commands.cli``, ``-m caloflow.commands.lightning_cli``,
``-m refine.laser``) in its own working folder, which is compared file by file before and after the
run: no output file, no run folder (``default_root_dir``, ``lightning_logs``), no temporary file left.
The inputs are tiny and real: a 60-shower simulated file, a file with zero showers, and Flow I /
Flow II checkpoints trained once for one epoch on it (module fixture).

The cases run two at a time (most of their time is the import of torch and Lightning); no wall-clock
limit is asserted, the subprocess timeout only guards against a hang.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import pytest
import torch
import yaml

from tests.helpers import HANG_GUARD_S  # a hung subprocess, not a performance limit

MODULES = {
    "caloflow": "caloflow.commands.cli",
    "lightning": "caloflow.commands.lightning_cli",
    "refine": "refine.laser",
}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Case:
    """``command`` (with ``{placeholders}``, see :func:`inputs`) must fail with one line containing
    every string of ``culprits``; ``setup(folder, inputs)`` prepares the case's working folder."""

    id: str
    command: tuple[str, ...]
    culprits: tuple[str, ...]
    setup: Callable[[Path, dict], None] | None = None
    marks: tuple = field(default=(), compare=False)


# --------------------------------------------------------------------------- case set-ups
def _checkpoint_in(relative: str, which: str):
    """Put a copy of the ``which`` checkpoint at ``folder/relative``."""

    def setup(folder: Path, inputs: dict) -> None:
        target = folder / relative
        target.parent.mkdir(parents=True)
        shutil.copy(inputs[which], target)

    return setup


def _copy_input(name: str):
    def setup(folder: Path, inputs: dict) -> None:
        shutil.copy(inputs["e60"], folder / name)

    return setup


def _write(name: str, text: str):
    def setup(folder: Path, inputs: dict) -> None:
        (folder / name).write_text(text)

    return setup


def _laser_config(key: str, value):
    """The shipped donut config with ``key`` (dotted) set to ``value``, as ``folder/bad.yaml``."""

    def setup(folder: Path, inputs: dict) -> None:
        from caloflow.configs import CONFIG_DIR

        config = yaml.safe_load((CONFIG_DIR / "laser" / "donut.yaml").read_text())
        *path, last = key.split(".")
        node = config
        for k in path:
            node = node[k]
        node[last] = value
        (folder / "bad.yaml").write_text(yaml.safe_dump(config))

    return setup


def _demo_configs(folder: Path, inputs: dict) -> None:
    from caloflow.configs import CONFIG_DIR

    (folder / "configs").mkdir()
    shutil.copy(CONFIG_DIR / "demo" / "flow2.yaml", folder / "configs" / "flow2.yaml")
    config = yaml.safe_load((CONFIG_DIR / "demo" / "flow1.yaml").read_text())
    config["model"]["init_args"]["lr"] = -1e-3
    (folder / "configs" / "flow1.yaml").write_text(yaml.safe_dump(config))


def _locked(folder: Path, inputs: dict) -> None:
    (folder / "locked").mkdir()
    (folder / "locked").chmod(0o555)


def _unless(condition: bool, reason: str) -> tuple:
    return (pytest.mark.skip(reason=reason),) if condition else ()


# --------------------------------------------------------------------------- the cases
FIT1 = (
    "lightning",
    "fit",
    "-c",
    "smoke/flow1",
    "--data.path",
    "{e60}",
    "--trainer.default_root_dir",
    "{dir}/run",
)
GEN = ("caloflow", "generate", "--flow1", "{flow1}", "--flow2", "{flow2}", "--no-progress")
SIM = ("caloflow", "simulate", "--particle", "eplus", "--no-progress")
EVAL = ("caloflow", "evaluate", "--classifier", "none")
BENCH = ("caloflow", "benchmark", "--generators", "caloflow-fast", "--batch-sizes", "10")
REFINE = (
    "refine",
    "--toy",
    "donut",
    "--config",
    "{dir}/bad.yaml",
    "--out",
    "{dir}/out",
    "--no-progress",
)

CASES = [
    # ---- caloflow simulate
    Case(
        "simulate-seed-too-large",
        (*SIM, "--n", "10", "--seed", "99999999999999999999", "--out", "{dir}/s.hdf5"),
        ("--seed", "99999999999999999999"),
    ),
    Case(
        "simulate-seed-negative",
        (*SIM, "--n", "10", "--seed", "-1", "--out", "{dir}/s.hdf5"),
        ("--seed",),
    ),
    Case(
        "simulate-energy-above-simulator-range",
        (*SIM, "--n", "10", "--energy-range", "1", "1e9", "--out", "{dir}/s.hdf5"),
        ("--energy-range", "1000"),
    ),
    Case(
        "simulate-energy-range-reversed",
        (*SIM, "--n", "10", "--energy-range", "100", "1", "--out", "{dir}/s.hdf5"),
        ("--energy-range",),
    ),
    Case(
        "simulate-energy-range-inf",
        (*SIM, "--n", "10", "--energy-range", "1", "inf", "--out", "{dir}/s.hdf5"),
        ("--energy-range", "inf"),
    ),
    Case(
        "simulate-unknown-particle",
        ("caloflow", "simulate", "--particle", "muon", "--n", "10", "--out", "{dir}/s.hdf5"),
        ("--particle", "muon"),
    ),
    Case("simulate-n-zero", (*SIM, "--n", "0", "--out", "{dir}/s.hdf5"), ("--n",)),
    Case(
        "simulate-n-not-an-integer", (*SIM, "--n", "1e4", "--out", "{dir}/s.hdf5"), ("--n", "1e4")
    ),
    Case("simulate-out-is-a-folder", (*SIM, "--n", "10", "--out", "{dir}"), ("--out",)),
    Case(
        "simulate-out-under-a-file",
        (*SIM, "--n", "10", "--out", "{e60}/s.hdf5"),
        ("--out", "e60.hdf5"),
    ),
    Case(
        "simulate-n-too-large-for-the-disk",
        (*SIM, "--n", "1000000000000", "--out", "{dir}/s.hdf5"),
        ("--n", "free"),
    ),
    Case(
        "simulate-out-not-writable",
        (*SIM, "--n", "10", "--out", "{dir}/locked/s.hdf5"),
        ("--out", "locked"),
        setup=_locked,
        marks=_unless(IS_ROOT, "root may write anywhere"),
    ),
    # ---- LightningCLI: lightning fit|validate|test|predict, caloflow fit
    Case("fit-lr-negative", (*FIT1, "--model.lr", "-1e-3"), ("--model.lr", "-0.001")),
    Case("fit-lr-nan", (*FIT1, "--model.lr", "nan"), ("--model.lr", "nan")),
    Case(
        "fit-calogan-lr-zero",
        (
            "lightning",
            "fit",
            "-c",
            "smoke/calogan",
            "--data.path",
            "{e60}",
            "--trainer.default_root_dir",
            "{dir}/run",
            "--model.lr_discriminator",
            "0",
        ),
        ("--model.lr_discriminator",),
    ),
    Case(
        "fit-max-epochs-negative",
        (*FIT1, "--trainer.max_epochs", "-5"),
        ("--trainer.max_epochs", "-5"),
    ),
    Case(
        "fit-ckpt-of-another-model",
        (*FIT1, "--ckpt_path", "{flow2}"),
        ("--ckpt_path", "FlowII", "FlowI"),
    ),
    Case(
        "validate-ckpt-of-another-model",
        (
            "lightning",
            "validate",
            "-c",
            "smoke/flow2",
            "--data.path",
            "{e60}",
            "--trainer.default_root_dir",
            "{dir}/run",
            "--ckpt_path",
            "{flow1}",
        ),
        ("--ckpt_path", "FlowI"),
    ),
    Case(
        "test-ckpt-truncated",
        (
            "lightning",
            "test",
            "-c",
            "smoke/flow1",
            "--data.path",
            "{e60}",
            "--trainer.default_root_dir",
            "{dir}/run",
            "--ckpt_path",
            "{trunc}",
        ),
        ("--ckpt_path", "trunc.ckpt", "truncated"),
    ),
    Case(
        "predict-ckpt-text-file",
        (
            "lightning",
            "predict",
            "-c",
            "smoke/flow1",
            "--data.path",
            "{e60}",
            "--trainer.default_root_dir",
            "{dir}/run",
            "--ckpt_path",
            "{text}",
        ),
        ("--ckpt_path", "text.ckpt"),
    ),
    # a FlowI last.ckpt under the working folder must not be picked when the run has no root
    Case(
        "fit-ckpt-last-without-root",
        (
            "lightning",
            "fit",
            "-c",
            "smoke/flow1",
            "--data.path",
            "{e60}",
            "--trainer.default_root_dir",
            "null",
            "--ckpt_path",
            "last",
        ),
        ("--ckpt_path last", "default_root_dir"),
        setup=_checkpoint_in("lightning_logs/version_0/checkpoints/last.ckpt", "flow1"),
    ),
    Case(
        "fit-ckpt-last-of-another-model",
        (*FIT1, "--ckpt_path", "last"),
        ("--ckpt_path last", "FlowI"),
        setup=_checkpoint_in("run/lightning_logs/version_0/checkpoints/last.ckpt", "flow2"),
    ),
    Case("fit-max-showers-zero", (*FIT1, "--data.max_showers", "0"), ("--data.max_showers",)),
    Case(
        "fit-data-without-showers",
        (
            "lightning",
            "fit",
            "-c",
            "smoke/flow1",
            "--data.path",
            "{empty}",
            "--trainer.default_root_dir",
            "{dir}/run",
        ),
        ("--data.path", "empty.hdf5"),
    ),
    Case("fit-unknown-key", (*FIT1, "--model.foo", "1"), ("--model", "foo")),
    Case("fit-wrong-type", (*FIT1, "--model.n_blocks", "abc"), ("--model.n_blocks", "abc")),
    Case("fit-unknown-particle", (*FIT1, "--data.particle", "muon"), ("--data.particle", "muon")),
    Case(
        "fit-missing-config",
        ("lightning", "fit", "-c", "{dir}/nope.yaml"),
        ("--config", "nope.yaml"),
    ),
    Case(
        "fit-seed-not-a-number", (*FIT1, "--seed_everything", "abc"), ("--seed_everything", "abc")
    ),
    Case(
        "fit-config-not-yaml",
        (*FIT1, "-c", "{dir}/bad.yaml"),
        ("--config", "bad.yaml"),
        setup=_write("bad.yaml", "model: [\n"),
    ),
    Case(
        "fit-root-under-a-file",
        (*FIT1, "--trainer.default_root_dir", "{e60}/run"),
        ("--trainer.default_root_dir", "e60.hdf5"),
    ),
    Case("caloflow-fit-lr-zero", ("caloflow", *FIT1[1:], "--model.lr", "0"), ("--model.lr",)),
    # ---- caloflow generate
    Case(
        "generate-device-cuda-without-cuda",
        (*GEN, "--n", "10", "--device", "cuda", "--out", "{dir}/g.hdf5"),
        ("--device", "cuda"),
        marks=_unless(HAS_CUDA, "this machine has CUDA"),
    ),
    Case(
        "generate-device-banana",
        (*GEN, "--n", "10", "--device", "banana", "--out", "{dir}/g.hdf5"),
        ("--device", "banana"),
    ),
    Case(
        "generate-energy-range-inf",
        (*GEN, "--n", "10", "--energy-range", "1", "inf", "--out", "{dir}/g.hdf5"),
        ("--energy-range", "inf"),
    ),
    Case(
        "generate-energy-range-negative",
        (*GEN, "--n", "10", "--energy-range", "-1e-3", "5", "--out", "{dir}/g.hdf5"),
        ("--energy-range", "-1e-3"),
    ),
    Case(
        "generate-seed-negative",
        (*GEN, "--n", "10", "--seed", "-1", "--out", "{dir}/g.hdf5"),
        ("--seed", "-1"),
    ),
    Case(
        "generate-seed-too-large",
        (*GEN, "--n", "10", "--seed", "99999999999999999999", "--out", "{dir}/g.hdf5"),
        ("--seed",),
    ),
    Case("generate-n-zero", (*GEN, "--n", "0", "--out", "{dir}/g.hdf5"), ("--n",)),
    Case(
        "generate-energies-without-showers",
        (*GEN, "--energies", "{empty}", "--out", "{dir}/g.hdf5"),
        ("--energies", "empty.hdf5"),
    ),
    Case(
        "generate-n-above-energies",
        (*GEN, "--energies", "{e60}", "--n", "100", "--out", "{dir}/g.hdf5"),
        ("--energies", "--n"),
    ),
    Case(
        "generate-flows-swapped",
        (
            "caloflow",
            "generate",
            "--flow1",
            "{flow2}",
            "--flow2",
            "{flow1}",
            "--n",
            "10",
            "--out",
            "{dir}/g.hdf5",
        ),
        ("--flow1", "FlowII"),
    ),
    Case(
        "generate-flow1-truncated",
        (
            "caloflow",
            "generate",
            "--flow1",
            "{trunc}",
            "--flow2",
            "{flow2}",
            "--n",
            "10",
            "--out",
            "{dir}/g.hdf5",
        ),
        ("--flow1", "trunc.ckpt"),
    ),
    Case(
        "generate-calogan-is-a-flow",
        ("caloflow", "generate", "--calogan", "{flow1}", "--n", "10", "--out", "{dir}/g.hdf5"),
        ("--calogan", "FlowI"),
    ),
    Case(
        "generate-flow1-nan-weights",
        (
            "caloflow",
            "generate",
            "--flow1",
            "{nan1}",
            "--flow2",
            "{flow2}",
            "--n",
            "10",
            "--out",
            "{dir}/g.hdf5",
        ),
        ("--flow1", "nan1.ckpt", "not finite"),
    ),
    Case(
        "generate-out-is-its-energies",
        (*GEN, "--energies", "{dir}/in.hdf5", "--out", "{dir}/in.hdf5"),
        ("--out", "in.hdf5", "--energies"),
        setup=_copy_input("in.hdf5"),
    ),
    Case(
        "generate-n-too-large-for-the-disk",
        (*GEN, "--n", "1000000000000", "--out", "{dir}/g.hdf5"),
        ("--n", "free"),
    ),
    Case(
        "generate-out-under-a-file",
        (*GEN, "--n", "10", "--out", "{e60}/g.hdf5"),
        ("--out", "e60.hdf5"),
    ),
    # ---- caloflow evaluate
    Case(
        "evaluate-missing-reference",
        (*EVAL, "--reference", "{dir}/nope.hdf5", "--samples", "A={e60}", "--out", "{dir}/out"),
        ("--reference", "nope.hdf5"),
    ),
    Case(
        "evaluate-reference-without-showers",
        (*EVAL, "--reference", "{empty}", "--samples", "A={e60}", "--out", "{dir}/out"),
        ("--reference", "empty.hdf5"),
    ),
    Case(
        "evaluate-sample-not-hdf5",
        (*EVAL, "--reference", "{e60}", "--samples", "A={text}", "--out", "{dir}/out"),
        ("--samples", "text.ckpt"),
    ),
    Case(
        "evaluate-sample-missing",
        (*EVAL, "--reference", "{e60}", "--samples", "A={dir}/nope.hdf5", "--out", "{dir}/out"),
        ("--samples", "nope.hdf5"),
    ),
    Case(
        "evaluate-sample-without-name",
        (*EVAL, "--reference", "{e60}", "--samples", "{e60}", "--out", "{dir}/out"),
        ("--samples",),
    ),
    Case(
        "evaluate-unknown-classifier",
        (
            "caloflow",
            "evaluate",
            "--reference",
            "{e60}",
            "--samples",
            "A={e60}",
            "--classifier",
            "svm",
            "--out",
            "{dir}/out",
        ),
        ("--classifier", "svm"),
    ),
    Case(
        "evaluate-runs-zero",
        (
            *EVAL,
            "--reference",
            "{e60}",
            "--samples",
            "A={e60}",
            "--runs",
            "0",
            "--out",
            "{dir}/out",
        ),
        ("--runs",),
    ),
    Case(
        "evaluate-out-is-a-file",
        (*EVAL, "--reference", "{e60}", "--samples", "A={e60}", "--out", "{e60}"),
        ("--out",),
    ),
    Case(
        "evaluate-out-not-writable",
        (*EVAL, "--reference", "{e60}", "--samples", "A={e60}", "--out", "{dir}/locked/out"),
        ("--out", "locked"),
        setup=_locked,
        marks=_unless(IS_ROOT, "root may write anywhere"),
    ),
    # ---- caloflow benchmark
    Case(
        "benchmark-seed-negative", (*BENCH, "--seed", "-1", "--out", "{dir}/out"), ("--seed", "-1")
    ),
    Case(
        "benchmark-device-banana",
        (*BENCH, "--device", "banana", "--out", "{dir}/out"),
        ("--device", "banana"),
    ),
    Case(
        "benchmark-flow1-text-file",
        (*BENCH, "--flow1", "{text}", "--flow2", "{flow2}", "--out", "{dir}/out"),
        ("--flow1", "text.ckpt"),
    ),
    Case(
        "benchmark-unknown-generator",
        ("caloflow", "benchmark", "--generators", "geant4", "--out", "{dir}/out"),
        ("--generators", "geant4"),
    ),
    Case("benchmark-out-under-a-file", (*BENCH, "--out", "{e60}/out"), ("--out", "e60.hdf5")),
    Case(
        "benchmark-ds1-with-calogan",
        (
            "caloflow",
            "benchmark",
            "--dataset",
            "ds1-photons",
            "--calogan",
            "{flow2}",
            "--out",
            "{dir}/out",
        ),
        ("--calogan", "ds1-photons"),
    ),
    Case(
        "benchmark-ds1-configs-missing",
        (
            "caloflow",
            "benchmark",
            "--dataset",
            "ds1-pions",
            "--configs",
            "{dir}/nowhere",
            "--out",
            "{dir}/out",
        ),
        ("--configs", "nowhere", "flow1.yaml"),
    ),
    # ---- caloflow config
    Case(
        "config-unknown-name",
        ("caloflow", "config", "nosuch", "--out", "{dir}/x.yaml"),
        ("nosuch",),
    ),
    Case(
        "config-out-exists",
        ("caloflow", "config", "flow2", "--out", "{dir}/mine.yaml"),
        ("--out", "mine.yaml"),
        setup=_write("mine.yaml", "# my edits\n"),
    ),
    # ---- refine (python -m refine.laser, caloflow refine)
    Case(
        "refine-lr-not-a-number",
        REFINE,
        ("bad.yaml", "classifier.init_args.lr", "fast"),
        setup=_laser_config("classifier.init_args.lr", "fast"),
    ),
    Case(
        "refine-lr-negative",
        REFINE,
        ("bad.yaml", "baseline.init_args.lr"),
        setup=_laser_config("baseline.init_args.lr", -1e-3),
    ),
    Case(
        "refine-flow-refiner-scale-zero",
        REFINE,
        ("bad.yaml", "flow_refiner.init_args.max_log_scale"),
        setup=_laser_config("flow_refiner.init_args.max_log_scale", 0.0),
    ),
    Case(
        "refine-batch-size-zero",
        REFINE,
        ("bad.yaml", "baseline_training.batch_size"),
        setup=_laser_config("baseline_training.batch_size", 0),
    ),
    Case(
        "refine-epochs-zero",
        REFINE,
        ("bad.yaml", "classifier_training.epochs"),
        setup=_laser_config("classifier_training.epochs", 0),
    ),
    Case(
        "refine-step-size-nan",
        REFINE,
        ("bad.yaml", "hmc.step_size"),
        setup=_laser_config("hmc.step_size", float("nan")),
    ),
    Case(
        "refine-chains-zero",
        REFINE,
        ("bad.yaml", "hmc.chains"),
        setup=_laser_config("hmc.chains", 0),
    ),
    Case("refine-n-train-zero", REFINE, ("bad.yaml", "n_train"), setup=_laser_config("n_train", 0)),
    Case("refine-n-eval-zero", REFINE, ("bad.yaml", "n_eval"), setup=_laser_config("n_eval", 0)),
    Case("refine-bins-one", REFINE, ("bad.yaml", "bins"), setup=_laser_config("bins", 1)),
    Case(
        "refine-unknown-toy", ("refine", "--toy", "moon", "--out", "{dir}/out"), ("--toy", "moon")
    ),
    Case(
        "refine-seed-negative",
        ("refine", "--toy", "donut", "--seed", "-1", "--out", "{dir}/out"),
        ("--seed",),
    ),
    Case(
        "refine-unknown-option",
        ("refine", "--toy", "donut", "--frob", "--out", "{dir}/out"),
        ("--frob",),
    ),
    Case(
        "caloflow-refine-threads-zero",
        ("caloflow", "refine", "--toy", "donut", "--threads", "0", "--out", "{dir}/out"),
        ("--threads",),
    ),
    # ---- caloflow demo
    Case("demo-n-zero", ("caloflow", "demo", "--n", "0", "--out", "{dir}/out"), ("--n",)),
    Case(
        "demo-configs-missing",
        ("caloflow", "demo", "--configs", "{dir}/nope", "--out", "{dir}/out"),
        ("--configs", "nope"),
    ),
    Case(
        "demo-config-lr-negative",
        ("caloflow", "demo", "--configs", "{dir}/configs", "--out", "{dir}/out"),
        ("--configs", "flow1.yaml", "model.init_args.lr"),
        setup=_demo_configs,
    ),
    Case(
        "demo-unknown-particle",
        ("caloflow", "demo", "--particle", "muon", "--out", "{dir}/out"),
        ("--particle", "muon"),
    ),
    # ---- the dispatcher
    Case("unknown-command", ("caloflow", "frobnicate"), ("frobnicate",)),
]


# --------------------------------------------------------------------------- fixtures and runner
def _env(cache: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"
    }  # warnings would be extra lines
    env.update(OMP_NUM_THREADS="1", CALOFLOW_CACHE=str(cache))
    return env


def _train(config: str, data: Path, root: Path, env: dict) -> Path:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "caloflow.commands.lightning_cli",
            "fit",
            "-c",
            f"smoke/{config}",
            "--data.path",
            str(data),
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(root),
        ],
        cwd=root.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The shared, read-only inputs: ``e60`` (60 simulated e+ showers), ``empty`` (zero showers),
    ``flow1``/``flow2`` (one smoke epoch on e60), ``nan1`` (flow1 with NaN weights), ``text`` (a
    text file named .ckpt), ``trunc`` (flow1's first 5 kB)."""
    from caloflow.data.simulate import simulate_to_file

    base = tmp_path_factory.mktemp("bad_inputs")
    files = base / "inputs"
    files.mkdir()
    env = _env(base / "cache")
    e60 = simulate_to_file(files / "e60.hdf5", "eplus", 60, seed=3, progress=False)
    empty = files / "empty.hdf5"
    with h5py.File(e60) as src, h5py.File(empty, "w") as dst:
        for key in src:
            dst.create_dataset(key, data=src[key][:0])
    flow1 = _train("flow1", e60, base / "train_flow1", env)
    flow2 = _train("flow2", e60, base / "train_flow2", env)
    ckpt = torch.load(flow1, map_location="cpu", weights_only=False)
    for value in ckpt["state_dict"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(ckpt, files / "nan1.ckpt")
    (files / "text.ckpt").write_text("not a checkpoint\n")
    (files / "trunc.ckpt").write_bytes(flow1.read_bytes()[:5000])
    return {
        "base": base,
        "env": env,
        "e60": e60,
        "empty": empty,
        "flow1": flow1,
        "flow2": flow2,
        "nan1": files / "nan1.ckpt",
        "text": files / "text.ckpt",
        "trunc": files / "trunc.ckpt",
    }


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder below ``folder`` (hidden ones included) with its size and mtime."""
    out = {}
    for path in folder.rglob("*"):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (
            path.is_dir(),
            0 if path.is_dir() else st.st_size,
            st.st_mtime_ns,
        )
    return out


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess
    before: dict
    after: dict
    argv: list[str]


def _run(case: Case, inputs: dict) -> Outcome:
    folder = inputs["base"] / "cases" / case.id
    folder.mkdir(parents=True)
    if case.setup is not None:
        case.setup(folder, inputs)
    values = {k: str(v) for k, v in inputs.items()} | {"dir": str(folder)}
    entry, *args = case.command
    argv = [sys.executable, "-m", MODULES[entry], *(a.format(**values) for a in args)]
    before = _snapshot(folder)
    proc = subprocess.run(
        argv, cwd=folder, env=inputs["env"], capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    after = _snapshot(folder)
    if (folder / "locked").exists():
        (folder / "locked").chmod(0o755)
    return Outcome(proc, before, after, argv)


@pytest.fixture(scope="module")
def outcomes(inputs, request) -> dict[str, Outcome]:
    """Run the selected (not skipped) cases, two at a time; {case id: outcome}."""
    selected = {
        item.callspec.params["case"].id: item.callspec.params["case"]
        for item in request.session.items
        if item.module is sys.modules[__name__]
        and hasattr(item, "callspec")
        and "case" in item.callspec.params
        and item.get_closest_marker("skip") is None
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case_id: pool.submit(_run, case, inputs) for case_id, case in selected.items()}
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit(case: Case, outcomes):
    outcome = outcomes[case.id]
    proc = outcome.proc
    command = " ".join(outcome.argv[2:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, f"{command}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, f"{command}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1, f"{command}: {len(lines)} lines on stderr\n{proc.stderr[-3000:]}"
    line = lines[0]
    assert ": error: " in line, line
    missing = [c for c in case.culprits if c not in line]
    assert not missing, f"{command}: {missing} not named in: {line}"
    created = sorted(set(outcome.after) - set(outcome.before))
    changed = sorted(
        k
        for k in set(outcome.after) & set(outcome.before)
        if outcome.after[k] != outcome.before[k] and not outcome.after[k][0]
    )  # a folder's mtime changes when a temporary file comes and goes
    assert not created and not changed, f"{command}: left behind {created}, changed {changed}"


def test_the_battery_covers_every_command():
    """At least 40 bad inputs, and every command among them."""
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    commands = {
        c.command[0] if c.command[0] == "refine" else " ".join(c.command[:2]) for c in CASES
    }
    for command in (
        "caloflow simulate",
        "caloflow generate",
        "caloflow evaluate",
        "caloflow benchmark",
        "caloflow config",
        "caloflow demo",
        "caloflow refine",
        "caloflow fit",
        "refine",
        "lightning fit",
        "lightning validate",
        "lightning test",
        "lightning predict",
    ):
        assert command in commands, command


@pytest.mark.parametrize(
    "values, name, what",
    [
        ({"lr": -1e-3}, "lr", "> 0"),
        ({"lr_generator": 0.0}, "lr_generator", "> 0"),
        ({"learning_rate": float("nan")}, "learning_rate", "finite"),
        ({"gamma": 1.5}, "gamma", "(0, 1]"),
        ({"lr_decay": 0.0}, "lr_decay", "(0, 1]"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"n_blocks": 0}, "n_blocks", ">= 1"),
        ({"hidden_features": 2.5}, "hidden_features", ">= 1"),
        ({"disc_lc_channels": [2, 0, 2]}, "disc_lc_channels", ">= 1"),
        ({"milestones": [5, -1]}, "milestones", ">= 0"),
        ({"betas": [1.5, 0.9]}, "betas", "[0, 1)"),
        ({"backbone_args": {"hidden": 0}}, "backbone_args.hidden", ">= 1"),
        ({"energy_range_gev": [100.0, 1.0]}, "energy_range_gev", "LOW < HIGH"),
        ({"slope": float("inf")}, "slope", "finite"),
    ],
)
def test_hyperparameter_rules(values, name, what):
    """The rules every model's hyperparameters get, by name (in-process: the wiring is tested above)."""
    from caloflow.checks import hyperparameter_problems

    [(key, problem)] = hyperparameter_problems(values)
    assert key == name and what in problem


def test_good_hyperparameters_pass():
    from caloflow.checks import hyperparameter_problems
    from caloflow.configs import CONFIG_DIR

    for path in CONFIG_DIR.rglob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        for section in ("model", "baseline", "classifier", "refiner", "flow_refiner"):
            if isinstance(config.get(section), dict):
                assert hyperparameter_problems(config[section].get("init_args") or {}) == [], (
                    path,
                    section,
                )
    assert (
        hyperparameter_problems(
            {
                "lr": 1e-4,
                "gamma": 1.0,
                "dropout": 0.0,
                "ema": None,
                "fast_sampling": True,
                "backbone": "mlp",
                "milestones": [0, 5],
            }
        )
        == []
    )
