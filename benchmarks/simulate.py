"""Throughput of the embedded shower simulator (showers per second, per particle).

Prints a markdown table. Wall-clock rates depend on what else runs on the machine; the CPU-time
rate (process time of this single-threaded run) is the cost on one core. The target is at least
1,000 e+ showers per second on one core.

    python benchmarks/simulate.py --n 20000 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from _tiny import add_smoke_option, apply_smoke

#: ``--smoke``: the options it shrinks (two chunks of the simulator per particle, two repeats)
SMOKE = {"n": 64, "repeats": 2}


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
    add_smoke_option(parser, f"{SMOKE['n']} showers per particle, {SMOKE['repeats']} repeats")
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
    print(
        f"Rerun: python benchmarks/simulate.py --n {args.n} --threads {args.threads} --repeats {args.repeats}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
