"""Model selection for GANs from histograms instead of by eye.

The CaloFlow paper (section 5) picked the CaloGAN epoch by looking at histograms of generated and
GEANT4 showers. :class:`HistogramSelection` makes that choice reproducible: after every
validation epoch it generates one shower per validation shower (same incident energies), scores
the agreement as the mean separation power (docs/physics.md section 7) of the histograms of the layer
energies E_k and the layer fractions E_k / E_hat, logs the score, the average images per layer
and keeps the best epoch as ``best_histogram.ckpt``.
"""

from __future__ import annotations

import math
import os

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from caloflow.evaluate.separation import separation_power
from caloflow.geometry import KEV, POLAR, Geometry, get_geometry

#: Energies are histogrammed as log10(E / MeV), floored at 1 keV, like the paper's log axes.
ENERGY_FLOOR_MEV = 1.0 * KEV


def histogram_features(
    voxels_mev: np.ndarray, geometry: Geometry | str = "calogan"
) -> dict[str, np.ndarray]:
    """Per-shower features compared by :func:`histogram_score`.

    Args:
        voxels_mev: (N, V) voxel energies in MeV, the flat order of ``geometry``.
        geometry: the detector (its layers).

    Returns:
        ``log10E_k`` (log10 of the layer energy in MeV, floored at 1 keV) and ``frac_k``
        (E_k / E_hat, 0 for an empty shower) for every layer position k = 0 .. L-1.
    """
    geometry = get_geometry(geometry)
    e = geometry.layer_energies(np.asarray(voxels_mev, dtype=np.float64))
    total = e.sum(1, keepdims=True)
    frac = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    features = {
        f"log10E_{k}": np.log10(np.maximum(e[:, k], ENERGY_FLOOR_MEV))
        for k in range(geometry.n_layers)
    }
    features.update({f"frac_{k}": frac[:, k] for k in range(geometry.n_layers)})
    return features


def histogram_score(
    real_mev: np.ndarray,
    fake_mev: np.ndarray,
    bins: int = 50,
    geometry: Geometry | str = "calogan",
) -> tuple[float, dict[str, float]]:
    """Mean separation power of the layer-energy and layer-fraction histograms (0 best, 1 worst).

    The bins span the range of the reference (``real_mev``) sample, so scores of different epochs
    share their binning; generated values outside it are clipped into the edge bins, so that
    outliers count against the generator instead of vanishing from its histogram.

    Returns:
        (mean score, score per feature).
    """
    real, fake = histogram_features(real_mev, geometry), histogram_features(fake_mev, geometry)
    scores = {}
    for name, a in real.items():
        lo, hi = float(a.min()), float(a.max())
        if name.startswith("frac"):
            lo, hi = min(lo, 0.0), max(hi, 1.0)
        if not hi > lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        b = fake[name]
        if not np.isfinite(b).any():
            scores[name] = 1.0
            continue
        scores[name] = separation_power(a, np.clip(b, lo, hi), bins=edges)
    return float(np.mean(list(scores.values()))), scores


