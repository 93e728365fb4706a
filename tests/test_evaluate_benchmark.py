"""``caloflow benchmark``: generation time per shower vs batch size (paper table 4)."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
import yaml

from caloflow.commands.benchmark import STAGES, Generator, estimate_seconds, time_generator
from caloflow.commands.cli import main as cli_main
from caloflow.configs import shipped_config
from caloflow.data.barrel import challenge_energies
from caloflow.data.io import check_showers, read_showers
from caloflow.geometry import get_geometry
from caloflow.models.calogan import CaloGAN
from caloflow.models.flows import FlowI, FlowII
from tests.helpers import TINY_GAN, run_cli, save_checkpoint

#: the two measured batch sizes, small: Flow II always has the detector's voxels, and nflows' inverse
#: makes one MADE pass per voxel even for a tiny Flow II
SMALL, LARGE = 3, 10
HUGE = 10_000_000  # a batch no test may ever run: it must come out estimated


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark_models")
    torch.manual_seed(0)
    return {
        "flow1": save_checkpoint(FlowI(n_blocks=2, hidden_features=8), root / "flow1.ckpt"),
        "flow2": save_checkpoint(FlowII(n_blocks=2, hidden_features=8), root / "flow2.ckpt"),
        "calogan": save_checkpoint(CaloGAN(**TINY_GAN), root / "calogan.ckpt"),
    }


@pytest.fixture(scope="module")
def benchmark_run(checkpoints, tmp_path_factory):
    return _benchmark(
        tmp_path_factory.mktemp("benchmark"),
        "--flow1", checkpoints["flow1"], "--flow2", checkpoints["flow2"],
        "--calogan", checkpoints["calogan"], "--batch-sizes", str(LARGE), str(SMALL), str(HUGE),
        "--repeats", "2", "--max-seconds", "60",
    )  # fmt: skip


def _benchmark(out, *args: str):
    """``caloflow benchmark ARGS`` on one thread with seed 3 into ``out``: (process, out, result)."""
    proc = run_cli(
        "caloflow", "benchmark", *args, "--threads", "1", "--seed", "3", "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, json.loads((out / "benchmark.json").read_text())


def cells(result) -> dict:
    return {(c["generator"], c["batch"]): c for c in result["cells"]}


def test_every_generator_and_batch_is_a_positive_finite_time(benchmark_run):
    proc, out, result = benchmark_run
    generators = ["caloflow-fast", "caloflow-nflows", "calogan", "simulator"]
    assert list(result["generators"]) == generators
    assert result["batch_sizes"] == [SMALL, LARGE, HUGE]
    table = cells(result)
    assert len(result["cells"]) == len(table) == 4 * 3
    for g in generators:
        for b in (SMALL, LARGE):
            cell = table[g, b]
            assert cell["status"] == "measured", cell
            assert 1 <= len(cell["seconds_per_call"]) <= 2
            assert all(math.isfinite(s) and s > 0 for s in cell["seconds_per_call"])
            # the reported figure is the best call divided by the showers in it
            assert cell["ms_per_shower"] == pytest.approx(
                1e3 * min(cell["seconds_per_call"]) / b, rel=1e-12
            )
    # the printed table, the markdown file and the machine description
    md = (out / "benchmark.md").read_text()
    assert md in proc.stdout
    assert f"| generator | {SMALL} | {LARGE} | 10,000,000 |" in md
    for label in (
        "CaloFlow, fast inverse",
        "CaloFlow, nflows inverse",
        "CaloGAN",
        "simulator (eplus)",
    ):
        assert f"| {label} |" in md
    assert result["machine"]["threads"] == 1 and result["machine"]["torch"] == torch.__version__
    assert "checkpoints" in result["generators"]["caloflow-fast"]["model"]
    assert f"batch {LARGE}: " in proc.stderr  # a progress line per cell


def test_fast_sampler_beats_nflows_inverse_on_the_same_model(benchmark_run):
    table = cells(benchmark_run[2])
    # same Flow I + Flow II weights; nflows runs the MADE once per voxel, the fast inverse once per degree group
    assert (
        table["caloflow-fast", LARGE]["ms_per_shower"]
        < table["caloflow-nflows", LARGE]["ms_per_shower"]
    )
    assert (
        table["caloflow-fast", SMALL]["ms_per_shower"]
        < table["caloflow-nflows", SMALL]["ms_per_shower"]
    )


def test_cells_over_the_time_limit_are_estimated_not_run(benchmark_run):
    _, out, result = benchmark_run
    table = cells(result)
    md = (out / "benchmark.md").read_text()
    for g in result["generators"]:
        cell = table[g, HUGE]
        assert cell["status"] == "estimated" and cell["seconds_per_call"] == []
        assert cell["estimate_s"] > 60 and "--max-seconds 60" in cell["reason"]
        assert cell["ms_per_shower"] == pytest.approx(1e3 * cell["estimate_s"] / HUGE)
        # extrapolated from the two measured batches: never slower per shower than the slowest of them
        per_shower = [table[g, b]["ms_per_shower"] for b in (SMALL, LARGE)]
        assert 0 < cell["ms_per_shower"] <= max(per_shower) * (1 + 1e-9)
        t_small, t_large = (min(table[g, b]["seconds_per_call"]) for b in (SMALL, LARGE))
        slope = (t_large - t_small) / (LARGE - SMALL)
        if (
            slope > 0 and t_small - SMALL * slope >= 0
        ):  # two points: the fitted line goes through both
            assert cell["estimate_s"] == pytest.approx(t_small + slope * (HUGE - SMALL), rel=1e-6)
    assert md.count(" (est.) |") == 4


def test_estimate_from_measured_batches_known_answers():
    exact = [(10, 2 + 0.5 * 10), (100, 2 + 0.5 * 100), (1000, 2 + 0.5 * 1000)]
    seconds, method = estimate_seconds(exact, 10_000)
    assert seconds == pytest.approx(2 + 0.5 * 10_000) and "fit" in method
    # one point: proportional to it (an upper bound when the time per shower falls with the batch)
    assert estimate_seconds([(100, 3.0)], 1000)[0] == pytest.approx(30.0)
    # a negative intercept is not physical: the best line through the origin (relative residuals)
    seconds, _ = estimate_seconds([(10, 1.0), (100, 20.0)], 1000)
    n_over_t = torch.tensor([10.0, 5.0])
    assert seconds == pytest.approx(1000 * float(n_over_t.sum() / (n_over_t**2).sum()))
    # time falling with the batch (noise): no positive slope, proportional to the largest batch
    assert estimate_seconds([(10, 2.0), (100, 1.0)], 1000)[0] == pytest.approx(10.0)


def test_timing_loop_on_a_generator_of_known_cost(monkeypatch):
    """A generator that takes 2 ms per shower and has no memory beyond 1,000 showers.

    The clock is simulated (the generator advances it), so the test checks the timing loop's
    logic and does not depend on how busy the machine is."""
    import types

    import caloflow.timing

    clock = [0.0]
    monkeypatch.setattr(
        caloflow.timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0])
    )
    calls = []

    def run(batch: int) -> int:
        if batch >= 1000:
            raise MemoryError
        calls.append(batch)
        clock[0] += 2e-3 * batch
        return 0

    gen = Generator("sleeper", "sleeper", run, "2 ms per shower")
    result = time_generator(
        gen,
        [5, 50, 500, 1000, 2000],
        torch.device("cpu"),
        max_seconds=0.5,
        repeats=3,
        log=lambda line: None,
    )
    by_batch = {c.batch: c for c in result}
    for b in (5, 50):
        assert by_batch[b].status == "measured" and len(by_batch[b].seconds_per_call) == 3
        assert by_batch[b].ms_per_shower == pytest.approx(2.0)
    # 500 showers = 1 s > 0.5 s: estimated from batches 5 and 50, close to the true 2 ms per shower
    assert by_batch[500].status == "estimated" and by_batch[500].ms_per_shower == pytest.approx(2.0)
    assert 500 not in calls and calls[0] == 2  # warm-up, then the timed calls
    assert by_batch[1000].status == "estimated"
    # an estimate that fits the limit runs; out of memory is reported and the larger batches skipped
    result = time_generator(
        gen, [5, 1000, 2000], torch.device("cpu"), max_seconds=100, repeats=1, log=lambda line: None
    )
    assert [c.status for c in result] == ["measured", "skipped", "skipped"]
    assert result[1].reason == "out of memory" and "at batch 1,000" in result[2].reason
    # a required batch (a dataset-1 run's fast pipeline, --nflows-batch) runs whatever its estimate;
    # --max-seconds then limits its repeats (1 s per call > 0.5 s: one call)
    calls.clear()
    result = time_generator(
        gen, [5, 500], torch.device("cpu"), 0.5, 3, log=lambda line: None, required=[500]
    )
    assert [c.status for c in result] == ["measured", "measured"] and calls.count(500) == 1
    assert result[1].ms_per_shower == pytest.approx(2.0)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--generators", "caloflow-fast,geant4"], "--generators: unknown generator 'geant4'"),
        (["--batch-sizes", "10", "0"], "--batch-sizes: must be positive, got '0'"),
        (["--batch-sizes", "ten"], "--batch-sizes: expected an integer, got 'ten'"),
        (["--flow1", "a.ckpt"], "--flow1 and --flow2 go together"),
        (["--simulator", "muon"], "--simulator: unknown particle 'muon'"),
        (["--max-seconds", "-1"], "--max-seconds: must be positive"),
        (["--threads", "0"], "--threads: must be positive"),
        (["--device", "tpu"], "--device: 'tpu' is not a torch device"),
        (["--dataset", "ds2"], "--dataset: invalid choice: 'ds2'"),
        (["--nflows-batch", "0"], "--nflows-batch: must be positive"),
        (
            ["--dataset", "ds1-pions", "--generators", "caloflow-fast,simulator"],
            "--generators: no simulator row for --dataset ds1-pions",
        ),
        (["--configs", "somewhere"], "--configs: builds dataset-1 models"),
        (
            ["--dataset", "ds1-photons", "--configs", "nowhere"],
            "--configs nowhere: no readable flow1.yaml in it",
        ),
    ],
)
def test_bad_options_are_one_line(options, message, tmp_path, capsys):
    assert cli_main(["benchmark", *options, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_one_line_from_the_command(tmp_path):
    missing = tmp_path / "nope.ckpt"
    proc = run_cli(
        "caloflow", "benchmark", "--calogan", str(missing), "--out", str(tmp_path / "out")
    )
    assert proc.returncode == 2
    assert proc.stderr == f"caloflow: error: --calogan {missing}: no such checkpoint file\n"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- dataset 1
DS1_BATCH, DS1_NFLOWS_BATCH = 6, 2


@pytest.fixture(scope="module")
def ds1_run(tmp_path_factory):
    """``--dataset ds1-photons`` with the shipped teacher configs shrunk to 2 blocks x 8 hidden units
    (``--configs``): nflows' inverse makes one MADE pass per voxel, too slow for a test at teacher size."""
    configs = tmp_path_factory.mktemp("ds1_configs")
    for name in ("flow1", "flow2"):
        config = yaml.safe_load(shipped_config(f"ds1/photons/{name}").read_text())
        config["model"]["init_args"].update(n_blocks=2, hidden_features=8)
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return _benchmark(
        tmp_path_factory.mktemp("ds1_benchmark"),
        "--dataset", "ds1-photons", "--configs", str(configs), "--batch-sizes", str(DS1_BATCH),
        "--nflows-batch", str(DS1_NFLOWS_BATCH), "--repeats", "1",
    )  # fmt: skip


