"""The CaloGAN geometry keeps its numbers now that the detector is data.

The values below were computed before the geometry became an object (the commit that introduced
``caloflow.geometry``, with module-level CaloGAN constants everywhere), by the same code as here.
They pin the simulator's showers, the sizes of the paper's flows and the log-likelihood of tiny
random-weight flows; a change in any of the CaloGAN paths (the layer slices, the u-space, the
layer normalisation, the permutations, the flow builder) moves them. The whole chain (simulate,
fit the smoke configs, generate, evaluate) was compared file hash by file hash too; that takes a
minute and is not repeated here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloflow.data.simulate import simulate
from caloflow.geometry import CALOGAN
from caloflow.models import FlowI, FlowII

#: per-layer voxel sums, overflow sum and incident-energy sum of 96 e+ showers, seed 0
SIMULATED = (600075.2559325905, 3816012.053399003, 14509.08166558675, 27035.94166896221,
             4515.900090932846)  # fmt: skip
#: summed log p of 8 of those showers under the tiny flows of _tiny_flows()
LOG_PROB = {"flow1": -573.9229736328125, "flow2": -224937.265625}
#: trainable parameters of the paper-size flows (configs flow1.yaml, flow2.yaml defaults)
PARAMETERS = {"flow1": 79_134, "flow2": 37_835_280}


def _tiny_flows() -> tuple[FlowI, FlowII]:
    torch.manual_seed(0)
    f1 = FlowI(n_blocks=2, hidden_features=8, num_bins=4).eval()
    f2 = FlowII(n_blocks=2, hidden_features=8, num_bins=4, dropout=0.0).eval()
    with torch.no_grad():
        for p in list(f1.parameters()) + list(f2.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    return f1, f2


@pytest.fixture(scope="module")
def showers():
    return simulate("eplus", 96, seed=0, progress=False)


def test_the_simulator_gives_the_same_showers(showers):
    sums = [showers.voxels[:, s].sum() for s in CALOGAN.layer_slices]
    sums += [showers.overflow.sum(), showers.energy.sum()]
    np.testing.assert_allclose(sums, SIMULATED, rtol=1e-12)


def test_the_flows_give_the_same_likelihood_and_sizes(showers):
    f1, f2 = _tiny_flows()
    voxels = torch.as_tensor(showers.voxels[:8], dtype=torch.float64) + 1e-3
    energy = torch.as_tensor(showers.energy[:8], dtype=torch.float64)
    with torch.no_grad():
        log_p1 = f1.log_prob(CALOGAN.layer_energies(voxels), energy).sum().item()
        log_p2 = f2.log_prob(voxels, energy).sum().item()
    assert log_p1 == pytest.approx(LOG_PROB["flow1"], rel=1e-5)
    assert log_p2 == pytest.approx(LOG_PROB["flow2"], rel=1e-5)
    assert sum(p.numel() for p in FlowI().parameters()) == PARAMETERS["flow1"]
    assert sum(p.numel() for p in FlowII().parameters()) == PARAMETERS["flow2"]
