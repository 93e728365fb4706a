"""Latent Space Refinement (LaSeR, Winterhalder, Bellagente, Nachman 2106.00792).

Any generator g(z) (``sample_latent`` + ``decode``) is refined by a post-hoc classifier whose
weights w(x) = exp(logit) are pulled back to the latent space and then sampled without weights:
by rejection sampling, Hamiltonian Monte Carlo of log N(z) + log w(g(z)), or a weighted-GAN
refiner Phi so that refined samples are g(Phi(y)). DCTR (weighted generated data) is the reference;
OmniFold pulls weights back when g has hidden randomness. ``python -m refine.laser`` runs the
paper's 2D toy study, or (``--flow1 --flow2 --reference``) refines a shower model conditional on
E_inc on a held-out split (:mod:`refine.shower_laser`); :mod:`refine.showers` puts CaloFlow and
CaloGAN behind the generator protocol, :mod:`refine.shower_refiner` generates with a trained refiner.
"""

from importlib import import_module

# public name -> defining module; imported on first use so that ``python -m refine.laser --help``
# and option errors answer without loading torch and Lightning
_EXPORTS = {
    "BlackBoxGenerator": "refine.generators",
    "CaloFlowGenerator": "refine.showers",
    "CaloGANGenerator": "refine.showers",
    "FlowGenerator": "refine.generators",
    "Generator": "refine.generators",
    "RefinedGenerator": "refine.generators",
    "generate": "refine.generators",
    "train_classifier": "refine.classifier",
    "weights_from_logits": "refine.classifier",
    "WeightedGANRefiner": "refine.gan",
    "dctr_sample": "refine.dctr",
    "dctr_weights": "refine.dctr",
    "emd2d": "refine.metrics",
    "jsd2d": "refine.metrics",
    "hmc": "refine.mcmc",
    "laser_log_prob": "refine.mcmc",
    "omnifold_pullback": "refine.omnifold",
    "rejection_sample": "refine.rejection",
    "rejection_sample_conditional": "refine.rejection",
    "resample": "refine.rejection",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'refine' has no attribute {name!r}")


__all__ = [
    "BlackBoxGenerator",
    "CaloFlowGenerator",
    "CaloGANGenerator",
    "FlowGenerator",
    "Generator",
    "RefinedGenerator",
    "WeightedGANRefiner",
    "dctr_sample",
    "dctr_weights",
    "emd2d",
    "generate",
    "hmc",
    "jsd2d",
    "laser_log_prob",
    "omnifold_pullback",
    "rejection_sample",
    "rejection_sample_conditional",
    "resample",
    "train_classifier",
    "weights_from_logits",
]