def test_ds1_both_rows_are_positive_finite_times_with_their_ratio(ds1_run):
    proc, out, result = ds1_run
    assert result["dataset"] == "ds1-photons"
    assert list(result["generators"]) == ["caloflow-fast", "caloflow-nflows"]
    assert result["batch_sizes"] == [DS1_NFLOWS_BATCH, DS1_BATCH]  # --nflows-batch is a column
    table = cells(result)
    assert len(result["cells"]) == len(table) == 2 * 2
    for cell in table.values():
        assert cell["status"] == "measured", cell
        ms = cell["ms_per_shower"]
        assert math.isfinite(ms) and ms > 0
        assert ms == pytest.approx(1e3 * min(cell["seconds_per_call"]) / cell["batch"], rel=1e-12)
    # the same pipeline and weights: one MADE pass per voxel is slower than the fast inverse
    fast, slow = (table[g, DS1_NFLOWS_BATCH]["ms_per_shower"] for g in result["generators"])
    assert fast < slow
    c = result["comparison"]
    assert (c["fast_batch"], c["nflows_batch"]) == (DS1_BATCH, DS1_NFLOWS_BATCH)
    assert c["fast_ms_per_shower"] == table["caloflow-fast", DS1_BATCH]["ms_per_shower"]
    assert c["nflows_ms_per_shower"] == table["caloflow-nflows", DS1_NFLOWS_BATCH]["ms_per_shower"]
    assert c["ratio"] == pytest.approx(c["nflows_ms_per_shower"] / c["fast_ms_per_shower"])
    md = (out / "benchmark.md").read_text()
    assert md in proc.stdout
    assert f"| generator | {DS1_NFLOWS_BATCH} | {DS1_BATCH} |" in md
    assert "| CaloFlow, fast inverse |" in md and "| CaloFlow, nflows inverse |" in md
    assert f"ratio {c['ratio']:,.0f}x" in md and "writing the showers" in md
    assert "--dataset ds1-photons" in result["command"] and "--configs" in result["command"]
    # every stage of the fast pipeline timed, at the largest batch, and the stage table printed
    b = result["breakdown"]
    assert b["batch"] == DS1_BATCH and list(b["seconds"]) == list(STAGES)
    assert all(math.isfinite(t) and t > 0 for t in b["seconds"].values())
    assert b["total_s"] == pytest.approx(sum(b["seconds"].values()))
    assert all(f"| {label} |" in md for label in STAGES.values())


