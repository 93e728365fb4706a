"""The nflows stacks of CaloFlow (paper table 2, section 4; docs/physics.md section 6).

Both flows are MADE blocks with rational-quadratic spline transforms (linear tails, tail bound
14 because logit(1e-6) = -13.82, 8 bins), ReLU, no batch normalisation, plain (non-residual)
hidden layers, and a standard-normal base. The spline's minimal bin width, bin height and
derivative default to nflows' 1e-3; the published reference implementation of CaloFlow uses 1e-6
for all three (:data:`REFERENCE_SPLINE`, set by the paper configs). Flow I: 6 blocks on the u-space
features (one per layer), random permutations between blocks. Flow II: 8 blocks on the voxels,
alternately a layer-wise reversal and a layer-wise random permutation between blocks. The sizes
follow from the detector geometry (:func:`caloflow.geometry.get_geometry`): the number of layers
L, the voxels per layer and their sum V.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import (
    CompositeTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Transform,
)
from nflows.transforms.splines.rational_quadratic import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
)

from caloflow.flows.permutations import (
    LayerwiseRandomPermutation,
    LayerwiseReversal,
    SeededRandomPermutation,
)
from caloflow.geometry import Geometry, get_geometry

#: RQS settings shared by both flows: the logit of [alpha, 1-alpha] lies inside +-13.82.
TAIL_BOUND = 14.0
#: Minimal bin width, bin height and derivative of the splines in the published CaloFlow code
#: (nflows' defaults, used when nothing is passed, are 1e-3).
REFERENCE_SPLINE = {"min_bin_width": 1e-6, "min_bin_height": 1e-6, "min_derivative": 1e-6}


def made_rqs_block(
    features: int,
    context_features: int,
    hidden_features: int,
    num_blocks: int,
    num_bins: int = 8,
    dropout: float = 0.0,
    tail_bound: float = TAIL_BOUND,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> MaskedPiecewiseRationalQuadraticAutoregressiveTransform:
    """One MADE + RQS block as in the paper (fig. 1): plain masked layers, context added to the first."""
    if min(min_bin_width, min_bin_height, min_derivative) <= 0:
        raise ValueError("min_bin_width, min_bin_height and min_derivative must be positive")
    if max(min_bin_width, min_bin_height) * num_bins >= 1:
        raise ValueError(
            f"min_bin_width and min_bin_height must be below 1 / num_bins = {1 / num_bins:g}"
        )
    return MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        features=features,
        hidden_features=hidden_features,
        context_features=context_features,
        num_bins=num_bins,
        tails="linear",
        tail_bound=tail_bound,
        num_blocks=num_blocks,
        use_residual_blocks=False,
        random_mask=False,
        dropout_probability=dropout,
        use_batch_norm=False,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )


def made_stack(
    features: int,
    context_features: int,
    n_blocks: int,
    hidden_features: int,
    num_blocks: int,
    num_bins: int,
    dropout: float,
    permutation: Callable[[int], Transform],
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Flow:
    """``n_blocks`` MADE-RQS blocks with ``permutation(i)`` after block ``i`` (not after the last)."""
    transforms: list[Transform] = []
    for i in range(n_blocks):
        transforms.append(
            made_rqs_block(
                features,
                context_features,
                hidden_features,
                num_blocks,
                num_bins,
                dropout,
                min_bin_width=min_bin_width,
                min_bin_height=min_bin_height,
                min_derivative=min_derivative,
            )
        )
        if i < n_blocks - 1:
            transforms.append(permutation(i))
    return Flow(CompositeTransform(transforms), StandardNormal([features]))


def build_flow1(
    geometry: str | Path | dict | Geometry = "calogan",
    context_features: int = 1,
    n_blocks: int = 6,
    hidden_features: int = 64,
    num_blocks: int = 2,
    num_bins: int = 8,
    dropout: float = 0.0,
    permutation_seed: int = 0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Flow:
    """Flow I: p(u_logit | log10(E_inc / 10 GeV)) on the L u-space features of ``geometry`` (a
    built-in name, a binning XML, a dict or a Geometry). Paper size (CaloGAN): 79,134 parameters."""
    features = get_geometry(geometry).n_layers
    return made_stack(
        features,
        context_features,
        n_blocks,
        hidden_features,
        num_blocks,
        num_bins,
        dropout,
        lambda i: SeededRandomPermutation(features, seed=permutation_seed + i),
        min_bin_width,
        min_bin_height,
        min_derivative,
    )


def build_flow2(
    geometry: str | Path | dict | Geometry = "calogan",
    context_features: int | None = None,
    n_blocks: int = 8,
    hidden_features: int = 378,
    num_blocks: int = 1,
    num_bins: int = 8,
    dropout: float = 0.05,
    permutation_seed: int = 0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Flow:
    """Flow II: p(logit of layer-normalised voxels | E_inc, E_0 .. E_{L-1}) on the V voxels of ``geometry``
    (a built-in name, a binning XML, a dict or a Geometry), with permutations inside each layer.
    ``context_features`` defaults to 1 + L. Paper size (CaloGAN): 37,835,280 parameters."""
    layer_sizes = get_geometry(geometry).layer_sizes
    if context_features is None:
        context_features = 1 + len(layer_sizes)

    def permutation(i: int) -> Transform:
        if i % 2 == 0:
            return LayerwiseReversal(layer_sizes)
        return LayerwiseRandomPermutation(layer_sizes, seed=permutation_seed + i)

    return made_stack(
        sum(layer_sizes),
        context_features,
        n_blocks,
        hidden_features,
        num_blocks,
        num_bins,
        dropout,
        permutation,
        min_bin_width,
        min_bin_height,
        min_derivative,
    )


__all__ = [
    "TAIL_BOUND",
    "REFERENCE_SPLINE",
    "made_rqs_block",
    "made_stack",
    "build_flow1",
    "build_flow2",
]
