"""LaSeR on showers (``python -m refine.laser --flow1 --flow2 --reference --out``), conditional on E_inc.

Real tiny models: random-initialised Flow I / Flow II (weights perturbed) saved as Lightning
checkpoints, a small simulated CaloGAN file as the reference, a tiny config; the end-to-end run and
``caloflow generate`` are real subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from caloflow.data.io import read_energies, read_showers
from caloflow.data.simulate import simulate_to_file
from tests.helpers import HANG_GUARD_S, TINY_GAN, perturb, save_checkpoint, tiny_flows

#: small models train fastest on one thread
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
SEED = 3
N_REFERENCE = 240
TINY = """
split: {refinement_fraction: 0.5, n_refine: null, n_eval: null}
batch_size: 50
classifier:
  class_path: caloflow.models.ShowerClassifier
  init_args: {backbone: dnn, preprocessing: normalized, lr: 1.0e-3, backbone_args: {hidden: 16, n_hidden_layers: 1}}
classifier_training: {batch_size: 50, val_fraction: 0.25, max_epochs: 4, patience: 2, clip: 20.0}
rejection: {w_max_quantile: 0.9, max_rounds: 200}
hmc: {n_hmc: 12, step_size: 0.01, n_leapfrog: 2, burn_in: 2}
refiner:
  class_path: refine.gan.WeightedGANRefiner
  init_args: {hidden: 16, n_hidden: 1, lr: 1.0e-2, n_critic: 1, ema: 0.9}  # sampling from the averaged generator
