"""Network building blocks shared by every model of the project."""

from __future__ import annotations

from torch import nn


def mlp(n_in: int, n_out: int, hidden: int, n_hidden: int, slope: float = 0.01) -> nn.Sequential:
    """``n_hidden`` fully connected layers of ``hidden`` units with LeakyReLU(``slope``), then a linear output.

    The classifiers of the CaloFlow paper (appendix A: 3 x 512, slope 0.01) and of LaSeR
    (8 x 96), and the LaSeR refiner and discriminator, are all this network.
    """
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(slope)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the figure the papers' tables and Keras' ``count_params`` report)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["mlp", "count_parameters"]
