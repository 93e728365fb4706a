"""Flow I and Flow II of CaloFlow as LightningModules (paper sections 4.1 and 4.2).

Each flow is "preprocessing + nflows stack": the model owns the invertible preprocessing of its
representation (:mod:`caloflow.transforms`, an ``nn.Module`` of the model whose constants are
hyperparameters saved in the checkpoint), encodes the physical showers that
:class:`caloflow.data.CaloDataModule` serves, and undoes the encoding when it samples. Both
minimise the negative log-likelihood of their representation with Adam and a step-wise
learning-rate schedule. A checkpoint alone is enough to sample.

The detector is the model's ``geometry`` (:func:`caloflow.geometry.get_geometry`: a built-in name
such as ``calogan``, ``ds1-photons``, ``ds1-pions``, or a CaloChallenge binning XML): it fixes the
number of layer energies L of Flow I, the voxels V of Flow II, its per-layer normalisation and the
permutations inside the layers. The resolved geometry is saved in the hyperparameters as a dict,
so a checkpoint does not need the XML file it was built from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from nflows.flows import Flow
from torch import Tensor, nn

from caloflow.domain import RemembersDomain, carry_geometry
from caloflow.flows.build import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    build_flow1,
    build_flow2,
)
from caloflow.flows.fast_training import adam
from caloflow.flows.fast_training import install as install_fast_training
from caloflow.geometry import THRESHOLD_KEV, Geometry
from caloflow.transforms import ALPHA, FlowIIPreprocessing, FlowIPreprocessing

Batch = dict[str, Tensor]
#: learning-rate schedules of :meth:`ConditionalFlowModule.configure_optimizers`
SCHEDULES = ("multistep", "onecycle")


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def standard_normal(n: int, dim: int, generator: torch.Generator | None, device, dtype) -> Tensor:
    """Base-distribution draws; with ``generator`` (CPU) the numbers do not depend on the device."""
    return torch.randn(n, dim, generator=generator, dtype=dtype).to(device)


class ConditionalFlowModule(RemembersDomain, L.LightningModule):
    """A conditional nflows ``Flow`` on a representation of physical showers, trained by maximum likelihood.

    Subclasses build ``self.preprocessing`` and ``self.flow`` and say how a batch of showers is
    encoded (:meth:`encode`). The training data's domain (energy range, particle) is kept in the
    checkpoint (:class:`caloflow.domain.RemembersDomain`).
    """

    flow: Flow
    preprocessing: nn.Module
    #: the detector the model is built for
    geometry: Geometry

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(x, context) of a batch of physical showers in the flow's representation (float32)."""
        raise NotImplementedError

    def nll(self, batch: Batch) -> Tensor:
        """Mean negative log-likelihood of the batch in the flow's representation, nats per shower."""
        x, context = self.encode(batch)
        return -self.flow.log_prob(x, context=context).mean()

    def _log_nll(self, batch: Batch, stage: str, **kwargs) -> Tensor:
        loss = self.nll(batch)
        self.log(f"{stage}_nll", loss, on_epoch=True, batch_size=len(batch["energy"]), **kwargs)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._log_nll(batch, "train", on_step=True, prog_bar=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._log_nll(batch, "val", prog_bar=True, sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._log_nll(batch, "test", sync_dist=True)

    def configure_optimizers(self):
        # fast_training: fused Adam (same update up to float rounding; caloflow.flows.fast_training)
        optimizer = adam(
            self.parameters(), self.hparams.lr, fast=self.hparams.get("fast_training", False)
        )
        if self.hparams.get("schedule", "multistep") == "onecycle":
            # dataset-1 recipe (arXiv:2210.14245): one cycle per fit, peaking at lr, stepped per batch
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=self.hparams.lr,
                total_steps=max(int(self.trainer.estimated_stepping_batches), 1),
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }
        # paper: the learning rate is multiplied by 0.5 after the listed epochs
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.hparams.milestones), gamma=self.hparams.gamma
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def invert(self, z: Tensor, context: Tensor) -> Tensor:
        """x = f^-1(z | context) with nflows' own inverse (one MADE pass per feature); autograd as the caller's."""
        return self.flow._transform.inverse(z, context=context)[0]

    @contextmanager
    def decoding(self, differentiable: bool) -> Iterator[None]:
        """Evaluation mode, and no autograd graph unless ``differentiable`` (then grad mode as the caller's)."""
        with self.evaluating(), torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            yield

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation mode (no dropout) for the duration of the block, then the previous mode."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent space (= of the flow's representation)."""
        return int(self.flow._distribution._shape[0])

    @property
    def flow_dtype(self) -> torch.dtype:
        """The dtype of the flow's weights (float32 unless the model was converted)."""
        return next(self.flow.parameters()).dtype

    def _latent(self, n: int, generator: torch.Generator | None, dtype) -> Tensor:
        return standard_normal(n, self.latent_dim, generator, self.device, dtype)

    @staticmethod
    def _mark_nonfinite(x: Tensor, decoded: Tensor) -> Tensor:
        """``decoded`` with NaN rows where the flow's output ``x`` was not finite.

        The post-processing (renormalisation, the 10 keV cut) would turn NaN into zeros: a broken draw
        must stay visibly broken, so that the sampler draws it again or reports the model.
        """
        bad = ~torch.isfinite(x).all(dim=1)
        if bad.any():
            decoded = decoded.clone()
            decoded[bad] = float("nan")
        return decoded

    def _incident(self, incident_gev, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.as_tensor(incident_gev, device=self.device).to(dtype).reshape(-1)


class FlowI(ConditionalFlowModule):
    """Flow I: p(E_0 .. E_{L-1} | E_inc) in the logit of the u-space (section 4.1, table 2 top row).

    Representation: x = logit(alpha + (1 - 2 alpha) u), u = (E_hat/E_inc, E_0/E_hat,
    E_1/(E_1 + ... + E_{L-1}), ...) (eqs. 4.1-4.3, :class:`caloflow.transforms.EnergyToU`); context
    log10(E_inc / 10 GeV) (eq. 4.4). L is the number of layers of ``geometry``.

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
        alpha: logit offset of eq. (4.3) (paper: 1e-6).
        min_bin_width, min_bin_height, min_derivative: the splines' minimal bin width, bin height and
            derivative (nflows' default 1e-3; the published reference code and the paper configs: 1e-6).
        fast_training: train with :mod:`caloflow.flows.fast_training` (the same function and gradients,
            computed faster; fused Adam); the modules and the checkpoint are the same either way.
        energy_scale: c of u_0 = E_hat / (c E_inc) (CaloGAN paper: 1; dataset-1 code: 2.42 photons,
            6.93 pions).
        schedule: ``multistep`` (the paper: ``lr`` times ``gamma`` after each milestone epoch) or
            ``onecycle`` (dataset-1 code: one cycle over the fit peaking at ``lr``, per step;
            ``milestones`` and ``gamma`` unused).
        geometry: the detector: ``calogan``, ``ds1-photons``, ``ds1-pions`` or a binning .xml
            (a :meth:`caloflow.geometry.Geometry.to_dict` dict when loaded from a checkpoint).
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
        alpha: float = ALPHA,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
        fast_training: bool = False,
        energy_scale: float = 1.0,
        schedule: str = "multistep",
        geometry: str | dict[str, Any] = "calogan",
    ):
        super().__init__()
        check_schedule(schedule)
        self.save_hyperparameters(ignore=["geometry"])
        self.geometry = carry_geometry(self, geometry)
        self.preprocessing = FlowIPreprocessing(self.geometry.n_layers, alpha, energy_scale)
        self.flow = build_flow1(
            self.geometry,
            self.preprocessing.context_features,
            n_blocks,
            hidden_features,
            num_blocks,
            num_bins,
            dropout,
            permutation_seed,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        if fast_training:
            install_fast_training(self.flow)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, context = self.preprocessing(batch["layer_energies"], batch["energy"])
        return x.float(), context.float()

    def log_prob(self, layer_energies: Tensor, incident_gev: Tensor) -> Tensor:
        """log p(x(E_0 .. E_{L-1}) | E_inc) per shower (nats, in the representation); energies in MeV and GeV."""
        return self.flow.log_prob(
            *self.encode({"layer_energies": layer_energies, "energy": incident_gev})
        )

    def decode(self, z: Tensor, incident_gev: Tensor, differentiable: bool = False) -> Tensor:
        """Layer energies (N, L) in MeV of the latent points ``z`` (N, L), given E_inc (N,) in GeV.

        The Flow I part of the generator g(z) (:mod:`refine.showers`): x = f^-1(z | E_inc) with nflows'
        inverse, then the inverse u-transform (sum of E_k <= E_inc). Computed in the dtype of ``z``
        (the flow's). Rows whose flow output is not finite come out NaN. With ``differentiable`` the
        autograd graph is kept (when grad mode is on): the result is differentiable in ``z`` (and E_inc).
        """
        with self.decoding(differentiable):
            incident_gev = self._incident(incident_gev, z.dtype)
            x = self.invert(z, self.preprocessing.context(incident_gev))
            return self._mark_nonfinite(x, self.preprocessing.inverse(x, incident_gev))

    @torch.no_grad()
    def sample(self, incident_gev: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw of the L layer energies in MeV per incident energy (GeV); their sum <= E_inc.

        z ~ N(0, 1) (N, L) from ``generator`` (in the flow's dtype, drawn on the CPU when it is a CPU
        generator), then :meth:`decode`.
        """
        incident_gev = self._incident(incident_gev)
        z = self._latent(len(incident_gev), generator, self.flow_dtype)
        return self.decode(z, incident_gev)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Layer energies (MeV) drawn for the incident energies of the batch."""
        return self.sample(batch["energy"])

    @torch.no_grad()
    def compare_batch(self, batch: Batch, generator: torch.Generator | None = None):
        """Data and generated layer energies (MeV) for the same incident energies, for monitoring."""
        return {"layer_energies": batch["layer_energies"]}, {
            "layer_energies": self.sample(batch["energy"], generator)
        }


class FlowII(ConditionalFlowModule):
    """Flow II: p(voxels | E_inc, E_0 .. E_{L-1}) in the logit of per-layer normalised voxels (section 4.2).

    Representation: x = logit(alpha + (1 - 2 alpha) voxels / E_k) per layer k; context
    [log10(E_inc / 10 GeV), log10((E_k + 1 keV) / 100 GeV) + 2] (eqs. 4.4, 4.5). Sampling undoes it
    (section 4.3): inverse logit, renormalise each layer, scale by E_k, zero voxels below the
    threshold. The layers and their voxels are those of ``geometry``; the permutations between
    blocks keep every voxel inside its layer.

    Args:
        n_blocks: MADE blocks (paper: 8).
        hidden_features: hidden units (paper: 378).
        num_blocks: hidden layers per MADE (paper: 1).
        num_bins: RQS bins (paper: 8).
        dropout: dropout probability (paper: 0.05).
        lr, milestones, gamma: Adam 1e-4, halved after epoch 50 (paper).
        permutation_seed: seeds the layer-wise random permutations.
        fast_sampling: sample with :func:`caloflow.flows.fast_inverse` (exact, one network pass per block)
            instead of nflows' inverse (one pass per feature).
        alpha: logit offset of eq. (4.3) (paper: 1e-6).
        threshold_kev: generated voxels below this are set to zero (paper: 10 keV).
        min_bin_width, min_bin_height, min_derivative: the splines' minimal bin width, bin height and
            derivative (nflows' default 1e-3; the published reference code and the paper configs: 1e-6).
        fast_training: train with :mod:`caloflow.flows.fast_training` (the same function and gradients,
            computed faster; fused Adam); the modules and the checkpoint are the same either way.
        schedule: ``multistep`` (the paper) or ``onecycle`` (one cycle over the fit peaking at ``lr``).
        geometry: the detector: ``calogan``, ``ds1-photons``, ``ds1-pions`` or a binning .xml
            (a :meth:`caloflow.geometry.Geometry.to_dict` dict when loaded from a checkpoint).
    """

    def __init__(
        self,
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
        alpha: float = ALPHA,
        threshold_kev: float = THRESHOLD_KEV,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
        fast_training: bool = False,
        schedule: str = "multistep",
        geometry: str | dict[str, Any] = "calogan",
    ):
        super().__init__()
        check_schedule(schedule)
        self.save_hyperparameters(ignore=["geometry"])
        self.geometry = carry_geometry(self, geometry)
        self.preprocessing = FlowIIPreprocessing(self.geometry.layer_sizes, alpha, threshold_kev)
        self.flow = build_flow2(
            self.geometry,
            self.preprocessing.context_features,
            n_blocks,
            hidden_features,
            num_blocks,
            num_bins,
            dropout,
            permutation_seed,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
        if fast_training:
            install_fast_training(self.flow)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, context = self.preprocessing(batch["voxels"], batch["energy"])
        return x.float(), context.float()

    def log_prob(self, voxels: Tensor, incident_gev: Tensor) -> Tensor:
        """log p(x(voxels) | E_inc, E_k) per shower (nats, in the representation); voxels in MeV, E_inc in GeV."""
        return self.flow.log_prob(*self.encode({"voxels": voxels, "energy": incident_gev}))

    def invert(
        self, z: Tensor, context: Tensor, fast: bool | None = None, differentiable: bool = False
    ) -> Tensor:
        """x = f^-1(z | context): the exact fast inverse (``fast``, default ``fast_sampling``) or nflows' own.

        ``differentiable`` keeps the fast inverse's autograd graph (nflows' inverse always follows the
        caller's grad mode).
        """
        if self.hparams.fast_sampling if fast is None else fast:
            from caloflow.flows.fast_inverse import fast_inverse

            return fast_inverse(self.flow._transform, z, context, differentiable=differentiable)
        return super().invert(z, context)

    def decode(
        self,
        z: Tensor,
        incident_gev: Tensor,
        layer_energies: Tensor,
        fast: bool | None = None,
        threshold: bool = True,
        differentiable: bool = False,
    ) -> Tensor:
        """Showers (N, V) in MeV of the latent points ``z`` (N, V), given E_inc (N,) GeV and E_k (N, L) MeV.

        The Flow II part of the generator g(z) (:mod:`refine.showers`): x = f^-1(z | E_inc, E_k)
        (``fast``: :func:`caloflow.flows.fast_inverse`, default ``fast_sampling``), then the
        post-processing of section 4.3: inverse logit, renormalise each layer to E_k, zero voxels
        below the threshold (``threshold=False`` keeps them: layer sums then equal E_k). Computed in
        the dtype of ``z`` (the flow's). Rows whose flow output is not finite come out NaN. With
        ``differentiable`` the autograd graph is kept (when grad mode is on): the result is
        differentiable in ``z``, E_k and E_inc; voxels zeroed by the threshold have zero gradient.
        """
        with self.decoding(differentiable):
            incident_gev = self._incident(incident_gev, z.dtype)
            layer_energies = torch.as_tensor(layer_energies, device=self.device).to(z.dtype)
            context = self.preprocessing.context(incident_gev, layer_energies).to(z.dtype)
            x = self.invert(z, context, fast=fast, differentiable=differentiable)
            return self._mark_nonfinite(
                x, self.preprocessing.inverse(x, layer_energies, threshold=threshold)
            )

    @torch.no_grad()
    def sample(
        self,
        incident_gev: Tensor,
        layer_energies: Tensor,
        generator: torch.Generator | None = None,
        fast: bool | None = None,
        threshold: bool = True,
    ) -> Tensor:
        """One shower (N, V) in MeV per row of (E_inc in GeV, E_k in MeV); layer sums equal E_k before the cut.

        z ~ N(0, 1) (N, V) from ``generator`` (in the flow's dtype, drawn on the CPU when it is a
        CPU generator), then :meth:`decode`.
        """
        incident_gev = self._incident(incident_gev)
        z = self._latent(len(incident_gev), generator, self.flow_dtype)
        return self.decode(z, incident_gev, layer_energies, fast=fast, threshold=threshold)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Showers (N, V) in MeV drawn for the incident and layer energies of the batch."""
        return self.sample(batch["energy"], batch["layer_energies"])

    @torch.no_grad()
    def compare_batch(self, batch: Batch, generator: torch.Generator | None = None):
        """Data showers and Flow II showers with the same E_inc and E_k (MeV), for monitoring."""
        layer_energies = batch["layer_energies"]
        generated = self.sample(batch["energy"], layer_energies, generator)
        return (
            {"voxels": batch["voxels"], "layer_energies": layer_energies},
            {"voxels": generated, "layer_energies": layer_energies},
        )


__all__ = ["standard_normal", "ConditionalFlowModule", "FlowI", "FlowII"]