def test_ds1_pipeline_writes_a_valid_challenge_file(ds1_run):
    _, out, result = ds1_run
    geometry = get_geometry("ds1-photons")
    path = out / "caloflow-fast.hdf5"
    assert check_showers(path) == DS1_BATCH  # a valid file (keys, shapes, finite, non-negative)
    showers = read_showers(path)
    assert showers.geometry == geometry and showers.voxels.shape == (DS1_BATCH, geometry.n_voxels)
    # the challenge's energies of the last call, written back exactly (float64 MeV)
    expected = challenge_energies("ds1-photons", DS1_BATCH, 3)
    with h5py.File(path) as f:
        assert f["showers"].compression == "gzip" and f.attrs["fast_sampling"]
        np.testing.assert_array_equal(f["incident_energies"][:, 0], expected * 1e3)
    voxels = showers.voxels
    # post-processing: no voxel below the 0.01 MeV threshold but zero; Flow I's layer energies sum
    # to at most c E_inc (u_0 = sum E_k / (c E_inc) <= 1), the voxels of a layer to at most its energy
    c = yaml.safe_load(shipped_config("ds1/photons/flow1").read_text())["model"]["init_args"]
    assert np.all((voxels == 0) | (voxels >= 0.01 * (1 - 1e-6)))
    assert np.all(voxels.sum(axis=1) <= c["energy_scale"] * 1e3 * expected * (1 + 1e-5))
    assert (out / "caloflow-nflows.hdf5").is_file() and not (out / "stages.hdf5").exists()


