"""Building blocks of the CaloGAN networks (Paganini, de Oliveira, Nachman, arXiv:1712.10321).

* :class:`LocallyConnected2d`: a convolution whose weights are *not* shared between output
  positions (Keras ``LocallyConnected2D``), written as ``unfold`` + one batched ``einsum``.
* :class:`MinibatchDiscrimination`: Salimans et al. (arXiv:1606.03498) features with the L1
  distance, ``exp(-d)`` summed over the batch and a ``tanh``, as in CaloGAN.
* :class:`InpaintingAttention`: the layer-to-layer "in-painting" attention of CaloGAN: a
  per-pixel convex combination of a layer's own image and the resized previous layer.
* :func:`glorot_uniform_`, :func:`he_uniform_`, :func:`glorot_normal_`: Keras initialisers with
  Keras' fan convention, so that the port starts from the published initial scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_Pair = int | tuple[int, int]


def _pair(x: _Pair) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def glorot_uniform_(weight: Tensor, fan_in: int, fan_out: int) -> Tensor:
    """Keras ``glorot_uniform``: U(-l, l), l = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-limit, limit)


def he_uniform_(weight: Tensor, fan_in: int, fan_out: int) -> Tensor:
    """Keras ``he_uniform``: U(-l, l), l = sqrt(6 / fan_in)."""
    limit = math.sqrt(6.0 / fan_in)
    with torch.no_grad():
        return weight.uniform_(-limit, limit)


def glorot_normal_(weight: Tensor, fan_in: int, fan_out: int) -> Tensor:
    """Keras 2.0 ``glorot_normal``: truncated normal (2 sigma), sigma = sqrt(2 / (fan_in + fan_out))."""
    std = math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


INITIALISERS = {
    "glorot_uniform": glorot_uniform_,
    "he_uniform": he_uniform_,
    "glorot_normal": glorot_normal_,
}


class LocallyConnected2d(nn.Module):
    """2D locally connected layer: every output position has its own kernel and bias.

    ``out[b, f, i, j] = bias[f, i, j] + sum_{c, u, v} x_pad[b, c, i*sh + u, j*sw + v] * w[(i, j), (c, u, v), f]``
    with ``x_pad`` the input zero-padded by ``padding`` on each side (Keras ``ZeroPadding2D``
    followed by a 'valid' ``LocallyConnected2D``).

    Args:
        in_channels, out_channels: channels in and out.
        input_size: (rows, cols) of the input before padding; the weights depend on it.
        kernel_size, stride, padding: as for ``nn.Conv2d`` (padding is zeros).
        bias: learn a bias per output position and channel.
        init: Keras initialiser of the kernel (fans as for a convolution with the same kernel).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: tuple[int, int],
        kernel_size: _Pair,
        stride: _Pair = 1,
        padding: _Pair = 0,
        bias: bool = True,
        init: str = "glorot_uniform",
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.input_size = _pair(input_size)
        self.kernel_size, self.stride, self.padding = (
            _pair(kernel_size),
            _pair(stride),
            _pair(padding),
        )
        (h, w), (kh, kw), (sh, sw), (ph, pw) = (
            self.input_size,
            self.kernel_size,
            self.stride,
            self.padding,
        )
        self.output_size = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        if min(self.output_size) < 1:
            raise ValueError(
                f"kernel {self.kernel_size} does not fit the padded input {(h + 2 * ph, w + 2 * pw)}"
            )
        n_pos = self.output_size[0] * self.output_size[1]
        patch = self.in_channels * kh * kw
        # (position, patch, filter): the patch axis is ordered (channel, u, v) like F.unfold
        self.weight = nn.Parameter(torch.empty(n_pos, patch, self.out_channels))
        self.bias = (
            nn.Parameter(torch.zeros(self.out_channels, *self.output_size)) if bias else None
        )
        INITIALISERS[init](self.weight, patch, self.out_channels * kh * kw)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, rows, cols) -> (B, out_channels, *output_size)."""
        if tuple(x.shape[-2:]) != self.input_size or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}"
            )
        cols = F.unfold(
            x, self.kernel_size, padding=self.padding, stride=self.stride
        )  # (B, patch, positions)
        out = torch.einsum("bkl,lkf->bfl", cols, self.weight).reshape(
            x.shape[0], self.out_channels, *self.output_size
        )
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"output_size={self.output_size}, bias={self.bias is not None}"
        )


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination features (Salimans et al. 2016) as used by CaloGAN.

    Each sample is projected to ``n_kernels`` vectors of size ``kernel_dim``,
    ``M[b] = (W x_b + c)``; the output is
    ``o[b, k] = tanh(sum_{b'} exp(-||M[b, k] - M[b', k]||_1))`` (the sum includes ``b' = b``).
    The features of a sample depend on the rest of the batch, not on its order.
    """

    def __init__(self, in_features: int, n_kernels: int = 10, kernel_dim: int = 10) -> None:
        super().__init__()
        self.n_kernels, self.kernel_dim = int(n_kernels), int(kernel_dim)
        self.projection = nn.Linear(in_features, self.n_kernels * self.kernel_dim)
        glorot_uniform_(self.projection.weight, in_features, self.n_kernels * self.kernel_dim)
        nn.init.zeros_(self.projection.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_features) -> (B, n_kernels)."""
        m = self.projection(x).reshape(-1, self.n_kernels, self.kernel_dim)
        distance = (m.unsqueeze(1) - m.unsqueeze(0)).abs().sum(-1)  # (B, B, n_kernels)
        return torch.tanh(torch.exp(-distance).sum(1))


class InpaintingAttention(nn.Module):
    """CaloGAN's layer-to-layer attention (docs/physics.md section 8, "in-painting").

    A locally connected 3x3 layer (zero-padded by 1) reads ``[own, carry]`` and gives two logits
    per pixel; their softmax ``(a, 1 - a)`` mixes the images: ``out = a * own + (1 - a) * carry``.
    The carry-over logit starts with bias ``carry_bias`` (-10), so that at initialisation a layer
    keeps its own image and learns how much of the previous layer to paint in.
    """

    def __init__(self, shape: tuple[int, int], carry_bias: float = -10.0) -> None:
        super().__init__()
        self.mixer = LocallyConnected2d(2, 2, shape, kernel_size=3, padding=1)
        with torch.no_grad():
            self.mixer.bias[1].fill_(carry_bias)

    def weights(self, own: Tensor, carry: Tensor) -> Tensor:
        """Per-pixel mixing weights (B, 2, rows, cols): channel 0 for ``own``, 1 for ``carry``."""
        return torch.softmax(self.mixer(torch.cat([own, carry], dim=1)), dim=1)

    def forward(self, own: Tensor, carry: Tensor) -> Tensor:
        """own, carry: (B, 1, rows, cols) -> (B, 1, rows, cols)."""
        return (torch.cat([own, carry], dim=1) * self.weights(own, carry)).sum(1, keepdim=True)


__all__ = [
    "glorot_uniform_",
    "he_uniform_",
    "glorot_normal_",
    "INITIALISERS",
    "LocallyConnected2d",
    "MinibatchDiscrimination",
    "InpaintingAttention",
]
