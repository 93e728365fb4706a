"""``caloflow generate``: showers from trained CaloFlow (or CaloGAN) checkpoints into a shower file
in the models' geometry (a CaloGAN file, or a CaloChallenge file for a CaloChallenge geometry).

``--energies FILE`` takes the incident energies of a shower file in order (a generated file then
has as many showers, at the same energies, as the reference: what the CaloChallenge evaluator
needs); ``--energies challenge`` the official dataset-1 mix (121,000 / 120,800 showers, or --n in
the same proportions).

The library does the work (:mod:`caloflow.sampling`); this module parses the options, checks them
before any work, and writes the file batch by batch (:class:`caloflow.data.io.ShowerWriter`).

``--refiner R.ckpt`` (a LaSeR refiner written by ``python -m refine.laser --flow1 ...``, for these
very checkpoints, checked by sha256): the latent points y are drawn per batch exactly as without a
refiner, mapped to Phi(y, E_inc) and decoded (:mod:`refine.shower_refiner`).
"""

from __future__ import annotations

import argparse

import torch

from caloflow.checks import check_not_an_input
from caloflow.commands import argtypes
from caloflow.data import barrel
from caloflow.data.io import ShowerWriter, check_disk_space
from caloflow.domain import Domain, check_energies, check_particle, of_file
from caloflow.errors import CaloflowError
from caloflow.geometry import Geometry
from caloflow.sampling import CaloFlow, CaloGANSampler, IncidentEnergies
from refine.shower_refiner import RefinedSampler, load_refiner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (CaloFlow: --flow1 and --flow2; or --calogan)")
    model.add_argument("--flow1", help="Flow I checkpoint (.ckpt)")
    model.add_argument("--flow2", help="Flow II checkpoint (.ckpt)")
    model.add_argument("--calogan", help="CaloGAN checkpoint (.ckpt)")
    model.add_argument(
        "--refiner",
        type=argtypes.existing_file,
        help="LaSeR refiner checkpoint (refiner.ckpt of python -m refine.laser) trained for these "
        "checkpoints: showers g(Phi(y, E_inc)) with y drawn as without it",
    )
    parser.add_argument(
        "--n",
        type=argtypes.positive_int,
        help="number of showers (default: all energies of --energies)",
    )
    argtypes.add_energies_option(parser)
    parser.add_argument(
        "--energy-range",
        nargs=2,
        type=argtypes.positive_float,
        default=(1.0, 100.0),
        metavar=("LOW", "HIGH"),
        help="uniform incident-energy range in GeV when --energies is not given (default 1 100)",
    )
    parser.add_argument(
        "--batch-size",
        type=argtypes.positive_int,
        default=10_000,
        help="showers per batch (default 10000)",
    )
    parser.add_argument(
        "--no-fast",
        dest="fast",
        action="store_false",
        help="sample Flow II with nflows' own inverse instead of the exact fast inverse",
    )
    parser.add_argument(
        "--device",
        type=argtypes.device,
        default="cpu",
        help="torch device that this machine has: cpu, cuda, cuda:N (default cpu)",
    )
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--out",
        required=True,
        type=argtypes.output_file,
        help="output HDF5 file (CaloGAN or CaloChallenge format, after the models' geometry)",
    )
    argtypes.add_progress_option(parser)
    argtypes.add_threads_option(parser, None)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse (instead of warning) energies or a particle outside what the model was trained on",
    )


