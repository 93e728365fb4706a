"""Invertible preprocessing of CaloFlow (paper section 4; docs/physics.md).

Each flow's representation is one ``nn.Module`` owned by the model (``FlowI.preprocessing``,
``FlowII.preprocessing``): the model encodes the physical showers the DataModule serves, and the
same object undoes the encoding when the model samples, so a checkpoint alone is enough to
generate:

* :class:`FlowIPreprocessing`: layer energies <-> logit of the u-space of eq. (4.1) (generalised
  to any number of layers), context eq. (4.4).
* :class:`FlowIIPreprocessing`: voxels <-> logit of the per-layer normalised voxels, context
  eqs. (4.4) and (4.5); its inverse is the paper's post-processing (section 4.3).

They are built from small invertible pieces (:class:`LogitTransform`, :class:`EnergyToU`,
:class:`LayerNormalization`, :func:`encode_incident_energy`, :func:`encode_layer_energies`).
The detector enters only through its layer sizes (:attr:`caloflow.geometry.Geometry.layer_sizes`,
given by the model that owns the preprocessing). Units: voxels and layer energies in MeV, incident
energy in GeV. Arithmetic is carried out in
float64 and returned in the dtype of the input, so that round trips hold to 1e-6 relative and
generated layer sums equal the requested energies to float32 precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from caloflow.geometry import GEV, KEV, THRESHOLD_KEV

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
    """Layer energies (E_0, ..., E_{L-1}) <-> u in [0, 1]^L given the incident energy, eq. (4.1).

    u_0 = E_hat / E_inc and u_k = E_{k-1} / (E_{k-1} + ... + E_{L-1}) for k = 1 .. L-1: the share of
    each layer in the energy left for it and the layers behind it. For the three CaloGAN layers this
    is the paper's u0 = E_hat / E_inc, u1 = E0 / E_hat, u2 = E1 / (E1 + E2); for L layers it is the
    generalisation of "CaloFlow for CaloChallenge dataset 1" (arXiv:2210.14245). The inverse gives
    E_hat = u_0 E_inc <= E_inc and E_{k-1} = u_k (E_hat - E_0 - ... - E_{k-2}), the last layer the
    rest, so energy conservation holds by construction. Energies in MeV, E_inc in GeV; the number
    of layers L is the width of the input.

    ``scale`` is the constant c of u_0 = E_hat / (c E_inc): 1 for CaloGAN (paper eq. 4.1); the
    dataset-1 code of arXiv:2210.14245 uses c = 2.42 (photons) and 6.93 (pions), so that every
    deposited sum of its training data has u_0 < 1. Generated sums obey E_hat <= c E_inc.
    """

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"energy_scale must be > 0, got {scale}")
        super().__init__()
        self.scale = float(scale)

    def extra_repr(self) -> str:
        return "" if self.scale == 1.0 else f"scale={self.scale:g}"

    def _full_scale(self, incident_gev: Tensor) -> Tensor:
        # c * E_inc in MeV; with c = 1 exactly the paper's E_inc (CaloGAN numbers do not move)
        e_inc = _f64(incident_gev).reshape(-1) * GEV
        return e_inc if self.scale == 1.0 else e_inc * self.scale

    def forward(self, layer_energies: Tensor, incident_gev: Tensor) -> Tensor:
        e = _f64(layer_energies)
        e_inc = self._full_scale(incident_gev)
        e_hat = e.sum(1)
        # energy in layers k..L-1, summed from the back: for three layers exactly the float
        # operations of the paper's formula (E1 + E2), so CaloGAN numbers do not move
        behind = [e[:, -1]]
        for k in range(e.shape[1] - 2, 0, -1):
            behind.insert(0, e[:, k] + behind[0])
        rest = ([e_hat] + behind[:-1])[: e.shape[1] - 1]  # the denominators of u_1 .. u_{L-1}
        u = torch.stack(
            [e_hat / e_inc] + [_safe_divide(e[:, k], r) for k, r in enumerate(rest)], dim=1
        )
        return u.clamp(0, 1).to(torch.as_tensor(layer_energies).dtype)

    def inverse(self, u: Tensor, incident_gev: Tensor) -> Tensor:
        u64 = _f64(u).clamp(0, 1)
        remaining = u64[:, 0] * self._full_scale(incident_gev)
        energies = []
        for k in range(1, u64.shape[1]):
            energies.append(u64[:, k] * remaining)
            remaining = remaining - energies[-1]
        return torch.stack(energies + [remaining], dim=1).to(torch.as_tensor(u).dtype)


class LayerNormalization(nn.Module):
    """Voxels (N, V) <-> per-layer fractions that sum to one in each layer (paper section 4.2, step 2).

    ``layer_sizes`` are the voxels per layer in the flat order (V their sum), e.g.
    ``geometry.layer_sizes``. ``inverse`` renormalises each layer of a (generated) shape to sum
    exactly 1 and scales it by the layer energies (section 4.3).
    """

    def __init__(self, layer_sizes: Sequence[int]):
        super().__init__()
        self.layer_sizes = tuple(int(s) for s in layer_sizes)

    def extra_repr(self) -> str:
        return f"layer_sizes={self.layer_sizes}"

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:
        return torch.split(x, self.layer_sizes, dim=1)

    def layer_sums(self, voxels: Tensor) -> Tensor:
        """(N, V) -> (N, L) sum of each layer."""
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
    """log10((E_i + 1 keV) / 100 GeV) + 2, in [-6, 3]: eq. (4.5). E_i in MeV, (N, L) -> (N, L)."""
    e = torch.as_tensor(layer_energies)
    return (torch.log10((_f64(e) + KEV) / (100 * GEV)) + 2).to(e.dtype)


def decode_layer_energies(encoded: Tensor) -> Tensor:
    """Inverse of eq. (4.5): layer energies in MeV."""
    return (torch.pow(10.0, _f64(encoded) - 2) * (100 * GEV) - KEV).to(
        torch.as_tensor(encoded).dtype
    )


class FlowIPreprocessing(nn.Module):
    """Flow I's representation: x = logit(u(E_0..E_{L-1} | E_inc)) (L), context = eq. (4.4) (1).

    ``n_layers`` is L, the number of layer energies (``geometry.n_layers``); ``energy_scale`` the c
    of u_0 = E_hat / (c E_inc) (:class:`EnergyToU`).
    """

    context_features = 1

    def __init__(self, n_layers: int, alpha: float = ALPHA, energy_scale: float = 1.0):
        if int(n_layers) < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        super().__init__()
        self.features = int(n_layers)
        self.logit = LogitTransform(alpha)
        self.to_u = EnergyToU(energy_scale)

    def extra_repr(self) -> str:
        return f"n_layers={self.features}"

    def context(self, incident_gev: Tensor) -> Tensor:
        return encode_incident_energy(incident_gev)

    def forward(self, layer_energies: Tensor, incident_gev: Tensor) -> tuple[Tensor, Tensor]:
        """(N, L) MeV, (N,) GeV -> (x (N, L), context (N, 1))."""
        return self.logit.forward(self.to_u.forward(layer_energies, incident_gev)), self.context(
            incident_gev
        )

    def inverse(self, x: Tensor, incident_gev: Tensor) -> Tensor:
        """Flow I output -> layer energies (N, L) in MeV with E_0 + ... + E_{L-1} <= c E_inc."""
        return self.to_u.inverse(self.logit.inverse(x), incident_gev)


class FlowIIPreprocessing(nn.Module):
    """Flow II's representation: x = logit(per-layer normalised voxels) (V), context (1 + L).

    ``layer_sizes`` are the voxels per layer (``geometry.layer_sizes``; V their sum, L their
    number). The context is [eq. (4.4) of E_inc, eq. (4.5) of E_0 .. E_{L-1}]. ``inverse`` is the
    paper's post-processing: inverse logit, renormalise each layer, scale by E_i, zero voxels below
    the threshold (10 keV).
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        alpha: float = ALPHA,
        threshold_kev: float = THRESHOLD_KEV,
    ):
        super().__init__()
        self.normalization = LayerNormalization(layer_sizes)
        self.logit = LogitTransform(alpha)
        self.threshold = threshold_kev * KEV
        self.features = sum(self.normalization.layer_sizes)
        self.context_features = 1 + len(self.normalization.layer_sizes)

    def context(self, incident_gev: Tensor, layer_energies: Tensor) -> Tensor:
        return torch.cat(
            [encode_incident_energy(incident_gev), encode_layer_energies(layer_energies)], dim=1
        )

    def forward(self, voxels: Tensor, incident_gev: Tensor) -> tuple[Tensor, Tensor]:
        """(N, V) MeV, (N,) GeV -> (x (N, V), context (N, 1 + L)); E_i are the layer sums of ``voxels``."""
        layer_energies = self.normalization.layer_sums(voxels)
        x = self.logit.forward(self.normalization.forward(voxels))
        return x, self.context(incident_gev, layer_energies).to(x.dtype)

    def inverse(self, x: Tensor, layer_energies: Tensor, threshold: bool = True) -> Tensor:
        """Flow II output -> voxels (N, V) in MeV whose layer sums are ``layer_energies`` (before the cut)."""
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
