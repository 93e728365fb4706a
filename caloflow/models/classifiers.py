"""The one real-vs-generated classifier of caloflow (CaloFlow paper appendix A; LaSeR section 3).

:class:`ShowerClassifier` is a LightningModule with a pluggable backbone and one label convention:
**1 = reference (real), 0 = generated**, so its logit is log w = log p_ref/p_gen, the LaSeR
weight. The backbone owns the input encoding of the physical showers that
:class:`caloflow.data.CaloDataModule` serves (batches ``{"voxels", "energy", "label"[, "weight"]}``):

The voxel backbones see the (V + 1 + L)-vector of appendix A: the V voxels of the classifier's
geometry (:mod:`caloflow.geometry`) under one of the preprocessings of :func:`classifier_inputs`,
then log10(E_inc / 10 GeV) (eq. 4.4) and log10((E_i + 1 keV) / 100 GeV) + 2 for the L layer
energies (eq. 4.5).

* :class:`DNN`: V + 1 + L -> 3 x 512 LeakyReLU(0.01) -> 1; 786,433 trainable parameters for
  CaloGAN. Any geometry.
* :class:`CNN` (CaloGAN only: it is built for the shapes of its three layers): per calorimeter
  layer conv(128) -> conv(64) -> maxpool to 6 x 6 -> conv(64) -> conv(64) -> maxpool to 2 x 2;
  the three 64 x 2 x 2 outputs and the 4 conditions (772) -> 512 -> 512 -> 1; 1,262,913
  trainable parameters. The appendix quotes (64, 4, 4) after the last pooling, but
  772 = 3 x 64 x 2 x 2 + 4 inputs to the dense part and the parameter count only agree with
  2 x 2 (a 3 x 3 pooling of the 6 x 6 maps), with kernels layer 0: (3, 7) pad (2, 0) then (4, 7)
  pad (2, 0) and pooling (1, 14); layers 1 and 2: 3 x 3 pad 1 and pooling 2 x 2 resp. (2, 1);
  second pair 3 x 3 pad 1 everywhere.

* :class:`FeatureDNN`: 41 high-level features of the shower (the reference code's feature
  classifier) -> 3 x 512 LeakyReLU(0.01) -> 1.
* :class:`PointMLP`: an MLP on standardised points ``batch["x"]`` (the LaSeR toys, latent spaces).
* :class:`VectorDNN`: an MLP on a precomputed vector ``batch["inputs"]`` (the CaloChallenge inputs).
* :class:`ChallengeDNN`: the same MLP on a CaloChallenge input computed from the showers, scaled
  to [-1, 1] by fixed buffers (polar geometries; the LaSeR weights of dataset-1 models).

All return a logit; the sigmoid of the appendix is applied in the loss (``BCEWithLogits``,
numerically safer, same model) and in :meth:`ShowerClassifier.predict_proba`.

Every backbone is ``classify(encode(batch))``: ``encode`` is its fixed, parameter-free input
representation (the (V + 1 + L)-vector, the 41 features, the standardised points) and ``classify`` the
trained network. A batch may carry the encoding already, under the backbone's :attr:`input_key`
(``"inputs:dnn/unnormalized"``, ``"inputs:features"``, ...): the classifier test encodes its
noise-free showers once instead of in every epoch (:class:`caloflow.evaluate.classification.EncodedDataset`),
and a batch encoded for another backbone is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from caloflow.domain import carry_geometry
from caloflow.errors import CaloflowError
from caloflow.geometry import CALOGAN, GEV, Geometry, get_geometry
from caloflow.nn import mlp
from caloflow.training import adam_with_decay
from caloflow.transforms import (
    LayerNormalization,
    LogitTransform,
    encode_incident_energy,
    encode_layer_energies,
)

#: Voxel preprocessings of section 5.4 and appendix B. Voxels are in units of 100 GeV
#: ("unnormalized"), divided by their layer sum ("normalized"), or logit(x)/10 of either.
PREPROCESSINGS: tuple[str, ...] = ("unnormalized", "normalized", "logit", "logit-normalized")
#: the classifier test's classifiers: voxels (appendix A) and the 41 high-level features of the reference code
ARCHITECTURES: tuple[str, ...] = ("dnn", "cnn", "features")
Batch = dict[str, Tensor]
#: what names a geometry: a built-in name, a binning .xml, a Geometry.to_dict() dict or a Geometry
GeometrySpec = str | Path | dict | Geometry
#: Scale of the unnormalized voxels: the reference code works in units of 100 GeV.
VOXEL_UNIT_MEV = 100 * GEV


def n_conditions(geometry: GeometrySpec) -> int:
    """Conditions after the voxels: E_inc and the L layer energies, 1 + L."""
    return 1 + get_geometry(geometry).n_layers


def n_inputs(geometry: GeometrySpec) -> int:
    """Width of the voxel classifiers' input: V voxels + 1 + L conditions."""
    g = get_geometry(geometry)
    return g.n_voxels + n_conditions(g)


