"""HMC's gradient on showers: all chains at once (the baseline) vs blocks of chains (``hmc.chunk_size``).

One HMC leapfrog step of ``python -m refine.laser --flow1 ...`` evaluates log N(z) + log w(g(z | E), E)
and its gradient for every chain: CaloFlow's differentiable decode (Flow I, then Flow II through the
fast inverse) and the weight classifier (the normalized voxel DNN of the shower config, freshly
initialised: its cost does not depend on its weights). This script times that gradient for
``--chains`` chains at random energies in 1-100 GeV (log-uniform), all at once and in blocks of each
``--chunk-sizes``, interleaved ``--repeats`` times so that every cell sees the same machine load, and
prints the median ms per chain and the largest difference of the gradient from the baseline's.
With ``--hmc``, each cell instead runs :func:`refine.mcmc.hmc` itself (2 trajectories of 3 leapfrog
steps: 7 gradients) from the same start, as the shower HMC does, and reports ms per chain and gradient
and the largest difference of the final states.

    python benchmarks/hmc_chunks.py --flow1 F1.ckpt --flow2 F2.ckpt --threads 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _tiny import SMOKE_SHOWERS, add_smoke_option, apply_smoke, tiny_checkpoints

#: the ``--hmc`` cell: burn-in trajectories, kept trajectories, leapfrog steps per trajectory
HMC_BURN_IN, HMC_KEPT, HMC_LEAPFROG = 1, 1, 3
#: gradients one ``--hmc`` cell takes per chain: one at the start, one per leapfrog step
HMC_GRADIENTS = 1 + (HMC_BURN_IN + HMC_KEPT) * HMC_LEAPFROG
#: ``--smoke``: the options it shrinks (blocks of 1/2, 1/4 and 1/8 of the chains, as the default's)
SMOKE = {"chains": 40, "chunk_sizes": [20, 10, 5], "repeats": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke``: the options in SMOKE, where not given; checkpoints optional)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flow1", default=None, help="Flow I checkpoint (required unless --smoke)")
    p.add_argument("--flow2", default=None, help="Flow II checkpoint (required unless --smoke)")
    p.add_argument("--chains", type=int, default=4000)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[2000, 1000, 500])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument(
        "--hmc", action="store_true", help="time HMC trajectories instead of the bare gradient"
    )
    p.add_argument("--seed", type=int, default=0)
    add_smoke_option(
        p,
        f"{SMOKE['chains']} chains in blocks of {', '.join(map(str, SMOKE['chunk_sizes']))}, "
        f"{SMOKE['repeats']} repeat; without --flow1/--flow2, both flows of the smoke-size CPU "
        f"preset fitted for one epoch on {SMOKE_SHOWERS} showers first (benchmarks/_tiny.py)",
    )
    args = apply_smoke(p, p.parse_args(argv), SMOKE)
    given = (args.flow1 is not None) + (args.flow2 is not None)
    if given == 1 or (given == 0 and not args.smoke):
        p.error(
            "give --flow1 and --flow2 (only --smoke fits smoke-size flows when neither is given)"
        )
    return args


def make_target(flow1: str, flow2: str, clip: float):
    """log N(z) + log w(g(z | E), E) with CaloFlow's generator and an untrained weight classifier, w <= clip."""
    from caloflow.models import ShowerClassifier
    from caloflow.sampling import CaloFlow
    from refine.mcmc import laser_log_prob
    from refine.shower_laser import shower_log_weight
    from refine.showers import CaloFlowGenerator

    sampler = CaloFlow.load(flow1, flow2)
    g = CaloFlowGenerator(sampler.flow1, sampler.flow2)
    classifier = ShowerClassifier("dnn", "normalized").eval()
    return g, laser_log_prob(g.decode, shower_log_weight(classifier, clip=clip))


def run_cell(
    target: Callable,
    z: torch.Tensor,
    energies: torch.Tensor,
    chunk_size: int | None,
    args: argparse.Namespace,
    hmc_cfg,
) -> torch.Tensor:
    """The gradient at z, or (``--hmc``) the state after HMC_BURN_IN + HMC_KEPT trajectories of HMC_LEAPFROG
    steps with the shipped config's initial step and target acceptance (``hmc_cfg``)."""
    from refine.mcmc import hmc, log_prob_and_grad

    if not args.hmc:
        return log_prob_and_grad(target, z, (energies,), chunk_size=chunk_size)[1]
    samples, _ = hmc(
        target,
        z,
        step_size=hmc_cfg.step_size,
        n_leapfrog=HMC_LEAPFROG,
        n_samples=HMC_KEPT,
        burn_in=HMC_BURN_IN,
        target_acceptance=hmc_cfg.target_acceptance,
        context=(energies,),
        chunk_size=chunk_size,
        progress=False,
        generator=torch.Generator().manual_seed(args.seed + 1),
    )
    return samples[-1]


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (``--smoke`` without checkpoints: on flows fitted at smoke size first)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flow1 is not None:
        return measure(args, args.flow1, args.flow2)
    with tempfile.TemporaryDirectory(
        prefix="hmc_chunks_smoke_"
    ) as folder:  # --smoke without checkpoints
        return measure(args, *tiny_checkpoints(Path(folder), args.seed))


def measure(args: argparse.Namespace, flow1: str | Path, flow2: str | Path) -> list[dict]:
    """Every cell (all chains at once, then each block size) timed ``--repeats`` times, interleaved;
    prints the table (ms per chain, or per chain and gradient with ``--hmc``) and returns its rows."""
    from refine.mcmc import log_prob_and_grad
    from refine.shower_laser import hmc_clip, load_shower_config

    cfg = load_shower_config()  # the shipped HMC settings and weight cap
    g, target = make_target(str(flow1), str(flow2), hmc_clip(cfg))
    gen = torch.Generator().manual_seed(args.seed)
    z = g.sample_latent(args.chains, gen)
    energies = torch.exp(math.log(100.0) * torch.rand(args.chains, generator=gen))
    cells = [None, *args.chunk_sizes]
    times: dict = {c: [] for c in cells}
    grads: dict = {}
    log_prob_and_grad(target, z[:100], (energies[:100],))  # warm-up
    for _ in range(args.repeats):
        for c in cells:
            t0 = time.perf_counter()
            grads[c] = run_cell(target, z, energies, c, args, cfg.hmc)
            times[c].append((time.perf_counter() - t0) / (HMC_GRADIENTS if args.hmc else 1))
    rows = []
    base = statistics.median(times[None])
    what = "HMC, ms per chain and gradient" if args.hmc else "gradient"
    print(
        f"{args.chains} chains, {torch.get_num_threads()} threads, median of {args.repeats}, {what}\n"
    )
    diff_of = "final state" if args.hmc else "grad"
    print(
        f"| chains per block | ms / chain | speed-up | max abs {diff_of} difference |\n|---|---|---|---|"
    )
    for c in cells:
        t = statistics.median(times[c])
        diff = float((grads[c] - grads[None]).abs().max())
        rows.append(
            {
                "chunk_size": c,
                "ms_per_chain": 1e3 * t / args.chains,
                "speedup": base / t,
                "max_diff": diff,
            }
        )
        label = f"all ({args.chains}, baseline)" if c is None else str(c)
        print(f"| {label} | {1e3 * t / args.chains:.2f} | {base / t:.2f}x | {diff:.2g} |")
    return rows


if __name__ == "__main__":
    main()
