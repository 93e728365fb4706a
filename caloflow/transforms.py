"""Invertible preprocessing of CaloFlow (paper section 4; docs/physics.md).

Each flow's representation is one ``nn.Module`` owned by the model (``FlowI.preprocessing``,
``FlowII.preprocessing``): the model encodes the physical showers the DataModule serves, and the
same object undoes the encoding when the model samples, so a checkpoint alone is enough to
generate:

* :class:`FlowIPreprocessing`: layer energies <-> logit of the u-space of eq. (4.1), context
  eq. (4.4).
* :class:`FlowIIPreprocessing`: voxels <-> logit of the per-layer normalised voxels, context
  eqs. (4.4) and (4.5); its inverse is the paper's post-processing (section 4.3).

They are built from small invertible pieces (:class:`LogitTransform`, :class:`EnergyToU`,
:class:`LayerNormalization`, :func:`encode_incident_energy`, :func:`encode_layer_energies`).
Units: voxels and layer energies in MeV, incident energy in GeV. Arithmetic is carried out in
float64 and returned in the dtype of the input, so that round trips hold to 1e-6 relative and
generated layer sums equal the requested energies to float32 precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from caloflow.geometry import GEV, KEV, LAYER_SIZES, THRESHOLD_KEV

#: Logit offset of eq. (4.3): 0 and 1 map to -+13.82.
ALPHA = 1e-6


def _f64(x) -> Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0 (an empty layer has no fractions to speak of)."""
    return torch.where(
        den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num)
    )


class LogitTransform(nn.Module):
    """u in [0, 1] <-> logit(alpha + (1 - 2 alpha) u), eqs. (4.2)-(4.3). Inputs are clamped to [0, 1]."""

    def __init__(self, alpha: float = ALPHA):
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        super().__init__()
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"

    def forward(self, u: Tensor) -> Tensor:
        x = self.alpha + (1 - 2 * self.alpha) * _f64(u).clamp(0, 1)
        return (torch.log(x) - torch.log1p(-x)).to(torch.as_tensor(u).dtype)

    def inverse(self, y: Tensor) -> Tensor:
        x = torch.sigmoid(_f64(y))
        return ((x - self.alpha) / (1 - 2 * self.alpha)).clamp(0, 1).to(torch.as_tensor(y).dtype)


class EnergyToU(nn.Module):
    """Layer energies (E0, E1, E2) <-> u in [0, 1]^3 given the incident energy, eq. (4.1).

    u0 = E_hat / E_inc, u1 = E0 / E_hat, u2 = E1 / (E1 + E2). The inverse gives E_hat = u0 E_inc
    <= E_inc, so energy conservation holds by construction. Energies in MeV, E_inc in GeV.
    """

    def forward(self, layer_energies: Tensor, incident_gev: Tensor) -> Tensor:
        e = _f64(layer_energies)
        e_inc = _f64(incident_gev).reshape(-1) * GEV
        e_hat = e.sum(1)
        u = torch.stack(
            [e_hat / e_inc, _safe_divide(e[:, 0], e_hat), _safe_divide(e[:, 1], e[:, 1] + e[:, 2])],
            dim=1,
        )
        return u.clamp(0, 1).to(torch.as_tensor(layer_energies).dtype)

    def inverse(self, u: Tensor, incident_gev: Tensor) -> Tensor:
        u64 = _f64(u).clamp(0, 1)
        e_hat = u64[:, 0] * _f64(incident_gev).reshape(-1) * GEV
        e0 = u64[:, 1] * e_hat
        e1 = u64[:, 2] * (e_hat - e0)
        e2 = e_hat - e0 - e1
        return torch.stack([e0, e1, e2], dim=1).to(torch.as_tensor(u).dtype)


class LayerNormalization(nn.Module):
    """Voxels (N, 504) <-> per-layer fractions that sum to one in each layer (paper section 4.2, step 2).

    ``inverse`` renormalises each layer of a (generated) shape to sum exactly 1 and scales it by
    the layer energies (section 4.3).
    """

    def __init__(self, layer_sizes: Sequence[int] = LAYER_SIZES):
        super().__init__()
        self.layer_sizes = tuple(int(s) for s in layer_sizes)

    def extra_repr(self) -> str:
        return f"layer_sizes={self.layer_sizes}"

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:
        return torch.split(x, self.layer_sizes, dim=1)

    def layer_sums(self, voxels: Tensor) -> Tensor:
        """(N, 504) -> (N, 3) sum of each layer."""
        return torch.stack([part.sum(1) for part in self._split(_f64(voxels))], dim=1).to(
            torch.as_tensor(voxels).dtype
        )

    def forward(self, voxels: Tensor) -> Tensor:
        parts = self._split(_f64(voxels))
        out = torch.cat([_safe_divide(p, p.sum(1, keepdim=True)) for p in parts], dim=1)
        return out.to(torch.as_tensor(voxels).dtype)

    def inverse(self, fractions: Tensor, layer_energies: Tensor) -> Tensor:
        parts = self._split(_f64(fractions))
        e = _f64(layer_energies)
        out = torch.cat(
            [
                _safe_divide(p, p.sum(1, keepdim=True)) * e[:, k : k + 1]
                for k, p in enumerate(parts)
            ],
            dim=1,
        )
        return out.to(torch.as_tensor(fractions).dtype)