def classifier_inputs(
    voxels: np.ndarray | Tensor,
    incident_gev: np.ndarray | Tensor,
    preprocessing: str = "unnormalized",
    geometry: GeometrySpec = "calogan",
) -> Tensor:
    """The V + 1 + L classifier inputs of appendix A (float32).

    Args:
        voxels: (N, V) in MeV, the flat order of ``geometry``.
        incident_gev: (N,) incident energy in GeV.
        preprocessing: ``unnormalized`` (voxels / 100 GeV), ``normalized`` (each layer divided
            by its sum), ``logit`` (logit(alpha + (1 - 2 alpha) x) / 10 of the unnormalized x,
            appendix B, alpha = 1e-6) or ``logit-normalized`` (the same of the normalized x).
        geometry: the detector (its layer sizes split the voxels into layers).

    Returns:
        (N, V + 1 + L): preprocessed voxels, eq. (4.4) of E_inc, eq. (4.5) of E_0 .. E_{L-1}.
    """
    _check_preprocessing(preprocessing)
    geometry = get_geometry(geometry)
    voxels = torch.as_tensor(voxels).to(torch.float64)
    if voxels.ndim != 2 or voxels.shape[1] != geometry.n_voxels:
        raise ValueError(
            f"voxels have shape {tuple(voxels.shape)}, expected (N, {geometry.n_voxels}) for "
            f"the {geometry.name} geometry"
        )
    incident = torch.as_tensor(incident_gev).to(torch.float64).reshape(-1)
    norm = LayerNormalization(geometry.layer_sizes)
    layer_energies = norm.layer_sums(voxels)
    if preprocessing.endswith("normalized") and preprocessing != "unnormalized":
        x = norm.forward(voxels)
    else:
        x = voxels / VOXEL_UNIT_MEV
    if preprocessing.startswith("logit"):
        x = LogitTransform().forward(x) / 10.0
    conditions = torch.cat(
        [encode_incident_energy(incident), encode_layer_energies(layer_energies)], dim=1
    )
    return torch.cat([x, conditions], dim=1).to(torch.float32)


def _check_preprocessing(preprocessing: str) -> None:
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(
            f"unknown preprocessing '{preprocessing}', choose from {', '.join(PREPROCESSINGS)}"
        )


