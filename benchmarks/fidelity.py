"""Fidelity per CPU-hour: ``caloflow benchmark fidelity`` (see caloflow/fidelity.py).

    python benchmarks/fidelity.py --configs configs/cpu/eplus --out runs/fidelity/eplus

simulate -> fit Flow I and Flow II with the given configs -> generate for an independent reference of
10,000 showers -> converged classifiers (voxel DNN unnormalized and normalized, feature classifier;
3 runs each); prints one row per budget (Flow II epochs) and writes fidelity.json / fidelity.md.
"""
import sys

from caloflow.commands.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "fidelity", *sys.argv[1:]]))
