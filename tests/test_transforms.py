"""Invertible preprocessing (paper eqs. 4.1-4.5): known values and round trips to 1e-6 relative."""

from __future__ import annotations

import math

import pytest
import torch

from caloflow.geometry import CALOGAN
from caloflow.transforms import (
    EnergyToU,
    FlowIIPreprocessing,
    FlowIPreprocessing,
    LayerNormalization,
    LogitTransform,
    decode_incident_energy,
    decode_layer_energies,
    encode_incident_energy,
    encode_layer_energies,
)

torch.manual_seed(0)


def showers(n=64, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    voxels = torch.rand(n, 504, generator=g, dtype=dtype) ** 4 * 200 + 1e-3  # MeV, noise-like floor
    # incident energy above the deposited one, as in every real shower: E_hat / E_inc in (0.3, 1)
    incident = (
        voxels.double().sum(1) / 1e3 / (0.3 + 0.7 * torch.rand(n, generator=g, dtype=torch.float64))
    )
    incident = incident.to(dtype)
    return voxels, incident


def test_logit_known_values_and_round_trip():
    t = LogitTransform(1e-6)
    ends = t.forward(torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert ends[0].item() == pytest.approx(-math.log((1 - 1e-6) / 1e-6), rel=1e-12)  # -13.8155
    assert ends[1].item() == pytest.approx(13.815509557963773, rel=1e-9) and ends[2].item() == 0.0
    u = torch.rand(1000, dtype=torch.float64)
    assert torch.allclose(t.inverse(t.forward(u)), u, rtol=1e-6, atol=0)
    # clamping: values outside [0, 1] map to the boundary
    assert torch.equal(t.forward(torch.tensor([-0.5, 1.5], dtype=torch.float64)), ends[:2])


def test_u_space_matches_equation_4_1():
    voxels, incident = showers()
    e = LayerNormalization(CALOGAN.layer_sizes).layer_sums(voxels)
    u = EnergyToU().forward(e, incident)
    e_hat = e.sum(1)
    expected = torch.stack(
        [e_hat / (incident * 1e3), e[:, 0] / e_hat, e[:, 1] / (e[:, 1] + e[:, 2])], 1
    )
    assert torch.allclose(u, expected, rtol=1e-12)
    back = EnergyToU().inverse(u, incident)
    assert torch.allclose(back, e, rtol=1e-6, atol=0)


def test_u_space_inverse_conserves_energy_for_any_input():
    incident = torch.rand(500, dtype=torch.float64) * 99 + 1
    x = torch.randn(500, 3, dtype=torch.float64) * 20  # far outside the data: clamps must hold
    e = FlowIPreprocessing(CALOGAN.n_layers).inverse(x, incident)
    assert (e >= 0).all() and (e.sum(1) <= incident * 1e3 * (1 + 1e-12)).all()


def test_flow1_round_trip():
    voxels, incident = showers()
    e = LayerNormalization(CALOGAN.layer_sizes).layer_sums(voxels)
    pre = FlowIPreprocessing(CALOGAN.n_layers)
    x, context = pre.forward(e, incident)
    assert x.shape == (64, 3) and context.shape == (64, 1)
    assert torch.allclose(pre.inverse(x, incident), e, rtol=1e-6, atol=0)
    assert torch.allclose(decode_incident_energy(context), incident, rtol=1e-12)


def test_condition_encodings():
    assert encode_incident_energy(
        torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    ).flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0])
    e = torch.tensor([[0.0, 1e5, 1e8]], dtype=torch.float64)  # MeV: 0, 100 GeV, 100 TeV
    enc = encode_layer_energies(e)
    assert enc[0].tolist() == pytest.approx(
        [math.log10(1e-3 / 1e5) + 2, math.log10((1e5 + 1e-3) / 1e5) + 2, 5.0]
    )
    assert enc[0, 0].item() == pytest.approx(-6.0)
    assert torch.allclose(decode_layer_energies(enc), e, rtol=1e-6, atol=1e-9)


def test_layer_normalisation_round_trip_and_sums():
    voxels, _ = showers()
    norm = LayerNormalization(CALOGAN.layer_sizes)
    fractions = norm.forward(voxels)
    for s in CALOGAN.layer_slices:
        assert torch.allclose(
            fractions[:, s].sum(1), torch.ones(64, dtype=torch.float64), rtol=1e-12
        )
    assert torch.allclose(norm.inverse(fractions, norm.layer_sums(voxels)), voxels, rtol=1e-6)
    # an empty layer stays empty instead of turning into NaN
    empty = voxels.clone()
    empty[:, CALOGAN.layer_slices[2]] = 0
    assert (
        torch.isfinite(norm.forward(empty)).all()
        and not norm.forward(empty)[:, CALOGAN.layer_slices[2]].any()
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_flow2_round_trip(dtype):
    voxels, incident = showers(dtype=dtype)
    pre = FlowIIPreprocessing(CALOGAN.layer_sizes)
    x, context = pre.forward(voxels, incident)
    assert x.shape == (64, 504) and context.shape == (64, 4) and x.dtype == dtype
    e = decode_layer_energies(context[:, 1:].double())
    back = pre.inverse(x, e, threshold=False)
    rtol = (
        1e-6 if dtype == torch.float64 else 2e-3
    )  # float32 logit near 0 limits the smallest voxels
    big = voxels > 1.0
    assert torch.allclose(back[big].double(), voxels[big].double(), rtol=rtol)
    assert torch.allclose(
        back.double(), voxels.double(), rtol=1e-6 if dtype == torch.float64 else 1e-2, atol=1e-6
    )


def test_flow2_postprocessing_renormalises_and_thresholds():
    pre = FlowIIPreprocessing(CALOGAN.layer_sizes)
    x = torch.randn(32, 504) * 3 - 6  # a generated shape that does not sum to 1 per layer
    e = torch.rand(32, 3, dtype=torch.float64) * 1e4
    unthresholded = pre.inverse(x, e, threshold=False)
    sums = LayerNormalization(CALOGAN.layer_sizes).layer_sums(unthresholded.double())
    assert torch.allclose(sums, e, rtol=1e-5)
    out = pre.inverse(x, e)
    assert ((out == 0) | (out >= 10e-3)).all()
    kept = unthresholded >= 10e-3
    assert torch.equal(out[kept], unthresholded[kept]) and not out[~kept].any()
