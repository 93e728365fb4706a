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

``--dataset ds1-photons`` or ``ds1-pions`` times the CaloChallenge dataset-1 teacher instead
(arXiv:2210.14245): without checkpoints, Flow I and Flow II built from the shipped
``configs/ds1/<particle>/flow1.yaml`` and ``flow2.yaml`` (random weights; ``--configs DIR``: the
``flow1.yaml`` and ``flow2.yaml`` of another folder, e.g. smaller ones for a quick run), with
``--flow1/--flow2`` trained dataset-1 models of that detector. The incident energies are the
challenge's mix (:func:`caloflow.data.barrel.challenge_energies`), and a call is the whole pipeline
of ``caloflow generate``: Flow I, Flow II, post-processing (inverse preprocessing, 0.01 MeV
threshold) *and writing* the showers to a CaloChallenge HDF5 file
(:class:`caloflow.data.io.ShowerWriter`, gzip, float64 energies), ``<generator>.hdf5`` in ``--out``
(each call replaces it: the last call's showers are left). The rows are ``caloflow-fast`` and
``caloflow-nflows`` (``calogan`` and ``simulator`` belong to the CaloGAN detector and are refused);
the columns are ``--batch-sizes`` and ``--nflows-batch``, a small batch at which nflows' inverse is
always run (its larger cells are estimated as above when over ``--max-seconds``). The fast pipeline
runs every column whatever its estimate (after a jump from a few showers to 10,000 the proportional
estimate is far too large: the fixed cost per call dominates small batches); ``--max-seconds`` then
limits only its repeats. The report adds the ratio of nflows' time per shower at its batch to the
fast pipeline's at its largest measured batch, and where those milliseconds go at that batch
(Flow I; latent draw and Flow II's fast inverse; post-processing; writing), each stage timed on its
own in one more call.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Collection
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
#: ``--dataset``: the CaloGAN detector (the paper's table 4) or a CaloChallenge dataset-1 detector
DATASETS = ("calogan", "ds1-photons", "ds1-pions")
#: the rows of a dataset-1 run (the CaloGAN baseline and the CaloGAN simulator have no dataset-1 model)
DS1_GENERATORS = ("caloflow-fast", "caloflow-nflows")
#: ``--nflows-batch``: showers per call of nflows' inverse in a dataset-1 run
DEFAULT_NFLOWS_BATCH = 5
ENERGY_RANGE_GEV = (1.0, 100.0)
#: showers in the untimed warm-up call of each generator
WARMUP_BATCH = 2
PAPER_SIZE = "untrained paper-size model, random weights (timing does not depend on training)"
TEACHER_SIZE = (
    "untrained teacher-size models of configs/ds1/{particle}/flow1.yaml and flow2.yaml, random "
    "weights (timing does not depend on training)"
)


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


def _measure(gen: Generator, cell: Cell, device, max_seconds: float, repeats: int) -> bool:
    """Time ``gen`` at ``cell.batch`` into ``cell`` (``repeats`` calls, fewer when the next would pass
    ``max_seconds`` in all); False when the device ran out of memory."""
    try:
        while True:
            redraws, seconds = timed(lambda: gen.run(cell.batch), device)
            cell.seconds_per_call.append(seconds)
            cell.redraws += redraws
            spent, best = sum(cell.seconds_per_call), min(cell.seconds_per_call)
            if len(cell.seconds_per_call) >= repeats or spent + best > max_seconds:
                return True
    except Exception as e:
        if not _out_of_memory(e):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return False


def time_generator(
    gen: Generator,
    batch_sizes: list[int],
    device: torch.device,
    max_seconds: float,
    repeats: int,
    log: Callable[[str], None] = print,
    required: Collection[int] = (),
) -> list[Cell]:
    """Warm up ``gen``, then time it at each batch size (ascending); returns one :class:`Cell` per batch.

    The batches in ``required`` are run whatever their estimate (a dataset-1 run's fast pipeline
    and ``--nflows-batch``); ``max_seconds`` then limits only their repeats.
    """
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
        if est_s > max_seconds and batch not in required:
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
        if not _measure(gen, cell, device, max_seconds, repeats):
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


def _caloflow_generators(args, names: list[str], device, seed: int, energies_for, noise) -> list:
    """``caloflow-fast`` and ``caloflow-nflows`` (those in ``names``): one CaloFlow, two inverses."""
    from caloflow.sampling import CaloFlow

    if args.flow1:
        flow = CaloFlow.load(args.flow1, args.flow2, str(device))
        source = f"checkpoints {args.flow1}, {args.flow2}"
    else:
        from caloflow.models.flows import FlowI, FlowII

        torch.manual_seed(seed)
        flow, source = CaloFlow(FlowI().to(device), FlowII().to(device)), PAPER_SIZE
    n_params = _count(flow.flow1) + _count(flow.flow2)
    model = f"Flow I + Flow II, {n_params:,} parameters: {source}"
    generators = []
    for name, fast in (("caloflow-fast", True), ("caloflow-nflows", False)):
        if name in names:

            def run(batch: int, fast: bool = fast) -> int:
                flow.sample(energies_for(batch), noise, batch_size=batch, fast=fast)
                return flow.redraws

            generators.append(Generator(name, GENERATORS[name], run, model))
    return generators


def _calogan_generator(args, device, seed: int, energies_for, noise) -> Generator:
    from caloflow.sampling import CaloGANSampler

    if args.calogan:
        gan, source = CaloGANSampler.load(args.calogan, str(device)), f"checkpoint {args.calogan}"
    else:
        from caloflow.models.calogan import CaloGAN

        torch.manual_seed(seed)
        gan, source = CaloGANSampler(CaloGAN().to(device)), PAPER_SIZE
    model = f"generator, {_count(gan.model.generator):,} parameters: {source}"

    def run_gan(batch: int) -> int:
        gan.sample(energies_for(batch), noise, batch_size=batch)
        return gan.redraws

    return Generator("calogan", GENERATORS["calogan"], run_gan, model)


def _simulator_generator(particle: str, seed: int) -> Generator:
    from caloflow.data.simulate import SIMULATOR_VERSION, simulate

    def run_simulator(batch: int) -> int:
        simulate(particle, batch, seed, progress=False)
        return 0

    model = f"{SIMULATOR_VERSION}, {particle}, numpy on the CPU (batch = showers per call)"
    return Generator("simulator", f"simulator ({particle})", run_simulator, model)


def build_generators(
    args: argparse.Namespace, names: list[str], device: torch.device, seed: int
) -> list[Generator]:
    """The requested generators, each as ``run(batch) -> redraws`` on ``device`` (``--dataset``
    calogan; a dataset-1 run builds its rows with :func:`build_ds1_generators`). Every generator
    draws the same incident energies per batch size, and its latent noise on the CPU (so the draws
    do not depend on the device)."""
    from caloflow.sampling import requested_energies

    energies = {}

    def energies_for(batch: int) -> np.ndarray:
        if batch not in energies:
            energies[batch] = requested_energies(batch, None, ENERGY_RANGE_GEV, seed)
        return energies[batch]

    noise = torch.Generator().manual_seed(seed)
    generators = []
    if {"caloflow-fast", "caloflow-nflows"} & set(names):
        generators += _caloflow_generators(args, names, device, seed, energies_for, noise)
    if "calogan" in names:
        generators.append(_calogan_generator(args, device, seed, energies_for, noise))
    if "simulator" in names:
        generators.append(_simulator_generator(args.simulator, seed))
    order = {name: i for i, name in enumerate(names)}
    return sorted(generators, key=lambda g: order[g.name])


# ------------------------------------------------------------------------------------- dataset 1
def ds1_particle(dataset: str) -> str:
    """The config folder of a dataset-1 ``--dataset``: ``photons`` or ``pions``."""
    return dataset.removeprefix("ds1-")


def teacher_configs(dataset: str, folder: str | None) -> dict[str, dict]:
    """The ``model.init_args`` of ``flow1.yaml`` and ``flow2.yaml`` in ``folder`` (default: the shipped
    ``configs/ds1/<particle>``, the dataset-1 teacher of arXiv:2210.14245), checked to be Flow I and
    Flow II configs of the ``dataset`` detector.

    Raises:
        CaloflowError: a file is missing, not YAML, has no ``model.init_args`` or another geometry.
    """
    import yaml

    from caloflow.configs import CONFIG_DIR

    root = Path(folder) if folder else CONFIG_DIR / "ds1" / ds1_particle(dataset)
    found = {}
    for name in ("flow1", "flow2"):
        path = root / f"{name}.yaml"
        try:
            init_args = yaml.safe_load(path.read_text())["model"]["init_args"]
        except OSError:
            raise CaloflowError(f"--configs {root}: no readable {name}.yaml in it") from None
        except (yaml.YAMLError, KeyError, TypeError):
            raise CaloflowError(f"--configs {path}: not a config with model.init_args") from None
        if init_args.get("geometry") != dataset:
            raise CaloflowError(
                f"--configs {path}: model.init_args.geometry is {init_args.get('geometry')!r}, "
                f"not --dataset {dataset}"
            )
        found[name] = init_args
    return found


def teacher_flows(dataset: str, device: torch.device, seed: int, folder: str | None = None):
    """Untrained Flow I and Flow II of :func:`teacher_configs` (default: the dataset-1 teacher), weights
    drawn with ``seed``, as a :class:`caloflow.sampling.CaloFlow`."""
    from caloflow.models.flows import FlowI, FlowII
    from caloflow.sampling import CaloFlow

    init_args = teacher_configs(dataset, folder)
    torch.manual_seed(seed)
    try:
        flow1 = FlowI(**init_args["flow1"]).to(device)
        flow2 = FlowII(**init_args["flow2"]).to(device)
    except (TypeError, ValueError) as e:  # an unknown or bad init argument in a config
        raise CaloflowError(f"--configs {folder}: cannot build the flows ({e})") from None
    return CaloFlow(flow1, flow2)


def ds1_energies(dataset: str, batch: int, seed: int):
    """The incident energies (GeV) of a call of ``batch`` showers: the challenge's mix in its
    proportions (:func:`caloflow.data.barrel.challenge_energies`), as ``caloflow generate --energies
    challenge`` passes them (float64, written back exactly)."""
    from caloflow.data.barrel import challenge_energies
    from caloflow.sampling import IncidentEnergies

    values = challenge_energies(dataset, batch, seed)
    return IncidentEnergies(None, None, None, seed, values=values)


def pipeline(flow, out_dir: Path, seed: int) -> Callable[[int, str, bool], int]:
    """``run(batch, name, fast) -> redraws``: the whole ``caloflow generate`` pipeline for one batch of
    the challenge's energies, written to ``out_dir/<name>.hdf5`` (gzip, the project's format)."""
    from caloflow.data.io import ShowerWriter

    energies: dict[int, object] = {}
    noise = torch.Generator().manual_seed(seed)

    def run(batch: int, name: str, fast: bool) -> int:
        if batch not in energies:
            energies[batch] = ds1_energies(flow.geometry.name, batch, seed)
        attrs = {"generator": "caloflow", "seed": seed, "fast_sampling": fast}
        with ShowerWriter(
            out_dir / f"{name}.hdf5", attrs=attrs, expected_rows=batch, geometry=flow.geometry
        ) as out:
            flow.sample(energies[batch], noise, batch_size=batch, fast=fast, out=out)
            out.attrs["redrawn_nonfinite"] = flow.redraws
        return flow.redraws

    return run


def build_ds1_generators(
    args: argparse.Namespace, names: list[str], device: torch.device, seed: int
) -> tuple[list[Generator], object]:
    """The dataset-1 rows (:data:`DS1_GENERATORS` requested), each the whole pipeline including the
    file; returns them and the :class:`CaloFlow` they run (for :func:`stage_breakdown`)."""
    from caloflow.sampling import CaloFlow

    if args.flow1:
        flow = CaloFlow.load(args.flow1, args.flow2, str(device))
        source = f"checkpoints {args.flow1}, {args.flow2}"
    else:
        flow = teacher_flows(args.dataset, device, seed, args.configs)
        source = (
            f"untrained models of {args.configs}/flow1.yaml and flow2.yaml, random weights"
            if args.configs
            else TEACHER_SIZE.format(particle=ds1_particle(args.dataset))
        )
    n_params = _count(flow.flow1) + _count(flow.flow2)
    model = (
        f"Flow I + Flow II ({flow.geometry.name}, {flow.geometry.n_voxels} voxels), "
        f"{n_params:,} parameters: {source}; challenge energies; written to a CaloChallenge file"
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = pipeline(flow, out_dir, seed)
    generators = [
        Generator(
            name,
            GENERATORS[name],
            lambda b, name=name: run(b, name, name == "caloflow-fast"),
            model,
        )
        for name in DS1_GENERATORS
        if name in names
    ]
    return generators, flow


@torch.no_grad()
def stage_breakdown(flow, dataset: str, batch: int, seed: int, path: Path, device) -> dict:
    """Seconds of each stage of the fast pipeline for one call of ``batch`` showers, each timed on its
    own (the stages of :meth:`CaloFlow.sample_batch` and the writer; no redraws, which are rare):
    Flow I (latent draw, inverse, inverse u-transform), Flow II's latent draw, context and fast
    inverse, the post-processing (inverse logit, per-layer renormalisation, 0.01 MeV threshold, copy
    to the host) and writing the CaloChallenge file."""
    from caloflow.data.io import ShowerWriter

    noise = torch.Generator().manual_seed(seed)
    energies = np.asarray(ds1_energies(dataset, batch, seed))
    incident = torch.as_tensor(energies, dtype=torch.float32)
    f2 = flow.flow2.eval()
    layers, t_flow1 = timed(lambda: flow.flow1.sample(incident, noise), device)

    def invert():
        z = f2._latent(batch, noise, f2.flow_dtype)
        inc = f2._incident(incident)
        context = f2.preprocessing.context(inc, layers.to(f2.device)).to(z.dtype)
        return f2.invert(z, context, fast=True)

    x, t_inverse = timed(invert, device)

    def postprocess():
        voxels = f2.preprocessing.inverse(x, layers.to(f2.device), threshold=True)
        return f2._mark_nonfinite(x, voxels).cpu().numpy()

    voxels, t_post = timed(postprocess, device)

    def write():
        with ShowerWriter(path, expected_rows=batch, geometry=flow.geometry) as out:
            out.append(voxels, energies)

    _, t_write = timed(write, device)
    stages = {
        "flow1": t_flow1,
        "flow2_inverse": t_inverse,
        "postprocessing": t_post,
        "writing": t_write,
    }
    return {"batch": batch, "seconds": stages, "total_s": sum(stages.values())}


# ------------------------------------------------------------------------------------- report
def cell_text(cell: Cell) -> str:
    if cell.status == "measured":
        return format_ms(cell.ms_per_shower)
    if cell.status == "estimated":
        return f"~{format_ms(cell.ms_per_shower)} (est.)"
    return f"- ({cell.reason})"


def compare(cells: list[Cell], nflows_batch: int) -> dict | None:
    """nflows' inverse at ``nflows_batch`` against the fast pipeline at its largest measured batch, in
    ms per shower, and their ratio (None unless both were measured)."""
    fast = [c for c in cells if c.generator == "caloflow-fast" and c.status == "measured"]
    slow = [
        c
        for c in cells
        if c.generator == "caloflow-nflows" and c.batch == nflows_batch and c.status == "measured"
    ]
    if not fast or not slow:
        return None
    best = max(fast, key=lambda c: c.batch)
    return {
        "fast_batch": best.batch,
        "fast_ms_per_shower": best.ms_per_shower,
        "nflows_batch": nflows_batch,
        "nflows_ms_per_shower": slow[0].ms_per_shower,
        "ratio": slow[0].ms_per_shower / best.ms_per_shower,
    }


STAGES = {
    "flow1": "Flow I",
    "flow2_inverse": "Flow II latent draw, context and fast inverse",
    "postprocessing": "post-processing (inverse logit, renormalisation, 0.01 MeV threshold, to host)",
    "writing": "writing the CaloChallenge file (gzip)",
}


def ds1_lines(result: dict) -> list[str]:
    """The dataset-1 report: the comparison with nflows' inverse and the stages of the fast pipeline."""
    lines = []
    c = result.get("comparison")
    if c:
        lines += [
            "",
            f"nflows inverse at batch {c['nflows_batch']:,}: {format_ms(c['nflows_ms_per_shower'])} "
            f"ms/shower; fast pipeline at batch {c['fast_batch']:,}: "
            f"{format_ms(c['fast_ms_per_shower'])} ms/shower; ratio {c['ratio']:,.0f}x.",
        ]
    b = result.get("breakdown")
    if b:
        lines += [
            "",
            f"Where the fast pipeline's time goes at batch {b['batch']:,} (one call, each stage "
            "timed on its own), ms per shower:",
            "",
            "| stage | ms/shower | share |",
            "|---|---:|---:|",
        ]
        for key, seconds in b["seconds"].items():
            lines.append(
                f"| {STAGES[key]} | {format_ms(1e3 * seconds / b['batch'])} | "
                f"{100 * seconds / b['total_s']:.0f}% |"
            )
        lines.append(f"| sum | {format_ms(1e3 * b['total_s'] / b['batch'])} | 100% |")
    return lines


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
    ds1 = result.get("dataset", "calogan") != "calogan"
    lines += ds1_lines(result) if ds1 else []
    pipeline_text = (
        f"CaloFlow, {result.get('dataset')}: Flow I + Flow II + post-processing + writing the "
        "showers to a CaloChallenge HDF5 file (gzip), at the challenge's incident energies"
        if ds1
        else "CaloFlow: Flow I + Flow II + post-processing; CaloGAN: generator + flattening"
    )
    lines += [
        "",
        f"Full pipeline per call of `batch` showers ({pipeline_text}), after one untimed warm-up call, "
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
def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--nflows-batch`` and ``--configs``: what a dataset-1 run times."""
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="calogan",
        help="calogan (the paper's table 4, default) or the dataset-1 teacher: ds1-photons, ds1-pions "
        "(whole pipeline including the CaloChallenge file)",
    )
    parser.add_argument(
        "--nflows-batch",
        type=argtypes.positive_int,
        default=DEFAULT_NFLOWS_BATCH,
        help=f"dataset 1: showers per call at which nflows' inverse is always run (default "
        f"{DEFAULT_NFLOWS_BATCH}); added to the batch sizes",
    )
    parser.add_argument(
        "--configs",
        metavar="DIR",
        help="dataset 1 without checkpoints: a folder with the flow1.yaml and flow2.yaml to build "
        "(default: the shipped configs/ds1/<particle>, the teacher)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
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
        default=None,
        help=f"comma-separated subset of {','.join(GENERATORS)} (default: all; dataset 1: "
        f"{','.join(DS1_GENERATORS)})",
    )
    _add_timing_options(parser.add_argument_group("timing"))
    argtypes.add_threads_option(parser, None)
    argtypes.add_progress_option(parser)  # the same option as every command; this one draws no bars
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


def _add_timing_options(group) -> None:
    group.add_argument(
        "--batch-sizes",
        nargs="+",
        type=argtypes.positive_int,
        default=list(DEFAULT_BATCH_SIZES),
        help="batch sizes (default 10 100 1000 10000)",
    )
    group.add_argument(
        "--device",
        type=argtypes.device,
        default="cpu",
        help="cpu or cuda[:N] (default cpu); the simulator runs on the CPU",
    )
    group.add_argument(
        "--max-seconds",
        type=argtypes.positive_float,
        default=600.0,
        help="a cell whose estimated time per call exceeds this is estimated, not run (default 600)",
    )
    group.add_argument(
        "--repeats",
        type=argtypes.positive_int,
        default=3,
        help="timed calls per cell, the best is reported (default 3)",
    )


def _check(args: argparse.Namespace) -> dict:
    from caloflow.data.simulate import PARTICLES

    ds1 = args.dataset != "calogan"
    names = args.generators or list(DS1_GENERATORS if ds1 else GENERATORS)
    batch_sizes = sorted(set(args.batch_sizes) | ({args.nflows_batch} if ds1 else set()))
    if bool(args.flow1) != bool(args.flow2):
        raise CaloflowError("--flow1 and --flow2 go together: give both or neither")
    if ds1:
        _check_ds1(args, names)
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
    if not ds1 and args.configs:
        raise CaloflowError(
            "--configs: builds dataset-1 models; give --dataset ds1-photons or ds1-pions"
        )
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
        dataset=args.dataset,
        nflows_batch=args.nflows_batch if ds1 else None,
        names=names,
        batch_sizes=batch_sizes,
        device=device,
        out=Path(args.out),
        threads=args.threads,
        max_seconds=args.max_seconds,
        repeats=args.repeats,
        seed=args.seed,
    )


def _checkpoint_geometry(ckpt: dict) -> str:
    """The detector name a Flow checkpoint was built for (no ``geometry`` hyperparameter: CaloGAN)."""
    from caloflow.geometry import get_geometry

    spec = ckpt.get("hyper_parameters", {}).get("geometry", "calogan")
    return get_geometry(spec).name


def _check_ds1(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse, in one line, what a dataset-1 run cannot time: the CaloGAN-only rows, checkpoints of
    another detector, configs that cannot be built for it."""
    if args.calogan:
        raise CaloflowError(
            f"--calogan: the CaloGAN baseline generates CaloGAN showers, not --dataset {args.dataset}"
        )
    other = [name for name in names if name not in DS1_GENERATORS]
    if other:
        raise CaloflowError(
            f"--generators: no {','.join(other)} row for --dataset {args.dataset} (its rows: "
            f"{','.join(DS1_GENERATORS)}; calogan and simulator are CaloGAN-detector rows)"
        )
    if args.configs and args.flow1:
        raise CaloflowError("--configs builds untrained models: give it or checkpoints, not both")
    if not args.flow1:
        teacher_configs(
            args.dataset, args.configs
        )  # readable and of this detector, before any work
    for option, path in (("--flow1", args.flow1), ("--flow2", args.flow2)):
        if path and Path(path).is_file():
            from caloflow.checkpoints import read_checkpoint

            geometry = _checkpoint_geometry(read_checkpoint(path, option))
            if geometry != args.dataset:
                raise CaloflowError(
                    f"{option} {path}: a {geometry} model, not one of --dataset {args.dataset}"
                )


def command_line(args: argparse.Namespace, opts: dict) -> str:
    """The command that reproduces this run (options in canonical form)."""
    parts = ["caloflow", "benchmark"]
    if args.dataset != "calogan":
        parts += ["--dataset", args.dataset, "--nflows-batch", str(args.nflows_batch)]
        if args.configs:
            parts += ["--configs", args.configs]
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


def _time_all(args: argparse.Namespace, opts: dict, log: Callable[[str], None]) -> dict:
    """Build the generators, time each, and (dataset 1) break the fast pipeline down; the result's
    generators, cells, comparison and breakdown."""
    device, ds1 = opts["device"], opts["dataset"] != "calogan"
    log("building the models")
    if ds1:
        generators, flow = build_ds1_generators(args, opts["names"], device, opts["seed"])
    else:
        generators = build_generators(args, opts["names"], device, opts["seed"])
    cells: list[Cell] = []
    for gen in generators:
        required = []
        if ds1:  # the fast pipeline runs every column; nflows' inverse runs its small batch
            is_fast = gen.name == "caloflow-fast"
            required = opts["batch_sizes"] if is_fast else [opts["nflows_batch"]]
        cells += time_generator(
            gen, opts["batch_sizes"], device, opts["max_seconds"], opts["repeats"], log, required
        )
    found = {"generators": generators, "cells": cells, "comparison": None, "breakdown": None}
    if ds1:
        found["comparison"] = compare(cells, opts["nflows_batch"])
        ran = [c.batch for c in cells if c.generator == "caloflow-fast" and c.status == "measured"]
        if ran:  # at the largest batch the fast pipeline was run at
            batch = max(ran)
            log(f"caloflow-fast batch {batch:,}: timing each stage on its own")
            found["breakdown"] = stage_breakdown(
                flow, opts["dataset"], batch, opts["seed"], opts["out"] / "stages.hdf5", device
            )
            (opts["out"] / "stages.hdf5").unlink(missing_ok=True)
    return found


def run(args: argparse.Namespace) -> int:
    opts = _check(args)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    device = opts["device"]

    def log(line: str) -> None:
        print(f"benchmark: {line}", file=sys.stderr, flush=True)

    load_start = os.getloadavg()[0]
    found = _time_all(args, opts, log)
    generators, cells = found["generators"], found["cells"]
    result = {
        "command": command_line(args, opts),
        "machine": machine_info(device),
        "load_average": [load_start, os.getloadavg()[0]],
        "dataset": opts["dataset"],
        "batch_sizes": opts["batch_sizes"],
        "generators": {g.name: {"label": g.label, "model": g.model} for g in generators},
        "max_seconds": opts["max_seconds"],
        "repeats": opts["repeats"],
        "seed": opts["seed"],
        "warmup_batch": min(WARMUP_BATCH, min(opts["batch_sizes"])),
        "cells": [vars(c) for c in cells],
    }
    if opts["dataset"] != "calogan":
        result.update(
            nflows_batch=opts["nflows_batch"],
            comparison=found["comparison"],
            breakdown=found["breakdown"],
        )
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
    "DATASETS",
    "DS1_GENERATORS",
    "DEFAULT_NFLOWS_BATCH",
    "TEACHER_SIZE",
    "STAGES",
    "ds1_particle",
    "teacher_configs",
    "teacher_flows",
    "ds1_energies",
    "pipeline",
    "build_ds1_generators",
    "stage_breakdown",
    "compare",
    "ds1_lines",
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
    "add_dataset_arguments",
    "add_arguments",
    "command_line",
    "run",
]
