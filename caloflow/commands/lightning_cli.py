"""``lightning fit -c configs/flow2.yaml`` (and ``caloflow fit``): LightningCLI over caloflow's modules.

Subclass mode: a config names its model and data by ``class_path`` (e.g.
``caloflow.models.FlowII`` and ``caloflow.data.CaloDataModule``), so every LightningModule and
DataModule of the project runs through the same entry. The resolved config is saved with each
run (``config.yaml`` in the run's log directory), and everything a run writes lives under
``--trainer.default_root_dir``. ``--ckpt_path last`` resumes from the newest ``last.ckpt`` of the
config's model found under that directory (and is refused when no root is set: it never searches
the working directory).

Every option that no run can use is refused in one line before anything is built or written
(:class:`CaloflowCLI`): model hyperparameters out of range (by name, for every model:
:func:`caloflow.checks.hyperparameter_problems`), Trainer limits, a run folder that cannot be
written, and a ``--ckpt_path`` that is not a readable checkpoint of the config's model class
(LightningCLI would otherwise switch to the checkpoint's class).

``-c/--config`` falls back to the configs shipped with caloflow: a value that is not a file but
names a shipped config (``configs/smoke/flow1.yaml``, ``smoke/flow1``, ``flow2``) uses the installed
file, so the README's commands work from any directory after ``pip install``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from caloflow.checkpoints import checkpoint_model_mismatch, read_checkpoint
from caloflow.checks import check_yaml_file, hyperparameter_problems
from caloflow.commands.argtypes import NEGATIVE_NUMBER, output_dir, report_error
from caloflow.configs import is_shipped, list_configs, shipped_config
from caloflow.errors import CaloflowError
from caloflow.training import drop_lightning_tips

CONFIG_OPTIONS = ("-c", "--config")


def _int_at_least(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _limit(v) -> bool:  # limit_*_batches: a number of batches, or a fraction of them
    return (_int_at_least(0)(v)) or (isinstance(v, float) and 0.0 <= v <= 1.0)


#: Trainer options and what they must be: (ok(value), what), checked before anything is built
_TRAINER_RULES = {
    "max_epochs": (lambda v: v == -1 or _int_at_least(1)(v), "an integer >= 1, or -1 (no limit)"),
    "min_epochs": (_int_at_least(0), "an integer >= 0"),
    "max_steps": (lambda v: v == -1 or _int_at_least(1)(v), "an integer >= 1, or -1 (no limit)"),
    "min_steps": (_int_at_least(0), "an integer >= 0"),
    "check_val_every_n_epoch": (_int_at_least(1), "an integer >= 1"),
    "log_every_n_steps": (_int_at_least(1), "an integer >= 1"),
    "accumulate_grad_batches": (_int_at_least(1), "an integer >= 1"),
    "num_sanity_val_steps": (_int_at_least(-1), "an integer >= 0, or -1 (all)"),
    "num_nodes": (_int_at_least(1), "an integer >= 1"),
    "devices": (
        lambda v: (
            not (isinstance(v, int) or str(v).lstrip("-").isdigit()) or int(v) == -1 or int(v) >= 1
        ),
        "a number >= 1, -1 (all), a list of device indices or auto",
    ),
    "gradient_clip_val": (
        lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
        "a number >= 0",
    ),
    "limit_train_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "limit_val_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "limit_test_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "limit_predict_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "val_check_interval": (
        lambda v: _int_at_least(1)(v) or (isinstance(v, float) and 0.0 < v <= 1.0),
        "an integer >= 1 or a fraction in (0, 1]",
    ),
}


def _check_accelerator(name) -> None:
    """``--trainer.accelerator``: a known accelerator that this machine has (``auto`` always passes)."""
    if not isinstance(name, str) or name == "auto":
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = ["cuda", "mps"] if name == "gpu" else [name]  # Lightning's "gpu": CUDA or MPS
    if any(n not in AcceleratorRegistry for n in names):
        raise CaloflowError(
            f"--trainer.accelerator: unknown accelerator '{name}', expected auto, gpu or one of "
            f"{', '.join(sorted(AcceleratorRegistry))}"
        )
    available = False
    for n in names:
        try:
            available = available or AcceleratorRegistry[n]["accelerator"].is_available()
        except Exception:  # e.g. the TPU accelerator without torch_xla
            pass
    if not available:
        raise CaloflowError(
            f"--trainer.accelerator {name}: not available on this machine (use cpu or auto)"
        )


class CaloflowCLI(LightningCLI):
    """LightningCLI with caloflow's conventions: every option that no run can use is refused, in
    one line, before anything is built or written (model hyperparameters, Trainer limits, the run's
    folder, the checkpoint: readable, and of the config's model); ``--ckpt_path last`` resumes the
    newest ``last*.ckpt`` of this model under the run's root (``trainer.default_root_dir``)."""

    _checkpoint: dict | None = None

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._check_config(self.config[subcommand], subcommand)

    # ---------------------------------------------------------------- checks, before anything is built
    def _check_config(self, config, subcommand: str) -> None:
        for key in ("model", "optimizer", "lr_scheduler"):
            spec = config.get(key)
            init = spec.get("init_args") if spec is not None and hasattr(spec, "get") else None
            for name, problem in hyperparameter_problems(init or {}):
                raise CaloflowError(f"--{key}.{name}: {problem}")
        trainer = config.get("trainer")
        for name, (ok, what) in _TRAINER_RULES.items():
            value = trainer.get(name) if trainer is not None else None
            if value is not None and not ok(value):
                raise CaloflowError(f"--trainer.{name}: must be {what}, got {value}")
        _check_accelerator(trainer.get("accelerator") if trainer is not None else None)
        root = trainer.get("default_root_dir") if trainer is not None else None
        try:
            output_dir(str(root) if root is not None else os.getcwd())
        except argparse.ArgumentTypeError as e:
            raise CaloflowError(f"--trainer.default_root_dir: {e}") from None
        self._check_checkpoint(config, root)

    def _check_checkpoint(self, config, root) -> None:
        path = config.get("ckpt_path")
        if not path:
            return
        class_path = config.model.class_path
        if path == "last":
            path = self._last_checkpoint(root, class_path)
            config["ckpt_path"] = str(path)
        ckpt = read_checkpoint(path)
        mismatch = checkpoint_model_mismatch(ckpt, class_path)
        if mismatch:
            raise CaloflowError(f"--ckpt_path {path}: {mismatch} (the config's model)")
        self._checkpoint = ckpt

    @staticmethod
    def _last_checkpoint(root, class_path: str) -> Path:
        """The newest ``last*.ckpt`` of ``class_path`` under the run's root (never under the cwd)."""
        if root is None:
            raise CaloflowError(
                "--ckpt_path last: no run root to search; set --trainer.default_root_dir "
                "(on the command line or in the config), or give the checkpoint's path"
            )
        candidates = sorted(
            (p for p in Path(root).glob("**/checkpoints/last*.ckpt") if p.is_file()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        others = []
        for candidate in candidates:
            ckpt = read_checkpoint(candidate, "--ckpt_path last:")
            if checkpoint_model_mismatch(ckpt, class_path) is None:
                return candidate
            others.append(
                str((ckpt.get("hyper_parameters") or {}).get("_class_path", "another model"))
            )
        if others:
            raise CaloflowError(
                f"--ckpt_path last: no last*.ckpt of {class_path} under {root} (found only "
                f"{', '.join(sorted(set(others)))})"
            )
        raise CaloflowError(f"--ckpt_path last: no last*.ckpt under {root}")

    # ---------------------------------------------------------------- LightningCLI's steps
    def _parse_ckpt_path(self) -> None:
        """Lightning's merge of the checkpoint's hyperparameters into the config, from the checkpoint
        already read and checked (Lightning's own would read it again, and take any model class)."""
        ckpt, self._checkpoint = self._checkpoint, None
        if ckpt is None:
            return
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object(
            {self.config.subcommand: {"model": hparams}}, self.config
        )

    def _set_seed(self) -> None:
        # "Seed set to N" only once the classes are built: a refused option stays one line
        seed_logger = logging.getLogger("lightning.fabric.utilities.seed")
        level = seed_logger.level
        seed_logger.setLevel(logging.WARNING)
        try:
            super()._set_seed()
        finally:
            seed_logger.setLevel(level)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        seed = self._get(self.config, "seed_everything")
        if seed is not False and seed is not None:
            logging.getLogger("lightning.fabric.utilities.seed").info(f"Seed set to {seed}")

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; if it fails before the first optimizer step, remove the run folder it created."""
        log_dir = Path(self.trainer.log_dir) if self.trainer.log_dir else None
        new = [
            p
            for p in (log_dir, Path(self.trainer.default_root_dir))
            if p is not None and not p.exists()
        ]
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.global_step == 0:
                _remove_if_unused(new)
            raise


def _remove_if_unused(folders: list[Path]) -> None:
    """Remove the folders (made by a run that failed at its start) that hold no checkpoint."""
    import shutil

    for folder in folders:
        if folder.is_dir() and not any(folder.rglob("*.ckpt")):
            shutil.rmtree(folder, ignore_errors=True)
            parent = folder.parent  # lightning_logs/ when version_N was its only entry
            if parent.name == "lightning_logs" and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


def join_negative_numbers(args: list[str]) -> list[str]:
    """``--key -1e-3`` as ``--key=-1e-3``: argparse takes a value like ``-1e-3`` for an option and
    reports "expected one argument"; joined, the value reaches the checks that can name it."""
    out: list[str] = []
    for arg in args:
        if (
            out
            and NEGATIVE_NUMBER.match(arg)
            and out[-1].startswith("--")
            and "=" not in out[-1]
            and out[-1] not in ("--print_config",)
        ):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _config_file(value: str) -> str:
    """A ``--config`` value as LightningCLI should see it: an existing file or inline YAML unchanged,
    else the shipped config of that name."""
    if Path(value).is_file():
        check_yaml_file(value, "--config")
        return value
    if "\n" in value or ": " in value or value.lstrip().startswith("{"):
        return value
    if is_shipped(value):
        return str(shipped_config(value))
    raise CaloflowError(
        f"--config {value}: no such file (shipped configs: {', '.join(list_configs())})"
    )


def resolve_configs(args: list[str]) -> list[str]:
    """``args`` with every ``-c/--config`` value resolved by :func:`_config_file`."""
    out, i = join_negative_numbers(list(args)), 0
    while i < len(out):
        if out[i] in CONFIG_OPTIONS and i + 1 < len(out):
            out[i + 1] = _config_file(out[i + 1])
            i += 1
        elif out[i].startswith(tuple(f"{o}=" for o in CONFIG_OPTIONS)):
            option, value = out[i].split("=", 1)
            out[i] = f"{option}={_config_file(value)}"
        i += 1
    return out


def cli_main(args: list[str] | None = None, run: bool = True) -> CaloflowCLI:
    """Run LightningCLI in subclass mode over the project's LightningModules and DataModules.

    ``args`` (a list like the command line's) run it from Python, e.g. inside ``caloflow demo``;
    the process's own command line is then not LightningCLI's (it would warn about both)."""
    if args is None:
        sys.argv[1:] = resolve_configs(sys.argv[1:])
    else:
        args = resolve_configs(args)
    # importing the packages registers their classes, so short class names resolve in configs
    import caloflow.data  # noqa: F401
    import caloflow.models  # noqa: F401
    from callbacks.resume import ExactResume

    for message in (".*does not have many workers.*", ".*LeafSpec.*"):  # nothing a user can act on
        warnings.filterwarnings("ignore", message=message)
    drop_lightning_tips()
    argv, sys.argv = sys.argv, sys.argv if args is None else sys.argv[:1]
    try:
        return CaloflowCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # every fit saves and restores its random states, so that --ckpt_path last resumes exactly
            trainer_defaults={"callbacks": [ExactResume()]},
            # errors are raised (and reported as one line by lightning_main) instead of printing the usage
            parser_kwargs={"exit_on_error": False},
            args=args,
            run=run,
        )
    finally:
        sys.argv = argv


def lightning_main(argv: list[str] | None = None, prog: str = "lightning") -> int:
    """``lightning fit|validate|test|predict -c CONFIG ...`` over the project's modules."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        cli_main(argv)
    except argparse.ArgumentError as e:  # a bad option or config value, found by jsonargparse
        return report_error(prog, one_line(str(e)))
    except KeyboardInterrupt:
        return report_error(prog, "interrupted", 130)
    except Exception as e:
        # jsonargparse wraps errors raised while building the classes; report the caloflow one
        cause = _caloflow_cause(e)
        if cause is not None:
            return report_error(prog, str(cause))
        if isinstance(e, MisconfigurationException):  # Lightning refusing a Trainer setting
            return report_error(prog, " ".join(str(e).split()))
        raise
    return 0


#: lines of jsonargparse's nested messages that say nothing about what is wrong
_NOISE = (
    "Does not validate against",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
    "Problem with given class_path",
    "Parser key",
)


def _literal(match: re.Match) -> str:
    """``typing.Literal['a', 'b']`` -> ``one of a, b``."""
    values = [v.strip().strip("'\"") for v in match.group(1).split(",")]
    return "one of " + ", ".join(values)


def _wording(line: str) -> str:
    """One of jsonargparse's messages in caloflow's wording: ``expected an int, got abc``."""
    line = re.sub(r"<class '([\w.]+)'>", r"\1", line)
    line = re.sub(r"typing\.Literal\[([^\]]*)\]", _literal, line)
    line = re.sub(r"^Option '([^']+)' is not accepted$", r"unknown key '\1'", line)
    line = re.sub(
        r"Expected a (int|float|bool|str)\b",
        lambda m: f"expected {'an' if m[1] == 'int' else 'a'} {m[1]}",
        line,
    )
    line = re.sub(r"Expected an? ", "expected ", line)
    line = re.sub(r"\.? Got value: (.*)$", r", got \1", line)
    line = re.sub(
        r"^Not of type \w+: (\S+) does not conform to restriction v>0$",
        r"must be > 0, got \1",
        line,
    )
    line = re.sub(
        r"^Not of type \w+: (\S+) does not conform to restriction v>=0$",
        r"must be >= 0, got \1",
        line,
    )
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
        names = [
            re.sub(r"^(fit|validate|test|predict)\.", "", n.strip())
            for n in required.group(1).split(",")
        ]
        return f"missing {', '.join('--' + n for n in names)} (give it in a config, -c, or on the command line)"
    details = [_wording(line) for line in lines if not line.startswith(_NOISE)]
    given = [
        line.split(":", 1)[1].strip()
        for line in lines
        if line.startswith("Given value:") and "NestedArg(" not in line
    ]
    path = re.search(r"Expected a path but (\S+) either not accessible or invalid", message)
    if path:  # a class_path that does not import: say so, and why
        details = [f"unknown class '{path.group(1)}'"] + [
            d for d in details if not d.startswith("expected path")
        ]
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


__all__ = [
    "CONFIG_OPTIONS",
    "CaloflowCLI",
    "join_negative_numbers",
    "resolve_configs",
    "cli_main",
    "lightning_main",
    "one_line",
]


if __name__ == "__main__":
    sys.exit(lightning_main())
