"""A faster training step for nflows MADE + rational-quadratic-spline flows, same mathematics.

The density evaluation that training differentiates (``transform.forward``: data -> base space and
log|det|) of every ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform`` is replaced, per
module instance, by an implementation that computes the same function with less work, and Adam
runs as one fused kernel (:func:`adam`). Nothing about the model changes: the nflows modules, their
parameters and buffers (state_dict keys, shapes, values) stay as they are, ``inverse`` is nflows'
own and :func:`caloflow.flows.fast_inverse.fast_inverse` applies unchanged; :func:`uninstall`
restores the stock forward. The results equal nflows' up to floating-point summation order
(``tests/test_training_step.py``: loss, gradients and parameters after Adam steps agree in float64
to 1e-9 relative or better; in float32 the loss to float32 rounding).

Where the time of the stock step goes (paper-size Flow II, batch 175, one CPU thread) and what is
done instead (``benchmarks/training.py`` measures it):

* **Masked matrix products on the zero blocks.** A MADE's masks are triangular: hidden unit of
  degree d sees inputs 1..d, the outputs of feature i see hidden degrees < i. nflows multiplies the
  full (masked) weight. Here the rows of each masked layer are grouped (:func:`_plan_groups`) so
  that a group of rows only multiplies the prefix of input columns its mask can reach; the masked
  weight is formed only on those blocks (``weight * mask``, exact zeros elsewhere) and the
  backward pass computes gradients only there (the rest of the weight's gradient is exactly 0, as
  nflows' is). For the paper-size Flow II the products then cover 63% of the weight cells (4, 4
  and 20 row groups for the input, hidden and output layers; the masks let 60% through), forward
  and backward.
* **The spline on strided slices.** nflows takes softmax, softplus and cumsum over the last axis
  of size 8 of strided views of the MADE output, which PyTorch's CPU kernels handle slowly, and
  indexes the points inside the tail bound with boolean masks (copies and scatters). Here the
  spline parameters are transposed, 16384 points at a time, to a (parameter, point) layout, so every
  reduction runs over a short leading axis with long contiguous rows, the bin index is a comparison count, the six
  values a point needs (its bin's knots and derivatives) are one ``gather``, and the backward pass
  of this part is written out (:class:`_SplineKnots`); the rational-quadratic formula itself is
  nflows' expression on the gathered values, differentiated by autograd. Points outside the tail
  bound are the identity with log|det| 0, as in nflows (``torch.where`` instead of masked copies).
* **Adam's per-parameter loop.** ``torch.optim.Adam`` on CPU defaults to the per-tensor loop
  (~10 elementwise passes over 37.8M parameters); ``fused=True`` does one pass.

Supported: the RQS transform with ``tails="linear"`` or ``None`` on a MADE of plain (non-residual)
feedforward blocks without batch normalisation (CaloFlow's Flow I and Flow II); any other block is
left with its stock forward (:func:`install` returns how many were switched). The faster forward
runs on CPU tensors (where it was measured, ``benchmarks/training.py``); on an accelerator, under
autocast and for an empty batch an installed transform runs nflows' forward. Double backward
(``create_graph=True``) is not supported by the faster forward.
"""

from __future__ import annotations

import numpy as np
import torch
from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform
from nflows.transforms.autoregressive import AutoregressiveTransform
from nflows.transforms.base import InputOutsideDomain
from nflows.transforms.made import MADE, MaskedFeedforwardBlock, MaskedLinear
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = [
    "install",
    "uninstall",
    "installed",
    "adam",
    "masked_linear",
    "rqs_forward",
    "GROUP_COST",
]

_RQS = MaskedPiecewiseRationalQuadraticAutoregressiveTransform

#: Cost of one more row group of a masked product, in (row x column) cells of the weight: per group
#: a handful of extra kernel launches (~50 us) against ~3 x batch multiply-adds per cell.
#: Grouping the paper-size Flow II with it gives ~20 groups for the output layer.
GROUP_COST = 4096
#: Above this many distinct row runs the rows are first merged into this many equal chunks.
_MAX_RUNS = 1024