def encode_incident_energy(incident_gev: Tensor) -> Tensor:
    """log10(E_inc / 10 GeV), in [-1, 1] for 1-100 GeV: eq. (4.4). Shape (N,) -> (N, 1)."""
    e = torch.as_tensor(incident_gev)
    return torch.log10(_f64(e).reshape(-1, 1) / 10.0).to(e.dtype)


def decode_incident_energy(encoded: Tensor) -> Tensor:
    """Inverse of eq. (4.4): (N, 1) -> (N,) incident energy in GeV."""
    return (10.0 * torch.pow(10.0, _f64(encoded).reshape(-1))).to(torch.as_tensor(encoded).dtype)


def encode_layer_energies(layer_energies: Tensor) -> Tensor:
    """log10((E_i + 1 keV) / 100 GeV) + 2, in [-6, 3]: eq. (4.5). E_i in MeV, (N, 3) -> (N, 3)."""
    e = torch.as_tensor(layer_energies)
    return (torch.log10((_f64(e) + KEV) / (100 * GEV)) + 2).to(e.dtype)


def decode_layer_energies(encoded: Tensor) -> Tensor:
    """Inverse of eq. (4.5): layer energies in MeV."""
    return (torch.pow(10.0, _f64(encoded) - 2) * (100 * GEV) - KEV).to(
        torch.as_tensor(encoded).dtype
    )


class FlowIPreprocessing(nn.Module):
    """Flow I's representation: x = logit(u(E0, E1, E2 | E_inc)) (3), context = eq. (4.4) (1)."""

    features = 3
    context_features = 1

    def __init__(self, alpha: float = ALPHA):
        super().__init__()
        self.logit = LogitTransform(alpha)
        self.to_u = EnergyToU()

    def context(self, incident_gev: Tensor) -> Tensor:
        return encode_incident_energy(incident_gev)

    def forward(self, layer_energies: Tensor, incident_gev: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3) MeV, (N,) GeV -> (x (N, 3), context (N, 1))."""
        return self.logit.forward(self.to_u.forward(layer_energies, incident_gev)), self.context(
            incident_gev
        )

    def inverse(self, x: Tensor, incident_gev: Tensor) -> Tensor:
        """Flow I output -> layer energies (N, 3) in MeV with E0 + E1 + E2 <= E_inc."""
        return self.to_u.inverse(self.logit.inverse(x), incident_gev)


class FlowIIPreprocessing(nn.Module):
    """Flow II's representation: x = logit(per-layer normalised voxels) (504), context (4).

    The context is [eq. (4.4) of E_inc, eq. (4.5) of E_0, E_1, E_2]. ``inverse`` is the paper's
    post-processing: inverse logit, renormalise each layer, scale by E_i, zero voxels below the
    threshold (10 keV).
    """

    context_features = 4

    def __init__(
        self,
        layer_sizes: Sequence[int] = LAYER_SIZES,
        alpha: float = ALPHA,
        threshold_kev: float = THRESHOLD_KEV,
    ):
        super().__init__()
        self.normalization = LayerNormalization(layer_sizes)
        self.logit = LogitTransform(alpha)
        self.threshold = threshold_kev * KEV
        self.features = sum(self.normalization.layer_sizes)

    def context(self, incident_gev: Tensor, layer_energies: Tensor) -> Tensor:
        return torch.cat(
            [encode_incident_energy(incident_gev), encode_layer_energies(layer_energies)], dim=1
        )

    def forward(self, voxels: Tensor, incident_gev: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 504) MeV, (N,) GeV -> (x (N, 504), context (N, 4)); E_i are the layer sums of ``voxels``."""
        layer_energies = self.normalization.layer_sums(voxels)
        x = self.logit.forward(self.normalization.forward(voxels))
        return x, self.context(incident_gev, layer_energies).to(x.dtype)

    def inverse(self, x: Tensor, layer_energies: Tensor, threshold: bool = True) -> Tensor:
        """Flow II output -> voxels (N, 504) in MeV whose layer sums are ``layer_energies`` (before the cut)."""
        voxels = self.normalization.inverse(self.logit.inverse(x), layer_energies)
        if threshold:
            voxels = torch.where(voxels >= self.threshold, voxels, torch.zeros_like(voxels))
        return voxels


__all__ = [
    "ALPHA",
    "LogitTransform",
    "EnergyToU",
    "LayerNormalization",
    "encode_incident_energy",
    "decode_incident_energy",
    "encode_layer_energies",
    "decode_layer_energies",
    "FlowIPreprocessing",
    "FlowIIPreprocessing",
]
