"""Fréchet and kernel physics distances (FPD, KPD) of two sets of feature vectors (arXiv:2211.10295).

These are the definitions of ``jetnet.evaluation.fpd`` and ``jetnet.evaluation.kpd`` (jetnet 0.2.5),
which the CaloChallenge evaluator applies to the ``cls-high`` features, re-implemented with
numpy and scipy so that caloflow does not depend on jetnet (which pulls coffea, energyflow, awkward,
pandas and tables). With the same arguments and seed they draw the same subsamples, so they give
jetnet's numbers (tests/test_challenge_evaluation.py compares them where jetnet is installed).

Both first divide every feature of both sets by its largest absolute value in the *real* set (a
feature that is 0 there is left as it is).

* FPD: the Fréchet distance d^2 = |mu_1 - mu_2|^2 + Tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2)) of Gaussians
  fitted to subsamples (drawn with replacement) of ``num_points`` sizes N evenly spaced in 1/N between
  ``min_samples`` and ``max_samples``, averaged over ``num_batches`` draws per size; a straight line
  in 1/N (intercept and slope >= 0) is fitted, and its intercept (N -> infinity) and that intercept's
  standard error are returned.
* KPD: the unbiased quadratic-time MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^4 (d
  features) on ``num_batches`` pairs of subsamples of ``batch_size`` (with replacement); the median
  and half the 16.275-83.725 % interquantile range are returned.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.optimize import curve_fit
from scipy.stats import iqr

#: jetnet's defaults.
FPD_MIN_SAMPLES = 20_000
FPD_MAX_SAMPLES = 50_000
FPD_NUM_BATCHES = 20
FPD_NUM_POINTS = 10
KPD_NUM_BATCHES = 10
KPD_BATCH_SIZE = 5_000
SEED = 42
KERNEL_DEGREE = 4
#: Added to the covariances' diagonals when their product has no finite square root.
SQRTM_EPS = 1e-6


def normalise_features(real: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets divided, feature by feature, by the largest |value| of the real set (1 where 0)."""
    scale = np.max(np.abs(real), axis=0)
    scale[scale == 0] = 1
    return real / scale, gen / scale


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) of two Gaussians.

    When sigma1 sigma2 has no finite square root, SQRTM_EPS is added to both diagonals; a small
    imaginary part left by the square root is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * SQRTM_EPS
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _as_2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def _samples(real, gen, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as (N, d) float64, divided by the real set's largest values with ``normalise``."""
    x, y = _as_2d(real), _as_2d(gen)
    return normalise_features(x, y) if normalise else (x, y)


def _line(x, intercept, slope):
    return intercept + slope * x


def fpd(
    real,
    gen,
    min_samples: int = FPD_MIN_SAMPLES,
    max_samples: int = FPD_MAX_SAMPLES,
    num_batches: int = FPD_NUM_BATCHES,
    num_points: int = FPD_NUM_POINTS,
    normalise: bool = True,
    seed: int = SEED,
) -> tuple[float, float]:
    """FPD of ``gen`` to ``real`` ((N, d) each) extrapolated to infinite samples, and its error."""
    x, y = _samples(real, gen, normalise)
    # regular intervals in 1/N
    sizes = (1 / np.linspace(1.0 / min_samples, 1.0 / max_samples, num_points)).astype("int32")
    rng = np.random.default_rng(seed)
    means = []
    for size in sizes:
        values = []
        for _ in range(num_batches):
            a, b = x[rng.choice(len(x), size=size)], y[rng.choice(len(y), size=size)]
            values.append(
                frechet_distance(
                    a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
                )
            )
        means.append(np.mean(values))
    params, cov = curve_fit(_line, 1 / sizes, means, bounds=([0, 0], [np.inf, np.inf]))
    return float(params[0]), float(np.sqrt(np.diag(cov)[0]))


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[-1] + 1.0) ** KERNEL_DEGREE


def mmd_poly_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased quadratic MMD^2 of samples ``a`` (m, d) and ``b`` (n, d), polynomial kernel."""
    xx, yy, xy = _poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)
    m, n = len(a), len(b)
    return float(
        (xx.sum() - np.trace(xx)) / (m * (m - 1))
        + (yy.sum() - np.trace(yy)) / (n * (n - 1))
        - 2 * xy.mean()
    )


def kpd(
    real,
    gen,
    num_batches: int = KPD_NUM_BATCHES,
    batch_size: int = KPD_BATCH_SIZE,
    normalise: bool = True,
    seed: int = SEED,
) -> tuple[float, float]:
    """KPD of ``gen`` to ``real`` ((N, d) each): median MMD^2 over batches, and half its 16-84 % range."""
    x, y = _samples(real, gen, normalise)
    values = []
    for i in range(num_batches):
        rng = np.random.default_rng(seed + i * 1000)
        a, b = x[rng.choice(len(x), size=batch_size)], y[rng.choice(len(y), size=batch_size)]
        values.append(mmd_poly_unbiased(a, b))
    return float(np.median(values)), float(iqr(values, rng=(16.275, 83.725)) / 2)


def sample_sizes(n: int) -> dict[str, dict[str, int]]:
    """jetnet's subsample sizes, or for sets smaller than FPD's ``min_samples`` (n showers in the
    smaller set) FPD sizes from 0.4 n to n and KPD batches of min(n, 5000), so that a small test
    stays cheap and does not draw many times more showers than it has."""
    if n >= FPD_MIN_SAMPLES:
        fpd_sizes = {"min_samples": FPD_MIN_SAMPLES, "max_samples": FPD_MAX_SAMPLES}
    else:
        fpd_sizes = {"min_samples": max(2, int(0.4 * n)), "max_samples": max(3, n)}
    return {"fpd": fpd_sizes, "kpd": {"batch_size": max(2, min(n, KPD_BATCH_SIZE))}}


def physics_distances(real, gen) -> dict:
    """FPD and KPD of ``gen`` to ``real`` with :func:`sample_sizes` and otherwise jetnet's defaults:
    ``{"fpd": {"value", "error"}, "kpd": {"value", "error"}, "settings": the arguments}``."""
    n = min(len(real), len(gen))
    sizes = sample_sizes(n)
    fpd_value, fpd_error = fpd(real, gen, **sizes["fpd"])
    kpd_value, kpd_error = kpd(real, gen, **sizes["kpd"])
    settings = {
        "fpd": {**sizes["fpd"], "num_batches": FPD_NUM_BATCHES, "num_points": FPD_NUM_POINTS},
        "kpd": {**sizes["kpd"], "num_batches": KPD_NUM_BATCHES},
        "normalise": True,
        "seed": SEED,
    }
    return {
        "fpd": {"value": fpd_value, "error": fpd_error},
        "kpd": {"value": kpd_value, "error": kpd_error},
        "settings": settings,
    }


__all__ = [
    "FPD_MIN_SAMPLES",
    "FPD_MAX_SAMPLES",
    "FPD_NUM_BATCHES",
    "FPD_NUM_POINTS",
    "KPD_NUM_BATCHES",
    "KPD_BATCH_SIZE",
    "SEED",
    "KERNEL_DEGREE",
    "SQRTM_EPS",
    "normalise_features",
    "frechet_distance",
    "mmd_poly_unbiased",
    "fpd",
    "kpd",
    "sample_sizes",
    "physics_distances",
]
