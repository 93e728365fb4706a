"""Wall-clock timing helpers shared by ``caloflow benchmark`` and the scripts in ``benchmarks/``.

CUDA kernels run asynchronously, so a timed call is bracketed by ``torch.cuda.synchronize``:
the time then covers the work, not just its launch.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued kernels on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, float]:
    """Run ``fn()`` once; returns (its result, wall-clock seconds), synchronised on CUDA."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a timing depends on: CPU model and count, torch threads and version, device (GPU name on CUDA)."""
    device = torch.device(device)
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_ms(x: float | None) -> str:
    """A time in ms with 3 significant digits, thousands separated from 100 on; '-' for None."""
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


__all__ = ["T", "synchronize", "timed", "cpu_model", "machine_info", "format_ms"]
