"""nflows stacks of CaloFlow, layer-wise permutations and the fast MADE inverse."""

from caloflow.flows.build import build_flow1, build_flow2
from caloflow.flows.fast_inverse import fast_inverse, fast_sample
from caloflow.flows.permutations import (
    LayerwiseRandomPermutation,
    LayerwiseReversal,
    SeededRandomPermutation,
)

__all__ = [
    "build_flow1",
    "build_flow2",
    "fast_inverse",
    "fast_sample",
    "LayerwiseRandomPermutation",
    "LayerwiseReversal",
    "SeededRandomPermutation",
]
