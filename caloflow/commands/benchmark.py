"""``caloflow benchmark``: generation time per shower against batch size (the paper's table 4, section 5.5).

Rows are generators, columns batch sizes, entries milliseconds per shower:

* ``caloflow-fast``: the whole CaloFlow pipeline (Flow I, Flow II, inverse preprocessing, 10 keV
  threshold, copy to host) with Flow II inverted by :func:`caloflow.flows.fast_inverse.fast_inverse`;
* ``caloflow-nflows``: the same pipeline with nflows' own inverse (one MADE pass per feature, the
  sampler the paper timed);
* ``calogan``: the CaloGAN generator and the flattening to the CaloGAN voxels;
* ``simulator``: the embedded shower simulator (numpy, CPU), ``batch`` showers per call.

Each generator gets one untimed warm-up call first (thread pools, allocator, the fast sampler's
plan). A cell is the best of up to ``--repeats`` calls of ``batch`` showers each. Before running a
cell its time is estimated from the smaller batches already measured (a fit t = a + b n with two or
more of them, else proportional to the largest one); a cell whose estimate exceeds
``--max-seconds`` is not run and reported as that estimate, marked ``est.``. A cell that runs out
of memory is skipped, and so are the larger batches of that generator.

Without checkpoints (or with ``--paper-size``) the models are untrained paper-size networks with
random weights: the cost of a pass does not depend on the values of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from caloflow.atomic import write_text_atomic
from caloflow.commands import argtypes
from caloflow.errors import CaloflowError
from caloflow.timing import format_ms, machine_info, timed

GENERATORS: dict[str, str] = {
    "caloflow-fast": "CaloFlow, fast inverse",
    "caloflow-nflows": "CaloFlow, nflows inverse",
    "calogan": "CaloGAN",
    "simulator": "simulator",
}
DEFAULT_BATCH_SIZES = (10, 100, 1000, 10000)
ENERGY_RANGE_GEV = (1.0, 100.0)
#: showers in the untimed warm-up call of each generator
WARMUP_BATCH = 2
PAPER_SIZE = "untrained paper-size model, random weights (timing does not depend on training)"


@dataclass
class Generator:
    """One row of the table: ``run(batch)`` generates ``batch`` showers and returns the redraw count."""

    name: str
    label: str
    run: Callable[[int], int]
    model: str


@dataclass
class Cell:
    generator: str
    batch: int
    status: str  # "measured", "estimated" or "skipped"
    ms_per_shower: float | None = None
    seconds_per_call: list[float] = field(default_factory=list)
    estimate_s: float | None = None
    estimate_method: str | None = None
    redraws: int = 0
    reason: str | None = None


# ------------------------------------------------------------------------------------- estimation
def estimate_seconds(points: list[tuple[int, float]], batch: int) -> tuple[float, str]:
    """Seconds for one call of ``batch`` showers from measured (batch, seconds) points.

    With two or more points: the least-squares fit t = a + b n (a, b >= 0; residuals relative
    to t, so small batches count as much as large ones), i.e. a fixed cost per call plus a cost
    per shower. With one point, or when the fit has no positive slope: proportional to the largest
    measured batch, an upper bound as long as the time per shower does not grow with the batch.
    """
    if not points:
        raise ValueError("no measured points to estimate from")
    n = np.array([p[0] for p in points], dtype=float)
    t = np.array([p[1] for p in points], dtype=float)
    largest = int(np.argmax(n))
    if len(set(n.tolist())) >= 2:
        design = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
        (a, b), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
        if a < 0:  # no fixed cost: the best line through the origin
            a, b = 0.0, float(np.sum(n / t) / np.sum((n / t) ** 2))
        if b > 0:
            used = ", ".join(f"{int(x):,}" for x in sorted(n))
            return float(a + b * batch), f"fit t = a + b n to batches {used}"
    return float(t[largest] * batch / n[largest]), f"proportional to batch {int(n[largest]):,}"


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def time_generator(
    gen: Generator,
    batch_sizes: list[int],
    device: torch.device,
    max_seconds: float,
    repeats: int,
    log: Callable[[str], None] = print,
) -> list[Cell]:
    """Warm up ``gen``, then time it at each batch size (ascending); returns one :class:`Cell` per batch."""
    warm = min(WARMUP_BATCH, min(batch_sizes))
    log(f"{gen.name}: warm-up call ({warm} showers)")
    _, warm_s = timed(lambda: gen.run(warm), device)
    points: list[tuple[int, float]] = []  # measured (batch, best seconds per call)
    cells: list[Cell] = []
    oom_at: int | None = None
    for batch in batch_sizes:
        if oom_at is not None:
            cells.append(
                Cell(gen.name, batch, "skipped", reason=f"out of memory at batch {oom_at:,}")
            )
            log(f"{gen.name} batch {batch:,}: skipped (out of memory at batch {oom_at:,})")
            continue
        if points:
            est_s, method = estimate_seconds(points, batch)
        else:  # first-call costs make the warm-up slow: a safe overestimate for the go/no-go decision
            est_s, method = estimate_seconds([(warm, warm_s)], batch)
            method = f"{method} (warm-up call)"
        if est_s > max_seconds:
            cells.append(
                Cell(
                    gen.name,
                    batch,
                    "estimated",
                    1e3 * est_s / batch,
                    estimate_s=est_s,
                    estimate_method=method,
                    reason=f"estimate {est_s:,.0f} s > --max-seconds {max_seconds:g}",
                )
            )
            log(
                f"{gen.name} batch {batch:,}: not run, estimated {est_s:,.1f} s per call > --max-seconds "
                f"{max_seconds:g} -> ~{format_ms(1e3 * est_s / batch)} ms/shower ({method})"
            )
            continue
        log(f"{gen.name} batch {batch:,}: running (estimate {est_s:,.1f} s per call)")
        cell = Cell(gen.name, batch, "measured", estimate_s=est_s, estimate_method=method)
        try:
            while True:
                redraws, seconds = timed(lambda: gen.run(batch), device)
                cell.seconds_per_call.append(seconds)
                cell.redraws += redraws
                spent, best = sum(cell.seconds_per_call), min(cell.seconds_per_call)
                if len(cell.seconds_per_call) >= repeats or spent + best > max_seconds:
                    break
        except Exception as e:
            if not _out_of_memory(e):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            oom_at = batch
            cells.append(Cell(gen.name, batch, "skipped", reason="out of memory"))
            log(f"{gen.name} batch {batch:,}: skipped (out of memory)")
            continue
        best = min(cell.seconds_per_call)
        cell.ms_per_shower = 1e3 * best / batch
        points.append((batch, best))
        cells.append(cell)
        log(
            f"{gen.name} batch {batch:,}: {format_ms(cell.ms_per_shower)} ms/shower "
            f"(best of {len(cell.seconds_per_call)}, {best:,.2f} s per call)"
        )
    return cells


# ------------------------------------------------------------------------------------- the generators
def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_generators(
    args: argparse.Namespace, names: list[str], device: torch.device, seed: int
) -> list[Generator]:
    """The requested generators, each as ``run(batch) -> redraws`` on ``device``."""
    from caloflow.sampling import CaloFlow, CaloGANSampler, requested_energies

    energies = {}

    def energies_for(batch: int) -> np.ndarray:
        if batch not in energies:
            energies[batch] = requested_energies(batch, None, ENERGY_RANGE_GEV, seed)
        return energies[batch]

    noise = torch.Generator().manual_seed(
        seed
    )  # CPU, so the latent draws do not depend on the device
    generators = []
    if {"caloflow-fast", "caloflow-nflows"} & set(names):
        if args.flow1:
            flow = CaloFlow.load(args.flow1, args.flow2, str(device))
            source = f"checkpoints {args.flow1}, {args.flow2}"
        else:
            from caloflow.models.flows import FlowI, FlowII

            torch.manual_seed(seed)
            flow, source = CaloFlow(FlowI().to(device), FlowII().to(device)), PAPER_SIZE
        n_params = _count(flow.flow1) + _count(flow.flow2)
        model = f"Flow I + Flow II, {n_params:,} parameters: {source}"
        for name, fast in (("caloflow-fast", True), ("caloflow-nflows", False)):
            if name in names:

                def run(batch: int, fast: bool = fast) -> int:
                    flow.sample(energies_for(batch), noise, batch_size=batch, fast=fast)
                    return flow.redraws

                generators.append(Generator(name, GENERATORS[name], run, model))
    if "calogan" in names:
        if args.calogan:
            gan, source = (
                CaloGANSampler.load(args.calogan, str(device)),
                f"checkpoint {args.calogan}",
            )
        else:
            from caloflow.models.calogan import CaloGAN

            torch.manual_seed(seed)
            gan, source = CaloGANSampler(CaloGAN().to(device)), PAPER_SIZE
        model = f"generator, {_count(gan.model.generator):,} parameters: {source}"

        def run_gan(batch: int) -> int:
            gan.sample(energies_for(batch), noise, batch_size=batch)
            return gan.redraws

        generators.append(Generator("calogan", GENERATORS["calogan"], run_gan, model))
    if "simulator" in names:
        from caloflow.data.simulate import SIMULATOR_VERSION, simulate

        particle = args.simulator

        def run_simulator(batch: int) -> int:
            simulate(particle, batch, seed, progress=False)
            return 0

        model = f"{SIMULATOR_VERSION}, {particle}, numpy on the CPU (batch = showers per call)"
        generators.append(Generator("simulator", f"simulator ({particle})", run_simulator, model))
    order = {name: i for i, name in enumerate(names)}
    return sorted(generators, key=lambda g: order[g.name])


# ------------------------------------------------------------------------------------- report
def cell_text(cell: Cell) -> str:
    if cell.status == "measured":
        return format_ms(cell.ms_per_shower)
    if cell.status == "estimated":
        return f"~{format_ms(cell.ms_per_shower)} (est.)"
    return f"- ({cell.reason})"


def markdown(result: dict, generators: list[Generator], cells: list[Cell]) -> str:
    m = result["machine"]
    batches = result["batch_sizes"]
    where = m.get("gpu", m["device"])
    lines = [
        "Generation time of a single calorimeter shower in ms (rows: generator, columns: batch size).",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), device {where}, torch {m['torch']}, "
        f"{m['threads']} thread(s); load average (1 min) {result['load_average'][0]:.1f} at start, "
        f"{result['load_average'][1]:.1f} at end.",
        "",
    ]
    lines += [f"* {g.label}: {g.model}" for g in generators]
    lines += [
        "",
        "| generator | " + " | ".join(f"{b:,}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    by_key = {(c.generator, c.batch): c for c in cells}
    for g in generators:
        lines.append(
            f"| {g.label} | " + " | ".join(cell_text(by_key[g.name, b]) for b in batches) + " |"
        )
    lines += [
        "",
        "Full pipeline per call of `batch` showers (CaloFlow: Flow I + Flow II + post-processing; "
        "CaloGAN: generator + flattening), after one untimed warm-up call, "
        + (
            "one call per cell"
            if result["repeats"] == 1
            else f"best of up to {result['repeats']} calls"
        )
        + (", `torch.cuda.synchronize` around each" if where != "cpu" else "")
        + ". "
        f"`~x (est.)`: not run because its estimate exceeded --max-seconds {result['max_seconds']:g}; "
        "estimated from the smaller batches measured (fit t = a + b n with two or more, else "
        "proportional to the largest one, an upper bound).",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("models (default: untrained paper-size models)")
    model.add_argument("--flow1", help="Flow I checkpoint (.ckpt); needs --flow2")
    model.add_argument("--flow2", help="Flow II checkpoint (.ckpt); needs --flow1")
    model.add_argument("--calogan", help="CaloGAN checkpoint (.ckpt)")
    model.add_argument(
        "--paper-size",
        action="store_true",
        help="untrained paper-size models with random weights (also the default without checkpoints)",
    )
    parser.add_argument(
        "--simulator",
        default="eplus",
        metavar="PARTICLE",
        help="particle for the embedded simulator row (default eplus)",
    )
    parser.add_argument(
        "--generators",
        type=argtypes.comma_list(GENERATORS, what="generator"),
        default=",".join(GENERATORS),
        help=f"comma-separated subset of {','.join(GENERATORS)} (default: all)",
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=argtypes.positive_int,
        default=list(DEFAULT_BATCH_SIZES),
        help="batch sizes (default 10 100 1000 10000)",
    )
    parser.add_argument(
        "--device",
        type=argtypes.device,
        default="cpu",
        help="cpu or cuda[:N] (default cpu); the simulator runs on the CPU",
    )
    argtypes.add_threads_option(parser, None)
    parser.add_argument(
        "--max-seconds",
        type=argtypes.positive_float,
        default=600.0,
        help="a cell whose estimated time per call exceeds this is estimated, not run (default 600)",
    )
    parser.add_argument(
        "--repeats",
        type=argtypes.positive_int,
        default=3,
        help="timed calls per cell, the best is reported (default 3)",
    )
    parser.add_argument(
        "--seed",
        type=argtypes.seed,
        default=0,
        help="seed of the energies, latent draws and random weights (default 0)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=argtypes.output_dir,
        help="output folder for benchmark.json and benchmark.md",
    )


def _check(args: argparse.Namespace) -> dict:
    from caloflow.data.simulate import PARTICLES

    names = args.generators
    batch_sizes = sorted(set(args.batch_sizes))
    if bool(args.flow1) != bool(args.flow2):
        raise CaloflowError("--flow1 and --flow2 go together: give both or neither")
    if args.paper_size and (args.flow1 or args.calogan):
        raise CaloflowError("--paper-size uses untrained models: give it or checkpoints, not both")
    for option, path, model in (
        ("--flow1", args.flow1, "caloflow.models.FlowI"),
        ("--flow2", args.flow2, "caloflow.models.FlowII"),
        ("--calogan", args.calogan, "caloflow.models.CaloGAN"),
    ):
        if path and not Path(path).is_file():
            raise CaloflowError(f"{option} {path}: no such checkpoint file")
        if path:  # readable, and of the right model, before anything is built or timed
            from caloflow.checkpoints import checkpoint_model_mismatch, read_checkpoint

            mismatch = checkpoint_model_mismatch(read_checkpoint(path, option), model)
            if mismatch:
                raise CaloflowError(f"{option} {path}: {mismatch}")
    if "simulator" in names and args.simulator not in PARTICLES:
        raise CaloflowError(
            f"--simulator: unknown particle '{args.simulator}', expected one of {', '.join(PARTICLES)}"
        )
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CaloflowError(
            f"--device: '{args.device}' is not a torch device (cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaloflowError(f"--device {args.device}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise CaloflowError(f"--device: expected cpu or cuda, got '{args.device}'")
    return dict(
        names=names,
        batch_sizes=batch_sizes,
        device=device,
        out=Path(args.out),
        threads=args.threads,
        max_seconds=args.max_seconds,
        repeats=args.repeats,
        seed=args.seed,
    )


def command_line(args: argparse.Namespace, opts: dict) -> str:
    """The command that reproduces this run (options in canonical form)."""
    parts = ["caloflow", "benchmark"]
    for option in ("flow1", "flow2", "calogan"):
        if getattr(args, option):
            parts += [f"--{option}", getattr(args, option)]
    if args.paper_size:
        parts.append("--paper-size")
    parts += ["--generators", ",".join(opts["names"])]
    if "simulator" in opts["names"]:
        parts += ["--simulator", args.simulator]
    parts += ["--batch-sizes", *map(str, opts["batch_sizes"]), "--device", args.device]
    if opts["threads"]:
        parts += ["--threads", str(opts["threads"])]
    parts += [
        "--max-seconds",
        f"{opts['max_seconds']:g}",
        "--repeats",
        str(opts["repeats"]),
        "--seed",
        str(opts["seed"]),
        "--out",
        str(args.out),
    ]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    opts = _check(args)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    device = opts["device"]

    def log(line: str) -> None:
        print(f"benchmark: {line}", file=sys.stderr, flush=True)

    load_start = os.getloadavg()[0]
    log("building the models")
    generators = build_generators(args, opts["names"], device, opts["seed"])
    cells: list[Cell] = []
    for gen in generators:
        cells += time_generator(
            gen, opts["batch_sizes"], device, opts["max_seconds"], opts["repeats"], log
        )

    result = {
        "command": command_line(args, opts),
        "machine": machine_info(device),
        "load_average": [load_start, os.getloadavg()[0]],
        "batch_sizes": opts["batch_sizes"],
        "generators": {g.name: {"label": g.label, "model": g.model} for g in generators},
        "max_seconds": opts["max_seconds"],
        "repeats": opts["repeats"],
        "seed": opts["seed"],
        "warmup_batch": min(WARMUP_BATCH, min(opts["batch_sizes"])),
        "cells": [vars(c) for c in cells],
    }
    table = markdown(result, generators, cells)
    out = opts["out"]
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "benchmark.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "benchmark.md", table)
    print(table)
    print(f"caloflow benchmark: wrote {out / 'benchmark.json'} and {out / 'benchmark.md'}")
    return 0


__all__ = [
    "GENERATORS",
    "DEFAULT_BATCH_SIZES",
    "ENERGY_RANGE_GEV",
    "WARMUP_BATCH",
    "PAPER_SIZE",
    "Generator",
    "Cell",
    "estimate_seconds",
    "time_generator",
    "build_generators",
    "cell_text",
    "markdown",
    "add_arguments",
    "command_line",
    "run",
]