class Backbone(nn.Module):
    """A classifier backbone: ``forward(batch) = classify(encode(batch))`` (module docstring)."""

    @property
    def input_key(self) -> str:
        """The batch key of this backbone's precomputed encoding."""
        name = type(self).__name__.lower()
        preprocessing = getattr(self, "preprocessing", None)
        return f"inputs:{name}" + (f"/{preprocessing}" if preprocessing else "")

    def encode(self, batch: Batch) -> Tensor:
        """The fixed input representation of a batch, (N, n_inputs) float32."""
        raise NotImplementedError

    def classify(self, inputs: Tensor) -> Tensor:
        """Logits (N,) of encoded inputs."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        inputs = batch.get(self.input_key)
        return self.classify(self.encode(batch) if inputs is None else inputs)


class DNN(Backbone):
    """Fully connected classifier of appendix A: V + 1 + L -> 512 -> 512 -> 512 -> 1 (logit) on
    showers of ``geometry``."""

    def __init__(
        self,
        preprocessing: str = "unnormalized",
        hidden: int = 512,
        n_hidden_layers: int = 3,
        slope: float = 0.01,
        geometry: GeometrySpec = "calogan",
    ):
        super().__init__()
        _check_preprocessing(preprocessing)
        self.preprocessing = preprocessing
        self.geometry = get_geometry(geometry)
        self.net = mlp(n_inputs(self.geometry), 1, hidden, n_hidden_layers, slope)

    def encode(self, batch: Batch) -> Tensor:
        return classifier_inputs(
            batch["voxels"], batch["energy"], self.preprocessing, self.geometry
        )

    def classify(self, inputs: Tensor) -> Tensor:
        return self.net(inputs).squeeze(-1)


def _conv_block(first: tuple[dict, dict], pool1, slope: float) -> nn.Sequential:
    """conv 1->128, conv 128->64, pool to 6x6, conv 64->64 twice (shape kept), pool to 2x2."""
    act = lambda: nn.LeakyReLU(slope)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(1, 128, **first[0]),
        act(),
        nn.Conv2d(128, 64, **first[1]),
        act(),
        nn.MaxPool2d(pool1),
        nn.Conv2d(64, 64, kernel_size=3, padding=1),
        act(),
        nn.Conv2d(64, 64, kernel_size=3, padding=1),
        act(),
        nn.MaxPool2d(3),
    )


class CNN(Backbone):
    """Convolutional classifier of appendix A (one convolution stack per calorimeter layer).

    Its kernels and poolings are those of the three CaloGAN layers: any other ``geometry`` is
    refused (:class:`caloflow.errors.CaloflowError`).
    """

    def __init__(
        self,
        preprocessing: str = "unnormalized",
        hidden: int = 512,
        slope: float = 0.01,
        geometry: GeometrySpec = "calogan",
    ):
        geometry = get_geometry(geometry)
        if geometry != CALOGAN:
            raise CaloflowError(
                f"geometry {geometry.name}: the cnn classifier is built for the CaloGAN layers "
                "only; use the dnn classifier"
            )
        super().__init__()
        _check_preprocessing(preprocessing)
        self.preprocessing = preprocessing
        self.geometry = geometry
        square = ({"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "padding": 1})
        self.stacks = nn.ModuleList(
            [
                # (3, 96) -> (5, 90) -> (6, 84) -> pool (1, 14) -> (6, 6)
                _conv_block(
                    (
                        {"kernel_size": (3, 7), "padding": (2, 0)},
                        {"kernel_size": (4, 7), "padding": (2, 0)},
                    ),
                    (1, 14),
                    slope,
                ),
                _conv_block(square, 2, slope),  # (12, 12) -> (6, 6)
                _conv_block(square, (2, 1), slope),  # (12, 6) -> (6, 6)
            ]
        )
        n_flat = CALOGAN.n_layers * 64 * 2 * 2 + n_conditions(CALOGAN)  # 772
        self.head = nn.Sequential(
            nn.Linear(n_flat, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, 1),
        )

    def encode(self, batch: Batch) -> Tensor:
        return classifier_inputs(batch["voxels"], batch["energy"], self.preprocessing, CALOGAN)

    def classify(self, x: Tensor) -> Tensor:
        sizes = list(CALOGAN.layer_sizes) + [n_conditions(CALOGAN)]
        *layers, conditions = torch.split(x, sizes, dim=1)
        features = [
            stack(layer.reshape(len(x), 1, *shape)).flatten(1)
            for stack, layer, shape in zip(self.stacks, layers, CALOGAN.layer_shapes)
        ]
        return self.head(torch.cat(features + [conditions], dim=1)).squeeze(-1)


class FeatureDNN(Backbone):
    """The high-level-feature classifier of the published CaloFlow reference code: the 41 inputs of
    :func:`caloflow.features.high_level_inputs` (energies, depth, brightest voxels, E_ratio,
    sparsity, centroids, widths, E_inc) -> 3 x 512 LeakyReLU(0.01) -> 1 (logit), on showers."""

    def __init__(self, hidden: int = 512, n_hidden_layers: int = 3, slope: float = 0.01):
        super().__init__()
        from caloflow.features import HIGH_LEVEL_INPUTS

        self.net = mlp(len(HIGH_LEVEL_INPUTS), 1, hidden, n_hidden_layers, slope)

    def encode(self, batch: Batch) -> Tensor:
        from caloflow.features import high_level_inputs

        return high_level_inputs(batch["voxels"], batch["energy"])

    def classify(self, inputs: Tensor) -> Tensor:
        return self.net(inputs).squeeze(-1)


class VectorDNN(Backbone):
    """An MLP on a precomputed input vector ``batch["inputs"]`` (N, n_inputs): n_hidden_layers x
    ``hidden`` LeakyReLU(``slope``) -> 1 (logit), with optional dropout after every activation. The
    CaloChallenge classifiers (:mod:`caloflow.evaluate.challenge`) feed it their ``cls-*`` inputs."""

    def __init__(
        self,
        n_inputs: int = 1,
        hidden: int = 512,
        n_hidden_layers: int = 3,
        slope: float = 0.01,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.net = mlp(n_inputs, 1, hidden, n_hidden_layers, slope)
        if dropout > 0:
            parts = list(self.net)
            for i in range(len(parts) - 1, 0, -1):
                if isinstance(parts[i], nn.LeakyReLU):
                    parts.insert(i + 1, nn.Dropout(dropout))
            self.net = nn.Sequential(*parts)

    def encode(self, batch: Batch) -> Tensor:
        return batch["inputs"]

    def classify(self, inputs: Tensor) -> Tensor:
        return self.net(inputs).squeeze(-1)


def centre_and_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x`` (N, d): the mean, and the largest |deviation| from it (1 for a constant
    column), so that (x - mean) / scale lies in [-1, 1] (see
    :func:`caloflow.evaluate.challenge.standardised` for why not the standard deviation)."""
    mean = x.mean(axis=0)
    scale = np.abs(x - mean).max(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


class ChallengeDNN(VectorDNN):
    """The :class:`VectorDNN` on a CaloChallenge classifier input computed from the showers
    (``kind``: ``cls-low``, ``cls-low-normed`` or ``cls-high`` of
    :func:`caloflow.radial_features.classifier_inputs`, after the voxel threshold
    ``min_energy_mev``, default the geometry's), centred and scaled by the fixed buffers ``shift``
    and ``scale`` (set from training showers by :meth:`fit_scaling`, saved in the checkpoint).

    Unlike ``vector`` it reads the batch's ``voxels`` (MeV) and ``energy`` (GeV), and its encoding
    keeps the autograd graph of the voxels: a LaSeR weight w(x) = exp(logit(x)) on a polar geometry
    can be differentiated in x (HMC). Polar geometries only.
    """

    def __init__(
        self,
        kind: str = "cls-low",
        min_energy_mev: float | None = None,
        hidden: int = 512,
        n_hidden_layers: int = 3,
        slope: float = 0.01,
        dropout: float = 0.0,
        geometry: GeometrySpec = "ds1-photons",
    ):
        from caloflow.radial_features import check_polar, classifier_input_size

        geometry = get_geometry(geometry)
        check_polar(geometry)
        n = classifier_input_size(geometry, kind)
        super().__init__(n, hidden, n_hidden_layers, slope, dropout)
        self.geometry, self.kind, self.min_energy_mev = geometry, kind, min_energy_mev
        self.register_buffer("shift", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n, dtype=torch.float64))

    @property
    def input_key(self) -> str:
        return f"inputs:challenge/{self.kind}"

    def raw_inputs(self, batch: Batch) -> Tensor:
        """The unscaled input (N, d) float64 of the batch's showers (differentiable in the voxels)."""
        from caloflow.radial_features import classifier_input_tensor

        return classifier_input_tensor(
            batch["voxels"], batch["energy"], self.geometry, self.kind, self.min_energy_mev
        )

    @torch.no_grad()
    def fit_scaling(self, batch: Batch) -> None:
        """Set ``shift`` and ``scale`` from the showers of ``batch`` (:func:`centre_and_scale`)."""
        mean, scale = centre_and_scale(self.raw_inputs(batch).cpu().numpy())
        self.shift.copy_(torch.as_tensor(mean))
        self.scale.copy_(torch.as_tensor(scale))

    def encode(self, batch: Batch) -> Tensor:
        x = (self.raw_inputs(batch) - self.shift) / self.scale
        return x.to(self.net[0].weight.dtype)