def run(args: argparse.Namespace) -> int:
    if args.calogan and (args.flow1 or args.flow2):
        raise CaloflowError("give either --calogan or --flow1/--flow2, not both")
    if not args.calogan and not (args.flow1 and args.flow2):
        raise CaloflowError("--flow1 and --flow2 are both required (or --calogan)")
    lo, hi = args.energy_range
    if not lo <= hi:
        raise CaloflowError(f"--energy-range needs 0 < LOW <= HIGH, got {lo:g} {hi:g}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    refiner = _check_refiner(args)
    if args.calogan:
        sampler, name = CaloGANSampler.load(args.calogan, args.device), "calogan"
    else:
        sampler, name = CaloFlow.load(args.flow1, args.flow2, args.device), "caloflow"
    energies = _energies(args, sampler.geometry, (lo, hi))  # counted, not read yet
    check_output(args, len(energies), sampler.geometry)
    attrs = {
        "generator": name,
        "seed": args.seed,
        "fast_sampling": bool(args.fast),
        "training_domain": sampler.domain.to_json(),
    }
    if refiner is not None:
        sampler = RefinedSampler(sampler, refiner)
        attrs.update(refiner=str(args.refiner), batch_size=args.batch_size)
    check_domain(sampler.domain, energies, args)
    generator = torch.Generator().manual_seed(args.seed)
    # batch by batch into the file: memory does not grow with --n; the file appears only when complete
    with ShowerWriter(
        args.out, attrs=attrs, expected_rows=len(energies), geometry=sampler.geometry
    ) as out:
        sampler.sample(
            energies,
            generator,
            batch_size=args.batch_size,
            fast=args.fast,
            progress=args.progress,
            out=out,
        )
        redraws = getattr(sampler, "redraws", 0)
        out.attrs["redrawn_nonfinite"] = redraws
    print(
        f"caloflow generate: wrote {out.n} {name} showers to {out.path} ({redraws} non-finite showers redrawn)"
    )
    return 0


def _check_refiner(args: argparse.Namespace):
    """The ``--refiner`` (None without one), refused in one line unless it was trained for the given
    checkpoints (sha256)."""
    if not getattr(args, "refiner", None):
        return None
    checkpoints = (
        {"calogan": args.calogan} if args.calogan else {"flow1": args.flow1, "flow2": args.flow2}
    )
    return load_refiner(args.refiner, "--refiner", checkpoints)[0]


def _energies(args: argparse.Namespace, geometry: Geometry, energy_range) -> IncidentEnergies:
    """The run's incident energies: --energies FILE, --energies challenge (the official mix for a
    dataset-1 geometry) or --n uniform draws in --energy-range."""
    if args.energies != argtypes.CHALLENGE_ENERGIES:
        return IncidentEnergies(args.n, args.energies, energy_range, args.seed)
    if geometry.name not in barrel.DATASET_PARTICLES:
        raise CaloflowError(
            f"--energies challenge: the official energy mix belongs to dataset 1; the model is "
            f"built for the {geometry.name} geometry"
        )
    values = barrel.challenge_energies(geometry, args.n, args.seed)
    return IncidentEnergies(None, None, energy_range, args.seed, values=values)


def check_output(args: argparse.Namespace, n: int, geometry: Geometry) -> None:
    """Refuse, before any work, an --out that is one of the inputs or whose showers would not fit on its disk."""
    check_not_an_input(
        args.out,
        {
            "--energies": None if args.energies == argtypes.CHALLENGE_ENERGIES else args.energies,
            "--flow1": args.flow1,
            "--flow2": args.flow2,
            "--calogan": args.calogan,
            "--refiner": getattr(args, "refiner", None),
        },
    )
    check_disk_space(
        args.out,
        n,
        f"--n {args.n}" if args.n is not None else f"--energies {args.energies} ({n} showers)",
        geometry=geometry,
    )


def check_domain(domain: Domain, energies_gev, args: argparse.Namespace) -> None:
    """Warn in one line (refuse with ``--strict``) before generating outside the model's training domain."""
    what = (
        f"--energies {args.energies}"
        if args.energies
        else f"--energy-range {args.energy_range[0]:g} {args.energy_range[1]:g}"
    )
    check_energies(domain, energies_gev, what, args.strict)
    if args.energies and args.energies != argtypes.CHALLENGE_ENERGIES:
        check_particle(domain, of_file(args.energies), f"--energies {args.energies}", args.strict)


__all__ = ["add_arguments", "run"]