# --------------------------------------------------------------------------------------------
# Masked linear layers on the blocks their masks can reach
# --------------------------------------------------------------------------------------------
def _plan_groups(reach: np.ndarray, group_cost: float = GROUP_COST) -> list[tuple[int, int, int]]:
    """Split rows into contiguous groups (r0, r1, k): rows r0:r1 need input columns 0:k only.

    ``reach[r]`` is 1 + the last column row r's mask lets through (0 for a row that sees nothing).
    The split minimises sum over groups of rows * k + ``group_cost`` (dynamic programming over runs
    of rows with equal reach). Any mask is handled correctly; only the speed depends on its shape.
    """
    n = len(reach)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, reach[1:] != reach[:-1]])
    bounds = np.r_[starts, n]
    if len(starts) > _MAX_RUNS:
        bounds = np.unique(np.linspace(0, n, _MAX_RUNS + 1).round().astype(np.int64))
    run_k = np.array([reach[a:b].max() for a, b in zip(bounds[:-1], bounds[1:])], dtype=np.float64)
    R = len(run_k)
    best = np.zeros(R + 1)
    choice = np.zeros(R + 1, dtype=np.int64)
    for e in range(1, R + 1):  # best split of runs 0:e, the last group being runs s:e
        kmax = np.maximum.accumulate(run_k[e - 1 :: -1])[::-1]  # kmax[s] = max(run_k[s:e])
        rows = bounds[e] - bounds[:e]
        cost = best[:e] + rows * kmax + group_cost
        s = int(np.argmin(cost))
        best[e], choice[e] = cost[s], s
    groups, e = [], R
    while e > 0:
        s = int(choice[e])
        groups.append((int(bounds[s]), int(bounds[e]), int(run_k[s:e].max())))
        e = s
    return groups[::-1]


class _LinearPlan:
    """Row groups of one masked layer and the mask restricted to their blocks.

    The masked weight blocks are kept for reuse (validation batches, repeated evaluations) until a
    backward pass goes through the layer (an optimiser step is likely to follow) or the weight
    tensor changes (a different tensor or a bumped version counter). Fused optimisers do not bump
    version counters; :func:`adam` bumps them after each step, which also keeps
    :func:`caloflow.flows.fast_inverse.fast_inverse`'s plan cache valid.
    """

    def __init__(self, mask: Tensor, dtype: torch.dtype, group_cost: float):
        nz = (mask != 0).cpu().numpy()
        reach = np.where(nz.any(axis=1), nz.shape[1] - np.argmax(nz[:, ::-1], axis=1), 0)
        self.groups = _plan_groups(reach, group_cost)
        self.mask_blocks = [mask[r0:r1, :k].to(dtype).contiguous() for r0, r1, k in self.groups]
        self.key = _mask_key(mask, dtype)
        self._weight_key = None
        self._weight_blocks: list[Tensor] | None = None

    def weight_blocks(self, weight: Tensor) -> list[Tensor]:
        """``weight * mask`` on each group's block (computed once per version of the weights)."""
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if key != self._weight_key:
            with torch.no_grad():
                self._weight_blocks = [
                    weight[r0:r1, :k] * m for (r0, r1, k), m in zip(self.groups, self.mask_blocks)
                ]
            self._weight_key = key
        return self._weight_blocks

    def invalidate(self) -> None:
        self._weight_key = None
        self._weight_blocks = None


def _mask_key(mask: Tensor, dtype: torch.dtype) -> tuple:
    return mask.data_ptr(), mask._version, mask.device, dtype, tuple(mask.shape)