class PointMLP(Backbone):
    """MLP on points ``batch["x"]`` (N, n_features), standardised by a fixed ``shift`` and ``scale``.

    ``shift`` and ``scale`` are set from the training data before training (buffers, saved in the
    checkpoint), so raw data units can be fed.
    """

    def __init__(
        self,
        n_features: int = 2,
        hidden: int = 96,
        n_hidden: int = 8,
        slope: float = 0.01,
        shift: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
    ):
        super().__init__()
        self.net = mlp(n_features, 1, hidden, n_hidden, slope)
        self.register_buffer(
            "shift",
            torch.as_tensor(
                shift if shift is not None else [0.0] * n_features, dtype=torch.float32
            ),
        )
        self.register_buffer(
            "scale",
            torch.as_tensor(
                scale if scale is not None else [1.0] * n_features, dtype=torch.float32
            ),
        )

    def encode(self, batch: Batch) -> Tensor:
        return (batch["x"] - self.shift) / self.scale

    def classify(self, inputs: Tensor) -> Tensor:
        return self.net(inputs).squeeze(-1)


#: backbone name -> class; ``ShowerClassifier(backbone=NAME, backbone_args={...})``.
BACKBONES: dict[str, type[Backbone]] = {
    "dnn": DNN,
    "cnn": CNN,
    "features": FeatureDNN,
    "mlp": PointMLP,
    "vector": VectorDNN,
    "challenge": ChallengeDNN,
}


