"""The configs shipped inside the package, and ``caloflow config NAME``.

The YAML files in this folder (``flow1``, ``flow2``, ``calogan``, ``demo/``, ``smoke/``,
``laser/``) are installed with caloflow; in a checkout, the repository's ``configs`` is a link to
this folder. A config is named by its path below the folder, with or without ``.yaml`` and with or
without a leading ``configs/``: ``flow2``, ``smoke/flow1.yaml``, ``configs/laser/gaussians.yaml``.
``lightning fit -c NAME`` falls back to the shipped file when ``NAME`` is not a file, and
``caloflow config NAME`` copies one where it can be edited.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from caloflow.errors import CaloflowError

CONFIG_DIR = Path(__file__).resolve().parent
_SUFFIXES = (".yaml", ".yml")
_PREFIXES = ("caloflow/configs/", "configs/")


def list_configs() -> list[str]:
    """The names of every shipped config, sorted (``calogan``, ``demo/flow1``, ...)."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
                  for p in CONFIG_DIR.rglob("*") if p.suffix in _SUFFIXES and p.is_file())


def config_name(name: str) -> str:
    """``name`` in the canonical form of :func:`list_configs` (no ``./``, ``configs/`` or ``.yaml``)."""
    name = str(name).strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name


def is_shipped(name: str) -> bool:
    """Whether ``name`` names a shipped config."""
    return config_name(name) in list_configs()


def shipped_config(name: str) -> Path:
    """The installed path of the shipped config ``name`` (``flow2``, ``demo/flow1``, ``configs/flow2.yaml``).

    Raises:
        CaloflowError: no shipped config has that name (the message lists them).
    """
    key = config_name(name)
    if key not in list_configs():
        raise CaloflowError(f"unknown config '{name}' (shipped configs: {', '.join(list_configs())})")
    return CONFIG_DIR / f"{key}.yaml"


# ------------------------------------------------------------------------- caloflow config
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from caloflow.cli_args import output_file

    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="shipped config, e.g. flow2, smoke/flow1, laser/gaussians (see --list)")
    parser.add_argument("--out", type=output_file, default=None,
                        help="where to write it (default ./NAME.yaml, with '/' in NAME written as '_')")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--list", action="store_true", help="list the shipped configs and exit")


def run(args: argparse.Namespace) -> int:
    from caloflow.atomic import write_text_atomic

    if args.list:
        for name in list_configs():
            print(name)
        return 0
    if not args.name:
        raise CaloflowError("config: give a NAME (or --list); shipped configs: " + ", ".join(list_configs()))
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
