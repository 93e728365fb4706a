"""The ``caloflow`` command and the ``lightning`` entry point.

Each subcommand lives in the module that does the work; that module provides
``add_arguments(parser)`` and ``run(args)``. This file only dispatches, and turns user-facing
errors (:class:`caloflow.errors.CaloflowError`, missing files) into one line on stderr and a
non-zero exit.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from caloflow.errors import CaloflowError

#: subcommand -> (module, one-line help). ``fit`` and friends are the LightningCLI entry.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("caloflow.data.simulate", "simulate showers with the embedded parametrized simulator"),
    "demo": ("caloflow.demo", "the main job end to end at demo size: simulate, fit both flows, generate, evaluate"),
    "generate": ("caloflow.sampling", "generate showers with trained CaloFlow (or CaloGAN) checkpoints"),
    "evaluate": ("caloflow.evaluate.cli", "compare generated with reference showers: features, figures, classifier AUC/JSD"),
    "benchmark": ("caloflow.evaluate.benchmark", "time generation per shower vs batch size: CaloFlow, CaloGAN, simulator (table 4)"),
}
#: subcommands handed to LightningCLI unchanged.
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _fail(prog: str, message: str, code: int = 2) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """``caloflow SUBCOMMAND ...``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return lightning_main(argv if argv != sys.argv[1:] else None, prog="caloflow")
    parser = argparse.ArgumentParser(
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
        sub.add_parser(name, help=f"LightningCLI '{name}' (see 'caloflow {name} --help')", add_help=False)
    args = parser.parse_args(argv)
    try:
        code = modules[args.command].run(args)
    except CaloflowError as e:
        return _fail("caloflow", str(e))
    except KeyboardInterrupt:
        return _fail("caloflow", "interrupted", 130)
    return int(code or 0)


def lightning_main(argv: list[str] | None = None, prog: str = "lightning") -> int:
    """``lightning fit|validate|test|predict -c CONFIG ...`` over the project's modules."""
    from caloflow.lightning_cli import cli_main

    try:
        cli_main(argv)
    except Exception as e:
        # jsonargparse wraps errors raised while building the classes; report the caloflow one
        cause = _caloflow_cause(e)
        if cause is None:
            raise
        return _fail(prog, str(cause))
    return 0


def _caloflow_cause(error: BaseException | None) -> CaloflowError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CaloflowError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
