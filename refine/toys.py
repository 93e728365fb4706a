"""The 2D toy data sets of the LaSeR paper (section 4) and their Real-NVP baseline.

- ``gaussians``: four N(mu, I) at mu = (+-4, +-4)                 (Betti numbers b0 = 4)
- ``donut``:     two rings, radius r ~ N(4, 1), centred at (+-4, 0) (b0 = 1, b1 = 2)
- ``rings``:     three rings, r ~ N(4, 1), centred at (-12, 0), (0, 0), (12, 0) (b0 = 3, b1 = 3)

The baseline is a Real-NVP flow (affine couplings; paper: 12 blocks, subnets 3 hidden x 48
LeakyReLU; 20 x 60 for the rings), trained by maximum likelihood with Adam (1e-3, weight decay
1e-5) and an exponential learning-rate decay 0.999 per epoch.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import numpy as np
import torch
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.transforms import AffineCouplingTransform, CompositeTransform, PointwiseAffineTransform
from torch import Tensor

from caloflow.training import adam_with_decay
from refine.nets import CouplingSubnet

N_POINTS = 480_000


def four_gaussians(n: int = N_POINTS, seed: int = 0) -> np.ndarray:
    """Four unit Gaussians at (+-4, +-4), equal weights; (n, 2) float32."""
    rng = np.random.default_rng(seed)
    centres = np.array([[4.0, 4.0], [4.0, -4.0], [-4.0, 4.0], [-4.0, -4.0]])
    return (centres[rng.integers(0, 4, n)] + rng.standard_normal((n, 2))).astype(np.float32)


def _rings(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = rng.normal(4.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    c = centres[rng.integers(0, len(centres), n)]
    return (c + np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)).astype(np.float32)


def double_donut(n: int = N_POINTS, seed: int = 0) -> np.ndarray:
    """Two rings r ~ N(4, 1) centred at (+-4, 0), equal weights; (n, 2) float32."""
    return _rings(n, np.array([[-4.0, 0.0], [4.0, 0.0]]), np.random.default_rng(seed))


def three_rings(n: int = N_POINTS, seed: int = 0) -> np.ndarray:
    """Three rings r ~ N(4, 1) centred at (-12, 0), (0, 0), (12, 0), equal weights; (n, 2) float32."""
    return _rings(n, np.array([[-12.0, 0.0], [0.0, 0.0], [12.0, 0.0]]), np.random.default_rng(seed))


#: toy name -> (sampler, histogram range used for the scores and figures)
TOYS: dict[
    str, tuple[Callable[..., np.ndarray], tuple[tuple[float, float], tuple[float, float]]]
] = {
    "gaussians": (four_gaussians, ((-8.0, 8.0), (-8.0, 8.0))),
    "donut": (double_donut, ((-11.0, 11.0), (-7.0, 7.0))),
    "rings": (three_rings, ((-19.0, 19.0), (-7.0, 7.0))),
}


def sample_toy(name: str, n: int = N_POINTS, seed: int = 0) -> np.ndarray:
    """Sample ``n`` points of the toy ``name`` with ``seed``."""
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; choose from {', '.join(TOYS)}")
    return TOYS[name][0](n, seed)


def real_nvp(
    n_features: int = 2,
    n_blocks: int = 12,
    hidden: int = 48,
    n_hidden: int = 3,
    shift: Tensor | None = None,
    scale: Tensor | None = None,
) -> Flow:
    """Real-NVP flow (nflows): a fixed standardisation, then ``n_blocks`` affine couplings.

    The couplings alternate which half of the features they transform; each subnet is an MLP with
    ``n_hidden`` hidden layers of ``hidden`` LeakyReLU units. ``shift``/``scale`` standardise the data
    (x - shift) / scale before the couplings so the flow sees O(1) inputs; the decode therefore
    returns data units.
    """
    shift = (
        torch.zeros(n_features) if shift is None else torch.as_tensor(shift, dtype=torch.float32)
    )
    scale = torch.ones(n_features) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
    transforms = [PointwiseAffineTransform(shift=-shift / scale, scale=1.0 / scale)]
    for i in range(n_blocks):
        mask = torch.zeros(n_features)
        mask[i % 2 :: 2] = 1
        transforms.append(
            AffineCouplingTransform(
                mask, lambda n_in, n_out: CouplingSubnet(n_in, n_out, hidden, n_hidden)
            )
        )
    return Flow(CompositeTransform(transforms), StandardNormal([n_features]))


class RealNVPBaseline(L.LightningModule):
    """Maximum-likelihood training of the Real-NVP baseline (paper eq. 2); batches are (x,)."""

    def __init__(
        self,
        n_features: int = 2,
        n_blocks: int = 12,
        hidden: int = 48,
        n_hidden: int = 3,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        lr_decay: float = 0.999,
        shift: list[float] | None = None,
        scale: list[float] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.flow = real_nvp(
            n_features,
            n_blocks,
            hidden,
            n_hidden,
            None if shift is None else torch.tensor(shift),
            None if scale is None else torch.tensor(scale),
        )

    def training_step(self, batch, batch_idx):
        (x,) = batch
        nll = -self.flow.log_prob(x).mean()
        self.log("train/nll", nll, prog_bar=True, on_step=False, on_epoch=True)
        return nll

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val/nll", -self.flow.log_prob(x).mean(), prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        return adam_with_decay(self.parameters(), hp.lr, hp.lr_decay, weight_decay=hp.weight_decay)


__all__ = [
    "N_POINTS",
    "four_gaussians",
    "double_donut",
    "three_rings",
    "TOYS",
    "sample_toy",
    "real_nvp",
    "RealNVPBaseline",
]
