"""The classifier test of section 5.4 and appendix A: can a network tell generated from reference showers?

Reference and generated showers are balanced (the same number of each), split 60/20/20 into
train / validation / test (per class, so every split stays balanced), and a
:class:`~caloflow.models.classifiers.ShowerClassifier` is trained with a real Lightning Trainer
(Adam 5e-4, batch 1000, 60 epochs for the DNN and 50 for the CNN). The epoch with the best
validation accuracy is kept, its output is calibrated with isotonic regression fitted on the
validation set, and the test set gives

* AUC, the area under the ROC curve of the calibrated output (0.5: indistinguishable, 1: disjoint),
* JSD = (ln 2 - BCE) / ln 2 from the calibrated binary cross entropy (0: identical, 1: disjoint).

The classifier-based JSD is a lower bound of the true one; on indistinguishable samples the test
BCE of a calibrated classifier can come out slightly above ln 2, so the reported ``jsd`` is
clipped to [0, 1] and the unclipped estimate is kept as ``jsd_raw``.
"""
from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from caloflow.data.io import Showers, read_showers
from caloflow.models.classifiers import ARCHITECTURES, PREPROCESSINGS, ShowerClassifier, classifier_inputs

#: Epochs of appendix A.
DEFAULT_EPOCHS = {"dnn": 60, "cnn": 50}
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
#: Calibrated probabilities are kept inside [EPS, 1 - EPS] so that the BCE stays finite.
EPS = 1e-6


def _as_showers(source: Showers | str | Path, max_showers: int | None) -> Showers:
    if isinstance(source, Showers):
        return source if max_showers is None else source[:max_showers]
    return read_showers(source, stop=max_showers)


class ClassifierDataModule(L.LightningDataModule):
    """Balanced reference (label 0) vs generated (label 1) showers, split 60/20/20.

    Args:
        reference, generated: :class:`Showers` or paths of CaloGAN files.
        preprocessing: one of :data:`~caloflow.models.classifiers.PREPROCESSINGS`.
        batch_size: 1000 (appendix A).
        max_showers: use at most this many showers of each class.
        seed: chooses the balanced subsets, the split and the shuffling.
    """

    def __init__(self, reference: Showers | str | Path, generated: Showers | str | Path,
                 preprocessing: str = "unnormalized", batch_size: int = 1000,
                 max_showers: int | None = None, seed: int = 0):
        super().__init__()
        if preprocessing not in PREPROCESSINGS:
            raise ValueError(f"unknown preprocessing '{preprocessing}', choose from {', '.join(PREPROCESSINGS)}")
        self.reference, self.generated = reference, generated
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.max_showers = max_showers
        self.seed = seed
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        rng = np.random.default_rng(self.seed)
        ref = _as_showers(self.reference, self.max_showers)
        gen = _as_showers(self.generated, self.max_showers)
        n = min(len(ref), len(gen))
        if n < 10:
            raise ValueError(f"need at least 10 showers of each kind, got {len(ref)} reference and {len(gen)} generated")
        n_train, n_val = int(round(SPLIT_FRACTIONS[0] * n)), int(round(SPLIT_FRACTIONS[1] * n))
        parts: dict[str, list] = {"train": [], "val": [], "test": []}
        for label, showers in ((0.0, ref), (1.0, gen)):
            index = rng.permutation(len(showers))[:n]
            x = classifier_inputs(showers.voxels[index], showers.energy[index], self.preprocessing)
            y = torch.full((n,), label)
            for name, sl in (("train", slice(0, n_train)), ("val", slice(n_train, n_train + n_val)),
                             ("test", slice(n_train + n_val, n))):
                parts[name].append((x[sl], y[sl]))
        for name, pieces in parts.items():
            self.splits[name] = TensorDataset(torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]))

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.splits[name], batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class _EpochProgress(Callback):
    """Advances an external progress bar once per training epoch."""

    def __init__(self, bar):
        self.bar = bar

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.bar is None:
            return
        acc = trainer.callback_metrics.get("val_acc")
        self.bar.update(1)
        if acc is not None:
            self.bar.set_postfix(val_acc=f"{float(acc):.3f}")