class _MaskedLinearFunction(torch.autograd.Function):
    """y = x (W * M)^T + b, computed on the row groups' blocks; gradients equal nflows' MaskedLinear's."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, plan: _LinearPlan) -> Tensor:
        x = x.contiguous()
        blocks = plan.weight_blocks(weight)
        out = x.new_empty(x.shape[0], weight.shape[0])
        for (r0, r1, k), wb in zip(plan.groups, blocks):
            if k == 0:
                if bias is None:
                    out[:, r0:r1] = 0
                else:
                    out[:, r0:r1] = bias[r0:r1]
            elif bias is None:
                torch.mm(x[:, :k], wb.t(), out=out[:, r0:r1])
            else:
                torch.addmm(bias[r0:r1], x[:, :k], wb.t(), out=out[:, r0:r1])
        ctx.plan = plan
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, *blocks)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, *blocks = ctx.saved_tensors
        plan = ctx.plan
        plan.invalidate()  # the weights are about to change
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        gx = torch.zeros_like(x) if need_x else None
        gw = grad_out.new_empty(grad_out.shape[1], x.shape[1]) if need_w else None
        for (r0, r1, k), wb, mb in zip(plan.groups, blocks, plan.mask_blocks):
            if need_w:
                gw[r0:r1, k:].zero_()
            if k == 0:
                continue
            go = grad_out[:, r0:r1]
            if need_x:
                gx[:, :k].addmm_(go, wb)
            if need_w:
                block = gw[r0:r1, :k]
                torch.mm(go.t(), x[:, :k], out=block)
                block.mul_(mb)
        gb = grad_out.sum(0) if (need_b and ctx.has_bias) else None
        return gx, gw, gb, None


def masked_linear(
    layer: MaskedLinear, x: Tensor, plans: dict, group_cost: float = GROUP_COST
) -> Tensor:
    """``layer(x)`` of an nflows ``MaskedLinear`` computed on the blocks its mask reaches."""
    key = _mask_key(layer.mask, layer.weight.dtype)
    plan = plans.get(id(layer))
    if plan is None or plan.key != key:
        plan = plans[id(layer)] = _LinearPlan(layer.mask, layer.weight.dtype, group_cost)
    return _MaskedLinearFunction.apply(x, layer.weight, layer.bias, plan)


# --------------------------------------------------------------------------------------------
# Rational-quadratic spline (forward direction) in a (parameter, point) layout
# --------------------------------------------------------------------------------------------
class _SplineKnots(torch.autograd.Function):
    """Per point: the knots (x_k, x_k+1, y_k, y_k+1) and derivatives (d_k, d_k+1) of its bin.

    ``params`` (N, P) are the raw MADE outputs per point (nflows' order: K width logits, K height
    logits, then the derivative logits), ``xc`` (N,) the points (inside the spline's interval). The
    bins are nflows': sizes ``min + (1 - K min) softmax(logits)``, knots ``lo + (hi - lo) cumsum``
    with the last knot set to ``hi``, derivatives ``min_derivative + softplus`` (with linear tails
    the two boundary derivatives are the constant of nflows, not learnt); the bin of x is the
    number of interior width knots <= x (nflows' searchsorted). Returns (3, 2, N): rows x, y, d;
    columns k, k+1. The backward pass maps gradients of these six values to ``params``.
    """

    @staticmethod
    def forward(ctx, params: Tensor, xc: Tensor, spec: tuple) -> Tensor:
        K, linear_tails, lo, hi, min_w, min_h, min_d, scale = spec
        N, P = params.shape
        xc = xc.detach()
        mins = params.new_tensor([min_w, min_h]).view(2, 1, 1)
        free = params.new_tensor([1 - min_w * K, 1 - min_h * K]).view(2, 1, 1)
        if linear_tails:
            boundary = _boundary_derivative(min_d)
        out = params.new_empty(3, 2, N)
        prob_all = params.new_empty(2, K, N)
        slope_all = params.new_empty(P - 2 * K, N)  # softplus' of the derivative logits
        k_all = torch.empty(N, dtype=torch.int64, device=params.device)
        for s in range(0, N, _CHUNK):  # chunks of points, so that the intermediates stay in cache
            sl = slice(s, min(s + _CHUNK, N))
            n = sl.stop - s
            t = params[sl].t().contiguous()  # (P, n): every row below is one contiguous vector
            logits = t[: 2 * K].view(2, K, n)
            if scale is not None:
                logits = logits / scale
            e = (logits - logits.amax(dim=1, keepdim=True)).exp_()
            prob = torch.div(
                e, e.sum(dim=1, keepdim=True), out=prob_all[:, :, sl]
            )  # softmax over the bins
            cum = torch.cumsum(prob * free + mins, dim=1)
            table = params.new_empty(3, K + 1, n)  # knots of widths, heights; derivatives
            table[:2, 0] = lo
            torch.add(cum[:, : K - 1] * (hi - lo), lo, out=table[:2, 1:K])
            table[:2, K] = hi
            dlogits = t[2 * K :]
            if linear_tails:
                table[2, 0] = boundary
                table[2, K] = boundary
                torch.add(F.softplus(dlogits), min_d, out=table[2, 1:K])
            else:
                torch.add(F.softplus(dlogits), min_d, out=table[2])
            torch.sigmoid(dlogits, out=slope_all[:, sl])
            k = torch.sum(
                xc[sl].unsqueeze(0) >= table[0, 1:K], dim=0, out=k_all[sl]
            )  # nflows' searchsorted
            torch.gather(
                table, 1, torch.stack([k, k + 1]).unsqueeze(0).expand(3, 2, n), out=out[:, :, sl]
            )
        ctx.spec = spec
        ctx.save_for_backward(prob_all, k_all, slope_all)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        K, linear_tails, lo, hi, min_w, min_h, min_d, scale = ctx.spec
        prob_all, k_all, slope_all = ctx.saved_tensors
        N = k_all.shape[0]
        P = 2 * K + slope_all.shape[0]
        free = prob_all.new_tensor([(1 - min_w * K) * (hi - lo), (1 - min_h * K) * (hi - lo)]).view(
            2, 1, 1
        )
        j = torch.arange(K, device=k_all.device).unsqueeze(1)  # (K, 1)
        g_params = grad.new_empty(N, P)
        for s in range(0, N, _CHUNK):
            sl = slice(s, min(s + _CHUNK, N))
            n = sl.stop - s
            g, k, prob = grad[:, :, sl], k_all[sl], prob_all[:, :, sl]
            # Knot j (1..K-1) = lo + (hi - lo) sum_{i<j} s_i; knots 0 and K are constants. With g0, g1 the
            # gradients of knots k and k+1: dL/ds_i = (hi - lo) (g0 [i < k] + g1 [i <= k < K-1]).
            g1 = torch.where(k < K - 1, g[:2, 1], 0.0)  # (2, n)
            below = (j < k).to(grad.dtype)  # (K, n)
            at = (j == k).to(grad.dtype)
            g_prob = torch.addcmul(at * g1.unsqueeze(1), below, (g[:2, 0] + g1).unsqueeze(1)).mul_(
                free
            )
            gp = grad.new_empty(P, n)
            g_logits = gp[: 2 * K].view(2, K, n)
            torch.mul(
                prob, g_prob - (prob * g_prob).sum(dim=1, keepdim=True), out=g_logits
            )  # softmax backward
            if scale is not None:
                g_logits.div_(scale)
            # derivatives: d_k and d_k+1 of a point are entries k and k+1 of its derivative row
            g_deriv = grad.new_zeros(K + 1, n)
            g_deriv.scatter_add_(0, k.unsqueeze(0), g[2, 0].unsqueeze(0))
            g_deriv.scatter_add_(0, (k + 1).unsqueeze(0), g[2, 1].unsqueeze(0))
            torch.mul(g_deriv[1:K] if linear_tails else g_deriv, slope_all[:, sl], out=gp[2 * K :])
            g_params[sl] = gp.t()
        return g_params, None, None


#: points per chunk of the spline's tensors (its intermediates then stay in the CPU's cache)
_CHUNK = 16384


def _boundary_derivative(min_derivative: float) -> float:
    """The spline's derivative at both ends of the interval with linear tails: nflows pads the
    derivative logits with c = log(exp(1 - min_derivative) - 1), so softplus(c) + min_derivative = 1.

    Evaluated in float64 and rounded once to the parameters' dtype where it is stored: in float32 that
    is 1.0, as nflows' vectorised softplus over the padded logits gives it. (The softplus of a float32
    scalar is one rounding below, 1 - 6e-8; most Flow II points lie in the first bin, empty voxels at
    logit(alpha) ~ -13.8, so that rounding went into nearly every log|det| term with the same sign:
    at paper size a block's summed log|det| had 1.5x the float32 error of nflows' forward.)
    """
    c = np.log(np.exp(1.0 - min_derivative) - 1.0)
    return float(np.logaddexp(0.0, c)) + min_derivative


def _spline_spec(transform: _RQS) -> tuple:
    made = transform.autoregressive_net
    linear = transform.tails == "linear"
    lo, hi = (-float(transform.tail_bound), float(transform.tail_bound)) if linear else (0.0, 1.0)
    # nflows 0.14 divides the width and height logits only ``if hasattr(net, "hidden_features")``.
    hidden = getattr(made, "hidden_features", None)
    scale = float(np.sqrt(hidden)) if hidden is not None else None
    return (
        int(transform.num_bins),
        linear,
        lo,
        hi,
        float(transform.min_bin_width),
        float(transform.min_bin_height),
        float(transform.min_derivative),
        scale,
    )


def rqs_forward(transform: _RQS, inputs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``transform._elementwise_forward(inputs, params)`` (outputs, log|det| per row), computed faster."""
    K, linear, lo, hi, min_w, min_h, min_d, _ = spec = _spline_spec(transform)
    if min_w * K > 1.0:
        raise ValueError("Minimal bin width too large for the number of bins")
    if min_h * K > 1.0:
        raise ValueError("Minimal bin height too large for the number of bins")
    B, D = inputs.shape
    x = inputs.reshape(B * D)
    if linear:
        inside = (x >= lo) & (x <= hi)
        xc = x.clamp(lo, hi)
    else:
        if bool(((x < lo) | (x > hi)).any()):
            raise InputOutsideDomain()
        xc = x
    x0, x1, y0, y1, d0, d1 = (
        _SplineKnots.apply(params.reshape(B * D, -1), xc, spec).reshape(6, -1).unbind(0)
    )

    # nflows' expressions (rational_quadratic_spline, forward direction) on the gathered values
    input_bin_widths = x1 - x0
    input_heights = y1 - y0
    input_delta = input_heights / input_bin_widths
    theta = (xc - x0) / input_bin_widths
    theta_one_minus_theta = theta * (1 - theta)
    numerator = input_heights * (input_delta * theta.pow(2) + d0 * theta_one_minus_theta)
    denominator = input_delta + ((d0 + d1 - 2 * input_delta) * theta_one_minus_theta)
    outputs = y0 + numerator / denominator
    derivative_numerator = input_delta.pow(2) * (
        d1 * theta.pow(2) + 2 * input_delta * theta_one_minus_theta + d0 * (1 - theta).pow(2)
    )
    logabsdet = torch.log(derivative_numerator) - 2 * torch.log(denominator)
    if linear:  # identity with log|det| 0 outside [-tail_bound, tail_bound]
        outputs = torch.where(inside, outputs, x)
        logabsdet = torch.where(inside, logabsdet, 0.0)
    return outputs.view(B, D), logabsdet.view(B, D).sum(dim=1)


# --------------------------------------------------------------------------------------------
# Installing the fast forward on the transforms of a flow
# --------------------------------------------------------------------------------------------
def _supported(transform) -> bool:
    """The stock RQS transform on a plain feedforward MADE without batch norm, with nflows' forward."""
    if not isinstance(transform, _RQS):
        return False
    cls = type(transform)
    if (
        cls.forward is not AutoregressiveTransform.forward
        or cls._elementwise_forward is not _RQS._elementwise_forward
        or cls._elementwise is not _RQS._elementwise
        or transform.tails not in ("linear", None)
    ):
        return False
    made = transform.autoregressive_net
    if type(made) is not MADE or made.use_residual_blocks:
        return False
    layers = [made.initial_layer, made.final_layer]
    for block in made.blocks:
        if type(block) is not MaskedFeedforwardBlock or block.batch_norm is not None:
            return False
        layers.append(block.linear)
    return all(type(layer) is MaskedLinear for layer in layers)


class FastForward:
    """The forward of one RQS transform (installed as its instance attribute ``forward``).

    Runs the MADE's own modules in nflows' order (context layer, activations, dropout: the same
    random numbers are drawn), the masked layers with :func:`masked_linear`, and the spline with
    :func:`rqs_forward`. Holds the row-group plans of the masked layers (not part of the state_dict).
    """

    def __init__(self, transform: _RQS, group_cost: float = GROUP_COST):
        self.transform = transform
        self.group_cost = group_cost
        self.plans: dict = {}

    def __call__(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if inputs.device.type != "cpu" or inputs.numel() == 0 or torch.is_autocast_enabled("cpu"):
            # measured on CPU only; on an accelerator (and under autocast) nflows' own forward
            return AutoregressiveTransform.forward(self.transform, inputs, context)
        made = self.transform.autoregressive_net
        temps = masked_linear(made.initial_layer, inputs, self.plans, self.group_cost)
        if context is not None:
            temps = temps + made.activation(made.context_layer(context))
        temps = made.activation(temps)
        for block in made.blocks:
            temps = block.dropout(
                block.activation(masked_linear(block.linear, temps, self.plans, self.group_cost))
            )
        params = masked_linear(made.final_layer, temps, self.plans, self.group_cost)
        return rqs_forward(self.transform, inputs, params)

    def __getstate__(self):  # plans are caches: rebuilt after unpickling or copying
        return {"transform": self.transform, "group_cost": self.group_cost, "plans": {}}

    def __deepcopy__(self, memo):
        import copy

        new = FastForward.__new__(FastForward)
        memo[id(self)] = new
        new.transform = copy.deepcopy(self.transform, memo)
        new.group_cost = self.group_cost
        new.plans = {}
        return new


def install(module: torch.nn.Module, group_cost: float = GROUP_COST) -> int:
    """Give every supported RQS transform inside ``module`` the fast forward; returns how many.

    Parameters, buffers and the state_dict are untouched; ``inverse`` stays nflows'. Idempotent.
    """
    n = 0
    for m in module.modules():
        if _supported(m):
            if not isinstance(m.__dict__.get("forward"), FastForward):
                m.forward = FastForward(m, group_cost)
            n += 1
    return n


def uninstall(module: torch.nn.Module) -> int:
    """Restore nflows' forward on every transform inside ``module``; returns how many were switched back."""
    n = 0
    for m in module.modules():
        if isinstance(m.__dict__.get("forward"), FastForward):
            del m.forward
            n += 1
    return n


def installed(module: torch.nn.Module) -> int:
    """Number of transforms inside ``module`` running the fast forward."""
    return sum(isinstance(m.__dict__.get("forward"), FastForward) for m in module.modules())


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------
def _bump_versions(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Mark every parameter as modified in place (an in-place op on an empty view: no data touched).

    Fused optimiser kernels update the parameters without bumping their version counters, which
    caches keyed on them (the masked weight blocks here, ``fast_inverse``'s plans) rely on.
    """
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.view(-1)[:0].zero_()


def adam(params, lr: float, fast: bool = True, **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam``; with ``fast`` the fused implementation (one kernel for all parameters) where
    every parameter is a floating-point tensor on CPU or CUDA, else the multi-tensor (foreach) one.

    Fused Adam computes the same update as the per-parameter loop up to float rounding
    (max |difference| ~1 ulp per step); foreach is bitwise equal to the loop. Either way a step hook
    bumps the parameters' version counters after each step (fused kernels do not; a checkpoint's
    optimiser state can switch a group to fused).
    """
    params = list(params)
    if fast:
        tensors = [p for p in params if isinstance(p, Tensor)] or [
            p for group in params if isinstance(group, dict) for p in group["params"]
        ]
        if tensors and all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors
        ):
            kwargs.setdefault("fused", True)
        else:
            kwargs.setdefault("foreach", True)
    optimizer = torch.optim.Adam(params, lr=lr, **kwargs)
    optimizer.register_step_post_hook(_bump_versions)
    return optimizer
