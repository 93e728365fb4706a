"""``caloflow simulate``: showers of the embedded simulator (:mod:`caloflow.data.simulate`) into a CaloGAN file."""

from __future__ import annotations

import argparse
from pathlib import Path

from caloflow.commands import argtypes
from caloflow.data.io import check_disk_space
from caloflow.data.simulate import PARTICLES, check_options, simulate_to_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the particle and the energy range (LOW < HIGH) are checked in run() by simulate_to_file
    parser.add_argument("--particle", required=True, help=f"one of {', '.join(PARTICLES)}")
    parser.add_argument("--n", required=True, type=argtypes.positive_int, help="number of showers")
    parser.add_argument("--seed", default=0, type=argtypes.seed, help="random seed (default 0)")
    parser.add_argument(
        "--out", required=True, type=argtypes.output_file, help="output HDF5 file (CaloGAN format)"
    )
    parser.add_argument(
        "--energy-range",
        nargs=2,
        default=[1.0, 100.0],
        type=argtypes.positive_float,
        metavar=("LOW", "HIGH"),
        help="incident energy range in GeV, uniform (default 1 100)",
    )
    argtypes.add_progress_option(parser)


def run(args: argparse.Namespace) -> int:
    n, seed, out = args.n, args.seed, Path(args.out)
    # everything that can be refused is refused before the first shower
    lo, hi = check_options(args.particle, n, seed, tuple(args.energy_range))
    check_disk_space(out, n)
    path = simulate_to_file(out, args.particle, n, seed, (lo, hi), progress=args.progress)
    print(f"wrote {n} {args.particle} showers to {path}")
    return 0


__all__ = ["add_arguments", "run"]
