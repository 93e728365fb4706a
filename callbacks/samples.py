"""TensorBoard monitoring of what a generator produces: average images and feature histograms.

The layers are those of the monitored module's detector (``pl_module.geometry``,
:class:`caloflow.geometry.Geometry`).
"""

from __future__ import annotations

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from caloflow.geometry import POLAR, Geometry, get_geometry  # noqa: E402


def average_images_figure(
    data: np.ndarray, generated: np.ndarray, geometry: Geometry | str = "calogan"
) -> plt.Figure:
    """Average data and generated shower per calorimeter layer (MeV per voxel, log colour scale).

    ``data`` and ``generated`` are (N, V) voxels of ``geometry``; each layer is shown as its
    (rows, cols) grid: (phi, eta) cells, or (alpha, r) bins of a CaloChallenge layer.
    """
    geometry = get_geometry(geometry)
    cols = np.array([shape[1] for shape in geometry.layer_shapes], dtype=float)
    fig, axes = plt.subplots(
        2,
        geometry.n_layers,
        figsize=(max(12, 3 * geometry.n_layers), 5),
        # wide layers get wide panels, softened by the square root
        gridspec_kw={"width_ratios": list(np.sqrt(cols / cols.min()))},
        squeeze=False,
    )
    layers = zip(geometry.layer_slices, geometry.layer_shapes, geometry.layers)
    for k, (s, shape, layer) in enumerate(layers):
        images = [v[:, s].mean(0).reshape(shape) for v in (data, generated)]
        positive = np.concatenate([im[im > 0] for im in images])
        vmin, vmax = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
        for row, (image, name) in enumerate(zip(images, ("data", "generated"))):
            ax = axes[row, k]
            shown = ax.imshow(
                np.where(image > 0, image, np.nan),
                aspect="auto",
                interpolation="nearest",
                norm=matplotlib.colors.LogNorm(vmin=vmin, vmax=max(vmax, vmin * 1.0001)),
            )
            ax.set_title(f"{name}, layer {layer.id}")
            ax.set_xlabel("r bin" if layer.kind == POLAR else r"$\eta$ cell")
            ax.set_ylabel(r"$\alpha$ bin" if layer.kind == POLAR else r"$\phi$ cell")
            fig.colorbar(shown, ax=ax, label="mean energy [MeV]")
    fig.tight_layout()
    return fig


def layer_fractions_figure(data: np.ndarray, generated: np.ndarray) -> plt.Figure:
    """Histograms of E_k / E_hat, data vs generated, log-x as in the paper's figures; (N, L) in MeV."""
    fig, axes = plt.subplots(
        1, data.shape[1], figsize=(max(12, 3 * data.shape[1]), 3.5), squeeze=False
    )
    for k, ax in enumerate(axes[0]):
        fractions = [e[:, k] / np.maximum(e.sum(1), 1e-12) for e in (data, generated)]
        lo = max(min(f[f > 0].min() if (f > 0).any() else 1e-6 for f in fractions), 1e-6)
        bins = np.logspace(np.log10(lo), 0, 40)
        for f, name in zip(fractions, ("data", "generated")):
            ax.hist(np.clip(f, lo, 1), bins=bins, histtype="step", density=True, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(rf"$E_{k}/\hat E$")
        ax.set_ylabel("normalised entries")
        ax.legend()
    fig.tight_layout()
    return fig


class SampleMonitor(L.Callback):
    """Every ``every_n_epochs``, compare generated and data showers of the first validation batches.

    The module must provide ``compare_batch(batch, generator) -> (data, generated)``, two dicts
    with ``"layer_energies"`` (N, L) in MeV and optionally ``"voxels"`` (N, V) in MeV, and a
    ``geometry`` (:class:`caloflow.geometry.Geometry`; L layers, V voxels). Logs to
    TensorBoard: average images per layer (when voxels are given), E_k/E_hat histograms as a
    figure and as TensorBoard histograms.

    Args:
        every_n_epochs: how often to log.
        n_batches: validation batches used per log.
        seed: seeds the generated samples, so that epochs are compared on the same noise.
    """

    def __init__(self, every_n_epochs: int = 1, n_batches: int = 4, seed: int = 0):
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.n_batches = n_batches
        self.seed = seed
        self._data: list[dict] = []
        self._generated: list[dict] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            and isinstance(trainer.logger, TensorBoardLogger)
            and trainer.is_global_zero
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._data, self._generated = [], []
        self._generator = torch.Generator().manual_seed(self.seed)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx >= self.n_batches or not self._active(trainer):
            return
        data, generated = pl_module.compare_batch(batch, self._generator)
        self._data.append({k: v.detach().double().cpu().numpy() for k, v in data.items()})
        self._generated.append({k: v.detach().double().cpu().numpy() for k, v in generated.items()})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._data or not self._active(trainer):
            return
        data = {k: np.concatenate([d[k] for d in self._data]) for k in self._data[0]}
        generated = {k: np.concatenate([d[k] for d in self._generated]) for k in self._generated[0]}
        writer = trainer.logger.experiment
        step = trainer.current_epoch
        if "voxels" in data:
            fig = average_images_figure(data["voxels"], generated["voxels"], pl_module.geometry)
            writer.add_figure("samples/average_images", fig, step)
        fig = layer_fractions_figure(data["layer_energies"], generated["layer_energies"])
        writer.add_figure("samples/layer_fractions", fig, step)
        for name, e in (
            ("data", data["layer_energies"]),
            ("generated", generated["layer_energies"]),
        ):
            fractions = e / np.maximum(e.sum(1, keepdims=True), 1e-12)
            for k in range(e.shape[1]):
                writer.add_histogram(f"E{k}_over_Ehat/{name}", fractions[:, k], step)
        self._data, self._generated = [], []


__all__ = ["average_images_figure", "layer_fractions_figure", "SampleMonitor"]
