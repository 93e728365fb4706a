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
:func:`caloflow.cli_args.hyperparameter_problems`), Trainer limits, a run folder that cannot be
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
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from caloflow.cli_args import NEGATIVE_NUMBER, check_yaml_file, hyperparameter_problems, output_dir
from caloflow.configs import is_shipped, list_configs, shipped_config
from caloflow.errors import CaloflowError

CONFIG_OPTIONS = ("-c", "--config")


def find_last_checkpoint(root: str | os.PathLike) -> Path | None:
    """The most recently written ``last*.ckpt`` below ``root`` (Lightning's default layout), or None."""
    candidates = [p for p in Path(root).glob("**/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def read_checkpoint(path: str | os.PathLike, option: str = "--ckpt_path") -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped, plain data only), or a one-line
    :class:`CaloflowError` naming ``option`` and what is wrong with the file."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise CaloflowError(f"{option} {path}: is a directory, expected a checkpoint file")
    if not path.is_file():
        raise CaloflowError(f"{option} {path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CaloflowError(f"{option} {path}: the file is empty, not a checkpoint")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (not zip) torch file
    except Exception as e:  # a text file, a truncated zip, ...
        if "Weights only load failed" in str(e):
            reason = "it holds objects that torch.load(weights_only=True) refuses"
        elif isinstance(e, OSError) or "central directory" in str(e) or "failed reading" in str(e):
            reason = "truncated"
        else:
            reason = "not a torch checkpoint"
        raise CaloflowError(f"{option} {path}: cannot read it as a checkpoint ({reason}: "
                            f"{type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CaloflowError(f"{option} {path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def _class_of(class_path: str) -> type | None:
    import importlib

    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def checkpoint_model_mismatch(ckpt: dict, class_path: str | type) -> str | None:
    """Why the checkpoint ``ckpt`` is not one of the LightningModule ``class_path`` (None if it is).

    LightningCLI records the model's class in the checkpoint's hyperparameters (``_class_path``);
    without it, hyperparameters that the class does not take give the mismatch away.
    """
    import inspect

    if isinstance(class_path, type):
        class_path = f"{class_path.__module__}.{class_path.__qualname__}"
    hparams = ckpt.get("hyper_parameters") or {}
    wanted = _class_of(class_path)
    saved = hparams.get("_class_path")
    if saved is not None:
        if saved == class_path or (wanted is not None and _class_of(saved) is wanted):
            return None
        return f"is a checkpoint of {saved}, not of {class_path}"
    if wanted is None:
        return None
    params = inspect.signature(wanted.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    unknown = sorted(k for k in hparams if not k.startswith("_") and k not in params)
    if unknown:
        return f"has hyperparameters that {class_path} does not take ({', '.join(unknown)}): not a checkpoint of it"
    return None


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
    "devices": (lambda v: not (isinstance(v, int) or str(v).lstrip("-").isdigit()) or int(v) == -1 or int(v) >= 1,
                "a number >= 1, -1 (all), a list of device indices or auto"),
    "gradient_clip_val": (lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, "a number >= 0"),
    "limit_train_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "limit_val_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "limit_test_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "limit_predict_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "val_check_interval": (lambda v: _int_at_least(1)(v) or (isinstance(v, float) and 0.0 < v <= 1.0),
                           "an integer >= 1 or a fraction in (0, 1]"),
}


def _check_accelerator(name) -> None:
    """``--trainer.accelerator``: a known accelerator that this machine has (``auto`` always passes)."""
    if not isinstance(name, str) or name == "auto":
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = ["cuda", "mps"] if name == "gpu" else [name]  # Lightning's "gpu": CUDA or MPS
    if any(n not in AcceleratorRegistry for n in names):
        raise CaloflowError(f"--trainer.accelerator: unknown accelerator '{name}', expected auto, gpu or one of "
                            f"{', '.join(sorted(AcceleratorRegistry))}")
    available = False
    for n in names:
        try:
            available = available or AcceleratorRegistry[n]["accelerator"].is_available()
        except Exception:  # e.g. the TPU accelerator without torch_xla
            pass
    if not available:
        raise CaloflowError(f"--trainer.accelerator {name}: not available on this machine (use cpu or auto)")


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
            raise CaloflowError("--ckpt_path last: no run root to search; set --trainer.default_root_dir "
                                "(on the command line or in the config), or give the checkpoint's path")
        candidates = sorted((p for p in Path(root).glob("**/checkpoints/last*.ckpt") if p.is_file()),
                            key=lambda p: p.stat().st_mtime, reverse=True)
        others = []
        for candidate in candidates:
            ckpt = read_checkpoint(candidate, "--ckpt_path last:")
            if checkpoint_model_mismatch(ckpt, class_path) is None:
                return candidate
            others.append(str((ckpt.get("hyper_parameters") or {}).get("_class_path", "another model")))
        if others:
            raise CaloflowError(f"--ckpt_path last: no last*.ckpt of {class_path} under {root} (found only "
                                f"{', '.join(sorted(set(others)))})")
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
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

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
        new = [p for p in (log_dir, Path(self.trainer.default_root_dir)) if p is not None and not p.exists()]
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
        if (out and NEGATIVE_NUMBER.match(arg) and out[-1].startswith("--") and "=" not in out[-1]
                and out[-1] not in ("--print_config",)):
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
    raise CaloflowError(f"--config {value}: no such file (shipped configs: {', '.join(list_configs())})")


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
    """Run LightningCLI in subclass mode over the project's LightningModules and DataModules."""
    if args is None:  # the command line itself (LightningCLI warns when given args that differ from it)
        sys.argv[1:] = resolve_configs(sys.argv[1:])
    else:
        args = resolve_configs(args)
    # importing the packages registers their classes, so short class names resolve in configs
    import caloflow.data  # noqa: F401
    import caloflow.models  # noqa: F401
    from callbacks.resume import ExactResume

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    return CaloflowCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # every fit saves and restores its random states, so that --ckpt_path last resumes exactly
        trainer_defaults={"callbacks": [ExactResume()]},
        # errors are raised (and reported as one line by caloflow.cli) instead of printing the usage
        parser_kwargs={"exit_on_error": False},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    from caloflow.cli import lightning_main

    sys.exit(lightning_main())
