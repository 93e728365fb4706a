"""nflows stacks of CaloFlow, layer-wise permutations and the fast MADE inverse."""
from caloflow.flows.build import build_flow1, build_flow2, count_parameters
from caloflow.flows.permutations import LayerwiseRandomPermutation, LayerwiseReversal, SeededRandomPermutation

__all__ = [
    "build_flow1", "build_flow2", "count_parameters",
    "LayerwiseRandomPermutation", "LayerwiseReversal", "SeededRandomPermutation",
]
