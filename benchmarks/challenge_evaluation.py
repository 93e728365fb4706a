"""How sharp the CaloChallenge-kind classifiers are on the embedded dataset-1 simulator.

Two checks with a known answer, for every classifier input (``cls-low``, ``cls-low-normed``,
``cls-high``):

* **same distribution**: two simulator runs with different seeds (the reference with seed 0, the
  "generated" sample with seed 1), ``--n`` showers each at the challenge's energy mix. A classifier
  that is calibrated and not overfitted gives AUC 0.5 (up to its statistical spread).
* **a shifted layer**: the seed-1 sample with the voxels of one layer (the one with the largest
  median energy fraction, unless ``--shift-layer`` names a position) scaled by ``1 + --shift``
  (default 5 %). A sharp classifier finds it (AUC well above 0.5).

::

    python benchmarks/challenge_evaluation.py [--dataset ds1-photons] [--n 20000] [--runs 3]
        [--protocol converged|calochallenge] [--shift 0.05] [--smoke]

prints one table row per (sample, input): AUC mean and spread over the runs, JSD, and whether
every run converged (early stopping on the validation loss before the epoch limit; the
``calochallenge`` protocol trains its fixed 50 epochs). The reference is the embedded simulator,
not GEANT4.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from caloflow.data.barrel import simulate_barrel
from caloflow.data.io import Showers
from caloflow.evaluate.challenge import PROTOCOLS, challenge_classifier_test
from caloflow.geometry import DS1_PHOTONS, DS1_PIONS

INPUTS = ("cls-low", "cls-low-normed", "cls-high")
DATASETS = {g.name: g for g in (DS1_PHOTONS, DS1_PIONS)}


def shifted(showers: Showers, layer: int, shift: float) -> Showers:
    """The showers with the voxels of layer position ``layer`` scaled by ``1 + shift``."""
    voxels = np.array(showers.voxels, copy=True)
    voxels[:, showers.geometry.layer_slices[layer]] *= 1.0 + shift
    return Showers(voxels, showers.energy, geometry=showers.geometry)


def dominant_layer(showers: Showers) -> int:
    """Position of the layer with the largest median energy fraction."""
    fractions = showers.layer_energies / np.maximum(showers.voxels.sum(1, keepdims=True), 1e-12)
    return int(np.argmax(np.median(fractions, axis=0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="ds1-photons")
    parser.add_argument("--n", type=int, default=20_000, help="showers per sample")
    parser.add_argument("--runs", type=int, default=3, help="classifier runs (seeds) per row")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="converged")
    parser.add_argument("--shift", type=float, default=0.05, help="relative shift of one layer")
    parser.add_argument("--shift-layer", type=int, default=None, help="layer position to shift")
    parser.add_argument("--inputs", default=",".join(INPUTS), help="comma-separated inputs")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs (smoke runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="classifier seed")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: says that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.runs, args.epochs = 300, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    geometry = DATASETS[args.dataset]
    reference = simulate_barrel(geometry, args.n, seed=0)
    same = simulate_barrel(geometry, args.n, seed=1)
    layer = dominant_layer(reference) if args.shift_layer is None else args.shift_layer
    samples = {
        "same distribution (seeds 0 vs 1)": same,
        f"layer id {geometry.layer_ids[layer]} x {1 + args.shift:g}": shifted(
            same, layer, args.shift
        ),
    }
    print(f"# {args.dataset}, {args.n} vs {args.n} showers, protocol {args.protocol}, ", end="")
    print(f"{args.runs} runs; reference: the embedded simulator (not GEANT4)\n")
    print("| sample | input | AUC | AUC spread | JSD | converged | minutes |")
    print("|---|---|---|---|---|---|---|")
    for name, sample in samples.items():
        for kind in args.inputs.split(","):
            start = time.perf_counter()
            result = challenge_classifier_test(
                reference,
                sample,
                geometry,
                kind,
                protocol=args.protocol,
                runs=args.runs,
                seed=args.seed,
                epochs=args.epochs,
            )
            converged = result.get("converged")
            flag = "n/a" if converged is None else ("yes" if converged else "no")
            minutes = (time.perf_counter() - start) / 60
            auc, jsd = result["auc"], result["jsd"]
            print(
                f"| {name} | {kind} | {auc['mean']:.3f} | {auc['std']:.3f} | "
                f"{jsd['mean']:.3f} | {flag} | {minutes:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
