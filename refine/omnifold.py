"""OmniFold-style pull-back of classifier weights to the latent space (LaSeR paper section 3).

When g is a stochastic function of z (hidden randomness, a black-box simulator), w(g(z)) is not a
function of z. OmniFold (Andreassen et al. 1911.09107) makes it one by iterating two classifiers:

- step 1 (data space): truth vs generated x_i weighted by the current latent weights nu(z_i);
  the pulled weights are omega_i = nu(z_i) * f1/(1-f1)(x_i);
- step 2 (latent space): z_i weighted by omega_i vs the same z_i unweighted; the new latent weight
  function is nu(z) = f2/(1-f2)(z), a proper function of z that reproduces the pulled weights on average.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import lightning as L
import torch
from torch import Tensor

from caloflow.models.classifiers import ShowerClassifier
from refine.classifier import point_logits, train_classifier, weights_from_logits


@dataclass
class PullbackResult:
    """Latent weights nu(z_i) after each iteration and the latent classifier that defines nu(z)."""

    weights: list[Tensor] = field(default_factory=list)
    latent_classifier: ShowerClassifier | None = None

    @property
    def final(self) -> Tensor:
        return self.weights[-1]

    def weight_fn(self, clip: float | None = None) -> Callable[[Tensor], Tensor]:
        """z -> nu(z) (not normalised) for new latent points."""
        clf = self.latent_classifier

        def fn(z: Tensor) -> Tensor:
            return weights_from_logits(point_logits(clf, z), clip=clip, normalise=False)

        return fn


def omnifold_pullback(
    truth: Tensor,
    z: Tensor,
    x: Tensor,
    make_trainer: Callable[[str], L.Trainer],
    *,
    iterations: int = 3,
    clip: float | None = None,
    batch_size: int = 4000,
    seed: int = 0,
    **classifier_hparams,
) -> PullbackResult:
    """Pull weights for ``truth`` back onto latent points ``z`` that generated ``x`` (one draw each).

    ``make_trainer(name)`` returns a fresh Trainer for each classifier (e.g. step1_iter0).
    Returns the latent weights after every iteration (normalised to mean 1).
    """
    nu = torch.ones(len(z))
    result = PullbackResult()
    for it in range(iterations):
        clf1 = train_classifier(
            truth,
            x,
            make_trainer(f"omnifold_step1_iter{it}"),
            w_fake=nu,
            batch_size=batch_size,
            seed=seed + 2 * it,
            **classifier_hparams,
        )
        omega = nu * weights_from_logits(point_logits(clf1, x), clip=clip, normalise=False)
        omega = omega / omega.mean()
        clf2 = train_classifier(
            z,
            z,
            make_trainer(f"omnifold_step2_iter{it}"),
            w_real=omega,
            batch_size=batch_size,
            seed=seed + 2 * it + 1,
            **classifier_hparams,
        )
        nu = weights_from_logits(point_logits(clf2, z), clip=clip, normalise=True)
        result.weights.append(nu)
        result.latent_classifier = clf2
    return result


__all__ = ["PullbackResult", "omnifold_pullback"]
