"""CaloFlow end to end: paper-size configs, smoke fits through the real `lightning` entry,
TensorBoard output, generation, resume, DDP on CPU, the NaN guard and bad input."""

from __future__ import annotations

import glob
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import NonFiniteGuard
from caloflow import CaloFlow
from caloflow.commands.lightning_cli import cli_main
from caloflow.data import CaloDataModule, read_showers
from caloflow.models import FlowI
from caloflow.nn import count_parameters
from tests.helpers import HANG_GUARD_S, REPO, run_cli


def paper_model(config: str):
    cli = cli_main(["-c", str(REPO / "configs" / config), "--trainer.logger", "false"], run=False)
    return cli.model, cli.datamodule, cli.trainer


def test_paper_configs_give_the_paper_parameter_counts():
    flow1, data1, trainer = paper_model("flow1.yaml")
    flow2, data2, _ = paper_model("flow2.yaml")
    assert count_parameters(flow2) == 37_835_280
    assert count_parameters(flow1) + count_parameters(flow2) == 37_914_414
    assert (
        trainer.max_epochs == 75
        and flow1.hparams.milestones == [5, 15, 40, 60]
        and flow1.hparams.lr == 1e-4
    )
    assert (
        data1.hparams.batch_size == data2.hparams.batch_size == 175
        and data2.hparams.noise_kev == 1.0
    )
    assert flow2.hparams.dropout == 0.05 and flow2.hparams.milestones == [50]


def fit(config: str, root: Path, data: Path, *extra: str):
    result = run_cli(
        "lightning",
        "fit",
        "-c",
        str(REPO / "configs" / "smoke" / config),
        "--trainer.default_root_dir",
        str(root),
        "--data.path",
        str(data),
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def events(root: Path, version: int = 0) -> EventAccumulator:
    files = glob.glob(str(root / "lightning_logs" / f"version_{version}" / "events.out.tfevents*"))
    assert files, f"no TensorBoard events under {root}"
    acc = EventAccumulator(files[0], size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, eplus_file):
    roots = {name: tmp_path_factory.mktemp(name) for name in ("flow1", "flow2")}
    for name, root in roots.items():
        result = fit(f"{name}.yaml", root, eplus_file)
        (root / "fit_output.txt").write_text(result.stdout + result.stderr)
    return roots


def checkpoint(root: Path, name: str = "last.ckpt", version: int = 0) -> Path:
    return root / "lightning_logs" / f"version_{version}" / "checkpoints" / name


@pytest.mark.parametrize("name", ["flow1", "flow2"])
def test_smoke_fit_writes_checkpoints_config_and_tensorboard(trained, name):
    root = trained[name]
    # Lightning's progress and summary, not its advertising for its cloud products
    output = (root / "fit_output.txt").read_text()
    assert "Trainable params" in output and "Tip:" not in output and "litlogger" not in output
    version = root / "lightning_logs" / "version_0"
    assert checkpoint(root).is_file() and list((version / "checkpoints").glob("best-*.ckpt"))
    assert (version / "config.yaml").is_file()
    acc = events(root)
    scalars = acc.Tags()["scalars"]
    assert {"val_nll", "train_nll_epoch", "lr-Adam"} <= set(scalars)
    assert len(acc.Scalars("val_nll")) == 3 and all(
        np.isfinite(e.value) for e in acc.Scalars("val_nll")
    )
    assert "samples/layer_fractions" in acc.Tags()["images"]
    if name == "flow2":
        assert "samples/average_images" in acc.Tags()["images"]
        # with lr 1e-3 even three tiny epochs must learn something
        nll = [e.value for e in acc.Scalars("val_nll")]
        assert nll[-1] < nll[0]


def test_generated_showers_conserve_energy(trained):
    model = CaloFlow.load(checkpoint(trained["flow1"]), checkpoint(trained["flow2"]))
    energies = torch.linspace(1, 100, 200)
    g = torch.Generator().manual_seed(0)
    voxels, layer_energies, _ = model.sample_batch(energies, g, threshold=False)
    sums = torch.stack(
        [voxels[:, s].double().sum(1) for s in (slice(0, 288), slice(288, 432), slice(432, 504))], 1
    )
    assert torch.allclose(sums, layer_energies.double(), rtol=1e-5)
    assert (layer_energies.double().sum(1) <= energies.double() * 1e3 * (1 + 1e-6)).all()
    # the fast inverse and nflows' inverse draw the same showers from the same seed
    a, _, _ = model.sample_batch(
        energies[:20], torch.Generator().manual_seed(5), fast=True, threshold=False
    )
    b, _, _ = model.sample_batch(
        energies[:20], torch.Generator().manual_seed(5), fast=False, threshold=False
    )
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)