refiner_training: {draws_per_energy: 3, epochs: 2, batch_size: 40}
evaluation: {runs: 1, epochs: 2, batch_size: 50}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny Flow I / II checkpoints, a 240-shower simulated reference and the tiny config."""
    d = tmp_path_factory.mktemp("showers")
    flow1, flow2 = tiny_flows()
    config = d / "tiny.yaml"
    config.write_text(TINY)
    return {
        "flow1": Path(save_checkpoint(flow1, d / "f1.ckpt")),
        "flow2": Path(save_checkpoint(flow2, d / "f2.ckpt")),
        "reference": simulate_to_file(d / "ref.hdf5", "eplus", N_REFERENCE, seed=5, progress=False),
        "config": config,
        "dir": d,
    }


def _run(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def _datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("layer_0", "layer_1", "layer_2", "energy", "overflow")}


@pytest.fixture(scope="module")
def run_dir(files, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("run") / "out"
    proc = _run(
        "refine.laser",
        "--flow1",
        files["flow1"],
        "--flow2",
        files["flow2"],
        "--reference",
        files["reference"],
        "--out",
        out,
        "--config",
        files["config"],
        "--seed",
        SEED,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_end_to_end_writes_every_output(files, run_dir):
    """Splits disjoint and complete; the refiner checkpoint records what it refines; one shower file per
    method at the evaluation energies (DCTR with its weights, HMC the first n_hmc); every method in
    results.json with held-out AUC/JSD of the three classifiers and separation powers; progress per step."""
    out, proc = run_dir
    splits = json.loads((out / "splits.json").read_text())
    ref, ev = set(splits["refinement"]), set(splits["evaluation"])
    assert not ref & ev and ref | ev == set(range(N_REFERENCE)) and len(ref) == N_REFERENCE // 2
    ckpt = torch.load(out / "refiner.ckpt", weights_only=True)
    entry, hp = ckpt["laser"], ckpt["hyper_parameters"]
    from refine.shower_refiner import file_sha256

    assert entry["checkpoints_sha256"] == {
        "flow1": file_sha256(files["flow1"]),
        "flow2": file_sha256(files["flow2"]),
    }
    assert (
        hp["latent_dim"] == hp["aux_dim"] == entry["latent_dim"] == 507 and hp["context_dim"] == 1
    )
    assert hp["residual"] and hp["zero_init"]
    energies = read_energies(files["reference"], splits["evaluation_used"])
    for method in ("unrefined", "dctr", "rejection", "hmc", "laser"):
        showers = read_showers(out / "showers" / f"{method}.hdf5")
        n = 12 if method == "hmc" else len(energies)
        assert np.array_equal(showers.energy, energies[:n]), method
        assert (showers.voxels > 0).any(), method
    with h5py.File(out / "showers" / "dctr.hdf5") as f:
        w = f["weight"][()]
    assert w.shape == (len(energies),) and np.all(np.isfinite(w)) and np.all(w > 0)
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {
        "unrefined",
        "dctr",
        "rejection",
        "hmc",
        "laser",
        "unrefined-hmc",
    }
    for method, entry in results["methods"].items():
        assert set(entry["classifier"]) == {"dnn-unnormalized", "dnn-normalized", "features"}, (
            method
        )
        for test in entry["classifier"].values():
            assert (
                0 <= test["auc"]["mean"] <= 1
                and 0 <= test["jsd"]["mean"] <= 1
                and "std" in test["auc"]
            )
        assert entry["separation_power"]["mean"] >= 0
    assert results["methods"]["dctr"]["classifier"]["dnn-normalized"]["weighted"]
    assert 0 < results["rejection"]["acceptance"] <= 1 and 0 <= results["hmc"]["acceptance"] <= 1
    # the refiner's points: the weight classifier's latents plus two prior draws per refinement energy
    points = results["refiner_points"]
    assert points["n"] == 3 * len(splits["refinement_used"]) and points["draws_per_energy"] == 3
    assert 0 < points["ess_fraction"] <= 1
    assert set(results["sampling"]["seconds_per_shower"]) | {"unrefined-hmc"} == set(
        results["methods"]
    )
    assert (
        results["methods"]["unrefined-hmc"]["n_showers"]
        == results["methods"]["hmc"]["n_showers"]
        == 12
    )
    log_w = results["hmc"]["mean_log_w"]
    assert set(log_w) == {"start", "end", "target"} and all(np.isfinite(v) for v in log_w.values())
    # the target: E_q[log w] over the unrefined showers with their DCTR weights (fresh prior draws)
    assert log_w["target"] == pytest.approx(float((w * np.log(w)).sum() / w.sum()), rel=1e-6)
    # a like-for-like test for HMC: the same size and (smaller) batches as HMC's own
    for key in ("dnn-unnormalized", "features"):
        small = [results["methods"][m]["classifier"][key] for m in ("unrefined-hmc", "hmc")]
        assert (
            small[0]["batch_size"]
            == small[1]["batch_size"]
            <= results["methods"]["unrefined"]["classifier"][key]["batch_size"]
        )
    table = (out / "table.md").read_text()
    assert all(
        f"| {t} |" in table for t in ("Unrefined", "DCTR (weighted)", "HMC", "LaSeR refiner")
    )
    assert f"{log_w['target']:.3f} for the target q" in table
    # the time per stage, and each row's share of the evaluation
    timings = results["timings_s"]
    assert {"weights", "refiner_points", "refiner", "generation", "evaluation"} <= set(timings)
    assert f"total {sum(timings.values()) / 60:.1f}." in table
    rows = [e["evaluation_seconds"] for e in results["methods"].values()]
    assert all(t > 0 for t in rows) and sum(rows) <= timings["evaluation"]
    for step in (
        "splits:",
        "weight classifier:",
        "refiner points: draw 3/3",
        "wrote",
        "rejection",
        "HMC:",
        "evaluation split:",
    ):
        assert step in proc.stderr, step
    assert not list(out.rglob(".*tmp*"))


def test_caloflow_generate_reproduces_the_run(files, run_dir, tmp_path):
    """``caloflow generate [--refiner DIR/refiner.ckpt] --energies DIR/showers/unrefined.hdf5 --seed S`` with the
    run's batch size writes the run's laser.hdf5 (and unrefined.hdf5) bit for bit: the same code draws the
    same latents per batch from the same seeded generator and runs the same float operations on the same
    shapes on the same device (CPU, one thread in both)."""
    out, _ = run_dir
    energies = out / "showers" / "unrefined.hdf5"
    for refiner, target in ((["--refiner", out / "refiner.ckpt"], "laser"), ([], "unrefined")):
        gen = tmp_path / f"{target}.hdf5"
        proc = _run(
            "caloflow.commands.cli",
            "generate",
            "--flow1",
            files["flow1"],
            "--flow2",
            files["flow2"],
            *refiner,
            "--energies",
            energies,
            "--seed",
            SEED,
            "--batch-size",
            50,
            "--out",
            gen,
            "--no-progress",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        mine, theirs = _datasets(gen), _datasets(out / "showers" / f"{target}.hdf5")
        assert all(np.array_equal(mine[k], theirs[k]) for k in mine), target
    laser, unrefined = (
        _datasets(out / "showers" / "laser.hdf5"),
        _datasets(out / "showers" / "unrefined.hdf5"),
    )
    assert not np.array_equal(laser["layer_0"], unrefined["layer_0"]), "the refiner changed nothing"


def test_refiner_starts_as_identity_and_is_conditional(tmp_path):
    """Phi(y, E) = y + MLP([y, c(E)]) with a zero last layer: exactly y before training, for every E; after
    one training step on E-dependent weights the output depends on E."""
    from caloflow.training import make_trainer
    from refine.data import TensorLoader
    from refine.gan import WeightedGANRefiner
    from refine.shower_refiner import incident_context

    torch.manual_seed(0)
    phi = WeightedGANRefiner(
        latent_dim=6,
        aux_dim=6,
        context_dim=1,
        residual=True,
        zero_init=True,
        hidden=8,
        n_hidden=2,
        lr=1e-2,
        n_critic=1,
    )
    y = torch.randn(5, 6)
    low, high = incident_context(torch.full((5,), 2.0)), incident_context(torch.full((5,), 80.0))
    assert torch.equal(phi(y, low), y) and torch.equal(phi.decode(y, high), y)
    energies = torch.rand(400) * 99 + 1
    z = torch.randn(400, 6)
    w = torch.exp(0.5 * z[:, 0] * torch.log10(energies))  # a reweighting that depends on E
    make_trainer(1, None).fit(
        phi, TensorLoader(z, w, incident_context(energies), batch_size=400, seed=0)
    )
    with torch.no_grad():
        assert not torch.equal(phi(y, low), y)
        assert (phi(y, low) - phi(y, high)).abs().max() > 1e-6


def test_rejection_sampling_reproduces_a_known_reweighting():
    """g(z | E) = z + E with z ~ N(0, 1) and w(x, E) = 1 + c(E) tanh(x - E), c(E) = +-0.8: the accepted
    z at each energy follow phi(z) (1 + c tanh z) (normalised: E[tanh z] = 0), the acceptance is
    1 / w_max = 1 / 1.8; the chi^2 per bin against the target is ~1, against the prior it is large."""
    from refine.rejection import rejection_sample_conditional

    gen = torch.Generator().manual_seed(0)
    c_of = {1.0: 0.8, 2.0: -0.8}
    conditions = torch.tensor([1.0] * 20_000 + [2.0] * 20_000, dtype=torch.float64)

    def propose(e):
        z = torch.randn(len(e), generator=gen, dtype=torch.float64)
        return z[:, None], (z + e)[:, None]

    def weight(x, e):
        c = torch.where(e == 1.0, 0.8, -0.8)
        return 1 + c * torch.tanh(x[:, 0] - e)

    z, x, acceptance = rejection_sample_conditional(propose, weight, conditions, 1.8, gen)
    assert abs(acceptance - 1 / 1.8) < 0.01
    assert torch.allclose(x[:, 0] - conditions, z[:, 0])
    edges = np.linspace(-4, 4, 33)
    grid = np.linspace(-4, 4, 32 * 200 + 1)
    for e, c in c_of.items():
        sample = z[conditions == e, 0].numpy()
        counts = np.histogram(sample, edges)[0]
        density = np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi)
        target = density * (1 + c * np.tanh(grid))
        for name, pdf, limit in (("target", target, (0.4, 2.0)), ("prior", density, (5, None))):
            cdf = np.concatenate([[0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(grid))])
            expected = len(sample) * np.diff(np.interp(edges, grid, cdf))
            used = expected > 20
            chi2 = float(np.sum((counts[used] - expected[used]) ** 2 / expected[used]) / used.sum())
            assert chi2 > limit[0] and (limit[1] is None or chi2 < limit[1]), (e, name, chi2)


def _poisoned_copy(src: Path, dst: Path, rows: list[int], how: str) -> Path:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        for key in ("layer_0", "layer_1", "layer_2", "energy"):
            data = f[key][()]
            data[rows] = np.nan if how == "nan" else data[rows] * (1.5 if key == "energy" else 3.0)
            f[key][...] = data
    return dst


def _poisoned_references(reference: Path, splits: dict, folder: Path) -> tuple[Path, Path]:
    """Two copies of ``reference``: every evaluation row NaN, and the first refinement row used scaled."""
    return (
        _poisoned_copy(reference, folder / "eval.hdf5", splits["evaluation"], "nan"),
        _poisoned_copy(reference, folder / "ref.hdf5", splits["refinement_used"][:1], "scale"),
    )


def _refine_only(files: dict, reference: Path, out: Path, calogan: str | None = None) -> dict:
    """The refinement steps (splits, weights, refiner) in-process, as the command runs them."""
    from refine.shower_laser import (
        ShowerRun,
        check_inputs,
        laser_generator,
        load_shower_config,
        make_splits,
        refinement_steps,
    )

    flows = (
        {"flow1": None, "flow2": None}
        if calogan
        else {"flow1": str(files["flow1"]), "flow2": str(files["flow2"])}
    )
    cfg = load_shower_config(False, files["config"])
    inputs = check_inputs({**flows, "calogan": calogan}, str(reference), out, str(files["config"]))
    splits = make_splits(inputs.n_reference, cfg.split, SEED)
    (out / "showers").mkdir(parents=True)
    run = ShowerRun(cfg, out, SEED, inputs, progress=False, g=laser_generator(inputs))
    refined = refinement_steps(run, splits)
    refined.update(splits=splits, run=run)
    refined["refiner_state"] = torch.load(out / "refiner.ckpt", weights_only=True)["state_dict"]
    return refined


def test_poisoned_evaluation_rows_change_nothing(files, tmp_path):
    """NaN in every evaluation row of the reference (voxels and energies): the refinement never reads them
    (reading one would fail its validation), and the weights, the classifier's logits on fixed showers and
    the refiner checkpoint's tensors are bitwise those of the clean file; one refinement row scaled changes them."""
    clean = _refine_only(files, files["reference"], tmp_path / "clean")
    splits = clean["splits"]
    eval_poisoned, ref_poisoned = _poisoned_references(files["reference"], splits, tmp_path)
    fixed = read_showers(files["reference"], stop=50)
    batch = {"voxels": torch.as_tensor(fixed.voxels), "energy": torch.as_tensor(fixed.energy)}

    def same(a: dict, b: dict) -> dict[str, bool]:
        return {
            "refiner": all(
                torch.equal(a["refiner_state"][k], b["refiner_state"][k])
                for k in a["refiner_state"]
            ),
            "weights": torch.equal(a["w"], b["w"]) and torch.equal(a["z"], b["z"]),
            "logits": torch.equal(a["classifier"].logits(batch), b["classifier"].logits(batch)),
        }

    assert all(same(clean, _refine_only(files, eval_poisoned, tmp_path / "eval_poisoned")).values())
    assert not any(
        same(clean, _refine_only(files, ref_poisoned, tmp_path / "ref_poisoned")).values()
    )


