"""Post-hoc classifier and its weights (LaSeR paper section 3 and 4.1).

A classifier f trained with binary cross entropy between real (label 1) and generated (label 0)
samples approximates f/(1-f) = p_real(x)/p_gen(x) for balanced classes, so each generated point gets
the weight w(x) = f/(1-f) = exp(logit(x)). The weight of a latent point is w(g(z)).
The paper's network: MLP with 8 hidden layers x 96 units, LeakyReLU; Adam (1e-3), exponential
learning-rate decay 0.999 per epoch.

The classifier is caloflow's one :class:`~caloflow.models.ShowerClassifier` with its ``mlp``
backbone on points (batches ``{"x", "label", "weight"}``, label 1 = real), the same class and label
convention as the classifier test of ``caloflow evaluate``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from caloflow.models.classifiers import ShowerClassifier
from refine.data import TensorLoader

#: the LaSeR paper's classifier (section 4.1): 8 x 96 LeakyReLU, Adam 1e-3 decaying by 0.999 per epoch
PAPER_HPARAMS = {"hidden": 96, "n_hidden": 8, "lr": 1e-3, "lr_decay": 0.999}
#: hyperparameters of the ``mlp`` backbone (:class:`caloflow.models.classifiers.PointMLP`) set by the caller
BACKBONE_HPARAMS = ("hidden", "n_hidden", "slope")


def labelled_points(
    real: Tensor, fake: Tensor, w_real: Tensor | None = None, w_fake: Tensor | None = None
) -> dict[str, Tensor]:
    """``{"x", "label", "weight"}`` with real -> 1, fake -> 0; weights rescaled so both classes weigh the same.

    Equal class weight keeps f/(1-f) an estimate of p_real/p_fake with proportionality constant 1.
    """
    w_real = torch.ones(len(real)) if w_real is None else w_real.float()
    w_fake = torch.ones(len(fake)) if w_fake is None else w_fake.float()
    w_real = w_real * (len(real) / w_real.sum())
    w_fake = w_fake * (len(real) / w_fake.sum())
    x = torch.cat([real, fake]).float()
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    return {"x": x, "label": y, "weight": torch.cat([w_real, w_fake])}


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
    classifier_class: type[ShowerClassifier] = ShowerClassifier,
    **hparams,
) -> ShowerClassifier:
    """Train caloflow's :class:`~caloflow.models.ShowerClassifier` (``mlp`` backbone) to tell ``real`` (1)
    from ``fake`` (0); returns it in evaluation mode.

    ``hparams``: the backbone's ``hidden``, ``n_hidden``, ``slope`` and the classifier's ``lr``,
    ``lr_decay``, ``weight_decay`` (defaults: :data:`PAPER_HPARAMS`). The points are standardised by
    the mean and standard deviation of ``real`` and ``fake`` together (buffers of the backbone).
    """
    hparams = {**PAPER_HPARAMS, **hparams}
    backbone_args = {k: hparams.pop(k) for k in BACKBONE_HPARAMS if k in hparams}
    both = torch.cat([real, fake]).float()
    model = classifier_class(
        "mlp",
        backbone_args=dict(
            n_features=real.shape[1],
            **backbone_args,
            shift=both.mean(0).tolist(),
            scale=both.std(0).clamp_min(1e-6).tolist(),
        ),
        **hparams,
    )
    data = labelled_points(real, fake, w_real, w_fake)
    val_loader = None
    if val_fraction > 0:
        order = torch.randperm(len(data["x"]), generator=torch.Generator().manual_seed(seed + 1))
        n_val = int(len(order) * val_fraction)
        val, train = order[:n_val], order[n_val:]
        val_loader = TensorLoader(
            **{k: v[val] for k, v in data.items()}, batch_size=batch_size, shuffle=False
        )
        data = {k: v[train] for k, v in data.items()}
    trainer.fit(model, TensorLoader(**data, batch_size=batch_size, seed=seed), val_loader)
    model.eval()
    return model


def point_logits(classifier: ShowerClassifier, x: Tensor, batch_size: int = 100_000) -> Tensor:
    """log w(x) of every point of ``x`` (N, n_features): ``classifier.logits({"x": x})`` in chunks."""
    return classifier.logits({"x": x}, batch_size)


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
    """x -> log w(x) = logit(x) of a classifier on points ``{"x": x}``, differentiable; optionally
    capped at log(clip) (used by HMC)."""

    def fn(x: Tensor) -> Tensor:
        lw = classifier({"x": x})
        if clip is not None:
            lw = torch.clamp(lw, max=float(torch.log(torch.tensor(clip))))
        return lw

    return fn


__all__ = [
    "PAPER_HPARAMS",
    "BACKBONE_HPARAMS",
    "labelled_points",
    "train_classifier",
    "point_logits",
    "weights_from_logits",
    "log_weight",
]
