"""Exact resume: a run resumed from a checkpoint continues as if it had never stopped.

``lightning fit ... --ckpt_path last`` restores the weights, the optimiser, the schedulers and
the loop counters (Lightning) and the data stream (:class:`caloflow.data.CaloDataModule`'s
``state_dict``: the shuffling generator and the training noise generator). :class:`ExactResume`
adds what neither holds: the global random states that training consumes (dropout, the base
seeds of the validation loaders) - torch on the CPU and on every CUDA device, numpy and Python's
``random``. With them, a fit killed at any point and resumed from its last epoch-end checkpoint
ends with the same weights, bit for bit, as an uninterrupted fit with the same seed.

When the states are taken and given back:

* saved in :meth:`ExactResume.state_dict`, which Lightning calls while writing a checkpoint; the
  configs' ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` in ``on_train_epoch_end``,
  i.e. after the epoch's validation (and SampleMonitor), and nothing draws from the global
  generators between that point and the first training step of the next epoch;
* restored in :meth:`ExactResume.on_train_start`, after the sanity check (which Lightning runs
  inside ``isolate_rng`` anyway) and before the first training step of the resumed epoch.

It also makes the checkpoint files themselves survive a kill: the strategy's default checkpoint
writer is replaced by one that writes a temporary file next to the target and renames it
(Lightning's own writer stages the file in the system temporary folder and, across file systems,
copies it into place, so a kill -9 can leave a truncated ``last.ckpt``).

``caloflow``'s LightningCLI adds this callback to every run; list it in a config only for a
Trainer built by hand.

Limits: in a multi-process (DDP) run the states of rank 0 are saved and given to every rank (the
ranks share the seed and draw alike, so they hold the same states); with ``num_workers > 0`` the
training noise is drawn by the worker processes from their own generators, which a resume
re-seeds, so only ``num_workers: 0`` (the configs' setting) resumes bit for bit.
"""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from caloflow.atomic import atomic_output

#: bump when the layout of the saved state changes
STATE_VERSION = 1


def collect_random_states() -> dict[str, Any]:
    """The global random states, as tensors and plain numbers only (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_states(state: dict[str, Any]) -> None:
    """Give the global generators the states of :func:`collect_random_states`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    cuda = state.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another number of devices: restore the ones both runs have
            for device, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, device)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` writing local files through a temporary file in the target's
    folder and a rename, so a checkpoint on disk is always complete (the previous one until the
    rename, the new one after it)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        # caloflow's one temp-and-rename writer: stale temporaries of a killed write removed, signals trapped
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


class ExactResume(L.Callback):
    """Save the global random states in every checkpoint and restore them when a fit resumes
    (see the module docstring). Stateful: its state lives under its name in ``checkpoint["callbacks"]``."""

    def __init__(self, atomic_checkpoints: bool = True):
        super().__init__()
        self.atomic_checkpoints = atomic_checkpoints
        self._restored: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.atomic_checkpoints and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def state_dict(self) -> dict[str, Any]:
        return collect_random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # given back at the start of training, not now: the resumed run still builds and sanity-checks
        self._restored = dict(state_dict) if state_dict else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is not None:
            set_random_states(self._restored)
            self._restored = None


__all__ = [
    "STATE_VERSION",
    "collect_random_states",
    "set_random_states",
    "AtomicCheckpointIO",
    "ExactResume",
]
