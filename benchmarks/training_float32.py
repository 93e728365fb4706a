"""Flow II training step in float32 against float64, piece by piece: stock nflows + Adam vs caloflow's step.

``benchmarks/training.py`` reports how far a float32 step's update lands from a float64 step. This
script says where that distance comes from. For each model size and each of ``--batches`` batches
(own showers and dropout draws; the same initial weights):

* **pieces**, each on the float32 inputs the stock step computes for the batch, against float64 on
  the same inputs (relative L2 error; a random upstream gradient of unit scale):
  the masked products of every MADE layer (nflows' ``MaskedLinear`` vs
  :func:`caloflow.flows.fast_training.masked_linear`: output, input and weight gradients), the spline
  of every block (nflows' ``_elementwise_forward`` vs :func:`~caloflow.flows.fast_training.rqs_forward`:
  outputs, log det, gradients with respect to the inputs and to the MADE outputs), and one Adam
  step on the float64 step's gradient rounded to float32 (``torch.optim.Adam`` vs
  :func:`~caloflow.flows.fast_training.adam`, fused), error relative to the float64 update;
* **the whole step** (:func:`training.agreement` with one step per batch): the gradient's and the
  update's relative error against the float64 step, in how many batches caloflow's update is the
  closer one, and how many parameters carry 90% of the squared update error.

    python benchmarks/training_float32.py --sizes paper demo --batches 12
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _tiny import add_smoke_option, apply_smoke
from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as RQS
from nflows.transforms.made import MaskedLinear
from training import CONFIGS, agreement, config, flow2, med_max, showers

from caloflow.flows import fast_training as ft
from caloflow.models import FlowII
from caloflow.nn import count_parameters

#: ``--smoke``: the options it shrinks (the sizes themselves are shrunk by training.config)
SMOKE = {"batches": 2}
#: the rows of the pieces table: piece -> the quantities compared
PIECES = {
    "masked products": ("output", "input gradient", "weight gradient"),
    "spline": ("output", "log det", "input gradient", "MADE-output gradient"),
    "Adam step": ("update",),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke``: the options in SMOKE, where not given; the sizes shrunk by training.config)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", choices=sorted(CONFIGS), default=["paper", "demo"])
    p.add_argument(
        "--batches", type=int, default=12, help="batches (own showers and dropout draws) per size"
    )
    p.add_argument("--seed", type=int, default=0)
    add_smoke_option(
        p, f"both sizes as in benchmarks/training.py --smoke, {SMOKE['batches']} batches"
    )
    return apply_smoke(p, p.parse_args(argv), SMOKE)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (L2 over all entries), in float64."""
    return float((a.double() - b).norm() / b.norm())


