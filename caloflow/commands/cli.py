"""The ``caloflow`` command and the ``lightning`` entry point.

Each subcommand lives in the module that does the work; that module provides
``add_arguments(parser)`` and ``run(args)``. This file only dispatches, and turns user-facing
errors (:class:`caloflow.errors.CaloflowError`, missing files) into one line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import importlib
import sys

from caloflow.commands.argtypes import ArgumentParser, report_error
from caloflow.errors import CaloflowError

#: subcommand -> (module, one-line help). ``fit`` and friends are the LightningCLI entry.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": (
        "caloflow.commands.simulate",
        "simulate showers with the embedded parametrized simulator",
    ),
    "demo": (
        "caloflow.commands.demo",
        "the main job end to end at demo size: simulate, fit both flows, generate, evaluate",
    ),
    "generate": (
        "caloflow.commands.generate",
        "generate showers with trained CaloFlow (or CaloGAN) checkpoints",
    ),
    "evaluate": (
        "caloflow.commands.evaluate",
        "compare generated with reference showers: features, figures, classifier AUC/JSD",
    ),
    "benchmark": (
        "caloflow.commands.benchmark",
        "time generation per shower vs batch size: CaloFlow, CaloGAN, simulator "
        "(table 4); 'caloflow benchmark fidelity': classifier AUC vs training budget",
    ),
    "refine": (
        "refine.laser",
        "LaSeR latent-space refinement: the 2D toys, or a shower model on a held-out split "
        "(same options as 'python -m refine.laser')",
    ),
    "config": (
        "caloflow.commands.config",
        "write a shipped config (flow2, smoke/flow1, laser/gaussians, ...) where you can edit it",
    ),
}
#: subcommands handed to LightningCLI unchanged.
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    """``caloflow SUBCOMMAND ...``; returns the exit code (130 after Ctrl-C, at any moment)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also while the subcommand's modules are still being imported
        return report_error("caloflow", "interrupted", 130)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from caloflow.commands.lightning_cli import lightning_main

        return lightning_main(argv if argv != sys.argv[1:] else None, prog="caloflow")
    if argv[:2] == ["benchmark", "fidelity"]:
        return _run("caloflow benchmark fidelity", "caloflow.commands.fidelity", argv[2:])
    parser = ArgumentParser(
        prog="caloflow",
        description="Fast calorimeter shower generation with normalizing flows.",
        epilog="Training: caloflow fit -c configs/flow2.yaml (LightningCLI; also 'lightning fit ...').",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if not argv or argv[0] != name:
            # only the chosen subcommand's module is imported: start-up stays fast
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(
            name, help=f"LightningCLI '{name}' (see 'caloflow {name} --help')", add_help=False
        )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad option already reported as one line
        return int(e.code or 0)
    try:
        code = modules[args.command].run(args)
    except CaloflowError as e:
        return report_error("caloflow", str(e))
    return int(code or 0)


def _run(prog: str, module_name: str, argv: list[str]) -> int:
    """A command with a parser of its own (``caloflow benchmark fidelity``)."""
    module = importlib.import_module(module_name)
    parser = ArgumentParser(prog=prog, description=module.__doc__.split("\n\n")[0])
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return int(module.run(args) or 0)
    except CaloflowError as e:
        return report_error(prog, str(e))


__all__ = ["COMMANDS", "LIGHTNING_COMMANDS", "main"]


if __name__ == "__main__":
    sys.exit(main())
