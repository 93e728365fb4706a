"""Fidelity per CPU-hour: ``caloflow benchmark fidelity`` (see caloflow/fidelity.py).

    python benchmarks/fidelity.py --configs configs/cpu/eplus --out runs/fidelity/eplus

simulate -> fit Flow I and Flow II with the given configs -> generate for an independent reference of
10,000 showers -> converged classifiers (voxel DNN unnormalized and normalized, feature classifier;
3 runs each); prints one row per budget (Flow II epochs) and writes fidelity.json / fidelity.md.

The options are the command's. ``--smoke`` runs the same pipeline on the ``configs/cpu/eplus`` preset
at smoke size (``benchmarks/_tiny.py``) in a temporary folder; options given on the command line
(``--configs``, ``--out``, ...) take the place of the smoke ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _tiny import SMOKE_BLOCKS, SMOKE_PRESET, SMOKE_SHOWERS, add_smoke_option, tiny_configs

PROG = "benchmarks/fidelity.py"
#: ``--smoke``: Flow I and Flow II epochs (a Flow II snapshot after each), and the command's options it sets
SMOKE_EPOCHS = 2
SMOKE = {"--n-reference": "300", "--runs": "2", "--max-epochs": "2", "--patience": "1"}


def parser() -> argparse.ArgumentParser:
    """``caloflow benchmark fidelity``'s parser with ``--smoke``."""
    from caloflow.commands import fidelity
    from caloflow.commands.argtypes import ArgumentParser

    p = ArgumentParser(prog=PROG, description=fidelity.__doc__.split("\n\n")[0])
    fidelity.add_arguments(p)
    add_smoke_option(
        p,
        f"the {SMOKE_PRESET} preset with {SMOKE_BLOCKS} MADE blocks per flow, {SMOKE_EPOCHS} "
        f"epochs on {SMOKE_SHOWERS} showers, "
        + ", ".join(f"{k} {v}" for k, v in SMOKE.items())
        + ", in a temporary --out",
    )
    return p


def smoke_argv(argv: list[str], folder: Path) -> list[str]:
    """``argv`` after the smoke options (argparse keeps the last value given: the command line's win):
    the smoke-size preset's configs written to ``folder/configs``, ``--out folder/out``, :data:`SMOKE`."""
    configs = tiny_configs(folder / "configs", SMOKE_EPOCHS)
    smoke = ["--configs", str(configs), "--out", str(folder / "out")]
    for option, value in SMOKE.items():
        smoke += [option, value]
    return smoke + list(argv)


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the benchmark; a refused input is one line on stderr and exit status 2."""
    from caloflow.commands import fidelity
    from caloflow.errors import CaloflowError

    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad option already reported as one line
        return int(e.code or 0)
    try:
        return int(fidelity.run(args) or 0)
    except CaloflowError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """The benchmark's exit status (``--smoke``: in a temporary folder, removed afterwards)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--smoke" not in argv:
        return run(argv)
    with tempfile.TemporaryDirectory(prefix="fidelity_smoke_") as folder:
        return run(smoke_argv(argv, Path(folder)))


if __name__ == "__main__":
    sys.exit(main())