def stock_inputs(model: FlowII, batch: dict, dropout_seed: int) -> dict[int, tuple]:
    """The float32 inputs of the stock forward on ``batch``: ``{id(masked layer): (x,), id(block): (x, params)}``."""
    seen: dict[int, tuple] = {}
    spline = RQS._elementwise_forward

    def recording(
        block: RQS, inputs: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seen[id(block)] = (inputs.detach(), params.detach())
        return spline(block, inputs, params)

    hooks = [
        m.register_forward_hook(
            lambda mod, args, out: seen.__setitem__(id(mod), (args[0].detach(),))
        )
        for m in model.modules()
        if isinstance(m, MaskedLinear)
    ]
    RQS._elementwise_forward = recording
    try:
        with torch.no_grad():
            torch.manual_seed(dropout_seed)
            model.nll(batch)
    finally:
        RQS._elementwise_forward = spline
        for hook in hooks:
            hook.remove()
    return seen


def layer_errors(
    layer: MaskedLinear, x: torch.Tensor, g: torch.Generator
) -> dict[str, list[float]]:
    """Per variant (stock, caloflow), the errors of one masked layer's quantities (PIECES order) vs float64."""
    upstream = torch.randn(x.shape[0], layer.out_features, generator=g, dtype=torch.float64)
    got = {}
    for variant, dtype in (
        ("float64", torch.float64),
        ("stock", torch.float32),
        ("caloflow", torch.float32),
    ):
        lin = copy.deepcopy(layer).to(dtype)
        xi = x.to(dtype, copy=True).requires_grad_()
        y = ft.masked_linear(lin, xi, {}) if variant == "caloflow" else lin(xi)
        y.backward(upstream.to(dtype))
        got[variant] = (y.detach(), xi.grad, lin.weight.grad)
    return {
        v: [relative(a, b) for a, b in zip(got[v], got["float64"])] for v in ("stock", "caloflow")
    }


def spline_errors(
    block: RQS, x: torch.Tensor, params: torch.Tensor, g: torch.Generator
) -> dict[str, list[float]]:
    """Per variant (stock, caloflow), the errors of one block's spline quantities (PIECES order) vs float64."""
    up_y = torch.randn(x.shape, generator=g, dtype=torch.float64)
    up_logdet = torch.randn(x.shape[0], generator=g, dtype=torch.float64)
    got = {}
    for variant, dtype in (
        ("float64", torch.float64),
        ("stock", torch.float32),
        ("caloflow", torch.float32),
    ):
        xi, pi = (
            x.to(dtype, copy=True).requires_grad_(),
            params.to(dtype, copy=True).requires_grad_(),
        )
        spline = ft.rqs_forward if variant == "caloflow" else RQS._elementwise_forward
        y, logdet = spline(block, xi, pi)
        ((y * up_y.to(dtype)).sum() + (logdet * up_logdet.to(dtype)).sum()).backward()
        got[variant] = (y.detach(), logdet.detach(), xi.grad, pi.grad)
    return {
        v: [relative(a, b) for a, b in zip(got[v], got["float64"])] for v in ("stock", "caloflow")
    }


def adam_errors(model: FlowII, grad64: list[torch.Tensor], lr: float) -> dict[str, list[float]]:
    """One Adam step from ``model``'s float32 weights on ``grad64`` rounded to float32, stock (``torch.optim.Adam``)
    and caloflow (fused, :func:`~caloflow.flows.fast_training.adam`), error relative to the float64 update."""
    start = [p.detach() for p in model.parameters()]
    after = {}
    for variant, dtype in (
        ("float64", torch.float64),
        ("stock", torch.float32),
        ("caloflow", torch.float32),
    ):
        params = [torch.nn.Parameter(p.to(dtype).clone()) for p in start]
        for p, grad in zip(params, grad64):
            p.grad = grad.to(dtype)
        opt = ft.adam(params, lr) if variant == "caloflow" else torch.optim.Adam(params, lr=lr)
        opt.step()
        after[variant] = torch.cat([p.detach().double().flatten() for p in params])
    update = (after["float64"] - torch.cat([p.double().flatten() for p in start])).norm()
    return {
        v: [float((after[v] - after["float64"]).norm() / update)] for v in ("stock", "caloflow")
    }


def float64_gradient(model: FlowII, batch: dict, dropout_seed: int) -> list[torch.Tensor]:
    """The gradient of the mean NLL of a float64 copy of ``model`` on its float32 inputs of ``batch``."""
    ref = copy.deepcopy(model).double()
    ft.uninstall(ref)
    torch.manual_seed(dropout_seed)
    x, c = model.encode(batch)
    (-ref.flow.log_prob(x.double(), context=c.double()).mean()).backward()
    return [p.grad for p in ref.parameters()]


def piece_errors(size: str, args: argparse.Namespace) -> dict:
    """``{(piece, quantity): {variant: [errors over batches and blocks]}}`` for one model size."""
    init_args, batch_size = config(size, args.smoke)
    torch.manual_seed(args.seed)
    model = flow2(init_args, fast_training=False).train()
    g = torch.Generator().manual_seed(args.seed)
    errors: dict = {
        (piece, q): {"stock": [], "caloflow": []} for piece, qs in PIECES.items() for q in qs
    }

    def add(piece: str, found: dict[str, list[float]]) -> None:
        for variant, values in found.items():
            for quantity, value in zip(PIECES[piece], values):
                errors[(piece, quantity)][variant].append(value)

    for b in range(args.batches):
        batch = showers(batch_size, args.seed + 100 * (b + 1))
        dropout_seed = args.seed + 1000 * (b + 1)
        seen = stock_inputs(model, batch, dropout_seed)
        for module in model.modules():
            if isinstance(module, MaskedLinear):
                add("masked products", layer_errors(module, *seen[id(module)], g))
            elif isinstance(module, RQS):
                add("spline", spline_errors(module, *seen[id(module)], g))
        add(
            "Adam step",
            adam_errors(model, float64_gradient(model, batch, dropout_seed), init_args["lr"]),
        )
    return {
        "size": size,
        "hidden": init_args["hidden_features"],
        "parameters": count_parameters(model),
        "errors": errors,
    }


def render_pieces(results: list[dict]) -> str:
    """The pieces table: relative errors vs float64, median (max) over batches (and blocks, layers)."""
    lines = [
        "| size | piece | quantity | stock: error vs float64 | caloflow: error vs float64 |",
        "|---|---|---|---:|---:|",
    ]
    for r in results:
        for (piece, quantity), by_variant in r["errors"].items():
            lines.append(
                f"| {r['size']} (hidden {r['hidden']}) | {piece} | {quantity} "
                f"| {med_max(by_variant['stock'])} | {med_max(by_variant['caloflow'])} |"
            )
    return "\n".join(lines)


def render_steps(results: list[dict]) -> str:
    """The whole-step table: one row per size from :func:`training.agreement` with one step per batch."""
    lines = [
        "| size | parameters | batches | gradient error vs float64: stock / caloflow | update error vs float64: "
        "stock / caloflow | update error mean: stock / caloflow | caloflow's update closer | parameters "
        "carrying 90% of the squared update error: stock / caloflow |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r["check"]
        grad, upd, n = c["grad_rel_error"], c["update_rel_error"], c["update_carriers"]
        pairs = ("stock_vs_float64", "caloflow_vs_float64")
        closer = sum(a < b for a, b in zip(upd[pairs[1]], upd[pairs[0]]))
        lines.append(
            f"| {r['size']} (hidden {r['hidden']}) | {r['parameters']:,} | {c['runs']} "
            f"| {med_max(grad[pairs[0]])} / {med_max(grad[pairs[1]])} | {med_max(upd[pairs[0]])} / "
            f"{med_max(upd[pairs[1]])} | {statistics.mean(upd[pairs[0]]):.1e} / {statistics.mean(upd[pairs[1]]):.1e} "
            f"| {closer} of {c['runs']} | {med_max_int(n[pairs[0]])} / {med_max_int(n[pairs[1]])} |"
        )
    return "\n".join(lines)


def med_max_int(values: list[int]) -> str:
    """``median (max)`` of counts."""
    return f"{statistics.median(values):g} ({max(values)})"


def main(argv: list[str] | None = None) -> dict:
    """Measure every size; print the pieces table and the whole-step table."""
    args = parse_args(argv)
    results = []
    for size in args.sizes:
        result = piece_errors(size, args)
        init_args, batch_size = config(size, args.smoke)
        result["check"] = agreement(init_args, batch_size, 1, args.batches, args.seed)
        results.append(result)
        print(f"  {size}: done", flush=True)
    print(
        f"\nPieces on the same float32 inputs, relative L2 error vs float64, median (max) over {args.batches} "
        "batches (and blocks, layers):\n"
    )
    print(render_pieces(results))
    print(
        f"\nThe whole step (one step from the same weights per batch), median (max) over {args.batches} batches:\n"
    )
    print(render_steps(results))
    return {"results": results}


if __name__ == "__main__":
    main()