def average_images_figure(
    real_mev: np.ndarray, fake_mev: np.ndarray, geometry: Geometry | str = "calogan"
):
    """Matplotlib figure: average image per layer (columns) for reference and generated (rows), log
    colour scale; (N, V) voxels in MeV of ``geometry``, each layer as its (rows, cols) grid."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    geometry = get_geometry(geometry)
    fig = Figure(figsize=(max(10, 3 * geometry.n_layers), 4.5), dpi=80)
    # the widest layer gets twice the width of the others
    cols = [shape[1] for shape in geometry.layer_shapes]
    ratios = [2 if c == max(cols) and c > min(cols) else 1 for c in cols]
    axes = fig.subplots(2, geometry.n_layers, gridspec_kw={"width_ratios": ratios}, squeeze=False)
    # one colour scale per layer, set by the reference, so that generated averages read against it
    vmax = [
        max(float(image.mean(0).max()), 1e-3)
        for image in geometry.split_layers(np.asarray(real_mev, dtype=np.float64))
    ]
    for row, (label, voxels) in enumerate((("reference", real_mev), ("generated", fake_mev))):
        for k, image in enumerate(geometry.split_layers(np.asarray(voxels, dtype=np.float64))):
            mean, top = image.mean(0), vmax[k]
            ax = axes[row, k]
            im = ax.imshow(
                np.maximum(mean, top * 1e-5),
                norm=LogNorm(vmin=top * 1e-5, vmax=top),
                aspect="auto",
                interpolation="nearest",
                origin="lower",
            )
            layer = geometry.layers[k]
            ax.set_title(f"{label}, layer {layer.id} {layer.shape}", fontsize=8)
            polar = layer.kind == POLAR
            ax.set_xlabel("r bin" if polar else "eta bin", fontsize=7)
            ax.set_ylabel("alpha bin" if polar else "phi bin", fontsize=7)
            fig.colorbar(im, ax=ax, label="MeV")
    fig.tight_layout()
    return fig


def figure_to_array(fig) -> np.ndarray:
    """Render a matplotlib figure to an (H, W, 3) uint8 array (Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class HistogramSelection(Callback):
    """Score each validation epoch by histogram agreement; keep the best as ``best_histogram.ckpt``.

    The LightningModule must provide ``sample(energies_gev, generator=None) -> (N, V) MeV`` and its
    ``geometry`` (:class:`caloflow.geometry.Geometry`, V voxels); validation batches must be dicts
    with ``voxels`` (B, V) MeV and ``energy`` (B,) GeV.

    Args:
        monitor: name of the logged score.
        filename: checkpoint name (``.ckpt`` is appended).
        dirpath: where to save; default: the ModelCheckpoint directory of the trainer, else
            ``<log_dir>/checkpoints``.
        bins: histogram bins per feature.
        max_showers: at most this many validation showers are compared (the first ones).
        seed: seeds the latent noise, so an epoch's score does not depend on the global RNG.
        log_images: log the average images per layer to TensorBoard.
    """

    def __init__(
        self,
        monitor: str = "val/histogram_separation",
        filename: str = "best_histogram",
        dirpath: str | None = None,
        bins: int = 50,
        max_showers: int = 10_000,
        seed: int = 0,
        log_images: bool = True,
    ) -> None:
        super().__init__()
        self.monitor, self.filename, self.dirpath = monitor, filename, dirpath
        self.bins, self.max_showers, self.seed, self.log_images = (
            int(bins),
            int(max_showers),
            int(seed),
            log_images,
        )
        self.best_score = math.inf
        self.best_epoch = -1
        self.best_path: str | None = None
        self._voxels: list[torch.Tensor] = []
        self._energy: list[torch.Tensor] = []
        self._improved = False

    # -- collecting the validation showers ---------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._voxels, self._energy, self._improved = [], [], False

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        have = sum(len(e) for e in self._energy)
        if have >= self.max_showers:
            return
        take = self.max_showers - have
        self._voxels.append(batch["voxels"][:take].detach().float().cpu())
        self._energy.append(batch["energy"][:take].detach().float().cpu())

    # -- scoring -----------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._energy:
            return
        real = torch.cat(self._voxels).numpy()
        energy = torch.cat(self._energy)
        fake = (
            pl_module.sample(energy, generator=torch.Generator().manual_seed(self.seed))
            .cpu()
            .numpy()
        )
        score, per_feature = histogram_score(real, fake, self.bins, pl_module.geometry)
        pl_module.log(self.monitor, score, on_epoch=True, prog_bar=True)
        for name, value in per_feature.items():
            pl_module.log(f"{self.monitor}/{name}", value, on_epoch=True)
        if score < self.best_score:
            self.best_score, self.best_epoch, self._improved = score, trainer.current_epoch, True
        if self.log_images and trainer.is_global_zero:
            self._log_images(trainer, real, fake, pl_module.geometry)

    def _log_images(
        self, trainer: L.Trainer, real: np.ndarray, fake: np.ndarray, geometry: Geometry
    ) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        image = figure_to_array(average_images_figure(real, fake, geometry))
        for lg in loggers:
            lg.experiment.add_image(
                "val/average_images", image, trainer.global_step, dataformats="HWC"
            )

    # -- keeping the best epoch --------------------------------------------------------------------
    def checkpoint_dir(self, trainer: L.Trainer) -> str:
        """Directory of ``best_histogram.ckpt``."""
        if self.dirpath is not None:
            return self.dirpath
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            return ckpt.dirpath
        return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._improved:
            return
        self._improved = False
        self.best_path = os.path.join(self.checkpoint_dir(trainer), f"{self.filename}.ckpt")
        trainer.save_checkpoint(self.best_path)
        rank_zero_info(
            f"HistogramSelection: epoch {self.best_epoch} is the best so far "
            f"({self.monitor} = {self.best_score:.4f}), saved {self.best_path}"
        )

    def state_dict(self) -> dict:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_path": self.best_path,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict.get("best_score", math.inf)
        self.best_epoch = state_dict.get("best_epoch", -1)
        self.best_path = state_dict.get("best_path")


__all__ = [
    "ENERGY_FLOOR_MEV",
    "histogram_features",
    "histogram_score",
    "average_images_figure",
    "figure_to_array",
    "HistogramSelection",
]