class ShowerClassifier(L.LightningModule):
    """Binary classifier, label 1 = reference (real) and 0 = generated, trained on the (weighted) BCE.

    The loss is sum w BCE / sum w over the batch (w = ``batch["weight"]``, 1 if absent: DCTR-weighted
    samples train the same module). Logs ``train_loss``, ``val_loss``, ``val_acc`` and ``val_auc``
    (torchmetrics; the epoch selection of appendix A keeps the best ``val_acc``). With weights,
    ``val_loss`` and ``val_acc`` are weighted (sum w [correct] / sum w) and ``val_auc``, which
    torchmetrics cannot weight, is not logged.

    Args:
        backbone: ``dnn`` or ``cnn`` (appendix A, on voxels), ``features`` (41 high-level features of the
            reference code, on showers), ``mlp`` (on points ``batch["x"]``), ``vector`` (on
            ``batch["inputs"]``) or ``challenge`` (a CaloChallenge input of the showers, polar
            geometries).
        preprocessing: voxel input preprocessing of the ``dnn`` and ``cnn`` backbones.
        lr: Adam learning rate (appendix A: 5e-4; LaSeR: 1e-3).
        lr_decay: learning-rate factor per epoch (LaSeR: 0.999; 1 = constant).
        weight_decay: Adam weight decay.
        backbone_args: further arguments of the backbone class (:data:`BACKBONES`).
        geometry: the detector of the showers: ``calogan``, ``ds1-photons``, ``ds1-pions`` or a
            binning .xml (a :meth:`caloflow.geometry.Geometry.to_dict` dict when loaded from a
            checkpoint); it sizes the ``dnn`` input, and ``cnn`` refuses any but ``calogan``.
    """

    def __init__(
        self,
        backbone: str = "dnn",
        preprocessing: str = "unnormalized",
        lr: float = 5e-4,
        lr_decay: float = 1.0,
        weight_decay: float = 0.0,
        backbone_args: dict | None = None,
        geometry: str | dict[str, Any] = "calogan",
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown classifier '{backbone}', choose from {', '.join(BACKBONES)}")
        self.save_hyperparameters(ignore=["geometry"])
        #: the detector; kept in the hyperparameters as a dict, so the checkpoint holds it
        self.geometry = carry_geometry(self, geometry)
        args = dict(backbone_args or {})
        if backbone in ("dnn", "cnn"):
            args.setdefault("preprocessing", preprocessing)
        if backbone in ("dnn", "cnn", "challenge"):
            args["geometry"] = self.geometry
        self.net = BACKBONES[backbone](**args)
        self.val_acc = BinaryAccuracy()
        self.val_auc = BinaryAUROC()
        #: weighted validation loss and accuracy over the epoch (batches with a "weight"): sum w x / sum w
        #: over every validation shower, whatever the batches; metric states are not saved in checkpoints
        self.val_weighted_loss = MeanMetric()
        self.val_weighted_acc = MeanMetric()

    def forward(self, batch: Batch) -> Tensor:
        """Logit of P(reference | batch) = log w, shape (N,)."""
        return self.net(batch)

    @property
    def input_key(self) -> str:
        """The batch key under which a batch may carry this classifier's encoded inputs."""
        return self.net.input_key

    @torch.no_grad()
    def encode(self, batch: Batch) -> Tensor:
        """The backbone's fixed input representation of ``batch`` (no trained parameters)."""
        return self.net.encode(batch)

    def loss(self, batch: Batch, logits: Tensor | None = None) -> Tensor:
        """Weighted binary cross entropy, nats."""
        logits = self(batch) if logits is None else logits
        bce = F.binary_cross_entropy_with_logits(logits, batch["label"], reduction="none")
        weight = batch.get("weight")
        return bce.mean() if weight is None else (weight * bce).sum() / weight.sum()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["label"]),
        )
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self(batch)
        n = len(batch["label"])
        # probabilities, not logits: torchmetrics would take logits that all lie in [0, 1] for probabilities
        probs, labels = torch.sigmoid(logits), batch["label"].long()
        weight = batch.get("weight")
        if weight is not None:
            bce = F.binary_cross_entropy_with_logits(logits, batch["label"], reduction="none")
            # the threshold of BinaryAccuracy: correct when (p > 0.5) == label
            correct = ((probs > 0.5).long() == labels).to(bce.dtype)
            self.val_weighted_loss.update(bce, weight)
            self.val_weighted_acc.update(correct, weight)
            self.log("val_loss", self.val_weighted_loss, on_epoch=True, prog_bar=True, batch_size=n)
            self.log("val_acc", self.val_weighted_acc, on_epoch=True, prog_bar=True, batch_size=n)
            return
        self.val_acc.update(probs, labels)
        self.val_auc.update(probs, labels)
        self.log("val_loss", self.loss(batch, logits), on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val_auc", self.val_auc, on_epoch=True, batch_size=n)

    def configure_optimizers(self):
        hp = self.hparams
        return adam_with_decay(self.parameters(), hp.lr, hp.lr_decay, weight_decay=hp.weight_decay)

    @torch.no_grad()
    def logits(self, batch: Batch, batch_size: int = 10_000) -> Tensor:
        """Logits of every row of ``batch`` (evaluation mode, in chunks), on the CPU."""
        was_training = self.training
        self.eval()
        n = len(next(iter(batch.values())))
        out = [
            self({k: v[i : i + batch_size].to(self.device) for k, v in batch.items()}).cpu()
            for i in range(0, n, batch_size)
        ]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def predict_proba(self, batch: Batch, batch_size: int = 10_000) -> np.ndarray:
        """P(reference) for every row of ``batch``, as float64 numpy."""
        return torch.sigmoid(self.logits(batch, batch_size).double()).numpy()


__all__ = [
    "PREPROCESSINGS",
    "ARCHITECTURES",
    "GeometrySpec",
    "VOXEL_UNIT_MEV",
    "n_conditions",
    "n_inputs",
    "classifier_inputs",
    "Backbone",
    "DNN",
    "CNN",
    "FeatureDNN",
    "PointMLP",
    "VectorDNN",
    "centre_and_scale",
    "ChallengeDNN",
    "BACKBONES",
    "ShowerClassifier",
]
