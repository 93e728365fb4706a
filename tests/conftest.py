"""Shared fixtures: a private dataset cache and small simulated CaloGAN files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the test models are tiny: one intra-op thread is as fast, and does not thrash when cores are shared
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items):
    """Modules that hold a ``slow`` test run first (order otherwise kept): the suite runs one module per
    pytest-xdist worker (``--dist loadfile``), and a long module started last would keep one worker
    busy while the others sit idle. xdist keeps this order only with ``--no-loadscope-reorder``
    (pyproject's addopts): by default it sorts the modules by their number of tests, which put the
    one-test module of the shipped ``--quick`` toy run last."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(
        key=lambda item: item.nodeid.split("::")[0] not in slow
    )  # stable: False (slow) first


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # never read or write the user's dataset cache from the tests
    os.environ["CALOFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def eplus_file(tmp_path_factory) -> Path:
    """600 simulated e+ showers in a real CaloGAN-format file."""
    from caloflow.data.simulate import simulate_to_file

    return simulate_to_file(
        tmp_path_factory.mktemp("data") / "eplus.hdf5", "eplus", 600, seed=11, progress=False
    )


@pytest.fixture
def one_thread():
    """Small models train fastest on one thread; more threads thrash on a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
