"""``lightning fit -c configs/flow2.yaml`` (and ``caloflow fit``): LightningCLI over caloflow's modules.

Subclass mode: a config names its model and data by ``class_path`` (e.g.
``caloflow.models.FlowII`` and ``caloflow.data.CaloDataModule``), so every LightningModule and
DataModule of the project runs through the same entry. The resolved config is saved with each
run (``config.yaml`` in the run's log directory), and everything a run writes lives under
``--trainer.default_root_dir``. ``--ckpt_path last`` resumes from the newest ``last.ckpt`` found
under that directory.

``-c/--config`` falls back to the configs shipped with caloflow: a value that is not a file but
names a shipped config (``configs/smoke/flow1.yaml``, ``smoke/flow1``, ``flow2``) uses the installed
file, so the README's commands work from any directory after ``pip install``.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from caloflow.configs import is_shipped, list_configs, shipped_config
from caloflow.errors import CaloflowError

CONFIG_OPTIONS = ("-c", "--config")


def find_last_checkpoint(root: str | os.PathLike) -> Path | None:
    """The most recently written ``last*.ckpt`` below ``root`` (Lightning's default layout), or None."""
    candidates = [p for p in Path(root).glob("**/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


class CaloflowCLI(LightningCLI):
    """LightningCLI with caloflow's conventions (resume from ``last`` under the run's root)."""

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("ckpt_path") == "last":
            root = config.trainer.get("default_root_dir") or os.getcwd()
            last = find_last_checkpoint(root)
            if last is None:
                raise CaloflowError(f"--ckpt_path last: no last*.ckpt under {root}")
            config["ckpt_path"] = str(last)
        path = config.get("ckpt_path")
        if path and not Path(path).is_file():
            raise CaloflowError(f"--ckpt_path {path}: no such checkpoint file")


def _config_file(value: str) -> str:
    """A ``--config`` value as LightningCLI should see it: an existing file or inline YAML unchanged,
    else the shipped config of that name."""
    if Path(value).is_file() or "\n" in value or ": " in value or value.lstrip().startswith("{"):
        return value
    if is_shipped(value):
        return str(shipped_config(value))
    raise CaloflowError(f"--config {value}: no such file (shipped configs: {', '.join(list_configs())})")


def resolve_configs(args: list[str]) -> list[str]:
    """``args`` with every ``-c/--config`` value resolved by :func:`_config_file`."""
    out, i = list(args), 0
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

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    return CaloflowCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # errors are raised (and reported as one line by caloflow.cli) instead of printing the usage
        parser_kwargs={"exit_on_error": False},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    from caloflow.cli import lightning_main

    sys.exit(lightning_main())
