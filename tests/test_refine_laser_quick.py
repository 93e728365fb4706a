"""The shipped ``python -m refine.laser --quick`` toy run, end to end (the suite's longest test, in
a file of its own so that the other tests can run beside it)."""

import json

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_laser_quick_gaussians_meets_the_target(tmp_path):
    """The shipped ``--quick`` config (100k points) refines the four Gaussians to <= 0.35 x the
    baseline JSD with HMC and with both LaSeR refiners (weighted GAN and flow), and every refinement
    beats the baseline in EMD."""
    out = tmp_path / "quick"
    proc = run_cli(
        "refine.laser",
        "--toy",
        "gaussians",
        "--quick",
        "--seed",
        "0",
        "--out",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads((out / "results.json").read_text())["gaussians"]
    base = scores["baseline"]
    for method in ("hmc", "laser", "flow"):
        assert scores[method]["jsd"] <= 0.35 * base["jsd"], scores
    for method in ("hmc", "laser", "flow", "dctr"):
        assert scores[method]["emd"] < base["emd"], scores
    details = json.loads((out / "details.json").read_text())
    assert details["quick"] is True and details["toys"]["gaussians"]["n_eval"] == 100_000