def test_ds1_refuses_the_calogan_baseline_in_one_line(tmp_path):
    gan = tmp_path / "gan.ckpt"
    proc = run_cli(
        "caloflow",
        "benchmark",
        "--dataset",
        "ds1-photons",
        "--calogan",
        str(gan),
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "caloflow: error: --calogan: the CaloGAN baseline generates CaloGAN showers, "
        "not --dataset ds1-photons\n"
    )
    assert not (tmp_path / "out").exists()


def test_ds1_refuses_checkpoints_of_another_detector(checkpoints, tmp_path, capsys):
    options = ["--flow1", checkpoints["flow1"], "--flow2", checkpoints["flow2"]]
    assert cli_main(["benchmark", "--dataset", "ds1-pions", *options, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--flow1 {checkpoints['flow1']}: a calogan model, not one of --dataset ds1-pions" in err


def test_ds1_times_dataset_1_checkpoints_when_given(tmp_path):
    torch.manual_seed(0)
    flow1 = save_checkpoint(
        FlowI(n_blocks=2, hidden_features=8, geometry="ds1-pions"), tmp_path / "f1.ckpt"
    )
    flow2 = save_checkpoint(
        FlowII(n_blocks=2, hidden_features=8, geometry="ds1-pions"), tmp_path / "f2.ckpt"
    )
    out = tmp_path / "out"
    proc = run_cli(
        "caloflow", "benchmark", "--dataset", "ds1-pions", "--flow1", flow1, "--flow2", flow2,
        "--batch-sizes", "3", "--nflows-batch", "2", "--repeats", "1", "--threads", "1",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert f"checkpoints {flow1}, {flow2}" in result["generators"]["caloflow-fast"]["model"]
    assert all(c["status"] == "measured" and c["ms_per_shower"] > 0 for c in result["cells"])
    showers = read_showers(out / "caloflow-fast.hdf5")
    assert showers.geometry == get_geometry("ds1-pions") and len(showers.energy) == 3
