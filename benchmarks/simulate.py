"""Throughput of the embedded shower simulators (showers per second, per particle and detector).

Prints markdown tables. Wall-clock rates depend on what else runs on the machine; the CPU-time
rate (process time of this single-threaded run) is the cost on one core. Targets: at least 1,000
CaloGAN e+ showers per second on one core; at least 2,000 dataset-1 photons per second on one
core at the official energy mix, a cost that does not grow with the energy (the same rate at
4.19 TeV) and a peak memory that does not grow with the number of showers written to a file.

    python benchmarks/simulate.py --n 20000 --ds1-n 20000 --memory-n 2000 20000 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from _tiny import add_smoke_option, apply_smoke

#: ``--smoke``: the options it shrinks (two chunks of the simulator per particle, two repeats)
SMOKE = {"n": 64, "repeats": 2, "ds1_n": 512, "memory_n": [256, 1024]}
#: The dataset-1 settings: (detector, energies); "challenge" is the official mix scaled to the n.
DS1_SETTINGS = (("ds1-photons", "challenge"), ("ds1-pions", "challenge"), ("ds1-photons", 4194.304))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke``: the options in SMOKE, where not given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="showers per particle and repeat")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (numpy, torch)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per particle; the best is reported"
    )
    parser.add_argument("--particles", nargs="+", default=["eplus", "gamma", "piplus"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ds1-n", type=int, default=20000, help="dataset-1 showers per setting and repeat"
    )
    parser.add_argument(
        "--memory-n",
        type=int,
        nargs="+",
        default=[2000, 20000],
        help="dataset-1 photon files written to measure the peak memory against the size",
    )
    add_smoke_option(
        parser,
        f"{SMOKE['n']} showers per particle, {SMOKE['ds1_n']} per dataset-1 setting, files of "
        f"{' and '.join(map(str, SMOKE['memory_n']))}, {SMOKE['repeats']} repeats",
    )
    return apply_smoke(parser, parser.parse_args(argv), SMOKE)


def measure(particle: str, args: argparse.Namespace) -> tuple:
    """One table row: particle, n, best wall seconds, showers/s (best wall, median wall, CPU time), the
    fraction of voxels > 0. ``--repeats`` timed runs of ``--n`` showers after one warm-up chunk."""
    import time

    import numpy as np

    from caloflow.data.simulate import CHUNK_SIZE, simulate

    simulate(particle, CHUNK_SIZE, seed=args.seed, progress=False)  # warm-up
    wall, cpu = [], []
    for repeat in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        showers = simulate(particle, args.n, seed=args.seed + repeat, progress=False)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    occupancy = float(np.mean(showers.voxels > 0))
    return (
        particle,
        args.n,
        min(wall),
        args.n / min(wall),
        args.n / float(np.median(wall)),
        args.n / min(cpu),
        occupancy,
    )


def measure_ds1(name: str, energies, args: argparse.Namespace) -> tuple:
    """One dataset-1 row: detector, energies, n, best wall seconds, showers/s (best wall, CPU time),
    the spots per shower and the fraction of voxels > 0 (in memory, no file)."""
    import time

    import numpy as np

    from caloflow.data.barrel import (
        DATASET_PARTICLES,
        challenge_energies,
        simulate_barrel,
        spots_per_shower,
    )
    from caloflow.geometry import get_geometry

    geometry = get_geometry(name)
    n = args.ds1_n
    if energies == "challenge":
        e = challenge_energies(geometry, n, seed=args.seed)
        label = "challenge mix"
    else:
        e = np.full(n, float(energies))
        label = f"{energies:.10g} GeV"
    simulate_barrel(geometry, 64, args.seed, e[:64])  # warm-up
    wall, cpu = [], []
    for repeat in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        showers = simulate_barrel(geometry, n, args.seed + repeat, e)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    spots = spots_per_shower(geometry, DATASET_PARTICLES[name])
    occupancy = float(np.mean(showers.voxels > 0))
    return name, label, n, min(wall), n / min(wall), n / min(cpu), spots, occupancy


def measure_memory(n: int, args: argparse.Namespace) -> tuple:
    """One memory row: n ds1-photons (challenge mix) streamed to a file; wall seconds, showers/s
    (CPU time) and the peak of the memory traced by tracemalloc (Python and numpy) in MiB."""
    import tempfile
    import time
    import tracemalloc
    from pathlib import Path

    from caloflow.data.barrel import simulate_barrel_to_file
    from caloflow.geometry import DS1_PHOTONS

    with tempfile.TemporaryDirectory() as folder:
        tracemalloc.start()
        t0, c0 = time.perf_counter(), time.process_time()
        simulate_barrel_to_file(Path(folder) / "p.hdf5", DS1_PHOTONS, n, args.seed, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return "ds1-photons", n, wall, n / cpu, peak / 2**20


def print_ds1(rows: list[tuple], memory: list[tuple], args: argparse.Namespace) -> None:
    """The dataset-1 tables: showers per second per setting, then peak memory against n."""
    print()
    print(
        "| detector | energies | n | best wall [s] | showers/s (best wall) | showers/s (CPU time) "
        "| spots per shower | voxels > 0 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, label, n, best, rate, cpu_rate, spots, occ in rows:
        print(
            f"| {name} | {label} | {n} | {best:.2f} | {rate:,.0f} | {cpu_rate:,.0f} | {spots} "
            f"| {occ:.3f} |"
        )
    print()
    print("| file | n | wall [s] (written) | showers/s (CPU time) | peak traced memory [MiB] |")
    print("|---|---|---|---|---|")
    for name, n, wall, cpu_rate, peak in memory:
        print(f"| {name} | {n} | {wall:.2f} | {cpu_rate:,.0f} | {peak:.1f} |")
    print()
    print(
        "Targets: >= 2,000 ds1-photons/s on one core at the challenge mix; the same cost at "
        "4.19 TeV; peak memory independent of n (the energies, 8 bytes a shower, aside)."
    )


def main(argv: list[str] | None = None) -> int:
    """Time the simulator per particle and print the table (showers per second)."""
    args = parse_args(argv)
    # thread pools are sized when numpy is first imported: set the limits before that
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np

    from caloflow.data.simulate import SIMULATOR_VERSION

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:  # the simulator itself does not use torch
        pass

    rows = [measure(particle, args) for particle in args.particles]
    ds1_rows = [measure_ds1(name, energies, args) for name, energies in DS1_SETTINGS]
    memory = [measure_memory(n, args) for n in args.memory_n]

    print(
        f"Simulator {SIMULATOR_VERSION}, {args.threads} thread(s), best of {args.repeats}, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, load average before: {os.getloadavg()[0]:.2f}"
    )
    print()
    print(
        "| particle | n | best wall [s] | showers/s (best wall) | showers/s (median wall) "
        "| showers/s (CPU time) | voxels > 0 |"
    )
    print("|---|---|---|---|---|---|---|")
    for particle, n, best, rate, median_rate, cpu_rate, occ in rows:
        print(
            f"| {particle} | {n} | {best:.2f} | {rate:,.0f} | {median_rate:,.0f} | {cpu_rate:,.0f} | {occ:.3f} |"
        )
    print()
    print("Target: >= 1,000 e+ showers/s on one core.")
    print_ds1(ds1_rows, memory, args)
    print(
        f"Rerun: python benchmarks/simulate.py --n {args.n} --ds1-n {args.ds1_n} --memory-n "
        f"{' '.join(map(str, args.memory_n))} --threads {args.threads} --repeats {args.repeats}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
