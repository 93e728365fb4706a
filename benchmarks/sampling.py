"""Flow II sampling time per shower (the paper's table 4): nflows' inverse vs ``fast_inverse`` vs ``log_prob``.

The paper-size Flow II (``build_flow2()``: 8 MADE-RQS blocks, 504 features, hidden 378, 37,835,280
parameters) in eval mode, with every weight perturbed by Gaussian noise (std ``--noise``) so that
no block is near the identity, and a random 4-dim context. For each batch size it times

* nflows' own inverse (``transform.inverse``: one full MADE pass per feature and block),
* :func:`caloflow.flows.fast_inverse.fast_inverse` (each network output computed once),
* ``flow.log_prob`` on the generated samples (one pass per block: the cost floor),

and reports ms per shower and the max abs difference between the two samplers. nflows cells whose
estimated time (504 x the measured forward pass at that batch) exceeds ``--nflows-limit-s``, or
whose batch exceeds ``--nflows-max-batch``, are skipped and shown as estimates; for those batches
the first ``--check-rows`` rows are still compared with nflows' inverse of the same rows (rows are
independent). ``--n-blocks`` and ``--hidden-features`` change the flow's size (default: the paper's).

    python benchmarks/sampling.py --threads 1 --out /tmp/sampling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

import torch
from _tiny import add_smoke_option, apply_smoke, tiny_model_args
from nflows.flows import Flow
from tqdm import tqdm

from caloflow.flows.build import build_flow2
from caloflow.flows.fast_inverse import fast_inverse
from caloflow.nn import count_parameters
from caloflow.timing import format_ms as fmt
from caloflow.timing import timed

#: Flow II's features (voxels) and context features
FEATURES, CONTEXT = 504, 4
#: the paper's Flow II (``build_flow2()``'s defaults)
PAPER = {"n_blocks": 8, "hidden_features": 378}
#: ``--smoke``: the options it shrinks; nflows' inverse runs at the first batch, is estimated at the second
SMOKE = {**tiny_model_args(PAPER), "batch_sizes": [4, 32], "nflows_max_batch": 4, "check_rows": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke``: the options in SMOKE, where not given)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--noise", type=float, default=0.02, help="std of the Gaussian noise added to every weight"
    )
    p.add_argument(
        "--n-blocks",
        type=int,
        default=PAPER["n_blocks"],
        help="MADE blocks (default: the paper's 8)",
    )
    p.add_argument(
        "--hidden-features",
        type=int,
        default=PAPER["hidden_features"],
        help="hidden units per MADE (default: the paper's 378)",
    )
    p.add_argument(
        "--nflows-limit-s", type=float, default=600.0, help="skip nflows cells estimated above this"
    )
    p.add_argument(
        "--nflows-max-batch",
        type=int,
        default=None,
        help="skip nflows cells of larger batches (default: no limit but --nflows-limit-s)",
    )
    p.add_argument(
        "--check-rows",
        type=int,
        default=10,
        help="rows compared with nflows where its cell is skipped",
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    add_smoke_option(
        p,
        f"Flow II with {SMOKE['n_blocks']} blocks of {SMOKE['hidden_features']} hidden units, "
        f"batches {' and '.join(map(str, SMOKE['batch_sizes']))}, nflows' inverse measured at the "
        f"first and estimated (with {SMOKE['check_rows']} rows compared) at the second",
    )
    return apply_smoke(p, p.parse_args(argv), SMOKE)


def make_flow(args: argparse.Namespace, device: torch.device) -> Flow:
    """``build_flow2`` of the requested size in eval mode, every weight + N(0, ``--noise``^2)."""
    torch.manual_seed(args.seed)
    flow = build_flow2(n_blocks=args.n_blocks, hidden_features=args.hidden_features).eval()
    g = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(args.noise * torch.randn(p.shape, generator=g))
    return flow.to(device)


def measure(
    flow: Flow, batch: int, g: torch.Generator, args: argparse.Namespace, device: torch.device
) -> dict:
    """One row: ms per shower of fast_inverse, log_prob and nflows' inverse (measured, or estimated as
    504 forward passes when skipped), and the max abs difference of the samplers on the rows compared."""
    transform = flow._transform
    z = torch.randn(batch, FEATURES, generator=g).to(device)
    c = torch.randn(batch, CONTEXT, generator=g).to(device)
    x, fast_s = timed(lambda: fast_inverse(transform, z, c), device)
    with torch.no_grad():
        _, logp_s = timed(lambda: flow.log_prob(x, c), device)
        _, fwd_s = timed(lambda: transform(x, c), device)
    estimate_s = FEATURES * fwd_s  # nflows' inverse: one forward-sized pass per feature
    row = {
        "batch": batch,
        "fast_inverse_ms": 1e3 * fast_s / batch,
        "log_prob_ms": 1e3 * logp_s / batch,
        "nflows_estimate_ms": 1e3 * estimate_s / batch,
        "nflows_ms": None,
        "nflows_measured": False,
    }
    if estimate_s <= args.nflows_limit_s and (
        args.nflows_max_batch is None or batch <= args.nflows_max_batch
    ):
        with torch.no_grad():
            ref, nflows_s = timed(lambda: transform.inverse(z, c)[0], device)
        row.update(
            nflows_ms=1e3 * nflows_s / batch,
            nflows_measured=True,
            compared_rows=batch,
            max_abs_diff=(ref - x).abs().max().item(),
        )
    else:
        k = min(args.check_rows, batch)
        with torch.no_grad():
            ref = transform.inverse(z[:k], c[:k])[0]
        row.update(compared_rows=k, max_abs_diff=(ref - x[:k]).abs().max().item())
    nflows = row["nflows_ms"] if row["nflows_measured"] else row["nflows_estimate_ms"]
    row["speedup_vs_nflows"] = nflows / row["fast_inverse_ms"]
    row["fast_over_log_prob"] = row["fast_inverse_ms"] / row["log_prob_ms"]
    return row


def render(result: dict) -> str:
    """The markdown table (ms per shower) of :func:`main`'s result, with its title line."""
    lines = [
        f"Flow II ({result['parameters']:,} parameters), {result['device']}, {result['threads']} thread(s); "
        f"ms per shower (plan build once: {result['plan_build_s']:.2f} s)",
        "",
        "| batch | nflows inverse | fast_inverse | log_prob | speed-up vs nflows | fast / log_prob "
        "| max abs diff (rows) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        nflows = (
            fmt(r["nflows_ms"])
            if r["nflows_measured"]
            else f"~{fmt(r['nflows_estimate_ms'])} (est., skipped)"
        )
        speed = ("" if r["nflows_measured"] else "~") + f"{r['speedup_vs_nflows']:.0f}x"
        lines.append(
            f"| {r['batch']:,} | {nflows} | {fmt(r['fast_inverse_ms'])} | {fmt(r['log_prob_ms'])} | {speed} "
            f"| {r['fast_over_log_prob']:.2f} | {r['max_abs_diff']:.1e} ({r['compared_rows']}) |"
        )
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    """``result`` as JSON at ``path``, written atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    """Time every batch size; print the table (ms per shower), write ``--out``, return the result."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    flow = make_flow(args, device)
    g = torch.Generator().manual_seed(args.seed + 2)
    warm_z = torch.randn(2, FEATURES, generator=g).to(device)
    warm_c = torch.randn(2, CONTEXT, generator=g).to(device)
    _, plan_s = timed(
        lambda: fast_inverse(flow._transform, warm_z, warm_c), device
    )  # builds and caches the plan
    rows = []
    for batch in tqdm(args.batch_sizes, desc="batch sizes"):
        rows.append(measure(flow, batch, g, args, device))
        tqdm.write(json.dumps(rows[-1]))
    result = {
        "model": f"build_flow2(n_blocks={args.n_blocks}, hidden_features={args.hidden_features}) eval, "
        "weights + N(0, noise^2), random 4-dim context",
        "parameters": count_parameters(flow),
        "noise": args.noise,
        "seed": args.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs)".strip(),
        "plan_build_s": plan_s,
        "rows": rows,
    }
    print("\n" + render(result))
    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
