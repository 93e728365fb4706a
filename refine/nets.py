"""The coupling subnet of the Real-NVP baseline, on caloflow's one MLP builder (:func:`caloflow.nn.mlp`)."""

from __future__ import annotations

from torch import nn

from caloflow.nn import mlp


class CouplingSubnet(nn.Module):
    """MLP usable as an nflows coupling ``transform_net`` (which is called as ``net(x, context)``)."""

    def __init__(self, n_in: int, n_out: int, hidden: int, n_hidden: int):
        super().__init__()
        self.net = mlp(n_in, n_out, hidden, n_hidden)

    def forward(self, x, context=None):
        return self.net(x)


__all__ = ["CouplingSubnet"]