def binary_cross_entropy(p: np.ndarray, y: np.ndarray) -> float:
    """Mean BCE in nats of probabilities ``p`` for labels ``y`` (p clipped to [EPS, 1 - EPS])."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def jsd_from_bce(bce: float) -> float:
    """JSD estimate (ln 2 - BCE) / ln 2 (section 5.4), in units of ln 2 so that disjoint = 1."""
    return (math.log(2.0) - bce) / math.log(2.0)


def calibrated_metrics(p_val: np.ndarray, y_val: np.ndarray, p_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Isotonic calibration fitted on validation, AUC and JSD on test (appendix A)."""
    iso = IsotonicRegression(out_of_bounds="clip", y_min=EPS, y_max=1 - EPS).fit(p_val, y_val)
    p_cal = iso.predict(p_test)
    jsd_raw = jsd_from_bce(binary_cross_entropy(p_cal, y_test))
    return {
        "auc": float(roc_auc_score(y_test, p_cal)),
        "jsd": float(min(max(jsd_raw, 0.0), 1.0)),
        "jsd_raw": float(jsd_raw),
        "auc_uncalibrated": float(roc_auc_score(y_test, p_test)),
        "jsd_uncalibrated": float(jsd_from_bce(binary_cross_entropy(p_test, y_test))),
        "test_accuracy": float(np.mean((p_cal > 0.5) == (y_test > 0.5))),
    }


def run_classifier(datamodule: ClassifierDataModule, architecture: str = "dnn", epochs: int | None = None,
                   seed: int = 0, lr: float = 5e-4, log_dir: str | Path | None = None, name: str = "classifier",
                   version: str | int | None = None, progress=None) -> dict:
    """Train one classifier, keep its best-validation-accuracy epoch, return calibrated test metrics.

    Args:
        datamodule: the balanced, split data.
        architecture: ``dnn`` or ``cnn``.
        epochs: default 60 (DNN) / 50 (CNN).
        seed: network initialisation and order of the training batches.
        log_dir: TensorBoard logs go to ``log_dir/name/version``; None: no logging.
        progress: optional tqdm bar advanced once per epoch.

    Returns:
        ``auc``, ``jsd`` (calibrated, test set), ``jsd_raw``, ``auc_uncalibrated``,
        ``jsd_uncalibrated``, ``test_accuracy``, ``best_epoch``, ``best_val_acc``.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown classifier '{architecture}', choose from {', '.join(ARCHITECTURES)}")
    epochs = DEFAULT_EPOCHS[architecture] if epochs is None else int(epochs)
    L.seed_everything(seed, verbose=False)
    model = ShowerClassifier(architecture, lr=lr)
    logger = TensorBoardLogger(str(log_dir), name=name, version=version) if log_dir is not None else False
    with tempfile.TemporaryDirectory(prefix="caloflow-classifier-") as ckpt_dir:
        # the checkpoint of the best epoch only lives until it has been reloaded
        best = ModelCheckpoint(dirpath=ckpt_dir, monitor="val_acc", mode="max", save_top_k=1,
                               filename="best-{epoch}")
        trainer = L.Trainer(
            max_epochs=epochs, logger=logger, callbacks=[best, _EpochProgress(progress)],
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=1, accelerator="auto", devices=1, deterministic="warn",
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            trainer.fit(model, datamodule=datamodule)
        best_val_acc = float(best.best_model_score)
        best_epoch = int(Path(best.best_model_path).stem.split("=")[-1]) + 1
        model = ShowerClassifier.load_from_checkpoint(best.best_model_path, map_location="cpu")
    val, test = datamodule.splits["val"], datamodule.splits["test"]
    p_val = model.predict_proba(val.tensors[0])
    p_test = model.predict_proba(test.tensors[0])
    metrics = calibrated_metrics(p_val, val.tensors[1].numpy(), p_test, test.tensors[1].numpy())
    metrics.update(best_epoch=best_epoch, best_val_acc=best_val_acc)
    if logger:
        logger.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=trainer.global_step)
        logger.finalize("success")
    return metrics


def classifier_test(reference: Showers | str | Path, generated: Showers | str | Path, architecture: str = "dnn",
                    preprocessing: str = "unnormalized", runs: int = 1, epochs: int | None = None, seed: int = 0,
                    max_showers: int | None = None, batch_size: int = 1000, log_dir: str | Path | None = None,
                    name: str = "classifier", progress=None) -> dict:
    """``runs`` independent classifiers (seeds ``seed, seed + 1, ...``: split and initialisation).

    Returns ``{"auc": {"mean", "std"}, "jsd": {"mean", "std"}, "runs": [per-run metrics]}``.
    """
    reference = _as_showers(reference, max_showers)
    generated = _as_showers(generated, max_showers)
    results = []
    for r in range(runs):
        dm = ClassifierDataModule(reference, generated, preprocessing, batch_size=batch_size, seed=seed + r)
        results.append(run_classifier(dm, architecture, epochs=epochs, seed=seed + r, log_dir=log_dir, name=name,
                                      version=f"run{r}", progress=progress))
    summary = {}
    for key in ("auc", "jsd"):
        values = np.array([m[key] for m in results])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
    summary["runs"] = results
    return summary
