"""The one way to build a Lightning Trainer outside LightningCLI (classifier test, refine), and the
Adam-with-exponential-decay optimiser of the LaSeR trainings.

Training runs of the command-line tools (``caloflow evaluate``, ``caloflow refine``) are short,
CPU-sized and nested inside a larger job: they log to TensorBoard when given a folder, keep no
checkpoints unless asked, and print no progress bar of their own unless asked.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

#: messages that say nothing to a user of these small, in-memory trainings
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*number of training batches.*",
    ".*LeafSpec.*",
    ".*defined a `validation_step` but have no `val_dataloader`.*",
)


def quiet_lightning() -> None:
    """Silence Lightning's start-up chatter and the warnings listed in :data:`QUIET_WARNINGS`."""
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning",
        "lightning.pytorch.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class _NoTips(logging.Filter):
    """Drops Lightning's advertising lines ("Tip: ... try installing litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in str(record.getMessage())


def drop_lightning_tips() -> None:
    """Keep Lightning's tips for its cloud products off the console; its warnings and progress stay."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def make_trainer(
    max_epochs: int,
    log_dir: str | Path | None = None,
    name: str = "",
    version: str | int | None = "",
    callbacks: Sequence[L.Callback] = (),
    progress: bool = False,
    checkpointing: bool = False,
    **kwargs,
) -> L.Trainer:
    """A deterministic one-device Trainer; TensorBoard logs at ``log_dir/name/version`` (none if ``log_dir`` is None).

    ``kwargs`` go to :class:`lightning.Trainer` (e.g. ``accelerator``, ``log_every_n_steps``).
    """
    quiet_lightning()
    logger = (
        TensorBoardLogger(str(log_dir), name=name, version=version)
        if log_dir is not None
        else False
    )
    options = dict(
        accelerator="cpu", log_every_n_steps=10, num_sanity_val_steps=0, deterministic=True
    )
    options.update(kwargs)
    return L.Trainer(
        max_epochs=max_epochs,
        devices=1,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=checkpointing,
        enable_progress_bar=progress,
        enable_model_summary=False,
        **options,
    )


def adam_with_decay(
    params,
    lr: float,
    lr_decay: float = 1.0,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
) -> dict:
    """Adam whose learning rate is multiplied by ``lr_decay`` after every epoch (lr_n = lr * lr_decay^n),
    as a ``configure_optimizers`` entry (LaSeR paper: 0.999; 1 keeps it constant)."""
    optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


@contextmanager
def keep_best(monitor: str, mode: str = "min") -> Iterator[ModelCheckpoint]:
    """A ModelCheckpoint that keeps the best epoch by ``monitor`` (``mode`` "min" or "max") in a
    temporary folder that lives only as long as the ``with`` block: add it to a Trainer's callbacks,
    fit, and reload the best epoch (:func:`best_epoch`, ``best_model_path``) inside the block, so that
    no checkpoint is left behind."""
    with tempfile.TemporaryDirectory(prefix="caloflow-best-") as folder:
        yield ModelCheckpoint(
            dirpath=folder, monitor=monitor, mode=mode, save_top_k=1, filename="best-{epoch}"
        )


def best_epoch(checkpoint: ModelCheckpoint) -> int:
    """The epoch (counted from 1) whose state ``checkpoint`` (of :func:`keep_best`) kept."""
    return int(Path(checkpoint.best_model_path).stem.split("=")[-1]) + 1


__all__ = [
    "QUIET_WARNINGS",
    "quiet_lightning",
    "drop_lightning_tips",
    "make_trainer",
    "adam_with_decay",
    "keep_best",
    "best_epoch",
]
