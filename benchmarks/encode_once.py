"""The classifier test's training: inputs encoded once per split (caloflow) vs in every batch (the baseline).

A classifier of the classifier test (CaloFlow appendix A: the voxel DNN on unnormalized or normalized
showers; the reference code's high-level-feature DNN) trains on noise-free showers, so its input
encoding (the 508 inputs of appendix A, the 41 high-level features) is the same in every epoch.
``caloflow.evaluate.classification.fit_classifier`` computes it once per split (``encode_inputs=True``);
the baseline encodes every training and validation batch anew. For each classifier this script trains
both on the same showers with the same seed for ``--epochs`` epochs, interleaved ``--repeats`` times so
that both see the same machine load, checks that they end with bit-identical weights, and prints the
median seconds per epoch.

Showers: ``--n`` per class from the embedded simulator (e+, independent seeds), the generated class
with every voxel scaled by 1.03 (a separable pair, as a real test is).

    python benchmarks/encode_once.py --n 10000 --epochs 10 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING

import torch
from _tiny import add_smoke_option, apply_smoke

if TYPE_CHECKING:
    from caloflow.data.io import Showers

#: (architecture, preprocessing) of the classifier test's classifiers
CLASSIFIERS = (("dnn", "unnormalized"), ("dnn", "normalized"), ("features", "high-level"))
#: ``--smoke``: the options it shrinks
SMOKE = {"n": 300, "epochs": 2, "repeats": 1, "batch_size": 100}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke``: the options in SMOKE, where not given)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="showers per class")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--seed", type=int, default=0)
    add_smoke_option(
        p,
        f"{SMOKE['n']} showers per class, {SMOKE['epochs']} epochs of batch {SMOKE['batch_size']}, "
        f"{SMOKE['repeats']} repeat",
    )
    return apply_smoke(p, p.parse_args(argv), SMOKE)


def showers(n: int, seed: int):
    """The reference and the generated showers (``n`` each, voxels in MeV; every generated voxel x 1.03)."""
    from caloflow.data.io import Showers
    from caloflow.data.simulate import simulate

    reference = simulate("eplus", n, seed=seed, progress=False)
    other = simulate("eplus", n, seed=seed + 1, progress=False)
    return reference, Showers(other.voxels * 1.03, other.energy)


def train(
    reference: Showers,
    generated: Showers,
    architecture: str,
    preprocessing: str,
    args: argparse.Namespace,
    encode_inputs: bool,
) -> tuple[float, dict]:
    """Wall seconds of one fixed-epoch training (``--epochs``), and the trained weights (state_dict)."""
    from caloflow.evaluate.classification import classifier_data, fit_classifier, schedule_for
    from caloflow.models import ShowerClassifier

    dm = classifier_data(reference, generated, batch_size=args.batch_size, seed=args.seed)
    schedule = schedule_for(dm, architecture, epochs=args.epochs)
    torch.manual_seed(args.seed)
    model = ShowerClassifier(architecture, preprocessing)
    start = time.perf_counter()
    fitted = fit_classifier(model, dm, schedule, None, "", "", None, encode_inputs=encode_inputs)
    return time.perf_counter() - start, fitted["model"].state_dict()


def main(argv: list[str] | None = None) -> list[dict]:
    """Time both trainings of every classifier; print the table (seconds per epoch) and return its rows."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reference, generated = showers(args.n, args.seed)
    rows = []
    for architecture, preprocessing in CLASSIFIERS:
        times: dict[bool, list[float]] = {False: [], True: []}
        same = True
        for _ in range(args.repeats):
            weights = {}
            for encode_inputs in (False, True):
                seconds, weights[encode_inputs] = train(
                    reference, generated, architecture, preprocessing, args, encode_inputs
                )
                times[encode_inputs].append(seconds / args.epochs)
            same &= all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])
        every, once = statistics.median(times[False]), statistics.median(times[True])
        rows.append(
            {
                "classifier": f"{architecture} {preprocessing}",
                "every_batch_s": every,
                "once_s": once,
                "speedup": every / once,
                "identical": same,
            }
        )
    print(
        f"{args.n} showers per class, {args.epochs} epochs of batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}\n"
    )
    print(
        "| classifier | s / epoch, encoded every batch | s / epoch, encoded once | speedup | same weights |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['classifier']} | {r['every_batch_s']:.3f} | {r['once_s']:.3f} | {r['speedup']:.2f}x | "
            f"{'yes' if r['identical'] else 'NO'} |"
        )
    return rows


if __name__ == "__main__":
    main()
