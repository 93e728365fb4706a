"""Post-hoc classifier and its weights (LaSeR paper section 3 and 4.1).

A classifier f trained with binary cross entropy between real (label 1) and generated (label 0)
samples approximates f/(1-f) = p_real(x)/p_gen(x) for balanced classes, so each generated point gets
the weight w(x) = f/(1-f) = exp(logit(x)). The weight of a latent point is w(g(z)).
The paper's network: MLP with 8 hidden layers x 96 units, LeakyReLU; Adam (1e-3), exponential
learning-rate decay 0.999 per epoch.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from refine.data import TensorLoader
from refine.nets import mlp
from refine.training import adam_with_decay


class WeightedBCEClassifier(L.LightningModule):
    """Binary classifier on (optionally weighted) samples; outputs a logit.

    Batches are ``(x, label, weight)``; the loss is sum w BCE / sum w. Inputs are standardised with
    a fixed ``shift``/``scale`` (set from the data before training) so raw data units can be fed.
    """

    def __init__(
        self,
        n_features: int = 2,
        hidden: int = 96,
        n_hidden: int = 8,
        lr: float = 1e-3,
        lr_decay: float = 0.999,
        weight_decay: float = 0.0,
        shift: list[float] | None = None,
        scale: list[float] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = mlp(n_features, 1, hidden, n_hidden)
        self.register_buffer("shift", torch.as_tensor(shift if shift is not None else [0.0] * n_features, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale if scale is not None else [1.0] * n_features, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        """Logit of P(real | x), shape (N,)."""
        return self.net((x - self.shift) / self.scale).squeeze(-1)

    def _loss(self, batch) -> Tensor:
        x, y, w = batch
        bce = F.binary_cross_entropy_with_logits(self(x), y, reduction="none")
        return (w * bce).sum() / w.sum()

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/bce", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/bce", self._loss(batch), prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        return adam_with_decay(self.parameters(), hp.lr, hp.lr_decay, weight_decay=hp.weight_decay)

    @torch.no_grad()
    def logits(self, x: Tensor, batch_size: int = 100_000) -> Tensor:
        was_training = self.training
        self.eval()
        out = torch.cat([self(xb) for xb in x.split(batch_size)])
        self.train(was_training)
        return out


def labelled_dataset(
    real: Tensor, fake: Tensor, w_real: Tensor | None = None, w_fake: Tensor | None = None
) -> TensorDataset:
    """(x, label, weight) with real -> 1, fake -> 0; weights rescaled so both classes weigh the same.

    Equal class weight keeps f/(1-f) an estimate of p_real/p_fake with proportionality constant 1.
    """
    w_real = torch.ones(len(real)) if w_real is None else w_real.float()
    w_fake = torch.ones(len(fake)) if w_fake is None else w_fake.float()
    w_real = w_real * (len(real) / w_real.sum())
    w_fake = w_fake * (len(real) / w_fake.sum())
    x = torch.cat([real, fake]).float()
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    return TensorDataset(x, y, torch.cat([w_real, w_fake]))


def train_classifier(
    real: Tensor,
    fake: Tensor,
    trainer: L.Trainer,
    *,
    w_real: Tensor | None = None,
    w_fake: Tensor | None = None,
    batch_size: int = 4000,
    val_fraction: float = 0.0,
    seed: int = 0,
    **hparams,
) -> WeightedBCEClassifier:
    """Train a :class:`WeightedBCEClassifier` to tell ``real`` (1) from ``fake`` (0)."""
    both = torch.cat([real, fake]).float()
    model = WeightedBCEClassifier(
        n_features=real.shape[1], shift=both.mean(0).tolist(), scale=both.std(0).clamp_min(1e-6).tolist(), **hparams
    )
    x, y, w = labelled_dataset(real, fake, w_real, w_fake).tensors
    val_loader = None
    if val_fraction > 0:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
        n_val = int(len(x) * val_fraction)
        val, train = order[:n_val], order[n_val:]
        val_loader = TensorLoader(x[val], y[val], w[val], batch_size=batch_size, shuffle=False)
        x, y, w = x[train], y[train], w[train]
    trainer.fit(model, TensorLoader(x, y, w, batch_size=batch_size, seed=seed), val_loader)
    model.eval()
    return model


def weights_from_logits(
    logits: Tensor, clip: float | tuple[float, float] | None = None, normalise: bool = True
) -> Tensor:
    """w = f/(1-f) = exp(logit), optionally clipped to ``[lo, hi]`` (or ``[0, clip]``) and scaled to mean 1."""
    w = torch.exp(logits.double())
    if clip is not None:
        lo, hi = (0.0, clip) if isinstance(clip, (int, float)) else clip
        w = w.clamp(lo, hi)
    if normalise:
        w = w / w.mean()
    return w.to(logits.dtype if logits.dtype.is_floating_point else torch.float32)


def log_weight(classifier: nn.Module, clip: float | None = None) -> "callable":
    """x -> log w(x) = logit(x), differentiable; optionally capped at log(clip) (used by HMC)."""

    def fn(x: Tensor) -> Tensor:
        lw = classifier(x)
        if clip is not None:
            lw = torch.clamp(lw, max=float(torch.log(torch.tensor(clip))))
        return lw

    return fn
