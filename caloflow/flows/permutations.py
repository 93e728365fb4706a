"""Permutations between MADE blocks that keep every voxel inside its calorimeter layer.

CaloFlow paper section 4.2: the variables of each calorimeter layer stay in that layer's positions
of the flat voxel vector "throughout the permutation/inversion". The blocks are the layer sizes of
the detector (``geometry.layer_sizes``, :mod:`caloflow.geometry`), so a permutation maps every
layer's index range onto itself. Both classes are plain nflows ``Permutation`` transforms (the index
is a buffer, so it is saved with the checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nflows.transforms import Permutation


def _offsets(sizes: Sequence[int]) -> list[int]:
    out, start = [], 0
    for size in sizes:
        out.append(start)
        start += size
    return out


class LayerwiseReversal(Permutation):
    """Reverse the order of the features inside each block of ``sizes`` (the layer sizes)."""

    def __init__(self, sizes: Sequence[int]):
        index = torch.cat(
            [torch.arange(o + n - 1, o - 1, -1) for o, n in zip(_offsets(sizes), sizes)]
        )
        super().__init__(index)


class LayerwiseRandomPermutation(Permutation):
    """A fixed random permutation inside each block of ``sizes``, drawn from ``seed``."""

    def __init__(self, sizes: Sequence[int], seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        index = torch.cat(
            [o + torch.randperm(n, generator=g) for o, n in zip(_offsets(sizes), sizes)]
        )
        super().__init__(index)


class SeededRandomPermutation(Permutation):
    """A fixed random permutation of all ``features``, drawn from ``seed`` (Flow I)."""

    def __init__(self, features: int, seed: int = 0):
        super().__init__(torch.randperm(features, generator=torch.Generator().manual_seed(seed)))


__all__ = ["LayerwiseReversal", "LayerwiseRandomPermutation", "SeededRandomPermutation"]
