"""Fast in-memory batching of tensors (no per-sample collation)."""

from __future__ import annotations

import torch
from torch import Tensor


class TensorLoader:
    """Iterates over shuffled mini-batches of equally long tensors, reshuffling each epoch.

    Equivalent to ``DataLoader(TensorDataset(*tensors), batch_size, shuffle=True)`` but slices whole
    batches, which is much faster for small rows. Shuffling uses its own seeded generator.

    Positional tensors give tuple batches; named ones (``TensorLoader(x=..., label=..., batch_size=...)``)
    give dict batches with those keys, as :class:`caloflow.models.ShowerClassifier` reads them. Both
    draw the same order for the same seed.
    """

    def __init__(
        self,
        *tensors: Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        **named: Tensor,
    ):
        if tensors and named:
            raise ValueError("give the tensors either all positional or all by name")
        self.names = tuple(named) if named else None
        self.tensors = tuple(named.values()) if named else tensors
        if not self.tensors:
            raise ValueError("no tensors to batch")
        n = len(self.tensors[0])
        if any(len(t) != n for t in self.tensors):
            raise ValueError("all tensors must have the same length")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = tuple(t[idx] for t in self.tensors)
            yield dict(zip(self.names, batch)) if self.names else batch


__all__ = ["TensorLoader"]
