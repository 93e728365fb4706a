"""What every training in :mod:`refine` shares: the Trainer (TensorBoard logs under a root) and the
LaSeR paper's optimiser, Adam with an exponential learning-rate decay per epoch."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def make_trainer(root: str | Path, name: str, max_epochs: int, progress: bool = True, **kwargs) -> L.Trainer:
    """CPU Trainer logging to TensorBoard at ``root/name``; no checkpoints are written."""
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
    logger = TensorBoardLogger(str(root), name=name, version="")
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=kwargs.pop("log_every_n_steps", 10),
        deterministic=True,
        **kwargs,
    )


def adam_with_decay(
    params, lr: float, lr_decay: float, *, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0
) -> dict:
    """Adam whose learning rate is multiplied by ``lr_decay`` after every epoch (lr_n = lr * lr_decay^n),
    as a ``configure_optimizers`` entry."""
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
