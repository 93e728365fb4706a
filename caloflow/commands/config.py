"""``caloflow config``: list the shipped configs, or copy one where it can be edited."""

from __future__ import annotations

import argparse
from pathlib import Path

from caloflow.atomic import write_text_atomic
from caloflow.commands import argtypes
from caloflow.configs import config_name, list_configs, shipped_config
from caloflow.errors import CaloflowError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="shipped config, e.g. flow2, smoke/flow1, laser/gaussians (see --list)",
    )
    parser.add_argument(
        "--out",
        type=argtypes.output_file,
        default=None,
        help="where to write it (default ./NAME.yaml, with '/' in NAME written as '_')",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--list", action="store_true", help="list the shipped configs and exit")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name in list_configs():
            print(name)
        return 0
    if not args.name:
        raise CaloflowError(
            "config: give a NAME (or --list); shipped configs: " + ", ".join(list_configs())
        )
    source = shipped_config(args.name)
    out = Path(args.out) if args.out else Path(config_name(args.name).replace("/", "_") + ".yaml")
    if out.exists() and not args.force:
        raise CaloflowError(f"--out {out}: exists (use --force to overwrite)")
    write_text_atomic(out, source.read_text())
    name = config_name(args.name)
    if name.startswith("laser/"):
        use = f"caloflow refine --toy {Path(name).name} --config {out} --out runs/laser"
    else:
        use = f"lightning fit -c {out}"
    print(f"wrote {out} (shipped config {name}); use it with: {use}")
    return 0


__all__ = ["add_arguments", "run"]
