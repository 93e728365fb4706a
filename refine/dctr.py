"""DCTR: the weighted reference (LaSeR paper section 4.3; Diefenbacher et al. 2009.03796).

The post-hoc classifier's weights w(x) = exp(logit(x)) applied to generated data give a weighted
sample that approximates the truth; its scores are the benchmark the unweighted refinements
(HMC, LaSeR) aim for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from caloflow.models.classifiers import ShowerClassifier
from refine.classifier import point_logits, weights_from_logits
from refine.generators import Generator, generate


@torch.no_grad()
def dctr_weights(
    classifier: ShowerClassifier, x: Tensor, clip: float | None = None, normalise: bool = True
) -> Tensor:
    """Per-event weights w(x) = f/(1-f) for generated points ``x`` (mean 1 if ``normalise``)."""
    return weights_from_logits(point_logits(classifier, x), clip=clip, normalise=normalise)


@torch.no_grad()
def dctr_sample(
    g: Generator,
    classifier: ShowerClassifier,
    n: int,
    generator: torch.Generator | None = None,
    clip: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(z, x, w)``: ``n`` fresh generated points with their DCTR weights."""
    z, x = generate(g, n, generator)
    return z, x, dctr_weights(classifier, x, clip=clip)


__all__ = ["dctr_weights", "dctr_sample"]
