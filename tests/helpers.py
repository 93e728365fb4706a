"""Helpers shared by the test modules (imported as ``tests.helpers``): the repository root, the
time limit of test subprocesses, running the console entries, and tiny random-initialised models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning
import torch

from caloflow.models.flows import FlowI, FlowII

REPO = Path(__file__).resolve().parents[1]

#: the time limit of every test subprocess: a guard against a hung process, not a performance check,
#: so a busy machine (two cores shared, the suite twice as slow) never fails a test. Several times the
#: quiet run time of the slowest subprocess (``refine.laser --quick``; docs/results.md).
HANG_GUARD_S = 1800


def run_cli(*args: str, cwd=None, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Run a console entry (``caloflow``, ``lightning``, or ``python -m refine.laser`` as ``refine.laser``)
    as a real subprocess of this Python."""
    entry, *rest = args
    module = {
        "caloflow": "caloflow.commands.cli",
        "lightning": "caloflow.commands.lightning_cli",
        "refine.laser": "refine.laser",
    }[entry]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", module, *rest],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(
    script: str | Path, *args: str, timeout: float = HANG_GUARD_S
) -> subprocess.CompletedProcess:
    """Run a script of the repository (``benchmarks/X.py``) as a real subprocess of this Python, cwd the
    repository, importing this checkout's packages (its folder goes first on PYTHONPATH: Python puts the
    script's own folder, not the working directory, on ``sys.path``)."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY_GAN = dict(
    latent_dim=8,
    gen_dense_channels=2,
    gen_conv_channels=3,
    gen_lc_channels=2,
    disc_conv_channels=3,
    disc_lc_channels=(2, 2, 2),
    mbd_kernels=3,
    mbd_dim=2,
)


def perturb(module: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return module


def tiny_flows(
    dtype=torch.float32, seed: int = 0, geometry: str = "calogan"
) -> tuple[FlowI, FlowII]:
    torch.manual_seed(seed)
    flow1 = FlowI(n_blocks=2, hidden_features=8, num_bins=4, geometry=geometry)
    flow1 = perturb(flow1, 0.2, seed).to(dtype).eval()
    flow2 = FlowII(n_blocks=2, hidden_features=8, num_bins=4, dropout=0.0, geometry=geometry)
    flow2 = perturb(flow2, 0.2, seed + 1).to(dtype).eval()
    return flow1, flow2


def save_checkpoint(module: lightning.LightningModule, path) -> str:
    """A checkpoint that ``load_from_checkpoint`` (and so ``caloflow generate``) reads."""
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return str(path)
