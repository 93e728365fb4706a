"""Skip batches whose loss is not finite; stop training if it keeps happening."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteGuard(L.Callback):
    """A NaN/inf loss skips its optimiser step (with a warning); ``patience`` such batches in a row stop training.

    The step is skipped by dropping the gradients before the optimiser sees them, so the weights
    stay as they were and the checkpoints already written (the best one included) stay valid.
    Works with automatic optimisation.

    Args:
        patience: consecutive non-finite batches after which training stops.
    """

    def __init__(self, patience: int = 20):
        super().__init__()
        self.patience = patience
        self.consecutive = 0
        self.skipped = 0
        self._bad = False

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        self._bad = not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer
    ) -> None:
        if not self._bad:
            grads_finite = all(
                torch.isfinite(p.grad).all() for p in pl_module.parameters() if p.grad is not None
            )
            if grads_finite:
                self.consecutive = 0
                return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.consecutive += 1
        self.skipped += 1
        rank_zero_warn(
            f"non-finite loss or gradient at epoch {trainer.current_epoch}, step {trainer.global_step}: "
            f"batch skipped ({self.consecutive} in a row, {self.skipped} in total)"
        )
        pl_module.log("skipped_batches", float(self.skipped), on_step=False, on_epoch=True)
        if self.consecutive >= self.patience:
            trainer.should_stop = True
            rank_zero_warn(
                f"training stopped: {self.consecutive} consecutive batches had a non-finite loss; "
                "the checkpoints written so far (best and last) are kept"
            )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)


__all__ = ["NonFiniteGuard"]
