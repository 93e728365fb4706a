"""Flow II training step: stock nflows + ``torch.optim.Adam`` vs caloflow's step (same mathematics).

One training step = encode a batch of showers (the model's preprocessing), mean NLL, backward,
optimiser step, in training mode (dropout on). For each model size (``paper``: the architecture of
``configs/flow2.yaml``; ``demo``: ``configs/demo/flow2.yaml``; ``ds1-photons``, ``ds1-pions``: the
dataset-1 teacher, ``configs/ds1/<particle>/flow2.yaml``; batch size from the config) and each
thread count it times, interleaved step by step so both see the same machine load,

* **stock**: ``FlowII(fast_training=False)`` (nflows' forward) with ``torch.optim.Adam(model.parameters(), lr)``
  (PyTorch's default implementation: the per-parameter loop on CPU);
* **caloflow**: ``FlowII(fast_training=True)`` (:mod:`caloflow.flows.fast_training`) with the
  optimiser of its ``configure_optimizers`` (fused Adam),

and prints the median wall time and median CPU time per step over ``--repeats`` steps (after
``--warmup`` untimed steps) and the speed-up. Both models start from the same weights (same seed)
and train on the same showers of the embedded simulator of the config's detector (CaloGAN e+, or the
dataset-1 simulator at the challenge's incident energies; uniform 0-1 keV noise added, as the data
module does).

The check (:func:`agreement`): ``--check-runs`` short trainings of ``--check-steps`` steps each, on
their own showers and dropout draws, of the stock step, caloflow's step and a float64 run of the
stock step from the same weights; the table reports the largest relative difference of the first
losses (the same weights and batch: float32 rounding), the relative L2 error of the first-step
gradients against float64, and after the steps the distance between the runs' parameters relative
to the size of the float64 run's update, ``|theta_a - theta_b| / |theta_64 - theta_0|`` (median and
max over the runs). Parameter-by-parameter equality is not to be had in float32 (see
:func:`agreement`); the float64 comparison says whether caloflow's step is as close to the exact
step as the stock one.

    python benchmarks/training.py --threads 1 2 --repeats 5 --out /tmp/training.json
    python benchmarks/training.py --sizes ds1-photons ds1-pions --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib import resources

import torch
import yaml
from _tiny import SMOKE_BLOCKS, SMOKE_HIDDEN_DIVISOR, add_smoke_option, apply_smoke, tiny_model_args

from caloflow.data.barrel import simulate_barrel
from caloflow.data.simulate import simulate
from caloflow.flows.fast_training import installed
from caloflow.geometry import get_geometry
from caloflow.models import FlowII
from caloflow.nn import count_parameters

CONFIGS = {
    "paper": "flow2.yaml",
    "demo": "demo/flow2.yaml",
    "ds1-photons": "ds1/photons/flow2.yaml",
    "ds1-pions": "ds1/pions/flow2.yaml",
}
#: ``--smoke``: batch size, and the options it shrinks
SMOKE_BATCH = 32
SMOKE = {"repeats": 2, "warmup": 1, "check_steps": 2, "check_runs": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke``: the options in SMOKE, where not given; the sizes shrunk by :func:`config`)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", choices=sorted(CONFIGS), default=["paper", "demo"])
    p.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="torch intra-op thread counts, e.g. 1 2"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed steps per model; the median is reported"
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (allocator, thread pools)"
    )
    p.add_argument(
        "--check-steps",
        type=int,
        default=3,
        help="steps per run of the agreement check (0: no check)",
    )
    p.add_argument(
        "--check-runs",
        type=int,
        default=3,
        help="runs of the agreement check (own showers, dropout)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    add_smoke_option(
        p,
        f"each size's Flow II with {SMOKE_BLOCKS} blocks and 1/{SMOKE_HIDDEN_DIVISOR} of its "
        f"hidden units, batch {SMOKE_BATCH}, {SMOKE['repeats']} timed steps after "
        f"{SMOKE['warmup']} warm-up, check of {SMOKE['check_runs']} runs x {SMOKE['check_steps']} steps",
    )
    return apply_smoke(p, p.parse_args(argv), SMOKE)


def config(size: str, smoke: bool = False) -> tuple[dict, int]:
    """Model init_args and batch size of a shipped Flow II config (``smoke``: at smoke size, batch SMOKE_BATCH)."""
    text = resources.files("caloflow.configs").joinpath(CONFIGS[size]).read_text()
    cfg = yaml.safe_load(text)
    init_args = dict(cfg["model"]["init_args"])
    if smoke:
        return tiny_model_args(init_args), SMOKE_BATCH
    return init_args, int(cfg["data"]["init_args"]["batch_size"])


def geometry(init_args: dict) -> str:
    """The detector of a Flow II config's ``init_args`` (FlowII's default: CaloGAN)."""
    return str(init_args.get("geometry", "calogan"))


def showers(n: int, seed: int, geometry: str = "calogan") -> dict:
    """``n`` simulated showers of ``geometry``: voxels (n, V) in MeV with uniform [0, 1 keV) noise,
    energy (n,) in GeV. CaloGAN: e+ at uniform 1-100 GeV; a dataset-1 geometry: its particle at the
    challenge's incident energies (:func:`caloflow.data.barrel.simulate_barrel`)."""
    if geometry == "calogan":
        s = simulate("eplus", n, seed=seed, progress=False)
    else:
        s = simulate_barrel(get_geometry(geometry), n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    voxels = torch.as_tensor(s.voxels, dtype=torch.float32)
    voxels = voxels + 1e-3 * torch.rand(voxels.shape, generator=g)  # [0, 1 keV) in MeV
    return {"voxels": voxels, "energy": torch.as_tensor(s.energy, dtype=torch.float32)}


def flow2(init_args: dict, fast_training: bool) -> FlowII:
    """Flow II of a config's ``init_args`` with ``fast_training`` set by the caller, whatever the config says
    (the paper config sets ``fast_training: true``; the stock model of the comparison must not have it)."""
    return FlowII(**{**init_args, "fast_training": fast_training})


def models(init_args: dict, seed: int) -> tuple[tuple[FlowII, torch.optim.Optimizer], ...]:
    """(stock model, ``torch.optim.Adam``) and (caloflow's model, its fused Adam), from the same weights."""
    torch.manual_seed(seed)
    stock = flow2(init_args, fast_training=False)
    torch.manual_seed(seed)
    fast = flow2(init_args, fast_training=True)
    assert installed(stock) == 0 and installed(fast) == init_args["n_blocks"]
    fast.load_state_dict(stock.state_dict())
    lr = init_args["lr"]
    return (stock.train(), torch.optim.Adam(stock.parameters(), lr=lr)), (
        fast.train(),
        fast.configure_optimizers()["optimizer"],
    )


def step(model: FlowII, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    """One training step (zero_grad, mean NLL, backward, optimiser step); the loss in nats per shower."""
    optimizer.zero_grad()
    loss = model.nll(batch)
    loss.backward()
    optimizer.step()
    return loss.item()


def time_steps(
    pairs: tuple[tuple[FlowII, torch.optim.Optimizer], ...],
    batches: list[dict],
    warmup: int,
    repeats: int,
) -> list[dict]:
    """Interleaved steps of each (model, optimiser); median wall and CPU (process) ms per step."""
    wall = [[] for _ in pairs]
    cpu = [[] for _ in pairs]
    for i in range(warmup + repeats):
        batch = batches[i % len(batches)]
        for j, (model, opt) in enumerate(pairs):
            w0, c0 = time.perf_counter(), time.process_time()
            step(model, opt, batch)
            if i >= warmup:
                wall[j].append(1e3 * (time.perf_counter() - w0))
                cpu[j].append(1e3 * (time.process_time() - c0))
    return [
        {
            "wall_ms": statistics.median(w),
            "cpu_ms": statistics.median(c),
            "wall_all": w,
            "cpu_all": c,
        }
        for w, c in zip(wall, cpu)
    ]


#: the agreement check's comparisons
PAIRS = ("stock_vs_float64", "caloflow_vs_float64", "caloflow_vs_stock")


def squared_differences(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Entry-by-entry squared differences of two lists of parameters (or gradients), flat, in float64."""
    return torch.cat([(x.double() - y.double()).flatten() ** 2 for x, y in zip(a, b)])


def carriers(d2: torch.Tensor, share: float = 0.9) -> int:
    """How many entries (the largest first) carry ``share`` of the sum of the squared differences ``d2``."""
    total = torch.sort(d2, descending=True).values.cumsum(0)
    if total[-1] == 0:
        return 0
    return int(torch.searchsorted(total, share * total[-1])) + 1


def agreement_run(
    trio: dict[str, FlowII], batches: list[dict], lr: float, dropout_seed: int
) -> dict:
    """One run of the check: a step on each batch of every model of ``trio`` (``stock``, ``caloflow``,
    ``float64``; the same start), each with its optimiser, the same float32 inputs and dropout masks.

    Returns the losses (nats per shower), the first step's gradients and the final parameters (float64).
    """
    opts = {
        "stock": torch.optim.Adam(trio["stock"].parameters(), lr=lr),
        "caloflow": trio["caloflow"].configure_optimizers()["optimizer"],
        "float64": torch.optim.Adam(trio["float64"].parameters(), lr=lr),
    }
    losses: dict[str, list[float]] = {name: [] for name in trio}
    grads = {}
    for i, batch in enumerate(batches):
        for name, model in trio.items():
            opts[name].zero_grad()
            torch.manual_seed(dropout_seed + i)  # the same dropout masks in all three
            x, c = trio["stock"].encode(batch)  # the same float32 inputs
            dtype = next(model.parameters()).dtype
            loss = -model.flow.log_prob(x.to(dtype), context=c.to(dtype)).mean()
            loss.backward()
            if i == 0:
                grads[name] = [p.grad.double() for p in model.parameters()]
            opts[name].step()
            losses[name].append(loss.item())
    return {
        "losses": losses,
        "grads": grads,
        "params": {
            name: [p.detach().double() for p in model.parameters()] for name, model in trio.items()
        },
    }


def agreement(init_args: dict, batch_size: int, steps: int, runs: int, seed: int) -> dict:
    """``runs`` short trainings of ``steps`` steps each (their own showers and dropout draws) of the
    stock step, caloflow's step and a float64 run of the stock step, all from the same weights.

    Per run: the relative difference of the first losses; the relative L2 error (all parameters) of
    the first-step gradients against float64; and after the steps the distance between the runs'
    parameters relative to the float64 run's update, ``|theta_a - theta_b| / |theta_64 - theta_0|``,
    and how many parameters carry 90% of that squared distance (:func:`carriers`).

    Two float32 computations that round differently cannot agree parameter by parameter after Adam
    steps: Adam divides each gradient by its own magnitude, so a parameter whose gradient is at the
    level of rounding moves by +-lr with the sign of the rounding; and the spline's gradient with
    respect to its parameters jumps where a point crosses a knot (value and slope are continuous),
    so a point within one rounding of a knot (a fraction of one per step among Flow II's ~5M
    point-knot comparisons) can take the neighbouring bin's gradient, in any float32 run. The errors
    against float64 say whether caloflow's step is as close to the exact step as the stock one.
    """
    (stock, _), (fast, _) = models(init_args, seed)
    trio = {
        "stock": stock,
        "caloflow": fast,
        "float64": flow2(init_args, fast_training=False).double().train(),
    }
    initial = {k: v.clone() for k, v in stock.state_dict().items()}
    start = [p.detach().double().clone() for p in stock.parameters()]
    out = {
        "steps": steps,
        "runs": runs,
        "first_loss_rel_diff": [],
        "losses": [],
        **{
            key: {pair: [] for pair in PAIRS}
            for key in ("grad_rel_error", "update_rel_error", "update_carriers")
        },
    }
    for run in range(runs):
        for model in trio.values():
            model.load_state_dict(initial)
        batches = [
            showers(batch_size, seed + 100 * (run + 1) + i, geometry(init_args))
            for i in range(steps)
        ]
        result = agreement_run(trio, batches, init_args["lr"], seed + 1000 * (run + 1))
        grads, params = result["grads"], result["params"]
        grad_norm = sum((h**2).sum() for h in grads["float64"]).sqrt()
        update = squared_differences(params["float64"], start).sum().sqrt()
        for pair in PAIRS:
            a, b = pair.split("_vs_")
            out["grad_rel_error"][pair].append(
                float(squared_differences(grads[a], grads[b]).sum().sqrt() / grad_norm)
            )
            d2 = squared_differences(params[a], params[b])
            out["update_rel_error"][pair].append(float(d2.sum().sqrt() / update))
            out["update_carriers"][pair].append(carriers(d2))
        losses = result["losses"]
        out["first_loss_rel_diff"].append(
            abs(losses["caloflow"][0] - losses["stock"][0]) / abs(losses["stock"][0])
        )
        out["losses"].append(losses)
    return out


def med_max(values: list[float]) -> str:
    """``median (max)`` of ``values`` in the table's format; '-' when there are none."""
    return f"{statistics.median(values):.1e} ({max(values):.1e})" if values else "-"


def measure(size: str, batches: list[dict], args: argparse.Namespace) -> list[dict]:
    """The table rows of one model size: per thread count, both steps timed (ms) side by side; the
    agreement check once, with the first thread count (it does not depend on the thread count)."""
    init_args, batch_size = config(size, args.smoke)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        pairs = models(init_args, args.seed)
        stock, fast = time_steps(pairs, batches, args.warmup, args.repeats)
        n_params = count_parameters(pairs[0][0])
        del pairs
        check = None
        if threads == args.threads[0] and args.check_steps:
            check = agreement(init_args, batch_size, args.check_steps, args.check_runs, args.seed)
        rows.append(
            {
                "size": size,
                "hidden": init_args["hidden_features"],
                "parameters": n_params,
                "batch": batch_size,
                "threads": threads,
                "stock": stock,
                "caloflow": fast,
                "speedup_wall": stock["wall_ms"] / fast["wall_ms"],
                "speedup_cpu": stock["cpu_ms"] / fast["cpu_ms"],
                "check": check,
            }
        )
        print(
            f"  {size}, {threads} thread(s): stock {stock['wall_ms']:.0f} ms, caloflow {fast['wall_ms']:.0f} ms",
            flush=True,
        )
    return rows


def render(rows: list[dict]) -> str:
    """The markdown table of :func:`measure`'s rows (times in ms per step) and its note."""
    lines = [
        "| size | parameters | batch | threads | stock ms/step (wall / CPU) | caloflow ms/step (wall / CPU) "
        "| speed-up (wall / CPU) | first loss, caloflow vs stock | first-step gradient error vs float64: "
        "stock / caloflow | update error after the steps: stock vs float64 / caloflow vs float64 / "
        "caloflow vs stock |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["check"]
        cells = "| - | - | - |"
        if c:
            g, u = c["grad_rel_error"], c["update_rel_error"]
            cells = (
                f"| {max(c['first_loss_rel_diff']):.1e} | {med_max(g['stock_vs_float64'])} / "
                f"{med_max(g['caloflow_vs_float64'])} | {med_max(u['stock_vs_float64'])} / "
                f"{med_max(u['caloflow_vs_float64'])} / {med_max(u['caloflow_vs_stock'])} |"
            )
        lines.append(
            f"| {r['size']} (hidden {r['hidden']}) | {r['parameters']:,} | {r['batch']} | {r['threads']} "
            f"| {r['stock']['wall_ms']:,.0f} / {r['stock']['cpu_ms']:,.0f} "
            f"| {r['caloflow']['wall_ms']:,.0f} / {r['caloflow']['cpu_ms']:,.0f} "
            f"| {r['speedup_wall']:.2f}x / {r['speedup_cpu']:.2f}x " + cells
        )
    lines.append("")
    lines.append(
        "Errors: median (max) over the check's runs; relative L2 norms over all parameters (see the "
        "docstring of benchmarks/training.py). First loss: the largest relative difference over the runs."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Time both steps per size and thread count, run the check; print the table, write ``--out``."""
    args = parse_args(argv)
    results = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "smoke": args.smoke,
        "rows": [],
    }
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs; "
        f"median of {args.repeats} steps after {args.warmup} warm-up"
    )
    data = {}
    for size in args.sizes:
        init_args, batch_size = config(size, args.smoke)
        key = (geometry(init_args), batch_size)
        if (
            key not in data
        ):  # two batches of showers per detector and batch size, shared by the sizes
            all_showers = showers(2 * batch_size, args.seed, key[0])
            data[key] = [
                {k: v[i * batch_size : (i + 1) * batch_size] for k, v in all_showers.items()}
                for i in range(2)
            ]
        results["rows"] += measure(size, data[key], args)
    table = render(results["rows"])
    print()
    print(table)
    results["table"] = table
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
