"""Classifiers that tell reference (GEANT4) showers from generated ones (CaloFlow paper appendix A).

The input of both networks is the 508-vector of appendix A: the 504 voxels under one of the
preprocessings of :func:`classifier_inputs`, then log10(E_inc / 10 GeV) (eq. 4.4) and
log10((E_i + 1 keV) / 100 GeV) + 2 for the three layer energies (eq. 4.5).

* :class:`DNN`: 508 -> 3 x 512 LeakyReLU(0.01) -> 1; 786,433 trainable parameters.
* :class:`CNN`: per calorimeter layer conv(128) -> conv(64) -> maxpool to 6 x 6 -> conv(64) ->
  conv(64) -> maxpool to 2 x 2; the three 64 x 2 x 2 outputs and the 4 conditions (772) ->
  512 -> 512 -> 1; 1,262,913 trainable parameters. The appendix quotes (64, 4, 4) after the
  last pooling, but 772 = 3 x 64 x 2 x 2 + 4 inputs to the dense part and the parameter count
  only agree with 2 x 2 (a 3 x 3 pooling of the 6 x 6 maps), with kernels layer 0: (3, 7) pad
  (2, 0) then (4, 7) pad (2, 0) and pooling (1, 14); layers 1 and 2: 3 x 3 pad 1 and pooling
  2 x 2 resp. (2, 1); second pair 3 x 3 pad 1 everywhere.

Both return a logit; the sigmoid of the appendix is applied in the loss (``BCEWithLogits``,
numerically safer, same model) and in :meth:`ShowerClassifier.predict_proba`.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from caloflow.data.geometry import GEV, LAYER_SHAPES, LAYER_SIZES, N_VOXELS
from caloflow.transforms import LayerNormalization, LogitTransform, encode_incident_energy, encode_layer_energies

#: Voxel preprocessings of section 5.4 and appendix B. Voxels are in units of 100 GeV
#: ("unnormalized"), divided by their layer sum ("normalized"), or logit(x)/10 of either.
PREPROCESSINGS: tuple[str, ...] = ("unnormalized", "normalized", "logit", "logit-normalized")
ARCHITECTURES: tuple[str, ...] = ("dnn", "cnn")
N_CONDITIONS = 4
N_INPUTS = N_VOXELS + N_CONDITIONS  # 508
#: Scale of the unnormalized voxels: the reference code works in units of 100 GeV.
VOXEL_UNIT_MEV = 100 * GEV


def classifier_inputs(voxels: np.ndarray | Tensor, incident_gev: np.ndarray | Tensor,
                      preprocessing: str = "unnormalized") -> Tensor:
    """The 508 classifier inputs of appendix A (float32).

    Args:
        voxels: (N, 504) in MeV.
        incident_gev: (N,) incident energy in GeV.
        preprocessing: ``unnormalized`` (voxels / 100 GeV), ``normalized`` (each layer divided
            by its sum), ``logit`` (logit(alpha + (1 - 2 alpha) x) / 10 of the unnormalized x,
            appendix B, alpha = 1e-6) or ``logit-normalized`` (the same of the normalized x).

    Returns:
        (N, 508): preprocessed voxels, eq. (4.4) of E_inc, eq. (4.5) of E_0, E_1, E_2.
    """
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"unknown preprocessing '{preprocessing}', choose from {', '.join(PREPROCESSINGS)}")
    voxels = torch.as_tensor(np.asarray(voxels), dtype=torch.float64)
    incident = torch.as_tensor(np.asarray(incident_gev), dtype=torch.float64).reshape(-1)
    norm = LayerNormalization()
    layer_energies = norm.layer_sums(voxels)
    if preprocessing.endswith("normalized") and preprocessing != "unnormalized":
        x = norm.forward(voxels)
    else:
        x = voxels / VOXEL_UNIT_MEV
    if preprocessing.startswith("logit"):
        x = LogitTransform().forward(x) / 10.0
    conditions = torch.cat([encode_incident_energy(incident), encode_layer_energies(layer_energies)], dim=1)
    return torch.cat([x, conditions], dim=1).to(torch.float32)


class DNN(nn.Module):
    """Fully connected classifier of appendix A: 508 -> 512 -> 512 -> 512 -> 1 (logit)."""

    def __init__(self, n_inputs: int = N_INPUTS, hidden: int = 512, n_hidden_layers: int = 3, slope: float = 0.01):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(slope)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def _conv_block(first: tuple[dict, dict], pool1, slope: float) -> nn.Sequential:
    """conv 1->128, conv 128->64, pool to 6x6, conv 64->64 twice (shape kept), pool to 2x2."""
    act = lambda: nn.LeakyReLU(slope)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(1, 128, **first[0]), act(),
        nn.Conv2d(128, 64, **first[1]), act(),
        nn.MaxPool2d(pool1),
        nn.Conv2d(64, 64, kernel_size=3, padding=1), act(),
        nn.Conv2d(64, 64, kernel_size=3, padding=1), act(),
        nn.MaxPool2d(3),
    )


class CNN(nn.Module):
    """Convolutional classifier of appendix A (one convolution stack per calorimeter layer)."""

    def __init__(self, hidden: int = 512, slope: float = 0.01):
        super().__init__()
        square = ({"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "padding": 1})
        self.stacks = nn.ModuleList([
            # (3, 96) -> (5, 90) -> (6, 84) -> pool (1, 14) -> (6, 6)
            _conv_block(({"kernel_size": (3, 7), "padding": (2, 0)}, {"kernel_size": (4, 7), "padding": (2, 0)}),
                        (1, 14), slope),
            _conv_block(square, 2, slope),  # (12, 12) -> (6, 6)
            _conv_block(square, (2, 1), slope),  # (12, 6) -> (6, 6)
        ])
        n_flat = len(LAYER_SHAPES) * 64 * 2 * 2 + N_CONDITIONS  # 772
        self.head = nn.Sequential(
            nn.Linear(n_flat, hidden), nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden), nn.LeakyReLU(slope),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        *layers, conditions = torch.split(x, list(LAYER_SIZES) + [N_CONDITIONS], dim=1)
        features = [
            stack(layer.reshape(len(x), 1, *shape)).flatten(1)
            for stack, layer, shape in zip(self.stacks, layers, LAYER_SHAPES)
        ]
        return self.head(torch.cat(features + [conditions], dim=1)).squeeze(-1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class ShowerClassifier(L.LightningModule):
    """Binary classifier reference (label 0) vs generated (label 1) on the inputs of appendix A.

    Trained with Adam (learning rate 5e-4) on the binary cross entropy; logs ``train_loss``,
    ``val_loss`` and ``val_acc`` (the epoch selection of appendix A keeps the best ``val_acc``).
    """

    def __init__(self, architecture: str = "dnn", lr: float = 5e-4):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown classifier '{architecture}', choose from {', '.join(ARCHITECTURES)}")
        self.save_hyperparameters()
        self.net = DNN() if architecture == "dnn" else CNN()
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, x: Tensor) -> Tensor:
        """Logit of P(generated | x)."""
        return self.net(x)

    def _step(self, batch, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        acc = ((logits > 0).to(y.dtype) == y).float().mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, batch_size=len(y), prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    @torch.no_grad()
    def predict_proba(self, x: Tensor, batch_size: int = 10_000) -> np.ndarray:
        """Sigmoid output for every row of ``x``, as float64 numpy."""
        was_training = self.training
        self.eval()
        out = [torch.sigmoid(self(part.to(self.device))).double().cpu() for part in torch.split(x, batch_size)]
        self.train(was_training)
        return torch.cat(out).numpy()
