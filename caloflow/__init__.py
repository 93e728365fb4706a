"""caloflow: fast calorimeter shower generation with normalizing flows.

CaloFlow (Krause & Shih, arXiv:2106.05285): Flow I learns the layer energies given the incident
energy, Flow II the voxels of the shower given the energies; :class:`CaloFlow` chains them.
"""

__version__ = "0.1.0"

__all__ = ["CaloFlow", "fast_inverse", "fast_sample", "__version__"]


def __getattr__(name):
    # torch-heavy pieces are imported on first use, so that `caloflow --help` starts fast
    if name == "CaloFlow":
        from caloflow.sampling import CaloFlow

        return CaloFlow
    if name in ("fast_inverse", "fast_sample"):
        from caloflow.flows import fast_inverse, fast_sample

        return {"fast_inverse": fast_inverse, "fast_sample": fast_sample}[name]
    raise AttributeError(f"module 'caloflow' has no attribute {name!r}")
