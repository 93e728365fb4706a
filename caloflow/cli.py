"""The ``caloflow`` command and the ``lightning`` entry point.

Each subcommand lives in the module that does the work; that module provides
``add_arguments(parser)`` and ``run(args)``. This file only dispatches, and turns user-facing
errors (:class:`caloflow.errors.CaloflowError`, missing files) into one line on stderr and a
non-zero exit.
"""
from __future__ import annotations

import importlib
import re
import sys

from caloflow.cli_args import ArgumentParser
from caloflow.errors import CaloflowError

#: subcommand -> (module, one-line help). ``fit`` and friends are the LightningCLI entry.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("caloflow.data.simulate", "simulate showers with the embedded parametrized simulator"),
    "demo": ("caloflow.demo", "the main job end to end at demo size: simulate, fit both flows, generate, evaluate"),
    "generate": ("caloflow.sampling", "generate showers with trained CaloFlow (or CaloGAN) checkpoints"),
    "evaluate": ("caloflow.evaluate.cli", "compare generated with reference showers: features, figures, classifier AUC/JSD"),
    "benchmark": ("caloflow.benchmark", "time generation per shower vs batch size: CaloFlow, CaloGAN, simulator "
                  "(table 4); 'caloflow benchmark fidelity': classifier AUC vs training budget"),
    "refine": ("refine.laser", "LaSeR latent-space refinement: the 2D toys, or a shower model on a held-out split "
               "(same options as 'python -m refine.laser')"),
    "config": ("caloflow.configs", "write a shipped config (flow2, smoke/flow1, laser/gaussians, ...) where you can edit it"),
}
#: subcommands handed to LightningCLI unchanged.
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _fail(prog: str, message: str, code: int = 2) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """``caloflow SUBCOMMAND ...``; returns the exit code (130 after Ctrl-C, at any moment)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also while the subcommand's modules are still being imported
        return _fail("caloflow", "interrupted", 130)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return lightning_main(argv if argv != sys.argv[1:] else None, prog="caloflow")
    if argv[:2] == ["benchmark", "fidelity"]:
        return _run("caloflow benchmark fidelity", "caloflow.fidelity", argv[2:])
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
        sub.add_parser(name, help=f"LightningCLI '{name}' (see 'caloflow {name} --help')", add_help=False)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad option already reported as one line
        return int(e.code or 0)
    try:
        code = modules[args.command].run(args)
    except CaloflowError as e:
        return _fail("caloflow", str(e))
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
        return _fail(prog, str(e))


def lightning_main(argv: list[str] | None = None, prog: str = "lightning") -> int:
    """``lightning fit|validate|test|predict -c CONFIG ...`` over the project's modules."""
    from caloflow.lightning_cli import cli_main

    import argparse

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        cli_main(argv)
    except argparse.ArgumentError as e:  # a bad option or config value, found by jsonargparse
        return _fail(prog, one_line(str(e)))
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", 130)
    except Exception as e:
        # jsonargparse wraps errors raised while building the classes; report the caloflow one
        cause = _caloflow_cause(e)
        if cause is not None:
            return _fail(prog, str(cause))
        if isinstance(e, MisconfigurationException):  # Lightning refusing a Trainer setting
            return _fail(prog, " ".join(str(e).split()))
        raise
    return 0


#: lines of jsonargparse's nested messages that say nothing about what is wrong
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Problem with given class_path", "Parser key")


def _literal(match: re.Match) -> str:
    """``typing.Literal['a', 'b']`` -> ``one of a, b``."""
    values = [v.strip().strip("'\"") for v in match.group(1).split(",")]
    return "one of " + ", ".join(values)


def _wording(line: str) -> str:
    """One of jsonargparse's messages in caloflow's wording: ``expected an int, got abc``."""
    line = re.sub(r"<class '([\w.]+)'>", r"\1", line)
    line = re.sub(r"typing\.Literal\[([^\]]*)\]", _literal, line)
    line = re.sub(r"^Option '([^']+)' is not accepted$", r"unknown key '\1'", line)
    line = re.sub(r"Expected a (int|float|bool|str)\b", lambda m: f"expected {'an' if m[1] == 'int' else 'a'} {m[1]}",
                  line)
    line = re.sub(r"Expected an? ", "expected ", line)
    line = re.sub(r"\.? Got value: (.*)$", r", got \1", line)
    line = re.sub(r"^Not of type \w+: (\S+) does not conform to restriction v>0$", r"must be > 0, got \1", line)
    line = re.sub(r"^Not of type \w+: (\S+) does not conform to restriction v>=0$", r"must be >= 0, got \1", line)
    return line


def one_line(message: str) -> str:
    """jsonargparse's nested, multi-line error as one line: ``--KEY: what is wrong, got VALUE``."""
    lines = [line.strip().lstrip("- ").strip() for line in message.splitlines() if line.strip()]
    keys = list(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', message)))
    first = lines[0] if lines else "invalid arguments"
    unknown = re.fullmatch(r"Subcommand '\w+' does not accept options? '([^']+)'\.?", first)
    if unknown and not keys:  # an unknown key in a config file
        return f"--{unknown.group(1)}: unknown key"
    required = re.fullmatch(r"the following arguments are required: (.+)", first)
    if required and not keys:
        names = [re.sub(r"^(fit|validate|test|predict)\.", "", n.strip()) for n in required.group(1).split(",")]
        return f"missing {', '.join('--' + n for n in names)} (give it in a config, -c, or on the command line)"
    details = [_wording(line) for line in lines if not line.startswith(_NOISE)]
    given = [line.split(":", 1)[1].strip() for line in lines
             if line.startswith("Given value:") and "NestedArg(" not in line]
    path = re.search(r"Expected a path but (\S+) either not accessible or invalid", message)
    if path:  # a class_path that does not import: say so, and why
        details = [f"unknown class '{path.group(1)}'"] + [d for d in details if not d.startswith("expected path")]
        details = [details[0] + (f" ({'; '.join(details[1:])})" if details[1:] else "")]
        given = []
    text = " or ".join(dict.fromkeys(details)) or _wording(first)
    # "expected a bool or expected an int (got abc)" -> "expected a bool or an int, got abc"
    text = re.sub(r" or expected ", " or ", text)
    if given and ", got " not in text:
        text += f", got {given[0]}"
    return f"--{'.'.join(keys)}: {text}" if keys else text


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
