"""The wheel ships the configs, and an installed (non-editable) caloflow works outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from caloflow.commands.cli import main
from caloflow.configs import CONFIG_DIR, list_configs, shipped_config
from caloflow.errors import CaloflowError
from tests.helpers import HANG_GUARD_S, REPO, run_cli

#: what the wheel is built from: everything else in the checkout must not be needed
SOURCES = ("pyproject.toml", "README.md", "caloflow", "refine", "callbacks")


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    return dict(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MPLBACKEND="Agg")


def _run(argv, cwd, timeout=HANG_GUARD_S) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, argv))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built without network (no build isolation) from a copy of the sources."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            root / "dist",
            ".",
        ],
        cwd=src,
    )
    (whl,) = (root / "dist").glob("caloflow-*.whl")
    return whl


def test_repo_configs_link_to_the_package():
    link = REPO / "configs"
    assert link.is_symlink() and os.readlink(link) == "caloflow/configs"
    assert link.resolve() == CONFIG_DIR
    shipped = set(list_configs())
    assert {"flow1", "flow2", "calogan", "demo/flow1", "smoke/flow1", "laser/gaussians"} <= shipped


def test_wheel_contains_every_shipped_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = sorted(
        p.relative_to(REPO).as_posix() for p in (REPO / "caloflow" / "configs").rglob("*.y*ml")
    )
    assert len(yamls) == len(list_configs()) >= 11
    missing = [y for y in yamls if y not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert "caloflow/configs/__init__.py" in names and not any(
        n.startswith("tests/") for n in names
    )


@pytest.mark.parametrize(
    "name",
    [
        "flow2",
        "flow2.yaml",
        "configs/flow2.yaml",
        "./configs/flow2.yaml",
        "caloflow/configs/flow2.yaml",
    ],
)
def test_shipped_config_names(name):
    assert shipped_config(name) == CONFIG_DIR / "flow2.yaml"


def test_unknown_config_is_one_line_listing_the_choices():
    with pytest.raises(CaloflowError) as e:
        shipped_config("smoke/flow3")
    message = str(e.value)
    assert "\n" not in message and "smoke/flow3" in message and "smoke/flow1" in message


def test_config_command_writes_refuses_overwrite_and_lists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "smoke/flow1"]) == 0
    written = tmp_path / "smoke_flow1.yaml"
    assert written.read_text() == (CONFIG_DIR / "smoke" / "flow1.yaml").read_text()
    written.write_text("# edited\n")
    assert main(["config", "smoke/flow1"]) == 2
    assert "--force" in capsys.readouterr().err and written.read_text() == "# edited\n"
    assert main(["config", "configs/smoke/flow1.yaml", "--out", "smoke_flow1.yaml", "--force"]) == 0
    assert written.read_text() == (CONFIG_DIR / "smoke" / "flow1.yaml").read_text()
    assert main(["config", "laser/donut", "--out", str(tmp_path / "sub" / "d.yaml")]) == 0
    assert (tmp_path / "sub" / "d.yaml").is_file()
    capsys.readouterr()
    assert main(["config", "--list"]) == 0
    assert capsys.readouterr().out.split() == list_configs()
    assert main(["config", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config 'nope'" in err


def test_lightning_config_fallback_and_unknown_config(tmp_path):
    """``-c`` takes a shipped config by name from any directory; an unknown one is one line, exit 2."""
    proc = run_cli(
        "lightning", "fit", "-c", "configs/smoke/flow1.yaml", "--print_config", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "caloflow.models.FlowI" in proc.stdout
    proc = run_cli("lightning", "fit", "-c", "configs/smoke/nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert (
        "--config configs/smoke/nope.yaml: no such file (shipped configs: " in line
        and "smoke/flow1" in line
    )


def _venv_with_our_packages(venv: Path, cwd: Path) -> Path:
    """A fresh venv that sees the packages of the interpreter running the tests (torch, lightning, ...)
    through a ``.pth`` file naming its site-packages; returns the venv's ``bin``.

    ``--system-site-packages`` is not enough: run from inside a virtual environment, it shows the base
    interpreter's packages, not the environment's. A path named in a ``.pth`` file is not scanned for
    ``.pth`` files itself, so the checkout's editable install stays out of the new venv."""
    _run([sys.executable, "-m", "venv", venv], cwd=cwd)
    bin_dir = venv / "bin"
    site = _run(
        [bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=cwd,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "outer_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return bin_dir


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    """A fresh venv (torch etc. from the system site) with the wheel, used from a directory outside
    the checkout: ``caloflow config`` and a smoke fit with a shipped config write what they should."""
    venv = tmp_path / "venv"
    bin_dir = _venv_with_our_packages(venv, tmp_path)
    _run(
        [
            bin_dir / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            wheel,
        ],
        cwd=tmp_path,
    )
    work = tmp_path / "work"
    work.mkdir()
    # the wheel's copy, not the checkout's editable install, is the one imported
    where = _run(
        [
            bin_dir / "python",
            "-c",
            "import caloflow, refine, callbacks; "
            "print(caloflow.__file__, refine.__file__, callbacks.__file__)",
        ],
        cwd=work,
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where

    _run([bin_dir / "caloflow", "config", "smoke/flow1", "--out", "x.yaml"], cwd=work)
    assert (work / "x.yaml").read_text() == (CONFIG_DIR / "smoke" / "flow1.yaml").read_text()
    _run(
        [
            bin_dir / "caloflow",
            "simulate",
            "--particle",
            "eplus",
            "--n",
            "300",
            "--seed",
            "1",
            "--out",
            "e.hdf5",
            "--no-progress",
        ],
        cwd=work,
    )
    _run(
        [
            bin_dir / "lightning",
            "fit",
            "-c",
            "configs/smoke/flow1.yaml",
            "--trainer.max_epochs",
            "1",
            "--data.path",
            "e.hdf5",
            "--trainer.default_root_dir",
            "run",
        ],
        cwd=work,
    )
    assert list((work / "run").glob("**/checkpoints/last.ckpt"))
    _run([bin_dir / "python", "-m", "refine.laser", "--help"], cwd=work)
