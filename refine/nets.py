"""Small building blocks shared by the refine modules."""
from __future__ import annotations

from torch import nn


def mlp(n_in: int, n_out: int, hidden: int, n_hidden: int, slope: float = 0.01) -> nn.Sequential:
    """MLP with ``n_hidden`` hidden layers of ``hidden`` units and LeakyReLU activations."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(slope)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class CouplingSubnet(nn.Module):
    """MLP usable as an nflows coupling ``transform_net`` (which is called as ``net(x, context)``)."""

    def __init__(self, n_in: int, n_out: int, hidden: int, n_hidden: int):
        super().__init__()
        self.net = mlp(n_in, n_out, hidden, n_hidden)

    def forward(self, x, context=None):
        return self.net(x)
