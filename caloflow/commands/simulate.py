"""``caloflow simulate``: showers of an embedded simulator into a shower file.

``--dataset calogan`` (the default): the CaloGAN detector (:mod:`caloflow.data.simulate`), a
CaloGAN file. ``--dataset ds1-photons | ds1-pions``, or ``--geometry FILE.xml`` (a CaloChallenge
binning with dataset-1 samplings): the ATLAS-like barrel (:mod:`caloflow.data.barrel`), a
CaloChallenge file; incident energies from the official dataset-1 mix scaled to ``--n``
(``--energies challenge``, the default) or log-uniform in ``--energy-range``.

``--energies FILE`` (either detector) takes the incident energies of a shower file, in order, as
``caloflow generate --energies FILE`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from caloflow.checks import check_not_an_input
from caloflow.commands import argtypes
from caloflow.data import barrel
from caloflow.data.io import check_disk_space
from caloflow.data.simulate import PARTICLES, check_energies, check_options, simulate_to_file
from caloflow.errors import CaloflowError
from caloflow.geometry import BUILTIN, CALOGAN, DS1_PHOTONS, DS1_PIONS, Geometry, read_binning_xml
from caloflow.sampling import requested_energies

#: --dataset: the detectors an embedded simulator knows.
DATASETS: dict[str, Geometry] = {g.name: g for g in (CALOGAN, DS1_PHOTONS, DS1_PIONS)}
#: The CaloGAN default energy range, GeV.
CALOGAN_RANGE = (1.0, 100.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the particle, the dataset and the energies are checked together in run(), before any work
    parser.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default=None,
        help="detector (default calogan): calogan writes a CaloGAN file; ds1-photons and "
        "ds1-pions the CaloChallenge dataset-1 format",
    )
    parser.add_argument(
        "--geometry",
        type=argtypes.existing_file,
        metavar="FILE.xml",
        help="a CaloChallenge binning XML whose layer ids are dataset-1 samplings (0-3, 12-14): "
        "simulated by the barrel model; give --particle gamma or piplus",
    )
    parser.add_argument(
        "--particle",
        help=f"calogan: one of {', '.join(PARTICLES)} (required); dataset 1: "
        f"{' or '.join(barrel.PARTICLES)} (implied by --dataset)",
    )
    parser.add_argument(
        "--n",
        type=argtypes.positive_int,
        help="number of showers (required, except with --energies FILE: all its energies)",
    )
    parser.add_argument("--seed", default=0, type=argtypes.seed, help="random seed (default 0)")
    parser.add_argument(
        "--out",
        required=True,
        type=argtypes.output_file,
        help="output HDF5 file (CaloGAN or CaloChallenge format, after the detector)",
    )
    argtypes.add_energies_option(parser)  # dataset 1: 'challenge' by default
    parser.add_argument(
        "--energy-range",
        nargs=2,
        default=None,
        type=argtypes.positive_float,
        metavar=("LOW", "HIGH"),
        help="incident energy range in GeV: calogan uniform (default 1 100, at most 1000); "
        f"dataset 1 log-uniform (at most {barrel.MAX_ENERGY_GEV:.10g} GeV)",
    )
    argtypes.add_progress_option(parser)


def _geometry(args: argparse.Namespace) -> Geometry:
    """The detector of the run: --geometry FILE.xml, or --dataset (default calogan)."""
    if args.geometry is not None:
        if args.dataset is not None:
            raise CaloflowError("--geometry: give either --dataset or --geometry, not both")
        try:
            geometry = read_binning_xml(args.geometry)
        except CaloflowError as e:
            raise CaloflowError(f"--geometry: {e}") from None
        if geometry.name in BUILTIN:  # a file named like a built-in must not pass for it
            geometry = read_binning_xml(args.geometry, name=f"{geometry.name}.xml")
        return geometry
    return DATASETS[args.dataset or CALOGAN.name]


def _given_energies(args: argparse.Namespace) -> tuple[int, np.ndarray | None]:
    """(n, the incident energies in GeV of --energies FILE or None), refused in one line when
    --n is missing or the file has too few showers."""
    if args.energies is not None and args.energies != argtypes.CHALLENGE_ENERGIES:
        if args.energy_range is not None:
            raise CaloflowError("--energies: give either --energies or --energy-range")
        check_not_an_input(args.out, {"--energies": args.energies})
        energies = requested_energies(args.n, args.energies, None, args.seed)
        return len(energies), energies
    if args.n is None:
        raise CaloflowError("--n: required unless --energies FILE gives the energies")
    return args.n, None


def _run_calogan(args: argparse.Namespace) -> int:
    if args.particle is None:
        raise CaloflowError(f"--particle: required for calogan (one of {', '.join(PARTICLES)})")
    if args.energies == argtypes.CHALLENGE_ENERGIES:
        raise CaloflowError(
            "--energies challenge: the official energy mix belongs to dataset 1 (--dataset "
            "ds1-photons or ds1-pions)"
        )
    n, given = _given_energies(args)
    seed, out = args.seed, Path(args.out)
    lo, hi = check_options(args.particle, n, seed, tuple(args.energy_range or CALOGAN_RANGE))
    check_energies(given, n)
    check_disk_space(out, n)
    path = simulate_to_file(
        out, args.particle, n, seed, (lo, hi), progress=args.progress, energies=given
    )
    print(f"wrote {n} {args.particle} showers to {path}")
    return 0


def _run_barrel(args: argparse.Namespace, geometry: Geometry) -> int:
    if args.energies is not None and args.energy_range is not None:
        raise CaloflowError("--energies: give either --energies or --energy-range")
    n, given = _given_energies(args)
    energies = given if given is not None else None if args.energy_range else "challenge"
    seed, out = args.seed, Path(args.out)
    # everything that can be refused is refused before the first shower
    _, particle, _, _ = barrel.check_barrel_options(
        geometry, n, seed, energies, args.energy_range, args.particle
    )
    check_disk_space(out, n, geometry=geometry)
    path = barrel.simulate_barrel_to_file(
        out, geometry, n, seed, energies, args.energy_range, particle, progress=args.progress
    )
    print(f"wrote {n} {particle} showers ({geometry.name}) to {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    geometry = _geometry(args)
    if geometry == CALOGAN:
        return _run_calogan(args)
    return _run_barrel(args, geometry)


__all__ = ["DATASETS", "CALOGAN_RANGE", "add_arguments", "run"]
