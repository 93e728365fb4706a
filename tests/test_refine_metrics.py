"""EMD/JSD on 2D histograms against hand-computed values (LaSeR paper section 4.2)."""

import math

import numpy as np
import pytest

from refine.metrics import emd2d, histogram2d, jsd2d, scores

RANGE = [[0.0, 4.0], [0.0, 4.0]]  # 4 x 4 bins of width 1: centres at 0.5, 1.5, 2.5, 3.5


def test_identical_samples_score_zero():
    x = np.random.default_rng(0).uniform(0, 4, size=(1000, 2))
    assert emd2d(x, x, bins=4, range=RANGE) == pytest.approx(0.0, abs=1e-12)
    assert jsd2d(x, x, bins=4, range=RANGE) == pytest.approx(0.0, abs=1e-12)


def test_point_masses_one_bin_apart():
    a = np.full((10, 2), 0.5)
    b = np.array([[1.5, 0.5]] * 10)  # neighbouring bin in x: centres 1 apart
    assert emd2d(a, b, bins=4, range=RANGE) == pytest.approx(1.0)
    diag = np.array([[1.5, 1.5]] * 10)  # diagonal neighbour: sqrt(2)
    assert emd2d(a, diag, bins=4, range=RANGE) == pytest.approx(math.sqrt(2))
    # non-square bins: the cost is in data units, not bin indices
    assert emd2d(
        a * 2, np.array([[3.0, 1.0]] * 5), bins=[4, 2], range=[[0, 8], [0, 4]]
    ) == pytest.approx(2.0)


def test_split_mass_emd():
    a = np.array([[0.5, 0.5]] * 4)
    b = np.array([[0.5, 0.5]] * 2 + [[3.5, 0.5]] * 2)  # half the mass moves 3 bins
    assert emd2d(a, b, bins=4, range=RANGE) == pytest.approx(1.5)


def test_jsd_disjoint_is_ln2_and_hand_value():
    a = np.array([[0.5, 0.5]] * 10)
    b = np.array([[2.5, 2.5]] * 10)
    assert jsd2d(a, b, bins=4, range=RANGE) == pytest.approx(math.log(2))
    # p = (1, 0), q = (1/2, 1/2): JSD = 1/2 [ln(1/(3/4))] + 1/2 [1/2 ln(1/2/(3/4)) + 1/2 ln(1/2/(1/4))]
    c = np.array([[0.5, 0.5]] * 5 + [[2.5, 2.5]] * 5)
    expected = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    assert jsd2d(a, c, bins=4, range=RANGE) == pytest.approx(expected)
    assert jsd2d(c, a, bins=4, range=RANGE) == pytest.approx(expected)  # symmetric


def test_weights_and_normalisation():
    a = np.array([[0.5, 0.5], [2.5, 0.5]])
    h, _, _ = histogram2d(a, 4, RANGE, weights=np.array([3.0, 1.0]))
    assert h.sum() == pytest.approx(1.0) and h[0, 0] == pytest.approx(0.75)
    # weighting 3:1 vs 1:1 moves 1/4 of the mass by 2 bins
    b = scores(a, a, 4, RANGE, weights=np.array([3.0, 1.0]))
    assert b["emd"] == pytest.approx(0.5)


def test_floor_shrinks_with_sample_size():
    rng = np.random.default_rng(1)
    small = jsd2d(
        rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)), bins=20, range=[[-4, 4], [-4, 4]]
    )
    large = jsd2d(
        rng.normal(size=(50000, 2)), rng.normal(size=(50000, 2)), bins=20, range=[[-4, 4], [-4, 4]]
    )
    assert large < small / 5


def test_emd_on_surplus_bins_equals_full_transport_problem():
    """The reduced problem (surplus of p - q onto its deficit) gives the EMD of the full problem on all bins."""
    import ot

    from refine.metrics import emd_hist

    rng = np.random.default_rng(2)
    for _ in range(3):
        p, q = rng.random((7, 5)) * (rng.random((7, 5)) > 0.3), rng.random((7, 5))
        p, q = p / p.sum(), q / q.sum()
        xe, ye = np.linspace(-1.0, 2.5, 8), np.linspace(0.0, 10.0, 6)
        cx, cy = np.meshgrid(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), indexing="ij")
        centres = np.stack([cx.ravel(), cy.ravel()], axis=1)
        cost = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
        full = ot.emd2(p.ravel(), q.ravel(), cost)
        assert emd_hist(p, q, xe, ye) == pytest.approx(full, rel=1e-9)
