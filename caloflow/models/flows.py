"""Flow I and Flow II of CaloFlow as LightningModules (paper sections 4.1 and 4.2).

Both minimise the negative log-likelihood -log p(x | context) of their representation (see
:mod:`caloflow.transforms`) with Adam and a step-wise learning-rate schedule, and keep their
preprocessing object so that sampling undoes exactly what training did.
"""
from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from nflows.flows import Flow
from torch import Tensor

from caloflow.data.geometry import LAYER_SIZES
from caloflow.flows.build import build_flow1, build_flow2
from caloflow.transforms import FlowIIPreprocessing, FlowIPreprocessing, decode_layer_energies


def standard_normal(n: int, dim: int, generator: torch.Generator | None, device, dtype) -> Tensor:
    """Base-distribution draws; with ``generator`` (CPU) the numbers do not depend on the device."""
    return torch.randn(n, dim, generator=generator, dtype=dtype).to(device)


class ConditionalFlowModule(L.LightningModule):
    """A conditional nflows ``Flow`` trained by maximum likelihood.

    Subclasses build ``self.flow`` and ``self.preprocessing``. Batches are ``{"x", "context"}``.
    """

    flow: Flow

    def nll(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean negative log-likelihood of the batch, nats per shower."""
        return -self.flow.log_prob(batch["x"], context=batch["context"]).mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.nll(batch)
        self.log("train_nll", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["x"]))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.nll(batch)
        self.log("val_nll", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(batch["x"]))
        return loss

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.nll(batch)
        self.log("test_nll", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["x"]))
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        # paper: the learning rate is multiplied by 0.5 after the listed epochs
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.hparams.milestones), gamma=self.hparams.gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def invert(self, z: Tensor, context: Tensor) -> Tensor:
        """x = f^-1(z | context) with nflows' own inverse (one MADE pass per feature)."""
        return self.flow._transform.inverse(z, context=context)[0]


class FlowI(ConditionalFlowModule):
    """Flow I: p(E0, E1, E2 | E_inc) in the logit of the u-space (section 4.1, table 2 top row).

    Args:
        n_blocks: MADE blocks (paper: 6).
        hidden_features: hidden units per MADE layer (paper: 64).
        num_blocks: hidden layers per MADE (paper: 2).
        num_bins: RQS bins (paper: 8).
        dropout: dropout probability (paper: none).
        lr: Adam learning rate (paper: 1e-4).
        milestones: epochs after which the learning rate is multiplied by ``gamma`` (paper: 5, 15, 40, 60).
        gamma: learning-rate factor (paper: 0.5).
        permutation_seed: seeds the random permutations between blocks.
    """

    def __init__(
        self,
        n_blocks: int = 6,
        hidden_features: int = 64,
        num_blocks: int = 2,
        num_bins: int = 8,
        dropout: float = 0.0,
        lr: float = 1e-4,
        milestones: Sequence[int] = (5, 15, 40, 60),
        gamma: float = 0.5,
        permutation_seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.preprocessing = FlowIPreprocessing()
        self.flow = build_flow1(
            self.preprocessing.features, self.preprocessing.context_features, n_blocks, hidden_features,
            num_blocks, num_bins, dropout, permutation_seed,
        )

    @torch.no_grad()
    def sample_layer_energies(self, incident_gev: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw of (E0, E1, E2) in MeV per incident energy (GeV); E0 + E1 + E2 <= E_inc."""
        incident_gev = torch.as_tensor(incident_gev, dtype=torch.float32, device=self.device).reshape(-1)
        context = self.preprocessing.context(incident_gev)
        z = standard_normal(len(incident_gev), self.preprocessing.features, generator, self.device, context.dtype)
        return self.preprocessing.inverse(self.invert(z, context), incident_gev)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Layer energies (MeV) drawn for the incident energies of the batch."""
        return self.sample_layer_energies(batch["energy"])

    @torch.no_grad()
    def compare_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None):
        """Data and generated layer energies (MeV) for the same incident energies, for monitoring."""
        data = self.preprocessing.inverse(batch["x"], batch["energy"])
        return {"layer_energies": data}, {"layer_energies": self.sample_layer_energies(batch["energy"], generator)}


class FlowII(ConditionalFlowModule):
    """Flow II: p(voxels | E_inc, E0, E1, E2) in the logit of per-layer normalised voxels (section 4.2).

    Args:
        layer_sizes: voxels per calorimeter layer; permutations never move a voxel out of its layer.
        n_blocks: MADE blocks (paper: 8).
        hidden_features: hidden units (paper: 378).
        num_blocks: hidden layers per MADE (paper: 1).
        num_bins: RQS bins (paper: 8).
        dropout: dropout probability (paper: 0.05).
        lr, milestones, gamma: Adam 1e-4, halved after epoch 50 (paper).
        permutation_seed: seeds the layer-wise random permutations.
        fast_sampling: sample with :func:`caloflow.flows.fast_inverse` (exact, one network pass per block)
            instead of nflows' inverse (one pass per feature).
    """

    def __init__(
        self,
        layer_sizes: Sequence[int] = LAYER_SIZES,
        n_blocks: int = 8,
        hidden_features: int = 378,
        num_blocks: int = 1,
        num_bins: int = 8,
        dropout: float = 0.05,
        lr: float = 1e-4,
        milestones: Sequence[int] = (50,),
        gamma: float = 0.5,
        permutation_seed: int = 0,
        fast_sampling: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.preprocessing = FlowIIPreprocessing(layer_sizes)
        self.flow = build_flow2(
            layer_sizes, self.preprocessing.context_features, n_blocks, hidden_features, num_blocks, num_bins,
            dropout, permutation_seed,
        )

    def invert(self, z: Tensor, context: Tensor, fast: bool | None = None) -> Tensor:
        if self.hparams.fast_sampling if fast is None else fast:
            from caloflow.flows.fast_inverse import fast_inverse

            return fast_inverse(self.flow._transform, z, context)
        return super().invert(z, context)

    @torch.no_grad()
    def sample_voxels(
        self,
        incident_gev: Tensor,
        layer_energies: Tensor,
        generator: torch.Generator | None = None,
        fast: bool | None = None,
        threshold: bool = True,
    ) -> Tensor:
        """One shower (N, 504) in MeV per row of (E_inc in GeV, E_i in MeV); layer sums equal E_i before the cut."""
        incident_gev = torch.as_tensor(incident_gev, dtype=torch.float32, device=self.device).reshape(-1)
        layer_energies = torch.as_tensor(layer_energies, device=self.device).float()
        context = self.preprocessing.context(incident_gev, layer_energies).float()
        z = standard_normal(len(incident_gev), self.preprocessing.features, generator, self.device, context.dtype)
        x = self.invert(z, context, fast=fast)
        return self.preprocessing.inverse(x, layer_energies, threshold=threshold)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Showers (N, 504) in MeV drawn for the incident and layer energies of the batch."""
        return self.sample_voxels(batch["energy"], decode_layer_energies(batch["context"][:, 1:].double()))

    @torch.no_grad()
    def compare_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None):
        """Data showers and Flow II showers with the same E_inc and E_i (MeV), for monitoring."""
        layer_energies = decode_layer_energies(batch["context"][:, 1:].double())
        data = self.preprocessing.inverse(batch["x"], layer_energies)
        generated = self.sample_voxels(batch["energy"], layer_energies, generator)
        return (
            {"voxels": data, "layer_energies": layer_energies},
            {"voxels": generated, "layer_energies": layer_energies},
        )
