"""Reading Lightning checkpoints with one-line errors, and telling whose checkpoint a file is.

Used by every command that takes a checkpoint (``--ckpt_path``, ``--flow1``, ``--refiner``, ...) and by
the model loaders; nothing here parses arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

from caloflow.errors import CaloflowError


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
            ckpt = torch.load(
                path, map_location="cpu", weights_only=True
            )  # a legacy (not zip) torch file
    except Exception as e:  # a text file, a truncated zip, ...
        if "Weights only load failed" in str(e):
            reason = "it holds objects that torch.load(weights_only=True) refuses"
        elif isinstance(e, OSError) or "central directory" in str(e) or "failed reading" in str(e):
            reason = "truncated"
        else:
            reason = "not a torch checkpoint"
        raise CaloflowError(
            f"{option} {path}: cannot read it as a checkpoint ({reason}: {type(e).__name__})"
        ) from None
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


__all__ = ["find_last_checkpoint", "read_checkpoint", "checkpoint_model_mismatch"]
