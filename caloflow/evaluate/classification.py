"""The classifier test of section 5.4 and appendix A: can a network tell generated from reference showers?

:class:`~caloflow.data.CaloDataModule` serves the reference (label 1) and generated (label 0)
showers balanced (the same number of each) and split 60/20/20 into train / validation / test per
class, so every split stays balanced; a :class:`~caloflow.models.ShowerClassifier` is trained with
a real Lightning Trainer (Adam 5e-4, batch 1000) **to convergence**: training stops once the
validation loss has not improved (by ``MIN_DELTA``) for ``patience`` epochs (early stopping), within a generous
maximum. Neither bound depends on how large the data set is: the maximum allows at least twice the
paper's 7,200 optimizer updates (appendix A: 60 epochs of 120 batches of 1,000) and the patience is
at least 1,200 updates (10 of the paper's epochs), so a small data set gets more epochs, not fewer
updates. As in the paper, the epoch with the best validation accuracy is kept; a run whose best
epoch is the last one allowed, or that never stopped early, is reported as not converged. Its output is
calibrated with isotonic regression fitted on the validation set, and the test set gives

* AUC, the area under the ROC curve of the calibrated output (0.5: indistinguishable, 1: disjoint),
* JSD = (ln 2 - BCE) / ln 2 from the calibrated binary cross entropy (0: identical, 1: disjoint).

The classifier-based JSD is a lower bound of the true one; on indistinguishable samples the test
BCE of a calibrated classifier can come out slightly above ln 2, so the reported ``jsd`` is
clipped to [0, 1] and the unclipped estimate is kept as ``jsd_raw``.

**Weighted samples** (``weights=``, e.g. DCTR weights; ``caloflow evaluate --weights``): the generated
showers carry their weights, the reference showers weight 1. In every split the generated weights
are scaled so that the generated class has the same total weight as the reference class (the
number of its showers), so the weighted test set is balanced and (ln 2 - BCE) / ln 2 stays the JSD
estimate of the weighted sample. The training loss is the weighted BCE, early stopping monitors
the weighted validation loss, the best epoch is chosen by the weighted validation accuracy, the
isotonic calibration is fitted with the sample weights, and AUC (weighted ROC), BCE (weighted
mean) and accuracy on test are weighted. The effective sample size (sum w)^2 / sum w^2 of the
generated weights of each split is reported (``ess``). Without weights nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from caloflow.data.datamodule import (
    GENERATED_LABEL,
    REFERENCE_LABEL,
    CaloDataModule,
    ShowerDataset,
    split_bounds,
)
from caloflow.data.io import Showers, read_showers
from caloflow.errors import CaloflowError
from caloflow.evaluate.weights import effective_sample_size
from caloflow.models.classifiers import ARCHITECTURES, ShowerClassifier
from caloflow.training import best_epoch, keep_best, make_trainer

#: Epochs of appendix A (the DNN's 60 epochs of 120 batches are the paper's optimizer budget).
DEFAULT_EPOCHS = {"dnn": 60, "cnn": 50, "features": 60}
PAPER_UPDATES = 60 * 120
#: Early-stopping patience, in optimizer updates (10 of the paper's epochs) and at least in epochs.
PATIENCE_UPDATES = 1200
MIN_PATIENCE_EPOCHS = 10
#: A validation loss (nats) that improves by less than this does not count as an improvement: on
#: separable samples the loss creeps towards 0 for ever, and the AUC no longer changes.
MIN_DELTA = 1e-4
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
#: Calibrated probabilities are kept inside [EPS, 1 - EPS] so that the BCE stays finite.
EPS = 1e-6


def _as_showers(source: Showers | str | Path, max_showers: int | None) -> Showers:
    if isinstance(source, Showers):
        return source if max_showers is None else source[:max_showers]
    return read_showers(source, stop=max_showers)


def _as_weights(weights, n_generated: int, max_showers: int | None) -> np.ndarray | None:
    """The generated showers' weights as float64, cut like the showers; checked against their number."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if max_showers is not None and len(w) > n_generated:
        w = w[:max_showers]
    if len(w) != n_generated:
        raise ValueError(f"{len(w)} weights for {n_generated} generated showers")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError("weights must be finite, >= 0 and not all zero")
    return w