def test_generate_command_writes_valid_showers(trained, tmp_path, eplus_file):
    out = tmp_path / "gen.hdf5"
    args = [
        "generate",
        "--flow1",
        str(checkpoint(trained["flow1"])),
        "--flow2",
        str(checkpoint(trained["flow2"])),
        "--n",
        "300",
        "--batch-size",
        "128",
        "--seed",
        "7",
        "--out",
        str(out),
    ]
    result = run_cli("caloflow", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 300" in result.stdout
    showers = read_showers(out, dtype=np.float64)  # validates finiteness and non-negativity
    assert len(showers) == 300 and (showers.energy >= 1).all() and (showers.energy <= 100).all()
    assert (showers.voxels.sum(1) <= showers.energy * 1e3 * (1 + 1e-6)).all()
    positive = showers.voxels[showers.voxels > 0]
    assert positive.min() >= 0.01 - 1e-6  # 10 keV threshold
    # same seed, same numbers; energies taken from a file
    again = tmp_path / "again.hdf5"
    assert run_cli("caloflow", *args[:-1], str(again)).returncode == 0
    assert np.array_equal(read_showers(again).voxels, read_showers(out).voxels)
    from_file = tmp_path / "from_file.hdf5"
    result = run_cli(
        "caloflow",
        "generate",
        "--flow1",
        str(checkpoint(trained["flow1"])),
        "--flow2",
        str(checkpoint(trained["flow2"])),
        "--energies",
        str(eplus_file),
        "--n",
        "50",
        "--out",
        str(from_file),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.allclose(read_showers(from_file).energy, read_showers(eplus_file, stop=50).energy)


def test_resume_continues_the_epoch_count(trained, eplus_file):
    root = trained["flow1"]
    steps_per_epoch = int(np.ceil(420 / 64))
    first = torch.load(checkpoint(root), weights_only=False)
    assert first["epoch"] == 2 and first["global_step"] == 3 * steps_per_epoch
    fit("flow1.yaml", root, eplus_file, "--trainer.max_epochs", "5", "--ckpt_path", "last")
    resumed = torch.load(checkpoint(root, version=1), weights_only=False)
    assert resumed["epoch"] == 4 and resumed["global_step"] == 5 * steps_per_epoch
    assert [e.step for e in events(root, 1).Scalars("epoch")][-1] >= 3 * steps_per_epoch


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_lightning_subcommands(trained, eplus_file, tmp_path, subcommand):
    result = run_cli(
        "lightning",
        subcommand,
        "-c",
        str(REPO / "configs" / "smoke" / "flow2.yaml"),
        "--data.path",
        str(eplus_file),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(checkpoint(trained["flow2"])),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if subcommand != "predict":
        assert f"{'val' if subcommand == 'validate' else 'test'}_nll" in result.stdout


def test_ddp_on_two_cpu_processes(tmp_path, eplus_file):
    fit(
        "flow1.yaml",
        tmp_path,
        eplus_file,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
    )
    ckpt = torch.load(checkpoint(tmp_path), weights_only=False)
    # each process sees half of the 420 training showers per epoch
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == int(np.ceil(210 / 64))


def test_fit_from_python_inside_another_command_is_quiet(tmp_path, eplus_file):
    """``caloflow demo`` runs ``lightning fit`` in-process while its own command line is different:
    no LightningCLI warning about both, no tips; the fit is the one asked for."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from caloflow.commands.demo import fit_config; "
        "sys.argv = ['caloflow', 'demo', '--out', 'elsewhere']; "
        f"print(fit_config(Path({str(REPO / 'configs' / 'smoke' / 'flow1.yaml')!r}), Path({str(tmp_path)!r}), "
        f"Path({str(eplus_file)!r}), 0))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        timeout=HANG_GUARD_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "args parameter" not in output and "Tip:" not in output and "litlogger" not in output, (
        output[-3000:]
    )
    assert (
        Path(proc.stdout.strip().splitlines()[-1]).is_file()
        and not (tmp_path / "elsewhere").exists()
    )


def test_bad_data_path_is_one_line_without_traceback(tmp_path, eplus_file):
    result = run_cli(
        "lightning",
        "fit",
        "-c",
        str(REPO / "configs" / "smoke" / "flow1.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.path",
        str(tmp_path / "nope.hdf5"),
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "nope.hdf5" in lines[0] and "no such file" in lines[0]
    # a file whose contents are bad is refused before the Trainer is built (no banner, no run folder)
    import shutil

    import h5py

    bad = tmp_path / "nan.hdf5"
    shutil.copy(eplus_file, bad)
    with h5py.File(bad, "r+") as f:
        f["layer_1"][7, 3, 4] = np.nan
    root = tmp_path / "run"
    result = run_cli(
        "lightning",
        "fit",
        "-c",
        "smoke/flow1",
        "--trainer.default_root_dir",
        str(root),
        "--data.path",
        str(bad),
    )
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr.splitlines() == [
        f"lightning: error: --data.path: {bad}: key 'layer_1': non-finite "
        "value (NaN or inf) in row 7"
    ], result.stderr
    assert not root.exists()
    result = run_cli(
        "caloflow",
        "generate",
        "--flow1",
        "missing.ckpt",
        "--flow2",
        "missing.ckpt",
        "--n",
        "3",
        "--out",
        str(tmp_path / "x.hdf5"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "caloflow: error: --flow1 missing.ckpt: no such checkpoint file"


class SometimesNaN(FlowI):
    def __init__(self, bad_from: int = 10**9, **kw):
        super().__init__(**kw)
        self.bad_from = bad_from

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= self.bad_from or batch_idx == 1 else loss


def test_nonfinite_guard_skips_batches_and_stops(tmp_path, eplus_file):
    data = CaloDataModule(path=str(eplus_file), batch_size=64)
    model = SometimesNaN(bad_from=10, n_blocks=2, hidden_features=8, num_blocks=1, lr=1e-3)
    guard = NonFiniteGuard(patience=5)
    trainer = L.Trainer(
        max_epochs=20,
        callbacks=[guard],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    with pytest.warns(UserWarning, match="non-finite loss"):
        trainer.fit(model, data)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # 7 batches per epoch: batch 1 of epochs 0 and 1 (steps 1 and 8) were skipped alone, then every batch
    # from step 10 on until the patience of 5 ran out
    assert guard.skipped == 2 + 5 and guard.consecutive == 5 and trainer.global_step == 15


def test_flow2_checkpoint_samples_with_no_datamodule_in_reach(trained):
    """The checkpoint carries the representation: sampling needs neither the DataModule nor a config."""
    script = f"""
import sys
sys.modules["caloflow.data.datamodule"] = None  # any import of the DataModule now fails
import torch
from caloflow.models import FlowII
model = FlowII.load_from_checkpoint({str(checkpoint(trained["flow2"]))!r}, map_location="cpu")
assert "caloflow.data.datamodule" not in [m for m, v in sys.modules.items() if v is not None]
assert model.hparams.alpha == 1e-6 and model.hparams.threshold_kev == 10.0
layers = torch.tensor([[2000.0, 15000.0, 40.0], [300.0, 700.0, 0.5]])
voxels = model.sample(torch.tensor([20.0, 1.2]), layers, torch.Generator().manual_seed(0), threshold=False)
sums = torch.stack([voxels[:, :288].double().sum(1), voxels[:, 288:432].double().sum(1),
                    voxels[:, 432:].double().sum(1)], 1)
print(float(((sums - layers.double()) / layers.double()).abs().max()))
"""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def test_model_owns_its_geometry_so_a_config_cannot_disagree_with_the_data(tmp_path, eplus_file):
    """layer_sizes is no option of the model: the CaloGAN format fixes it, and the CLI refuses to set it."""
    result = run_cli(
        "lightning",
        "fit",
        "-c",
        str(REPO / "configs" / "smoke" / "flow2.yaml"),
        "--data.path",
        str(eplus_file),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--model.layer_sizes",
        "[300, 132, 72]",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "layer_sizes" in result.stderr and not list(tmp_path.glob("**/*.ckpt"))
    # the data side has no representation switch to pair by hand either
    result = run_cli(
        "lightning",
        "fit",
        "-c",
        str(REPO / "configs" / "smoke" / "flow2.yaml"),
        "--data.path",
        str(eplus_file),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.representation",
        "flow1",
    )
    assert result.returncode != 0 and "representation" in result.stderr


def test_flows_encode_physical_batches_with_their_own_preprocessing(eplus_file):
    """The representation the model trains on round-trips to the showers the DataModule served."""
    from caloflow.models import FlowII

    data = CaloDataModule(path=str(eplus_file), batch_size=32, noise_kev=0.0)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    flow1, flow2 = (
        FlowI(n_blocks=1, hidden_features=8, num_blocks=1),
        FlowII(n_blocks=1, hidden_features=8),
    )
    x1, c1 = flow1.encode(batch)
    assert x1.shape == (32, 3) and c1.shape == (32, 1)
    energies = flow1.preprocessing.inverse(x1.double(), batch["energy"])
    assert torch.allclose(energies, batch["layer_energies"], rtol=1e-5)
    x2, c2 = flow2.encode(batch)
    assert x2.shape == (32, 504) and c2.shape == (32, 4)
    voxels = flow2.preprocessing.inverse(x2.double(), batch["layer_energies"], threshold=False)
    big = batch["voxels"] > 1.0
    assert torch.allclose(voxels[big], batch["voxels"][big].double(), rtol=1e-3)
    assert torch.allclose(
        flow2.log_prob(batch["voxels"], batch["energy"]).mean(), -flow2.nll(batch)
    )


def test_models_remember_their_training_domain(trained, eplus_file, tmp_path):
    """Checkpoints and generated files carry the energy range and particle; outside it: a warning or --strict."""
    from caloflow.domain import Domain, of_file
    from caloflow.models import FlowII

    flow2 = FlowII.load_from_checkpoint(checkpoint(trained["flow2"]))
    assert flow2.domain.particle == "eplus"
    lo, hi = flow2.domain.energy_gev
    assert (lo, hi) == (
        1.0,
        100.0,
    )  # the range the simulated file declares, not the few energies seen
    flows = [
        "--flow1",
        str(checkpoint(trained["flow1"])),
        "--flow2",
        str(checkpoint(trained["flow2"])),
    ]
    inside = run_cli(
        "caloflow",
        "generate",
        *flows,
        "--n",
        "20",
        "--out",
        str(tmp_path / "in.hdf5"),
        "--no-progress",
    )
    assert inside.returncode == 0 and "warning" not in inside.stderr
    assert of_file(tmp_path / "in.hdf5") == Domain((lo, hi), "eplus")
    out = tmp_path / "far.hdf5"
    far = run_cli(
        "caloflow",
        "generate",
        *flows,
        "--n",
        "20",
        "--energy-range",
        "500",
        "1000",
        "--out",
        str(out),
        "--no-progress",
    )
    warnings = [line for line in far.stderr.splitlines() if "warning" in line]
    assert far.returncode == 0 and len(warnings) == 1 and "--energy-range 500 1000" in warnings[0]
    strict = run_cli(
        "caloflow",
        "generate",
        *flows,
        "--n",
        "20",
        "--energy-range",
        "500",
        "1000",
        "--strict",
        "--out",
        str(tmp_path / "strict.hdf5"),
    )
    assert (
        strict.returncode == 2
        and "Traceback" not in strict.stderr
        and not (tmp_path / "strict.hdf5").exists()
    )
    assert "outside the" in strict.stderr.strip().splitlines()[-1]


def test_broken_weights_are_refused_not_written_as_zeros(trained, tmp_path):
    """NaN weights: refused at load (one line), never post-processed into all-zero showers."""
    from caloflow.models import FlowII

    ckpt = torch.load(checkpoint(trained["flow2"]), weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    broken = tmp_path / "nan.ckpt"
    torch.save(ckpt, broken)
    result = run_cli(
        "caloflow",
        "generate",
        "--flow1",
        str(checkpoint(trained["flow1"])),
        "--flow2",
        str(broken),
        "--n",
        "10",
        "--out",
        str(tmp_path / "x.hdf5"),
    )
    assert result.returncode == 2 and not (tmp_path / "x.hdf5").exists()
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("the weights are not finite (NaN or inf): the model is broken")
    )
    # the model itself marks a non-finite draw as NaN instead of turning it into zeros
    model = FlowII.load_from_checkpoint(broken)
    voxels = model.sample(torch.tensor([10.0]), torch.tensor([[1000.0, 8000.0, 10.0]]))
    assert torch.isnan(voxels).all()
