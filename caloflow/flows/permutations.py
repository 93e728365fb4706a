"""Permutations between MADE blocks that keep every voxel inside its calorimeter layer.

CaloFlow paper section 4.2: "variables of calorimeter layer 0 stay in the first 288 positions, [...]
layer 1 in positions 289 to 432 and [...] layer 2 in the last 72 positions throughout the
permutation/inversion". Both classes are plain nflows ``Permutation`` transforms (the index is a
buffer, so it is saved with the checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nflows.transforms import Permutation

from caloflow.geometry import LAYER_SIZES


def _offsets(sizes: Sequence[int]) -> list[int]:
    out, start = [], 0
    for size in sizes:
        out.append(start)
        start += size
    return out


class LayerwiseReversal(Permutation):
    """Reverse the order of the features inside each block of ``sizes`` (default: the three layers)."""

    def __init__(self, sizes: Sequence[int] = LAYER_SIZES):
        index = torch.cat(
            [torch.arange(o + n - 1, o - 1, -1) for o, n in zip(_offsets(sizes), sizes)]
        )
        super().__init__(index)


class LayerwiseRandomPermutation(Permutation):
    """A fixed random permutation inside each block of ``sizes``, drawn from ``seed``."""

    def __init__(self, sizes: Sequence[int] = LAYER_SIZES, seed: int = 0):
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