def classifier_data(
    reference: Showers | str | Path,
    generated: Showers | str | Path,
    batch_size: int = 1000,
    max_showers: int | None = None,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> CaloDataModule:
    """The classifier test's data: labelled, balanced, split 60/20/20, no added noise.

    With ``weights`` (one per generated shower, cut to ``max_showers`` like the showers) the module
    is a :class:`WeightedCaloDataModule`: the same split, batches with a ``"weight"``.
    """
    reference, generated = _as_showers(reference, max_showers), _as_showers(generated, max_showers)
    kwargs = dict(split=SPLIT_FRACTIONS, batch_size=batch_size, seed=seed, noise_kev=0.0)
    if weights is None:
        return CaloDataModule.from_showers(reference, generated, **kwargs)
    return WeightedCaloDataModule.from_weighted_showers(
        reference, generated, _as_weights(weights, len(generated), max_showers), **kwargs
    )


def weighted_balanced_split(
    reference: Showers, generated: Showers, weights: np.ndarray, fractions, rng: np.random.Generator
) -> dict[str, tuple[Showers, np.ndarray, np.ndarray]]:
    """:func:`caloflow.data.datamodule.balanced_split` with the generated showers' weights.

    The same showers land in the same splits as there (the same draws of ``rng``), so a weighted and
    an unweighted test with one seed see the same showers. Returns ``{"train" | "val" | "test":
    (showers, labels, weights)}``, reference first within each split; the reference weights are 1
    and the generated ones are scaled so that both classes have the same total weight in every split.
    """
    n, bounds = split_bounds(len(reference), len(generated), fractions)
    ref_index = rng.permutation(len(reference))[:n]
    gen_index = rng.permutation(len(generated))[:n]
    weights = np.asarray(weights, dtype=np.float64)
    out = {}
    for name, (lo, hi) in bounds.items():
        r, g = ref_index[lo:hi], gen_index[lo:hi]
        w = weights[g]
        total = float(w.sum())
        if total <= 0:
            raise CaloflowError(
                f"classifier test: the {len(g)} generated showers of the {name} split all have "
                "weight 0; too few showers with a non-zero weight"
            )
        showers = Showers.concatenate([reference[r], generated[g]])
        labels = np.concatenate(
            [
                np.full(len(r), REFERENCE_LABEL, np.float32),
                np.full(len(g), GENERATED_LABEL, np.float32),
            ]
        )
        out[name] = (showers, labels, np.concatenate([np.ones(len(r)), w * (len(r) / total)]))
    return out


class WeightedShowerDataset(ShowerDataset):
    """A labelled :class:`ShowerDataset` whose batches also carry ``"weight"`` (float32); the float64
    weights are kept as :attr:`sample_weights` for the metrics."""

    def __init__(self, showers: Showers, labels: np.ndarray, weights: np.ndarray, **kwargs):
        super().__init__(showers, labels=labels, **kwargs)
        self.sample_weights = np.asarray(weights, dtype=np.float64)
        self.weights = torch.as_tensor(self.sample_weights, dtype=torch.float32)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        batch["weight"] = self.weights[torch.as_tensor(indices, dtype=torch.long)]
        return batch

    def effective_sample_size(self) -> float:
        """ESS of the generated class's weights."""
        return effective_sample_size(self.sample_weights[self.labels.numpy() == GENERATED_LABEL])


class WeightedCaloDataModule(CaloDataModule):
    """The classifier test's :class:`CaloDataModule` for a weighted generated sample (module docstring):
    the split of :func:`weighted_balanced_split`, served by :class:`WeightedShowerDataset`."""

    generated_weights: np.ndarray

    @classmethod
    def from_weighted_showers(
        cls, reference: Showers, generated: Showers, weights: np.ndarray, **kwargs
    ) -> "WeightedCaloDataModule":
        dm = cls.from_showers(reference, generated, **kwargs)
        dm.generated_weights = np.asarray(weights, dtype=np.float64)
        if len(dm.generated_weights) != len(generated):
            raise ValueError(
                f"{len(dm.generated_weights)} weights for {len(generated)} generated showers"
            )
        return dm

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        reference, generated = self._read("path"), self._read("generated")
        weights = self.generated_weights[
            : len(generated)
        ]  # _read cuts to max_showers: the same rows
        if min(len(reference), len(generated)) < 10:
            raise CaloflowError(
                f"need at least 10 showers of each kind, got {len(reference)} reference and "
                f"{len(generated)} generated"
            )
        held_out_noise = h.noise_kev if h.noise_validation else 0.0
        parts = weighted_balanced_split(
            reference, generated, weights, h.split, np.random.default_rng(h.seed)
        )
        for i, (name, (showers, labels, w)) in enumerate(parts.items()):
            training = name == "train"
            self.datasets[name] = WeightedShowerDataset(
                showers,
                labels,
                w,
                noise_kev=h.noise_kev if training else held_out_noise,
                fresh_noise=training,
                seed=h.seed + i,
            )
        if self._restored_noise is not None:
            self.train_set.generator.set_state(self._restored_noise)
            self._restored_noise = None

    def effective_sample_sizes(self) -> dict[str, float]:
        """ESS of the generated weights of every split."""
        self.setup()
        return {name: ds.effective_sample_size() for name, ds in self.datasets.items()}


class EncodedDataset(torch.utils.data.Dataset):
    """A noise-free :class:`ShowerDataset` with a classifier's input encoding computed once.

    The classifier test adds no noise, so a backbone's encoding of a shower (the 508 inputs of
    appendix A, the 41 high-level features: float64 arithmetic row by row, the same values in any
    batch) is the same in every epoch; computing it once for the split removes that cost from
    every training and validation batch. Batches are the dataset's own plus the encoding under
    the classifier's :attr:`~caloflow.models.ShowerClassifier.input_key`; everything else (length,
    ``sample_weights``, ...) is the wrapped dataset's.
    """

    def __init__(self, dataset: ShowerDataset, model: ShowerClassifier, chunk: int = 10_000):
        if dataset.noise > 0:
            raise ValueError(
                "EncodedDataset needs a noise-free dataset: noise changes the inputs every epoch"
            )
        self.dataset, self.key = dataset, model.input_key
        n = len(dataset)
        self.inputs = (
            torch.cat(
                [
                    model.encode(dataset.__getitems__(range(i, min(i + chunk, n))))
                    for i in range(0, n, chunk)
                ]
            )
            if n
            else torch.zeros(0)
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        batch = self.dataset.__getitems__(indices)
        batch[self.key] = self.inputs[torch.as_tensor(indices, dtype=torch.long)]
        return batch


def encode_once(datamodule: CaloDataModule, model: ShowerClassifier) -> None:
    """Wrap the datamodule's noise-free shower splits in :class:`EncodedDataset` for ``model``
    (splits with noise, or of other kinds, are left as they are)."""
    datamodule.setup("fit")
    for name, dataset in list(datamodule.datasets.items()):
        if isinstance(dataset, EncodedDataset):
            dataset = dataset.dataset
        if isinstance(dataset, ShowerDataset) and dataset.noise == 0:
            datamodule.datasets[name] = EncodedDataset(dataset, model)


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


def binary_cross_entropy(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean BCE in nats of probabilities ``p`` for labels ``y`` (p clipped to [EPS, 1 - EPS]);
    with ``weights`` the weighted mean sum w BCE / sum w."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    losses = y * np.log(p) + (1 - y) * np.log1p(-p)
    if weights is None:
        return float(-np.mean(losses))
    w = np.asarray(weights, dtype=np.float64)
    return float(-np.sum(w * losses) / np.sum(w))


def jsd_from_bce(bce: float) -> float:
    """JSD estimate (ln 2 - BCE) / ln 2 (section 5.4), in units of ln 2 so that disjoint = 1."""
    return (math.log(2.0) - bce) / math.log(2.0)


def calibrated_metrics(
    p_val: np.ndarray,
    y_val: np.ndarray,
    p_test: np.ndarray,
    y_test: np.ndarray,
    w_val: np.ndarray | None = None,
    w_test: np.ndarray | None = None,
) -> dict:
    """Isotonic calibration fitted on validation, AUC and JSD on test (appendix A).

    With sample weights (``w_val`` and ``w_test``, both or neither) the calibration is fitted with
    ``w_val`` and the AUC (weighted ROC), BCE (so JSD) and accuracy on test are weighted with ``w_test``;
    for a JSD estimate the two classes should have the same total weight in each set.
    """
    if (w_val is None) != (w_test is None):
        raise ValueError("give both w_val and w_test, or neither")
    if w_val is not None:
        return _weighted_calibrated_metrics(
            p_val,
            y_val,
            p_test,
            y_test,
            np.asarray(w_val, dtype=np.float64),
            np.asarray(w_test, dtype=np.float64),
        )
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


def held_out_metrics(model: ShowerClassifier, val: dict, test: dict, **weights) -> dict[str, float]:
    """:func:`calibrated_metrics` of a trained classifier: calibrated on the validation batch
    ``val``, scored on the test batch ``test`` (``weights``: their per-shower weights)."""
    return calibrated_metrics(
        model.predict_proba(val),
        val["label"].numpy(),
        model.predict_proba(test),
        test["label"].numpy(),
        **weights,
    )


def _weighted_calibrated_metrics(
    p_val, y_val, p_test, y_test, w_val: np.ndarray, w_test: np.ndarray
) -> dict:
    iso = IsotonicRegression(out_of_bounds="clip", y_min=EPS, y_max=1 - EPS).fit(
        p_val, y_val, sample_weight=w_val
    )
    p_cal = iso.predict(p_test)
    jsd_raw = jsd_from_bce(binary_cross_entropy(p_cal, y_test, w_test))
    correct = ((p_cal > 0.5) == (np.asarray(y_test) > 0.5)).astype(np.float64)
    return {
        "auc": float(roc_auc_score(y_test, p_cal, sample_weight=w_test)),
        "jsd": float(min(max(jsd_raw, 0.0), 1.0)),
        "jsd_raw": float(jsd_raw),
        "auc_uncalibrated": float(roc_auc_score(y_test, p_test, sample_weight=w_test)),
        "jsd_uncalibrated": float(jsd_from_bce(binary_cross_entropy(p_test, y_test, w_test))),
        "test_accuracy": float(np.sum(w_test * correct) / np.sum(w_test)),
    }


def _split_batch(datamodule: CaloDataModule, name: str) -> dict:
    """One split of the DataModule as a single batch (inputs and labels)."""
    dataset = datamodule.datasets[name]
    return dataset.__getitems__(range(len(dataset)))


@dataclass(frozen=True)
class Schedule:
    """How long one classifier trains: at most ``max_epochs``; early stopping after ``patience`` epochs
    without a lower validation loss (``patience`` None: a fixed number of epochs, no early stopping)."""

    max_epochs: int
    patience: int | None
    steps_per_epoch: int

    @classmethod
    def converging(
        cls,
        n_train: int,
        batch_size: int,
        architecture: str = "dnn",
        max_epochs: int | None = None,
        patience: int | None = None,
    ) -> "Schedule":
        """The default: early stopping, and a budget that does not shrink with the data set (module docstring)."""
        steps = max(1, math.ceil(n_train / batch_size))
        if max_epochs is None:
            max_epochs = max(2 * DEFAULT_EPOCHS[architecture], math.ceil(2 * PAPER_UPDATES / steps))
        if patience is None:
            patience = max(MIN_PATIENCE_EPOCHS, math.ceil(PATIENCE_UPDATES / steps))
        return cls(int(max_epochs), int(patience), steps)

    @classmethod
    def fixed(cls, n_train: int, batch_size: int, epochs: int) -> "Schedule":
        """Exactly ``epochs`` epochs, no early stopping (the paper's fixed schedule, or a quick look)."""
        return cls(int(epochs), None, max(1, math.ceil(n_train / batch_size)))


def schedule_for(
    datamodule: CaloDataModule,
    architecture: str,
    epochs: int | None = None,
    max_epochs: int | None = None,
    patience: int | None = None,
) -> Schedule:
    """The :class:`Schedule` of a classifier on this data: fixed ``epochs`` if given, else converging."""
    datamodule.setup("fit")
    n_train, batch_size = len(datamodule.train_set), datamodule.hparams.batch_size
    if epochs is not None:
        return Schedule.fixed(n_train, batch_size, epochs)
    return Schedule.converging(n_train, batch_size, architecture, max_epochs, patience)


def fit_classifier(
    model: ShowerClassifier,
    datamodule: CaloDataModule,
    schedule: Schedule,
    log_dir,
    name,
    version,
    progress,
    keep: str = "val_acc",
    encode_inputs: bool = True,
) -> dict:
    """Fit ``model`` on the datamodule's train split with the ``schedule`` (early stopping on the validation
    loss when it has a patience) and keep its best epoch by ``keep``: ``"val_acc"`` (highest validation
    accuracy: the classifier test of CaloFlow appendix A) or ``"val_loss"`` (lowest validation BCE: the
    best-calibrated f, for weights w = f / (1 - f)). ``encode_inputs``: encode the noise-free splits once
    (:func:`encode_once`; the same classifier, faster) instead of in every batch. Returns
    ``{"model": that model (reloaded), "trainer", "info": best_epoch, best_val_acc or best_val_loss,
    epochs_run, updates, converged, ...}``."""
    if keep not in ("val_acc", "val_loss"):
        raise ValueError(f"keep must be 'val_acc' or 'val_loss', not {keep!r}")
    # the checkpoint of the best epoch only lives until it has been reloaded
    with keep_best(keep, "max" if keep == "val_acc" else "min") as best:
        callbacks: list[Callback] = [best, _EpochProgress(progress)]
        if schedule.patience is not None:
            callbacks.append(
                EarlyStopping(
                    monitor="val_loss", mode="min", patience=schedule.patience, min_delta=MIN_DELTA
                )
            )
        trainer = make_trainer(
            schedule.max_epochs,
            log_dir,
            name,
            version,
            callbacks=callbacks,
            checkpointing=True,
            log_every_n_steps=1,
            accelerator="auto",
        )
        if encode_inputs:
            encode_once(datamodule, model)
        trainer.fit(model, datamodule=datamodule)
        epoch = best_epoch(best)
        epochs_run = int(trainer.current_epoch)
        info = {
            "best_epoch": epoch,
            f"best_{keep}": float(best.best_model_score),
            "epochs_run": epochs_run,
            "max_epochs": schedule.max_epochs,
            "patience": schedule.patience,
            "steps_per_epoch": schedule.steps_per_epoch,
            "updates": epochs_run * schedule.steps_per_epoch,
            "stopped_early": epochs_run < schedule.max_epochs,
            "converged": schedule.patience is not None
            and epochs_run < schedule.max_epochs
            and epoch < schedule.max_epochs,
        }
        model = ShowerClassifier.load_from_checkpoint(best.best_model_path, map_location="cpu")
    return {"model": model, "trainer": trainer, "info": info}


def run_classifier(
    datamodule: CaloDataModule,
    architecture: str = "dnn",
    preprocessing: str = "unnormalized",
    epochs: int | None = None,
    seed: int = 0,
    lr: float = 5e-4,
    log_dir: str | Path | None = None,
    name: str = "classifier",
    version: str | int | None = None,
    progress=None,
    max_epochs: int | None = None,
    patience: int | None = None,
) -> dict:
    """Train one classifier (to convergence unless ``epochs`` is given), keep its best-validation-accuracy
    epoch, return calibrated test metrics.

    Args:
        datamodule: labelled, balanced, split showers (:func:`classifier_data`).
        architecture: ``dnn``, ``cnn`` or ``features``.
        preprocessing: voxel input preprocessing of ``dnn``/``cnn``
            (:data:`~caloflow.models.classifiers.PREPROCESSINGS`).
        epochs: a fixed number of epochs without early stopping; None: train to convergence.
        seed: network initialisation and order of the training batches.
        log_dir: TensorBoard logs go to ``log_dir/name/version``; None: no logging.
        progress: optional tqdm bar advanced once per epoch.
        max_epochs, patience: override the converging :class:`Schedule`.

    Returns:
        ``auc``, ``jsd`` (calibrated, test set), ``jsd_raw``, ``auc_uncalibrated``, ``jsd_uncalibrated``,
        ``test_accuracy``, ``best_epoch``, ``best_val_acc``, ``epochs_run``, ``max_epochs``, ``patience``,
        ``updates``, ``stopped_early``, ``converged``, ``seed``; for a :class:`WeightedCaloDataModule`
        also ``weighted`` (True) and ``ess`` (effective sample size of the generated weights per split),
        the metrics being weighted (module docstring).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown classifier '{architecture}', choose from {', '.join(ARCHITECTURES)}"
        )
    schedule = schedule_for(datamodule, architecture, epochs, max_epochs, patience)
    L.seed_everything(seed, verbose=False)
    model = ShowerClassifier(architecture, preprocessing, lr=lr)
    fitted = fit_classifier(model, datamodule, schedule, log_dir, name, version, progress)
    model, trainer = fitted["model"], fitted["trainer"]
    val, test = _split_batch(datamodule, "val"), _split_batch(datamodule, "test")
    weighted = isinstance(datamodule, WeightedCaloDataModule)
    weights = (
        {
            "w_val": datamodule.datasets["val"].sample_weights,
            "w_test": datamodule.datasets["test"].sample_weights,
        }
        if weighted
        else {}
    )
    metrics = held_out_metrics(model, val, test, **weights)
    metrics.update(fitted["info"], seed=seed)
    if weighted:
        metrics.update(weighted=True, ess=datamodule.effective_sample_sizes())
    if trainer.logger:
        scalars = {
            f"test_{k}": float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and v is not None
        }
        trainer.logger.log_metrics(scalars, step=trainer.global_step)
        trainer.logger.finalize("success")
    return metrics


def classifier_test(
    reference: Showers | str | Path,
    generated: Showers | str | Path,
    architecture: str = "dnn",
    preprocessing: str = "unnormalized",
    runs: int = 1,
    epochs: int | None = None,
    seed: int = 0,
    max_showers: int | None = None,
    batch_size: int = 1000,
    log_dir: str | Path | None = None,
    name: str = "classifier",
    progress=None,
    max_epochs: int | None = None,
    patience: int | None = None,
    weights: np.ndarray | None = None,
) -> dict:
    """``runs`` independent classifiers (seeds ``seed, seed + 1, ...``: split and initialisation).

    ``weights``: one per generated shower (cut to ``max_showers`` like the showers): a weighted test
    (module docstring).

    Returns ``{"auc": {"mean", "std"}, "jsd": {"mean", "std"}, "converged": all runs converged,
    "data": {"n_per_class", "train", "val", "test", "batch_size"}, "runs": [per-run metrics]}``; with
    weights also ``"weighted": True`` and ``"ess"``: the mean over runs of the effective sample size
    of the generated weights per split.
    """
    reference = _as_showers(reference, max_showers)
    generated = _as_showers(generated, max_showers)
    weights = _as_weights(weights, len(generated), max_showers)
    results, data = [], {}
    for r in range(runs):
        dm = classifier_data(
            reference, generated, batch_size=batch_size, seed=seed + r, weights=weights
        )
        results.append(
            run_classifier(
                dm,
                architecture,
                preprocessing,
                epochs=epochs,
                seed=seed + r,
                log_dir=log_dir,
                name=name,
                version=f"run{r}",
                progress=progress,
                max_epochs=max_epochs,
                patience=patience,
            )
        )
        sizes = {split: len(ds) for split, ds in dm.datasets.items()}
        data = {"n_per_class": sum(sizes.values()) // 2, **sizes, "batch_size": batch_size}
    summary: dict = {}
    for key in ("auc", "jsd"):
        values = np.array([m[key] for m in results])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
    summary["converged"] = all(m["converged"] for m in results)
    if weights is not None:
        summary["weighted"] = True
        summary["ess"] = {
            split: float(np.mean([m["ess"][split] for m in results])) for split in results[0]["ess"]
        }
    summary["data"] = data
    summary["runs"] = results
    return summary


__all__ = [
    "held_out_metrics",
    "DEFAULT_EPOCHS",
    "PAPER_UPDATES",
    "PATIENCE_UPDATES",
    "MIN_PATIENCE_EPOCHS",
    "MIN_DELTA",
    "SPLIT_FRACTIONS",
    "EPS",
    "classifier_data",
    "weighted_balanced_split",
    "WeightedShowerDataset",
    "WeightedCaloDataModule",
    "EncodedDataset",
    "encode_once",
    "binary_cross_entropy",
    "jsd_from_bce",
    "calibrated_metrics",
    "Schedule",
    "schedule_for",
    "fit_classifier",
    "run_classifier",
    "classifier_test",
]
