"""Exact, fast inverse of nflows MADE flows (sampling at about the cost of one ``log_prob``).

nflows inverts a masked autoregressive transform by running the whole MADE once per feature:
one full network pass per voxel and block for Flow II (docs/physics.md section 6; the paper's table 4 reports
36 ms per shower on a GPU). The inverse needs far less work. In a MADE (Germain et al. 2015) built
by nflows, every hidden unit carries a degree ``d`` and depends only on the inputs ``1..d``; the
spline parameters of feature ``i`` depend only on hidden units of degree ``< i``. So once the
first ``k`` features of the inverse are known, every hidden unit of degree ``<= k`` can be
computed *once* and stored, and every feature whose parameters need nothing beyond those units
can be inverted together. For Flow II (hidden 378 < V features, the voxels) the hidden degrees
stop at 378: features 1..378 are inverted one after another, and features 379..V all at once.

Each hidden unit and each network output is computed exactly once, from the trained weights and
masks of the modules themselves, so the result equals ``transform.inverse(z, context)[0]`` up to
floating-point summation order; no retraining, no approximation. The work per feature group is
a few batched tensor operations, with a Python loop over groups only (not over samples).

Supported blocks (anything else raises, or with ``fallback=True`` uses its own inverse with a
warning):

* ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform`` (tails ``"linear"`` or ``None``);
* ``MaskedAffineAutoregressiveTransform``;
* every ``nflows.transforms.Permutation`` (``ReversePermutation``, ``RandomPermutation`` and
  subclasses such as :mod:`caloflow.flows.permutations`);
* nested ``CompositeTransform``.

The MADE may have any number of blocks, plain (``use_residual_blocks=False``, as in CaloFlow) or
residual, random or sequential masks, a context or none, and any elementwise activation. Batch
normalisation is not supported. The network is evaluated as in eval mode (dropout off).

By default the inverse runs without autograd. ``fast_inverse(..., differentiable=True)`` keeps the
graph, so that gradients w.r.t. the latent point and the context flow through it (LaSeR's HMC in
latent space, :mod:`refine.showers`); it writes no buffer in place and costs a little more.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Permutation,
    Transform,
)
from nflows.transforms.autoregressive import AutoregressiveTransform
from nflows.transforms.base import InputOutsideDomain
from nflows.transforms.made import MADE, MaskedFeedforwardBlock, MaskedResidualBlock
from torch import Tensor
from torch.nn import functional as F

__all__ = ["fast_inverse", "fast_sample"]

_RQS = MaskedPiecewiseRationalQuadraticAutoregressiveTransform
_AFFINE = MaskedAffineAutoregressiveTransform

#: Activations that act elementwise, so that a hidden unit can be evaluated on its own.
_ELEMENTWISE = {
    F.relu,
    torch.relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.leaky_relu,
    F.softplus,
    F.tanh,
    torch.tanh,
    torch.sigmoid,
    F.sigmoid,
}


# --------------------------------------------------------------------------------------------
# Element-wise inverses (same formulas, constants and clamps as nflows 0.14)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RQSSpec:
    num_bins: int
    linear_tails: bool
    tail_bound: float
    min_bin_width: float
    min_bin_height: float
    min_derivative: float
    logit_scale: (
        float | None
    )  # nflows divides width/height logits by sqrt(net.hidden_features) if set

    @property
    def tail_constant(self) -> float:
        """Padded derivative logit: softplus of it plus min_derivative is 1 (nflows' linear tails)."""
        return float(np.log(np.exp(1 - self.min_derivative) - 1))

    @property
    def params_per_feature(self) -> int:
        return 3 * self.num_bins - 1 if self.linear_tails else 3 * self.num_bins + 1


@dataclass
class _RQSConstants:
    """Per-call tensors of the spline (on the device and in the dtype of the samples)."""

    min_size: Tensor  # (2, 1): minimal bin width, height
    free_size: Tensor  # (2, 1): 1 - num_bins * minimal size
    offsets: Tensor  # (6,): positions of x_k, x_k+1, y_k, y_k+1, d_k, d_k+1 in the gather table

    @classmethod
    def make(cls, spec: _RQSSpec, like: Tensor) -> "_RQSConstants":
        n = spec.num_bins
        mins = [[spec.min_bin_width], [spec.min_bin_height]]
        if max(spec.min_bin_width, spec.min_bin_height) * n > 1.0:
            raise ValueError("Minimal bin width or height too large for the number of bins")
        return cls(
            min_size=like.new_tensor(mins),
            free_size=like.new_tensor([[1.0 - m[0] * n] for m in mins]),
            offsets=torch.tensor([0, 1, n + 1, n + 2, 2 * n + 2, 2 * n + 3], device=like.device),
        )


def _rqs_inverse(z: Tensor, params: Tensor, spec: _RQSSpec, const: _RQSConstants) -> Tensor:
    """Inverse rational-quadratic spline (Durkan et al. 2019, eqs. 4-8) of ``z`` (B, n).

    ``params`` (B, n, P) are the raw network outputs of the ``n`` features in nflows' order
    (K width logits, K height logits, K-1 interior derivative logits with linear tails or K+1
    derivative logits without). Bin sizes are ``min + (1 - K min) softmax``, derivatives
    ``min_derivative + softplus``; with linear tails the boundary derivatives are 1 and the map is
    the identity outside ``[-tail_bound, tail_bound]``, without tails the domain is [0, 1]. The
    algebra is nflows' (its quadratic root, written with fewer tensor operations); this runs once
    per feature group, so the number of kernel launches is what costs at small batch.
    """
    nb = spec.num_bins
    logits = params[..., : 2 * nb].unflatten(-1, (2, nb))  # (B, n, 2, K): widths, heights
    if spec.logit_scale is not None:
        logits = logits / spec.logit_scale
    if spec.linear_tails:
        lo, hi = -spec.tail_bound, spec.tail_bound
        derivs = F.pad(params[..., 2 * nb :], (1, 1), value=spec.tail_constant)
        inside = z.abs() <= hi
        y = z.clamp(lo, hi)
    else:
        lo, hi = 0.0, 1.0
        if bool(((z < lo) | (z > hi)).any()):
            raise InputOutsideDomain()
        derivs, y = params[..., 2 * nb :], z
    # softmax written out: torch.softmax over a short last axis (K = 8) is slower on CPU (same values up to rounding)
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    sizes = torch.addcmul(const.min_size, e / e.sum(dim=-1, keepdim=True), const.free_size)
    knots = torch.cumsum(sizes, dim=-1).mul_(hi - lo).add_(lo)  # knots 1..K of widths and heights
    knots[..., -1].fill_(hi)
    knots = F.pad(knots, (1, 0), value=lo)  # knot 0
    derivs = F.softplus(derivs).add_(spec.min_derivative)

    # Bin index from the interior height knots: nflows' searchsorted inside the domain.
    k = (y.unsqueeze(-1) >= knots[..., 1, 1:-1]).sum(dim=-1, keepdim=True)
    table = torch.cat([knots.flatten(-2), derivs], dim=-1)
    x0, x1, y0, y1, d0, d1 = table.gather(-1, k + const.offsets).unbind(-1)
    bin_w, bin_h = x1 - x0, y1 - y0
    delta = bin_h / bin_w

    # theta solves a theta^2 + b theta + c = 0 with c = -delta dy; stable root 2|c| / (b + sqrt(b^2 - 4ac)).
    dy = y - y0
    dy_s = dy * torch.add(d0 + d1, delta, alpha=-2.0)
    a = torch.addcmul(dy_s, bin_h, delta - d0)
    b = bin_h * d0 - dy_s
    m = delta * dy
    root = m / (b + torch.sqrt(torch.addcmul(b * b, a, m, value=4.0)))
    x = torch.addcmul(x0, root, bin_w, value=2.0)
    return torch.where(inside, x, z) if spec.linear_tails else x


@dataclass(frozen=True)
class _AffineSpec:
    epsilon: float
    params_per_feature: int = 2


def _affine_inverse(z: Tensor, params: Tensor, spec: _AffineSpec, const: None = None) -> Tensor:
    """Inverse of ``x -> (softplus(s) + eps) x + t`` (nflows' MaskedAffineAutoregressiveTransform)."""
    scale = F.softplus(params[..., 0]) + spec.epsilon
    return (z - params[..., 1]) / scale


# --------------------------------------------------------------------------------------------
# Plan: the MADE weights regrouped by degree, built once per set of weights
# --------------------------------------------------------------------------------------------
@dataclass
class _LayerStep:
    """Compute hidden units ``lo:hi`` (degree order) of one layer from a prefix of its input."""

    lo: int
    hi: int
    n_in: int  # length of the known prefix of the layer's input
    weight_t: Tensor  # (n_in, hi - lo), masked and transposed
    bias: Tensor  # (hi - lo,)


@dataclass
class _Wave:
    """Features ``f0:f1`` whose parameters need only hidden units that are already known."""

    f0: int
    f1: int
    layer_steps: list[list[_LayerStep]]  # per linear layer, zero or one step
    n_last: int  # known prefix of the last hidden layer
    out_weight_t: Tensor  # (n_last, (f1 - f0) * K)
    out_bias: Tensor


@dataclass
class _MadePlan:
    features: int
    residual: bool
    activation: object
    element_spec: object
    waves: list[_Wave]
    perms: list[Tensor]  # per linear layer: hidden units sorted by degree
    context_layer: torch.nn.Linear | None
    first_bias: Tensor  # bias of the first layer, hidden units in degree order
    block_context_layers: list[torch.nn.Linear | None] = field(default_factory=list)
    hidden_sizes: list[int] = field(default_factory=list)


@dataclass
class _PermutationPlan:
    inverse_index: Tensor


@dataclass
class _FallbackPlan:
    transform: Transform


def _unsupported(transform: Transform, reason: str) -> NotImplementedError:
    return NotImplementedError(
        f"fast_inverse does not support {type(transform).__name__}: {reason}. "
        "Pass fallback=True to use its own (slow) inverse for this block."
    )


def _masked_layers(made: MADE, owner: Transform) -> tuple[bool, list]:
    """The MADE's linear layers in evaluation order, after checking the architecture."""
    if type(made).forward is not MADE.forward:
        raise _unsupported(
            owner, f"its autoregressive net {type(made).__name__} overrides MADE.forward"
        )
    if made.activation not in _ELEMENTWISE:
        raise _unsupported(
            owner, f"activation {made.activation!r} is not a known elementwise function"
        )
    layers = [made.initial_layer]
    for block in made.blocks:
        if (
            isinstance(block, MaskedFeedforwardBlock)
            and type(block).forward is MaskedFeedforwardBlock.forward
        ):
            if block.batch_norm is not None:
                raise _unsupported(owner, "batch normalisation inside the MADE")
            if block.activation is not made.activation:
                raise _unsupported(owner, "blocks with an activation different from the MADE's")
            layers.append(block.linear)
        elif (
            isinstance(block, MaskedResidualBlock)
            and type(block).forward is MaskedResidualBlock.forward
        ):
            if block.use_batch_norm:
                raise _unsupported(owner, "batch normalisation inside the MADE")
            if block.activation is not made.activation:
                raise _unsupported(owner, "blocks with an activation different from the MADE's")
            layers.extend(block.linear_layers)
        else:
            raise _unsupported(owner, f"MADE block {type(block).__name__}")
    layers.append(made.final_layer)
    return made.use_residual_blocks, layers


def _element_spec(transform: Transform, made: MADE) -> _RQSSpec | _AffineSpec:
    """The elementwise map of ``transform`` (spline or affine) with nflows' constants, after checking it."""
    if not isinstance(transform, _RQS):
        if type(transform)._elementwise_inverse is not _AFFINE._elementwise_inverse:
            raise _unsupported(transform, "it overrides _elementwise_inverse")
        return _AffineSpec(epsilon=float(transform._epsilon))
    if type(transform)._elementwise is not _RQS._elementwise:
        raise _unsupported(transform, "it overrides _elementwise")
    if transform.tails not in ("linear", None):
        raise _unsupported(transform, f"tails={transform.tails!r}")
    hidden = getattr(made, "hidden_features", None)
    return _RQSSpec(
        num_bins=transform.num_bins,
        linear_tails=transform.tails == "linear",
        tail_bound=float(transform.tail_bound),
        min_bin_width=transform.min_bin_width,
        min_bin_height=transform.min_bin_height,
        min_derivative=transform.min_derivative,
        # nflows 0.14 divides only ``if hasattr(net, "hidden_features")`` (the stock MADE has no such attribute).
        logit_scale=float(np.sqrt(hidden)) if hidden is not None else None,
    )


def _masked_weights(
    transform: Transform, layers: list, features: int, K: int
) -> tuple[list, list, list]:
    """Per linear layer: output degrees, masked weight and bias, after checking nflows' degree rule.

    Every mask must be the degree rule (hidden unit of degree d sees inputs 1..d; output of feature
    i sees hidden degrees < i), else the grouping of :func:`_plan_waves` would be wrong; the outputs
    must be feature-major (the K parameters of feature 1, then of feature 2, ...).
    """
    in_deg = torch.arange(1, features + 1, device=layers[0].degrees.device)
    degrees, weights, biases = [], [], []
    for i, layer in enumerate(layers):
        is_out = i == len(layers) - 1
        out_deg = layer.degrees
        rule = (out_deg[:, None] > in_deg) if is_out else (out_deg[:, None] >= in_deg)
        if not torch.equal(layer.mask.bool(), rule):
            raise _unsupported(transform, f"layer {i} has a mask that is not nflows' degree rule")
        degrees.append(out_deg)
        weights.append(layer.weight * layer.mask)
        biases.append(layer.bias)
        in_deg = out_deg
    out_deg = degrees[-1]
    if out_deg.numel() != features * K or not torch.equal(
        out_deg, torch.arange(1, features + 1, device=out_deg.device).repeat_interleave(K)
    ):
        raise _unsupported(transform, "its MADE outputs are not laid out feature-major")
    return degrees, weights, biases


def _sort_by_degree(degrees: list, weights: list, biases: list) -> tuple[list, list, list, list]:
    """Hidden units sorted by degree, so that "all units of degree <= k" is a prefix of each layer.

    Returns the permutations (per hidden layer), the sorted degrees, and the weights and biases with
    rows (hidden outputs) and columns (hidden inputs) permuted to match; the output layer keeps its
    row order. The sort is stable, so units of equal degree keep their order.
    """
    n_layers = len(weights)
    perms = [torch.sort(d, stable=True)[1] for d in degrees[:-1]]
    sorted_deg = [d[p] for d, p in zip(degrees[:-1], perms)]
    w_sorted, b_sorted = [], []
    for i in range(n_layers):
        w = weights[i]
        if i < n_layers - 1:
            w = w[perms[i]]
        if i > 0:
            w = w[:, perms[i - 1]]
        w_sorted.append(w)
        b_sorted.append(biases[i][perms[i]] if i < n_layers - 1 else biases[i])
    return perms, sorted_deg, w_sorted, b_sorted


def _plan_waves(
    sorted_deg: list, w_sorted: list, b_sorted: list, features: int, K: int
) -> list[_Wave]:
    """Group the features into waves: each wave inverts every feature whose parameters need only
    hidden units computable from the features already known, and computes each unit once."""
    last = sorted_deg[-1]
    # cnt[layer][k]: number of units of layer layer with degree <= k (k = 0..features).
    ks = torch.arange(features + 1, device=last.device)
    cnt = [torch.searchsorted(d.contiguous(), ks, right=True).tolist() for d in sorted_deg]
    # need[f]: the features that output f (1-based) depends on: max degree of the last hidden units < f.
    below = torch.searchsorted(
        last.contiguous(), torch.arange(1, features + 1, device=last.device), right=False
    )
    need = [int(last[n - 1]) if n > 0 else 0 for n in below.tolist()]

    waves, known, done = [], 0, [0] * len(sorted_deg)
    while known < features:
        f1 = known + 1
        while f1 < features and need[f1] <= known:  # need[f1] is feature f1 + 1
            f1 += 1
        steps = []
        for layer in range(len(sorted_deg)):
            lo, hi = done[layer], cnt[layer][known]
            if hi > lo:
                n_in = known if layer == 0 else cnt[layer - 1][known]
                steps.append(
                    [
                        _LayerStep(
                            lo,
                            hi,
                            n_in,
                            w_sorted[layer][lo:hi, :n_in].t().contiguous(),
                            b_sorted[layer][lo:hi].contiguous(),
                        )
                    ]
                )
            else:
                steps.append([])
            done[layer] = hi
        n_last = cnt[-1][known]
        rows = slice(known * K, f1 * K)
        waves.append(
            _Wave(
                known,
                f1,
                steps,
                n_last,
                w_sorted[-1][rows, :n_last].t().contiguous(),
                b_sorted[-1][rows].contiguous(),
            )
        )
        known = f1
    return waves


def _build_made_plan(transform: Transform) -> _MadePlan:
    """The plan of one MADE block (RQS or affine): its weights regrouped into waves of features."""
    made = transform.autoregressive_net
    if not isinstance(made, MADE):
        raise _unsupported(
            transform, f"autoregressive net {type(made).__name__} is not an nflows MADE"
        )
    residual, layers = _masked_layers(made, transform)
    features = made.initial_layer.in_features
    spec = _element_spec(transform, made)
    K = spec.params_per_feature

    with torch.no_grad():
        degrees, weights, biases = _masked_weights(transform, layers, features, K)
        perms, sorted_deg, w_sorted, b_sorted = _sort_by_degree(degrees, weights, biases)
        # a residual block adds its output to its input unit by unit, so every stream needs the same degrees
        if residual and any(not torch.equal(d, sorted_deg[0]) for d in sorted_deg):
            raise _unsupported(transform, "residual layers with different degrees")
        waves = _plan_waves(sorted_deg, w_sorted, b_sorted, features, K)

    block_ctx = [getattr(block, "context_layer", None) for block in made.blocks] if residual else []
    return _MadePlan(
        features=features,
        residual=residual,
        activation=made.activation,
        element_spec=spec,
        waves=waves,
        perms=perms,
        context_layer=getattr(made, "context_layer", None),
        first_bias=b_sorted[0],
        block_context_layers=block_ctx,
        hidden_sizes=[len(d) for d in sorted_deg],
    )


def _build_plans(transform: Transform, fallback: bool) -> list:
    """Flatten ``transform`` into the list of per-block plans, in forward order."""
    if (
        isinstance(transform, CompositeTransform)
        and type(transform).inverse is CompositeTransform.inverse
    ):
        plans = []
        for sub in transform._transforms:
            plans.extend(_build_plans(sub, fallback))
        return plans
    try:
        if isinstance(transform, (_RQS, _AFFINE)):
            if type(transform).inverse is not AutoregressiveTransform.inverse:
                raise _unsupported(transform, "it overrides inverse")
            return [_build_made_plan(transform)]
        if isinstance(transform, Permutation):
            if type(transform).inverse is not Permutation.inverse:
                raise _unsupported(transform, "it overrides inverse")
            if transform._dim != 1:
                raise _unsupported(
                    transform, f"permutation along dim {transform._dim} (only dim 1)"
                )
            return [_PermutationPlan(torch.argsort(transform._permutation))]
        raise _unsupported(transform, "not a MADE, permutation or composite transform")
    except NotImplementedError as err:
        if not fallback:
            raise
        warnings.warn(f"{err} Falling back to its own inverse.", stacklevel=4)
        return [_FallbackPlan(transform)]


_SCALARS = (bool, int, float, str, type(None))


def _signature(transform: Transform) -> tuple:
    """Everything a plan depends on: identity and version of every tensor, and scalar settings."""
    tensors = list(transform.parameters()) + list(transform.buffers())
    settings = tuple(
        (
            id(m),
            tuple(
                (k, v) for k, v in vars(m).items() if k != "training" and isinstance(v, _SCALARS)
            ),
        )
        for m in transform.modules()
    )
    return tuple((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in tensors), settings


_PLAN_CACHE: "weakref.WeakKeyDictionary[Transform, tuple]" = weakref.WeakKeyDictionary()


def _plans_for(transform: Transform, fallback: bool) -> list:
    """Plans for ``transform``, rebuilt whenever any of its weights or buffers changed."""
    key = (_signature(transform), fallback)
    cached = _PLAN_CACHE.get(transform)
    if cached is not None and cached[0] == key:
        return cached[1]
    plans = _build_plans(transform, fallback)
    _PLAN_CACHE[transform] = (key, plans)
    return plans


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------
class _Columns:
    """A (B, n) tensor written left to right in blocks of columns, and read by column ranges.

    ``in_place`` (the no-grad path): one preallocated buffer, written by slice assignment. Otherwise
    (autograd) the blocks are kept and concatenated when read: no tensor that the graph has already
    used is written in place, and the backward pass does not copy the whole buffer once per block
    (as the ``CopySlices`` of a slice assignment would).
    """

    __slots__ = ("buffer", "parts", "width", "like")

    def __init__(self, like: Tensor, n: int, in_place: bool):
        self.buffer = like.new_empty(like.shape[0], n) if in_place else None
        self.parts: list[Tensor] = []
        self.width = 0
        self.like = like

    def write(self, lo: int, hi: int, value: Tensor) -> None:
        if self.buffer is not None:
            self.buffer[:, lo:hi] = value
            return
        if lo != self.width:
            raise AssertionError(
                f"columns {lo}:{hi} written after {self.width}: blocks must come in order"
            )
        self.parts.append(value)
        self.width = hi

    def read(self, lo: int, hi: int) -> Tensor:
        return self.full()[:, lo:hi]

    def full(self) -> Tensor:
        """The columns written so far (all of them on the in-place path)."""
        if self.buffer is not None:
            return self.buffer
        if not self.parts:
            return self.like.new_empty(self.like.shape[0], 0)
        if len(self.parts) > 1:
            self.parts = [torch.cat(self.parts, dim=1)]
        return self.parts[0]


def _first_base(plan: _MadePlan, context: Tensor | None) -> Tensor | None:
    """The additive term of the first layer: bias + activated context (MADE.forward), in degree order."""
    if context is None:
        return None
    if plan.context_layer is None:
        raise ValueError(
            "fast_inverse got a context, but the MADE was built without context_features"
        )
    return plan.activation(plan.context_layer(context))[:, plan.perms[0]] + plan.first_bias


def _invert_wave(wave, z: Tensor, hidden_last: _Columns, x: _Columns, inverse, spec, const) -> None:
    """Features ``wave.f0:wave.f1`` of x from the last hidden layer: the output layer's parameters,
    then the elementwise inverse."""
    params = torch.addmm(wave.out_bias, hidden_last.read(0, wave.n_last), wave.out_weight_t)
    shape = (z.shape[0], wave.f1 - wave.f0, spec.params_per_feature)
    x.write(wave.f0, wave.f1, inverse(z[:, wave.f0 : wave.f1], params.view(shape), spec, const))


def _invert_made(
    plan: _MadePlan, z: Tensor, context: Tensor | None, in_place: bool = True
) -> Tensor:
    """x with MADE(x) = z, wave by wave (features whose inputs are all known), for the plain MADE
    (here) and the residual one (:func:`_invert_residual_made`)."""
    spec = plan.element_spec
    if isinstance(spec, _RQSSpec):
        inverse, const = _rqs_inverse, _RQSConstants.make(spec, z)
    else:
        inverse, const = _affine_inverse, None
    x = _Columns(z, z.shape[1], in_place)
    hidden = [_Columns(z, h, in_place) for h in plan.hidden_sizes]
    first_base = _first_base(plan, context)
    if plan.residual:
        return _invert_residual_made(
            plan, z, context, in_place, x, hidden, first_base, inverse, const
        )
    act = plan.activation
    for wave in plan.waves:
        for layer, steps in enumerate(wave.layer_steps):
            for st in steps:
                src = x if layer == 0 else hidden[layer - 1]
                first = layer == 0 and first_base is not None
                bias = first_base[:, st.lo : st.hi] if first else st.bias
                hidden[layer].write(
                    st.lo, st.hi, act(torch.addmm(bias, src.read(0, st.n_in), st.weight_t))
                )
        _invert_wave(wave, z, hidden[-1], x, inverse, spec, const)
    return x.full()


def _invert_residual_made(
    plan: _MadePlan, z, context, in_place, x, hidden, first_base, inverse, const
) -> Tensor:
    """The residual MADE: t_0 = W_0 x + b_0 + act(ctx); per block
    t' = t + W_1 act(W_0 act(t) + b_0 + C c) + b_1. hidden[0] holds t_0, hidden[2j+1] the inner
    units of block j, hidden[2j+2] its output t."""
    act, n_layers = plan.activation, len(plan.hidden_sizes)
    block_extra = [
        layer(context)[:, plan.perms[0]] if (layer is not None and context is not None) else None
        for layer in plan.block_context_layers
    ]
    # act(t) of each residual stream
    activated = [_Columns(z, h, in_place) for h in plan.hidden_sizes[0:-1:2]]
    for wave in plan.waves:
        for layer, steps in enumerate(wave.layer_steps):
            for st in steps:
                sl = slice(st.lo, st.hi)
                if layer == 0:
                    bias = st.bias if first_base is None else first_base[:, sl]
                    out = torch.addmm(bias, x.read(0, st.n_in), st.weight_t)
                elif layer % 2 == 1:  # inner layer of block (layer - 1) // 2
                    extra = block_extra[(layer - 1) // 2]
                    bias = st.bias if extra is None else extra[:, sl] + st.bias
                    src = activated[(layer - 1) // 2].read(0, st.n_in)
                    out = act(torch.addmm(bias, src, st.weight_t))
                else:  # block output: residual stream plus the block's increment
                    out = hidden[layer - 2].read(st.lo, st.hi) + torch.addmm(
                        st.bias, hidden[layer - 1].read(0, st.n_in), st.weight_t
                    )
                hidden[layer].write(st.lo, st.hi, out)
                # the last stream feeds the output layer as is
                if layer % 2 == 0 and layer < n_layers - 1:
                    activated[layer // 2].write(st.lo, st.hi, act(out))
        _invert_wave(wave, z, hidden[-1], x, inverse, spec=plan.element_spec, const=const)
    return x.full()


def fast_inverse(
    transform: Transform | Flow,
    z: Tensor,
    context: Tensor | None = None,
    *,
    fallback: bool = False,
    differentiable: bool = False,
) -> Tensor:
    """``transform.inverse(z, context)[0]`` of an nflows MADE flow, with every network output computed once.

    Args:
        transform: an nflows ``CompositeTransform`` of MADE (RQS or affine) and permutation blocks,
            a single such block, or a whole ``nflows.flows.Flow`` (its embedding net is applied to
            ``context`` first, as in ``Flow.sample``).
        z: (B, D) points in the base space.
        context: (B, C) conditions, one row per point, or None.
        fallback: for unsupported blocks, use their own inverse with a warning instead of raising.
        differentiable: keep the autograd graph (when grad mode is on): the result is then
            differentiable in ``z`` and ``context`` (and the context layers' weights), with the same
            gradients as autograd through nflows' inverse up to rounding. The masked MADE weights
            enter as constants (no gradient w.r.t. them; train with ``log_prob``). The intermediate
            columns are concatenated instead of written into buffers, so nothing the graph uses is
            modified in place. Off (the default), everything runs under ``torch.no_grad()`` with
            in-place buffers, as fast as before.

    Returns:
        (B, D) points in data space, equal to nflows' inverse up to floating-point rounding.
        No gradient is tracked unless ``differentiable``. Dropout is not applied (eval-mode semantics).

    Raises:
        NotImplementedError: a block is not supported (message names it) and ``fallback`` is False.
    """
    if isinstance(transform, Flow):
        if context is not None:
            context = transform._embedding_net(context)
        transform = transform._transform
    if z.dim() != 2:
        raise ValueError(f"fast_inverse expects z of shape (batch, features), got {tuple(z.shape)}")
    if context is not None and context.shape[0] != z.shape[0]:
        raise ValueError(f"context has {context.shape[0]} rows but z has {z.shape[0]}")
    if transform.training and any(
        isinstance(m, torch.nn.Dropout) and m.p > 0 for m in transform.modules()
    ):
        warnings.warn(
            "fast_inverse evaluates the MADE without dropout (as in eval mode), "
            "but the transform is in training mode",
            stacklevel=2,
        )
    ref = next(iter(transform.parameters()), None)
    if ref is not None and ref.dtype != z.dtype:
        raise ValueError(f"z is {z.dtype} but the transform's weights are {ref.dtype}")

    with torch.no_grad():
        plans = _plans_for(transform, fallback)
    in_place = not (differentiable and torch.is_grad_enabled())
    with torch.no_grad() if in_place else contextlib.nullcontext():
        x = z
        for plan in reversed(plans):
            if isinstance(plan, _PermutationPlan):
                x = x.index_select(1, plan.inverse_index)
            elif isinstance(plan, _MadePlan):
                if x.shape[1] != plan.features:
                    raise ValueError(
                        f"z has {x.shape[1]} features, the MADE expects {plan.features}"
                    )
                x = _invert_made(plan, x, context, in_place)
            else:
                x = plan.transform.inverse(x, context)[0]
    return x


def fast_sample(
    flow: Flow,
    num_samples: int | None = None,
    context: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw samples from an nflows ``Flow`` with :func:`fast_inverse`.

    Unlike ``Flow.sample`` (which draws ``num_samples`` per context row and returns
    (rows, num_samples, D)), this draws ONE sample per context row and returns (rows, D), which
    is how CaloFlow conditions each shower on its own energies. Without a context it returns
    (num_samples, D).

    Args:
        flow: the nflows flow (base distribution StandardNormal for ``generator`` to be used).
        num_samples: number of samples without context; with a context it may be omitted or must
            equal the number of context rows.
        context: (N, C) conditions or None.
        generator: torch generator for the base samples (on the flow's device).
    """
    ref = next(iter(flow.parameters()))
    if context is not None:
        if num_samples is not None and num_samples != context.shape[0]:
            raise ValueError(
                f"fast_sample draws one sample per context row: got num_samples={num_samples} "
                f"and {context.shape[0]} context rows (repeat the context rows to draw several)"
            )
        num_samples = context.shape[0]
    elif num_samples is None:
        raise ValueError("fast_sample needs num_samples when no context is given")
    dist = flow._distribution
    if isinstance(dist, StandardNormal):
        noise = torch.randn(
            num_samples, *dist._shape, generator=generator, dtype=ref.dtype, device=ref.device
        )
    elif generator is None:
        with torch.no_grad():
            if context is None:
                noise = dist.sample(num_samples)
            else:
                noise = dist.sample(1, context=flow._embedding_net(context))[:, 0]
    else:
        raise NotImplementedError(
            f"fast_sample supports a generator only with a StandardNormal base, "
            f"not {type(dist).__name__}"
        )
    return fast_inverse(flow, noise, context)
