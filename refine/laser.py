"""``python -m refine.laser``: the LaSeR protocol on the 2D toys (paper section 4, Table 3).

The command: ``--toy gaussians|donut|rings|all`` runs the toy protocol of :mod:`refine.toy_laser`
(baseline, post-hoc classifier, DCTR, HMC and the LaSeR refiner, scored by EMD and JSD) with the
shipped ``laser/TOY.yaml`` or ``--config`` (jsonargparse, class_path / init_args; format in
:mod:`refine.config`); ``--print_config`` prints the resolved config. It writes ``results.json``,
``table.md``, figures and TensorBoard logs under ``--out``.

With ``--flow1 F1 --flow2 F2`` (or ``--calogan G``) ``--reference REF.hdf5`` instead of ``--toy``, the
protocol refines a shower model conditional on E_inc and measures it on a held-out split of the
reference file (:mod:`refine.shower_laser`, config ``laser/showers.yaml``); the two modes are
mutually exclusive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caloflow.commands import argtypes
from caloflow.errors import CaloflowError
from refine.config import TOY_NAMES
from refine.toy_laser import LaserError, load_config, run_toys, table_markdown

# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m refine.laser`` (and of ``caloflow refine``)."""
    p.add_argument("--toy", choices=[*TOY_NAMES, "all"], help="which 2D toy (or all three)")
    showers = p.add_argument_group(
        "showers (instead of --toy): LaSeR on a shower model, conditional on E_inc"
    )
    showers.add_argument("--flow1", help="Flow I checkpoint (.ckpt)")
    showers.add_argument("--flow2", help="Flow II checkpoint (.ckpt)")
    showers.add_argument("--calogan", help="CaloGAN checkpoint (.ckpt), instead of --flow1/--flow2")
    showers.add_argument(
        "--reference", help="reference showers (CaloGAN HDF5), split into refinement and evaluation"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="merge the config's quick section over the rest (100k points, a few minutes)",
    )
    p.add_argument(
        "--seed", type=argtypes.seed, default=0, help="random seed (same seed -> same numbers)"
    )
    p.add_argument(
        "--out",
        type=argtypes.output_dir,
        default=None,
        help="output directory (results.json, table.md, figures, logs); required unless --print_config",
    )
    p.add_argument(
        "--config",
        type=argtypes.existing_file,
        default=None,
        help="YAML config to use instead of the shipped laser/TOY.yaml (one toy only) or laser/showers.yaml",
    )
    p.add_argument(
        "--rounds",
        type=argtypes.positive_int,
        default=1,
        help="showers: refinement rounds; round k > 1 reweights the refined generator with a new "
        "classifier and refines again from the previous refiner (needs the flow refiner)",
    )
    argtypes.add_threads_option(p, 1, "fastest for these small models")
    argtypes.add_progress_option(p)
    p.add_argument(
        "--print_config",
        action="store_true",
        help="print the resolved config (with --quick and --config applied) as YAML and exit",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argtypes.ArgumentParser(prog="python -m refine.laser", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CaloflowError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


SHOWER_OPTIONS = ("flow1", "flow2", "calogan", "reference")


def run(args: argparse.Namespace) -> int:
    """Run the toys (or, with --flow1/--flow2/--calogan/--reference, the shower protocol) of parsed
    ``args``; a bad option or config raises :class:`CaloflowError` (one line)."""
    showers = [f"--{o}" for o in SHOWER_OPTIONS if getattr(args, o, None)]
    if args.toy is not None and showers:
        raise CaloflowError(
            f"--toy and {'/'.join(showers)} are mutually exclusive: the 2D toys or a shower model"
        )
    if showers:
        return _run_showers(args)
    if getattr(args, "rounds", 1) != 1:
        raise CaloflowError("--rounds: applies to shower models (--flow1/--flow2 or --calogan)")
    if args.toy is None:
        raise CaloflowError(
            "--toy (a 2D toy) or --flow1/--flow2 (or --calogan) with --reference (showers): required"
        )
    try:
        toys = list(TOY_NAMES) if args.toy == "all" else [args.toy]
        if args.config is not None and len(toys) > 1:
            raise LaserError("--config applies to one toy; use it with --toy gaussians|donut|rings")
        if args.out is None and not args.print_config:
            raise LaserError("--out: required (the output directory)")
        configs = {t: load_config(t, args.quick, args.config) for t in toys}
    except LaserError as e:
        raise CaloflowError(str(e)) from None
    if args.print_config:
        from refine.config import dump_config

        print("---\n".join(dump_config(cfg) for cfg in configs.values()), end="")
        return 0
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run_toys(
        toys, configs, Path(args.out), args.seed, quick=args.quick, progress=args.progress
    )
    print(table_markdown(results))
    return 0


def _run_showers(args: argparse.Namespace) -> int:
    """``python -m refine.laser --flow1 ... --reference ... --out ...`` (or ``--print_config``)."""
    from refine.shower_laser import check_inputs, load_shower_config, run_showers
    from refine.shower_report import table_markdown as shower_table

    cfg = load_shower_config(args.quick, args.config)
    if args.print_config:
        from refine.config import dump_config

        print(dump_config(cfg), end="")
        return 0
    if args.out is None:
        raise CaloflowError("--out: required (the output directory)")
    from refine.shower_laser import check_rounds

    check_rounds(cfg, args.rounds)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    checkpoints = {"flow1": args.flow1, "flow2": args.flow2, "calogan": args.calogan}
    inputs = check_inputs(checkpoints, args.reference, out, args.config)
    results = run_showers(
        inputs, cfg, out, args.seed, args.quick, progress=args.progress, rounds=args.rounds
    )
    print(shower_table(results))
    return 0


__all__ = ["add_arguments", "build_parser", "main", "SHOWER_OPTIONS", "run"]


if __name__ == "__main__":
    sys.exit(main())