def test_calogan_refiner_round_trip(files, run_dir, tmp_path, capsys):
    """--calogan: the refinement steps on a tiny CaloGAN (latent dimension 8; 1024 for the published one),
    its unrefined and LaSeR showers written as the command writes them, the LaSeR ones reproduced bit for
    bit by ``caloflow generate --calogan --refiner``; a refiner of CaloFlow is refused for it in one line."""
    from caloflow.commands.cli import main
    from caloflow.models.calogan import CaloGAN
    from refine.shower_laser import generate_laser, generate_unrefined

    torch.manual_seed(0)
    gan = save_checkpoint(perturb(CaloGAN(**TINY_GAN), 0.1, 0).eval(), tmp_path / "gan.ckpt")
    refined = _refine_only(files, files["reference"], tmp_path / "out", calogan=gan)
    assert refined["z"].shape[1] == 8 and refined["refiner"].hparams.context_dim == 1
    run, energies = (
        refined["run"],
        read_energies(files["reference"], refined["splits"]["evaluation_used"]),
    )
    generate_unrefined(run, energies)
    generate_laser(run, refined["refiner"], energies)
    showers = run.out / "showers"
    gen = tmp_path / "gen.hdf5"
    assert (
        main(
            [
                "generate",
                "--calogan",
                gan,
                "--refiner",
                str(run.out / "refiner.ckpt"),
                "--energies",
                str(showers / "unrefined.hdf5"),
                "--seed",
                str(SEED),
                "--batch-size",
                "50",
                "--out",
                str(gen),
                "--no-progress",
            ]
        )
        == 0
    )
    mine, theirs = _datasets(gen), _datasets(showers / "laser.hdf5")
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    capsys.readouterr()
    code = main(
        [
            "generate",
            "--calogan",
            gan,
            "--refiner",
            str(run_dir[0] / "refiner.ckpt"),
            "--n",
            "5",
            "--out",
            str(tmp_path / "g2.hdf5"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not for --calogan" in err[0], err


def _bad_reference(d: Path) -> Path:
    path = d / "energies_only.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("energy", data=np.ones((30, 1), np.float32))
    return path


@pytest.mark.parametrize(
    "case, needle",
    [
        ("toy_and_flows", "mutually exclusive"),
        ("missing_checkpoint", "no such checkpoint file"),
        ("wrong_model_class", "--flow1"),
        ("reference_without_layers", "layer_0"),
        ("out_is_a_file", "not a folder"),
        ("out_overwrites_reference", "refusing to overwrite an input"),
    ],
)
def test_bad_inputs_are_one_line(files, tmp_path, capsys, case, needle):
    """Refused in one line, exit 2, before any work (the output folder is not created)."""
    from refine.laser import main

    base = {
        "--flow1": files["flow1"],
        "--flow2": files["flow2"],
        "--reference": files["reference"],
        "--out": tmp_path / "out",
        "--config": files["config"],
    }
    if case == "toy_and_flows":
        base["--toy"] = "gaussians"
    elif case == "missing_checkpoint":
        base["--flow1"] = tmp_path / "missing.ckpt"
    elif case == "wrong_model_class":
        base["--flow1"] = files["flow2"]
    elif case == "reference_without_layers":
        base["--reference"] = _bad_reference(tmp_path)
    elif case == "out_is_a_file":
        base["--out"] = files["flow1"]
    elif case == "out_overwrites_reference":
        (tmp_path / "out" / "showers").mkdir(parents=True)
        base["--reference"] = shutil.copy(
            files["reference"], tmp_path / "out" / "showers" / "unrefined.hdf5"
        )
    argv = [str(v) for kv in base.items() for v in kv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    if case != "out_overwrites_reference" and case != "out_is_a_file":
        assert not (tmp_path / "out").exists()


def test_generate_refuses_a_refiner_of_other_checkpoints(files, run_dir, tmp_path, capsys):
    """``caloflow generate --refiner`` with a Flow II other than the one the refiner was trained for: one
    line naming the sha256 mismatch; ``caloflow refine`` is the same entry as ``python -m refine.laser``."""
    from caloflow.commands.cli import main

    out, _ = run_dir
    other = save_checkpoint(tiny_flows(seed=7)[1], tmp_path / "other_f2.ckpt")
    code = main(
        [
            "generate",
            "--flow1",
            str(files["flow1"]),
            "--flow2",
            other,
            "--refiner",
            str(out / "refiner.ckpt"),
            "--n",
            "5",
            "--out",
            str(tmp_path / "g.hdf5"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sha256" in err[0] and "--flow2" in err[0], err
    assert not (tmp_path / "g.hdf5").exists()
    code = main(
        ["refine", "--toy", "donut", "--flow1", str(files["flow1"]), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mutually exclusive" in err[0], err


def test_small_classifier_tests_get_at_least_ten_updates_per_epoch():
    from refine.shower_report import classifier_batch_size

    assert (
        classifier_batch_size(10_000, 1000) == 1000
    )  # 12,000 training showers: 12 updates of 1,000
    assert (
        classifier_batch_size(500, 1000) == 60
    )  # HMC's 500: 600 training showers, 10 updates of 60
    assert classifier_batch_size(5_000, 250) == 250
    for n in (20, 200, 500, 3000):
        b = classifier_batch_size(n, 1000)
        assert 2 * round(0.6 * n) // b >= 10


def test_print_config_of_the_shower_run_is_the_resolved_yaml(tmp_path):
    """``--print_config`` prints the shipped shower config with --quick merged (no traceback), as YAML that
    reads back with the quick values and the nested classifier arguments."""
    import yaml

    proc = _run(
        "refine.laser",
        "--flow1",
        "a.ckpt",
        "--flow2",
        "b.ckpt",
        "--reference",
        "r.hdf5",
        "--quick",
        "--print_config",
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert (
        cfg["split"]["n_refine"] == 5000
        and cfg["hmc"]["n_hmc"] == 200
        and cfg["hmc"]["target_acceptance"] == 0.8
    )
    # the voxel DNN's geometry is resolved too (its input width follows it)
    assert cfg["classifier"]["init_args"]["backbone_args"] == {
        "hidden": 512,
        "n_hidden_layers": 3,
        "slope": 0.01,
        "geometry": "calogan",
    }
    # the shipped refiner: the flow, kept at its best held-out weighted likelihood
    assert cfg["refiner"]["class_path"] == "refine.flow_refiner.WeightedFlowRefiner"
    assert cfg["refiner_training"]["val_fraction"] == 0.1
    assert not list(tmp_path.iterdir())


def test_refiner_points_are_prior_draws_weighted_by_the_classifier(files, tmp_path):
    """The refiner's training points: the given weighted latents first, then draws_per_energy - 1 fresh prior
    draws at every refinement energy, each weighted by the classifier at the shower it decodes to (checked
    against an independent decode and weighting); the same seed gives the same points."""
    from refine.config import build
    from refine.shower_laser import (
        ShowerInputs,
        ShowerRun,
        _load_models,
        laser_generator,
        load_shower_config,
        refiner_points,
        shower_weights,
    )

    cfg = load_shower_config(path=files["config"])
    checkpoints = {"flow1": str(files["flow1"]), "flow2": str(files["flow2"])}
    inputs = ShowerInputs(
        "caloflow", checkpoints, _load_models(checkpoints), files["reference"], N_REFERENCE
    )
    run = ShowerRun(cfg, tmp_path, SEED, inputs, progress=False, g=laser_generator(inputs))
    torch.manual_seed(0)
    classifier = build(cfg.classifier).eval().requires_grad_(False)
    energies = torch.as_tensor(
        read_energies(files["reference"], list(range(60))), dtype=torch.float32
    )
    z0 = torch.randn(60, 507)
    given = {
        "z": z0,
        "w": torch.rand(60, dtype=torch.float64),
        "energy": energies,
        "classifier": classifier,
    }
    z, w, e = refiner_points(run, given)
    draws = cfg.refiner_training.draws_per_energy
    assert draws == 3 and z.shape == (3 * 60, 507) and w.shape == e.shape == (3 * 60,)
    assert (
        torch.equal(z[:60], z0)
        and torch.equal(w[:60], given["w"])
        and torch.equal(e, energies.repeat(3))
    )
    new = z[60:]
    assert (
        abs(float(new.mean())) < 0.02
        and abs(float(new.std()) - 1) < 0.02
        and not torch.equal(new[:60], new[60:])
    )
    with torch.no_grad():
        x = run.g.decode(new, e[60:])
    expected = shower_weights(classifier, x, e[60:], cfg.classifier_training.clip)
    torch.testing.assert_close(w[60:], expected, rtol=1e-5, atol=0)
    assert torch.equal(refiner_points(run, given)[0], z)


def test_hmc_log_w_target_is_the_reweighted_mean():
    """E_q[log w] from weighted prior draws: exact on a small set (with the cap), and for
    w(z) = exp(a.z - |a|^2 / 2), where q = N(a, I), it converges to |a|^2 / 2; start and end are plain means."""
    from refine.shower_laser import hmc_log_w

    e = float(np.e)
    exact = hmc_log_w(torch.zeros(2), torch.ones(2), np.array([1.0, e, e]), None)
    assert exact == pytest.approx(
        {"start": 0.0, "end": 1.0, "target": 2 * e / (1 + 2 * e)}, rel=1e-12
    )
    capped = hmc_log_w(torch.zeros(2), torch.ones(2), np.array([1.0, e, e]), 2.0)
    assert capped["target"] == pytest.approx(4 * np.log(2.0) / 5, rel=1e-12)
    a = np.array([0.5, 0.3])
    z = np.random.default_rng(0).standard_normal((400_000, 2))
    w = np.exp(z @ a - a @ a / 2)
    assert hmc_log_w(torch.zeros(1), torch.zeros(1), w, None)["target"] == pytest.approx(
        a @ a / 2, abs=0.01
    )


def test_failing_methods_are_reported_in_their_rows(files, tmp_path):
    """Settings under which three methods cannot run on the weights (rejection with one proposal per
    energy, HMC with a leapfrog step of 1e6 latent units, a refiner at learning rate 1e30): the command
    exits 0 without a traceback, prints one warning line per failed method, marks each failed row with
    its reason and measured figure (rejection's acceptance, HMC's acceptance 0, the refiner's non-finite
    loss), writes no showers and no refiner for them, and still evaluates the unrefined and DCTR showers."""
    bad = files["config"].read_text()
    for old, new in (
        ("max_rounds: 200", "max_rounds: 1"),
        ("step_size: 0.01,", "step_size: 1.0e+6, target_acceptance: null,"),
        ("lr: 1.0e-2, n_critic", "lr: 1.0e+30, n_critic"),
    ):
        assert old in bad
        bad = bad.replace(old, new)
    config = tmp_path / "bad.yaml"
    config.write_text(bad)
    out = tmp_path / "out"
    proc = _run(
        "refine.laser",
        *("--flow1", files["flow1"], "--flow2", files["flow2"]),
        *("--reference", files["reference"], "--out", out, "--config", config, "--seed", SEED),
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 3 and all(
        any(f"warning: {m} failed" in line for line in warnings)
        for m in ("rejection", "hmc", "laser")
    ), warnings
    results = json.loads((out / "results.json").read_text())
    assert set(results["failed"]) == {"rejection", "hmc", "laser"}
    rejection = results["failed"]["rejection"]
    assert 0 < rejection["acceptance"] < 1 and rejection["conditions_rejected"] >= 1
    assert "proposals rejected" in rejection["reason"] and rejection["max_rounds"] == 1
    assert (
        results["failed"]["hmc"]["acceptance"] == 0
        and "diverged" in results["failed"]["hmc"]["reason"]
    )
    assert "not finite" in results["failed"]["laser"]["reason"]
    for method in ("rejection", "hmc", "laser", "unrefined-hmc"):
        assert "reason" in results["methods"][method]["failed"], method
        assert not (out / "showers" / f"{method}.hdf5").exists()
    assert not (out / "refiner.ckpt").exists()
    for method in ("unrefined", "dctr"):
        assert 0 <= results["methods"][method]["classifier"]["dnn-normalized"]["auc"]["mean"] <= 1
    table = (out / "table.md").read_text()
    assert "| Rejection sampling | 0 | failed: rejection sampling:" in table
    assert "| HMC | 0 | failed: HMC diverged" in table and "| LaSeR refiner | 0 | failed:" in table
    assert table in proc.stdout
