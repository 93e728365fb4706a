"""Shared fixtures: a private dataset cache and small simulated CaloGAN files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the test models are tiny: one intra-op thread is as fast, and does not thrash when cores are shared
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: the time limit of every test subprocess: a guard against a hung process, not a performance check,
#: so a busy machine (two cores shared, the suite twice as slow) never fails a test. At least 5x the
#: quiet run time of the slowest subprocess (``refine.laser --quick``: ~230-300 s on one core).
HANG_GUARD_S = 1800


def pytest_collection_modifyitems(items):
    """Modules that hold a ``slow`` test run first (order otherwise kept): the suite runs one module per
    pytest-xdist worker (``--dist loadfile``), and a long module started last would keep one worker
    busy while the others sit idle."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)  # stable: False (slow) first


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # never read or write the user's dataset cache from the tests
    os.environ["CALOFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def eplus_file(tmp_path_factory) -> Path:
    """600 simulated e+ showers in a real CaloGAN-format file."""
    from caloflow.data.simulate import simulate_to_file

    return simulate_to_file(tmp_path_factory.mktemp("data") / "eplus.hdf5", "eplus", 600, seed=11, progress=False)


def run_cli(*args: str, cwd=None, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Run a console entry (``caloflow`` or ``lightning``) as a real subprocess of this Python."""
    entry, *rest = args
    module = {"caloflow": "caloflow.cli", "lightning": "caloflow.lightning_cli"}[entry]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def run_script(script: str | Path, *args: str, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Run a script of the repository (``benchmarks/X.py``) as a real subprocess of this Python, cwd the
    repository, importing this checkout's packages (its folder goes first on PYTHONPATH: Python puts the
    script's own folder, not the working directory, on ``sys.path``)."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
