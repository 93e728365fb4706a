"""CaloGAN baseline: layers, networks, the published training loop, sampling and model selection."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.model_selection import histogram_score
from caloflow.data import CaloDataModule
from caloflow.data.io import read_showers
from caloflow.data.simulate import simulate_to_file
from caloflow.geometry import LAYER_SHAPES, join_layers, layer_energies
from caloflow.models.calogan import (
    CaloGAN,
    CaloGANDiscriminator,
    resize_layer0_to_layer1,
    resize_layer1_to_layer2,
)
from caloflow.models.layers import InpaintingAttention, LocallyConnected2d, MinibatchDiscrimination
from caloflow.nn import count_parameters
from tests.helpers import HANG_GUARD_S, REPO
from tests.helpers import TINY_GAN as TINY


@pytest.fixture(scope="module")
def shower_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calogan") / "eplus.hdf5"
    return simulate_to_file(path, "eplus", 200, seed=3, progress=False)


# --- paper-size networks (instantiation and one small forward pass) --------------------------------
def published_generator_count(latent: int = 1024) -> int:
    """Trainable parameters of the Keras generator, layer by layer (docs/physics.md section 8)."""
    total = 0
    for r, c in LAYER_SHAPES:
        total += (latent + 1) * (r + 2) * (c + 2) * 36  # Dense
        total += 36 * 2 * 2 * 16 + 16 + 2 * 16  # Conv2D 16 2x2 + BatchNorm gamma/beta
        total += (
            (r + 1) * (c + 1) * (16 * 2 * 2 * 6 + 6)
        )  # LC2D 6 2x2 'valid', one kernel per position
        total += r * c * (6 * 2 * 2 * 1)  # LC2D 1 2x2, no bias
    for r, c in LAYER_SHAPES[1:]:
        total += (
            r * c * (2 * 3 * 3 * 2 + 2)
        )  # attention: LC2D 2 3x3 on the zero-padded [own, carry]
    return total


def published_discriminator_count() -> int:
    """Trainable parameters of the Keras discriminator, layer by layer (docs/physics.md section 8)."""
    total, n_head = (
        0,
        3 + 1 + 1 + 1 + 10,
    )  # head: E_k/10, E_hat/100, |E_hat - E_inc|, 10 x 1[>5 GeV], energy MBD
    for r, c in LAYER_SHAPES:
        total += 1 * 4 * 64 + 64  # Conv2D 64 2x2 'same'
        h, w = r + 2 - 3 + 1, (c + 2 - 3) // 2 + 1  # zero-pad 1, LC2D 16 3x3 stride (1, 2)
        total += h * w * (64 * 9 * 16 + 16) + 2 * 16  # + BatchNorm gamma/beta
        h, w = h + 2 - 2 + 1, w + 2 - 2 + 1  # zero-pad 1, LC2D 8 2x2
        total += h * w * (16 * 4 * 8 + 8) + 2 * 8
        h, w = h + 2 - 2 + 1, (w + 2 - 2) // 2 + 1  # zero-pad 1, LC2D 8 2x2 stride (1, 2)
        total += h * w * (8 * 4 * 8 + 8) + 2 * 8
        total += h * w * 8 * 100 + 100  # minibatch discrimination (10 kernels x 10) on the features
        total += 1 * 100 + 100  # ... on the occupancy
        n_head += h * w * 8 + 10 + 1 + 10  # features, their MBD, occupancy, its MBD
    total += 3 * 100 + 100  # minibatch discrimination on the three layer energies
    return total + n_head + 1  # Dense(1)


def test_paper_size_parameter_counts_and_shapes():
    model = CaloGAN()
    n_gen, n_disc = count_parameters(model.generator), count_parameters(model.discriminator)
    assert (
        n_gen == published_generator_count() == 29_726_280
    )  # the CaloFlow paper's figure for CaloGAN
    assert abs(n_gen - 29_726_280) / 29_726_280 < 0.01
    assert n_disc == published_discriminator_count() == 2_744_332
    z, energy = torch.randn(4, 1024), torch.tensor([1.0, 10.0, 50.0, 100.0])
    images = model.generator(z, energy)
    assert [tuple(im.shape) for im in images] == [(4, 3, 96), (4, 12, 12), (4, 12, 6)]
    logit, total = model.discriminator(images, energy)
    assert logit.shape == (4,) and total.shape == (4,)
    torch.testing.assert_close(total, sum(im.sum((1, 2)) for im in images))


# --- locally connected layer ----------------------------------------------------------------------
def explicit_locally_connected(layer: LocallyConnected2d, x: torch.Tensor) -> torch.Tensor:
    (ph, pw), (kh, kw), (sh, sw) = layer.padding, layer.kernel_size, layer.stride
    xp = F.pad(x, (pw, pw, ph, ph))
    oh, ow = layer.output_size
    out = torch.zeros(x.shape[0], layer.out_channels, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            w = layer.weight[i * ow + j].reshape(layer.in_channels, kh, kw, layer.out_channels)
            patch = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            for f in range(layer.out_channels):
                out[:, f, i, j] = (patch * w[..., f]).sum((1, 2, 3))
                if layer.bias is not None:
                    out[:, f, i, j] += layer.bias[f, i, j]
    return out


@pytest.mark.parametrize(
    "in_ch, out_ch, size, kernel, stride, padding, bias",
    [
        (1, 4, (3, 9), 2, 1, 0, True),
        (3, 2, (5, 7), 3, (1, 2), 1, True),
        (2, 3, (6, 6), (3, 2), (2, 1), (1, 0), False),
        (4, 1, (4, 5), 2, 2, 1, True),
    ],
)
def test_locally_connected_equals_per_position_loop(
    in_ch, out_ch, size, kernel, stride, padding, bias
):
    torch.manual_seed(0)
    layer = LocallyConnected2d(in_ch, out_ch, size, kernel, stride, padding, bias).double()
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
    x = torch.randn(3, in_ch, *size, dtype=torch.float64)
    torch.testing.assert_close(layer(x), explicit_locally_connected(layer, x))


def test_locally_connected_with_tied_weights_is_a_convolution():
    torch.manual_seed(1)
    layer = LocallyConnected2d(3, 5, (6, 8), 3, stride=(1, 2), padding=1).double()
    conv = torch.nn.Conv2d(3, 5, 3, stride=(1, 2), padding=1).double()
    with torch.no_grad():
        # unfold orders a patch (channel, u, v); Conv2d's weight is (out, channel, u, v)
        layer.weight.copy_(conv.weight.reshape(5, -1).T.expand_as(layer.weight))
        layer.bias.copy_(conv.bias[:, None, None].expand_as(layer.bias))
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


# --- attention ------------------------------------------------------------------------------------
def test_attention_is_a_per_pixel_convex_combination():
    torch.manual_seed(2)
    attention = InpaintingAttention((12, 6)).double()
    with torch.no_grad():
        attention.mixer.bias.normal_()  # away from the initial "keep own image" state
        attention.mixer.weight.mul_(5)
    own, carry = torch.randn(4, 1, 12, 6).double(), torch.randn(4, 1, 12, 6).double()
    w = attention.weights(own, carry)
    assert w.shape == (4, 2, 12, 6)
    assert torch.all((w >= 0) & (w <= 1))
    torch.testing.assert_close(w.sum(1), torch.ones(4, 12, 6, dtype=torch.float64))
    assert 0.05 < w[:, 0].mean() < 0.95  # a real mixture, not one input
    out = attention(own, carry)
    torch.testing.assert_close(out[:, 0], w[:, 0] * own[:, 0] + w[:, 1] * carry[:, 0])
    lo, hi = torch.minimum(own, carry), torch.maximum(own, carry)
    assert torch.all(out >= lo - 1e-12) and torch.all(out <= hi + 1e-12)


def test_attention_starts_with_the_own_image():
    attention = InpaintingAttention((12, 12))
    own, carry = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    # the carry-over logit is -10 at initialisation: less than 1e-3 of the previous layer leaks in
    torch.testing.assert_close(attention(own, carry), own, atol=2e-3, rtol=0)


def test_resizing_between_layers():
    x0 = torch.rand(2, 1, 3, 96, dtype=torch.float64)
    expected = (
        x0.reshape(2, 3, 12, 8).mean(-1).repeat_interleave(4, dim=1)
    )  # 4 phi rows share a layer-0 row
    torch.testing.assert_close(resize_layer0_to_layer1(x0)[:, 0], expected)
    x1 = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(
        resize_layer1_to_layer2(x1)[:, 0], x1[:, 0].reshape(2, 12, 6, 2).mean(-1)
    )


# --- minibatch discrimination ---------------------------------------------------------------------
def test_minibatch_discrimination_formula_and_permutation_invariance():
    torch.manual_seed(3)
    mbd = MinibatchDiscrimination(7, n_kernels=4, kernel_dim=3).double()
    x = torch.randn(6, 7, dtype=torch.float64)
    out = mbd(x)
    assert out.shape == (6, 4)
    m = (x @ mbd.projection.weight.T + mbd.projection.bias).reshape(6, 4, 3).detach().numpy()
    expected = np.zeros((6, 4))
    for a in range(6):
        for k in range(4):
            expected[a, k] = np.tanh(
                sum(np.exp(-np.abs(m[a, k] - m[b, k]).sum()) for b in range(6))
            )
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12)
    perm = torch.randperm(6)
    torch.testing.assert_close(mbd(x[perm]), out[perm])
    # a sample's features depend on the rest of the batch
    assert not torch.allclose(mbd(x[:3]), out[:3])


# --- discriminator energy term --------------------------------------------------------------------
def test_energy_output_has_no_discriminator_parameters():
    disc = CaloGANDiscriminator(conv_channels=3, lc_channels=(2, 2, 2), mbd_kernels=2, mbd_dim=2)
    images = [torch.rand(5, r, c) for r, c in LAYER_SHAPES]
    logit, total = disc(images, torch.full((5,), 50.0))
    assert (
        logit.requires_grad and not total.requires_grad
    )  # the MAE term can only train the generator
    torch.testing.assert_close(total, torch.cat([im.flatten(1) for im in images], 1).sum(1))


# --- training with a real Trainer -----------------------------------------------------------------
class RecordingCaloGAN(CaloGAN):
    """CaloGAN that records which network each optimiser step updates."""

    def configure_optimizers(self):
        opt_d, opt_g = super().configure_optimizers()
        self.steps: list[str] = []
        opt_d.register_step_post_hook(lambda *_: self.steps.append("D"))
        opt_g.register_step_post_hook(lambda *_: self.steps.append("G"))
        return [opt_d, opt_g]


def test_training_updates_both_networks_logs_and_selects(shower_file, tmp_path):
    from callbacks.model_selection import HistogramSelection

    L.seed_everything(0)
    model = RecordingCaloGAN(**TINY)
    gen0 = {k: v.clone() for k, v in model.generator.state_dict().items()}
    disc0 = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    data = CaloDataModule(path=str(shower_file), batch_size=32, noise_kev=0.0, seed=0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    selection = HistogramSelection(bins=10, seed=0)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        logger=logger,
        callbacks=[selection],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=data)

    # the published order: real-only D step, fake-only D step, two generator steps, per batch
    assert model.steps == ["D", "D", "G", "G"] * 4
    for name, before in gen0.items():
        if name.endswith("weight") and "norm" not in name:
            assert not torch.equal(model.generator.state_dict()[name], before), name
    unchanged = [
        k
        for k, v in disc0.items()
        if k.endswith("weight") and torch.equal(model.discriminator.state_dict()[k], v)
    ]
    # occupancies lie in [0, 1]: their projections are close, the batch sum of exp(-d) is near the
    # batch size and tanh saturates to exactly 1 in float32, so (as in the published model) these
    # kernels get no gradient at the start; every other weight must have moved
    assert sorted(unchanged) == [f"streams.{k}.mbd_occupancy.projection.weight" for k in range(3)]
    occupancy = torch.rand(32, 1)
    assert torch.all(model.discriminator.streams[0].mbd_occupancy(occupancy) == 1.0)

    events = glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(events[0], size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for tag in (
        "train/d_loss_real_step",
        "train/d_loss_fake_step",
        "train/g_loss_step",
        "val/histogram_separation",
    ):
        assert tag in scalars, tag
    assert len(acc.Scalars("train/g_loss_step")) == 4
    assert all(np.isfinite(e.value) for e in acc.Scalars("train/d_loss_real_step"))
    assert "val/average_images" in acc.Tags()["images"]
    scores = [e.value for e in acc.Scalars("val/histogram_separation")]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)

    # the best epoch by score is kept, under the trainer's checkpoint directory, and loads back
    best = Path(selection.checkpoint_dir(trainer)) / "best_histogram.ckpt"
    assert best.is_file() and selection.best_score == pytest.approx(min(scores), rel=1e-6)
    assert selection.best_epoch == int(np.argmin(scores))
    restored = CaloGAN.load_from_checkpoint(best)
    assert restored.hparams.latent_dim == TINY["latent_dim"]
    e = torch.tensor([5.0, 50.0])
    a = restored.sample(e, generator=torch.Generator().manual_seed(7))
    b = restored.sample(e, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


# --- sampling -------------------------------------------------------------------------------------
def test_sample_returns_mev_voxels_in_caloflow_order():
    torch.manual_seed(4)
    model = CaloGAN(**TINY, sample_batch_size=7)
    energies = torch.linspace(1, 100, 20)
    voxels = model.sample(energies, generator=torch.Generator().manual_seed(5))
    assert voxels.shape == (20, 504) and voxels.dtype == torch.float32
    assert torch.isfinite(voxels).all() and (voxels >= 0).all() and (voxels > 0).any()
    # same seed, same showers; the generator state (training mode) is left as it was
    torch.testing.assert_close(
        voxels, model.sample(energies, generator=torch.Generator().manual_seed(5))
    )
    assert model.generator.training
    # MeV = GeV images x 1000, flattened like geometry.join_layers; z is drawn chunk by chunk (7, 7, 6)
    g = torch.Generator().manual_seed(5)
    z = torch.cat([torch.randn(n, TINY["latent_dim"], generator=g) for n in (7, 7, 6)])
    model.generator.eval()
    with torch.no_grad():
        images = model.generator(z, energies)
    expected = join_layers([im.numpy() for im in images]) * 1000.0
    # chunked and whole-batch matmuls sum in different orders: agree to float32 precision (0.5 keV)
    np.testing.assert_allclose(voxels.numpy(), expected, rtol=1e-4, atol=5e-4)


# --- histogram-based selection score --------------------------------------------------------------
def _showers(layer1_mev: np.ndarray) -> np.ndarray:
    voxels = np.zeros((len(layer1_mev), 504))
    voxels[:, 288 + 77] = layer1_mev  # one cell of layer 1 carries all the energy
    return voxels


def test_histogram_score_known_answers():
    rng = np.random.default_rng(0)
    real = rng.exponential(1.0, size=(500, 504))
    score, per_feature = histogram_score(real, real.copy(), bins=20)
    assert score == 0.0 and set(per_feature) == {
        "log10E_0",
        "log10E_1",
        "log10E_2",
        "frac_0",
        "frac_1",
        "frac_2",
    }
    # E_1 of the reference is 10 MeV or 100 MeV (half each), generated always 10 MeV: the
    # log10 E_1 histograms are (1/2, 0, ..., 1/2) and (1, 0, ..., 0), S = 1/2 (0.25/1.5 + 0.25/0.5) = 1/3;
    # every other feature agrees exactly
    real = _showers(np.repeat([10.0, 100.0], 50))
    fake = _showers(np.full(100, 10.0))
    score, per_feature = histogram_score(real, fake, bins=10)
    assert per_feature["log10E_1"] == pytest.approx(1 / 3)
    assert score == pytest.approx(1 / 18)
    assert layer_energies(fake)[:, 1].sum() == pytest.approx(1000.0)


# --- the smoke configuration through the real CLI -------------------------------------------------
def test_smoke_config_fits_through_lightning_cli(shower_file, tmp_path):
    exe = shutil.which("lightning")
    assert exe is not None, "the 'lightning' console script of caloflow is not installed"
    root = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CALOFLOW_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [
            exe,
            "fit",
            "-c",
            str(REPO / "configs/smoke/calogan.yaml"),
            "--trainer.default_root_dir",
            str(root),
            "--data.path",
            str(shower_file),
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(root.glob("**/checkpoints/best_histogram.ckpt"))
    assert list(root.glob("**/checkpoints/last.ckpt"))
    events = list(root.glob("**/events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert (
        "train/g_loss_step" in acc.Tags()["scalars"]
        and "val/histogram_separation" in acc.Tags()["scalars"]
    )
    model = CaloGAN.load_from_checkpoint(next(root.glob("**/checkpoints/best_histogram.ckpt")))
    voxels = model.sample(torch.tensor([20.0, 80.0]))
    assert voxels.shape == (2, 504) and torch.isfinite(voxels).all() and (voxels >= 0).all()

    # caloflow generate --calogan writes a valid CaloGAN-format file, the same for the same seed
    ckpt = str(next(root.glob("**/checkpoints/best_histogram.ckpt")))
    outputs = []
    for name in ("a.hdf5", "b.hdf5"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "caloflow.commands.cli",
                "generate",
                "--calogan",
                ckpt,
                "--n",
                "64",
                "--seed",
                "4",
                "--batch-size",
                "32",
                "--out",
                str(tmp_path / name),
            ],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(read_showers(tmp_path / name))  # validates: finite, non-negative, shapes
    assert len(outputs[0]) == 64 and np.array_equal(outputs[0].voxels, outputs[1].voxels)
    assert ((outputs[0].energy >= 1) & (outputs[0].energy <= 100)).all()
