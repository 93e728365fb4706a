"""Small pieces the refine networks share: the coupling subnet of the Real-NVP baseline (on
caloflow's one MLP builder, :func:`caloflow.nn.mlp`) and the refiners' context check."""

from __future__ import annotations

from torch import Tensor, nn

from caloflow.nn import mlp


class CouplingSubnet(nn.Module):
    """MLP usable as an nflows coupling ``transform_net`` (which is called as ``net(x, context)``)."""

    def __init__(self, n_in: int, n_out: int, hidden: int, n_hidden: int):
        super().__init__()
        self.net = mlp(n_in, n_out, hidden, n_hidden)

    def forward(self, x, context=None):
        return self.net(x)


def checked_context(x: Tensor, context: Tensor | None, context_dim: int) -> Tensor | None:
    """``context`` after checking it fits a refiner with ``context_dim`` condition features and the
    batch ``x``: None for an unconditional refiner (``context_dim`` 0), else an (N, context_dim) tensor.

    Raises:
        ValueError: a context for an unconditional refiner, or one of the wrong shape.
    """
    if context_dim == 0:
        if context is not None:
            raise ValueError("this refiner has no context (context_dim = 0)")
        return None
    if context is None or context.shape != (x.shape[0], context_dim):
        shape = None if context is None else tuple(context.shape)
        raise ValueError(f"expected a context of shape ({x.shape[0]}, {context_dim}), got {shape}")
    return context


__all__ = ["CouplingSubnet", "checked_context"]
