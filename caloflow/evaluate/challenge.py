"""The CaloChallenge classifier test on ``cls-low``, ``cls-low-normed`` or ``cls-high`` inputs
(:func:`caloflow.radial_features.classifier_inputs`), under one of two protocols.

Both train the one classifier of caloflow, :class:`~caloflow.models.ShowerClassifier` (label 1 =
reference, 0 = generated) with its ``vector`` backbone on the same inputs; they differ in how:

* ``calochallenge``: what the challenge's official evaluator computes. Each class is shuffled and
  cut into train / test / validation = int(0.6 n) / int(0.2 n) / the rest, the two classes are
  joined and each split shuffled; a network input -> 2048 -> 2048 -> 2048 -> 1 with LeakyReLU(0.01)
  (the evaluator's input layer and ``cls_n_layer`` = 2 hidden layers; no dropout), in float64 with
  torch's default initialisation, is trained with Adam (lr 2e-4), binary cross entropy, batches of
  1000 in a fresh random order every epoch, for 50 epochs; after every epoch the accuracy on the
  *test* split (sigmoid rounded) is measured and the epoch with the best one kept (training stops
  early only at accuracy 1). The kept network's sigmoid output is calibrated by isotonic regression
  (sklearn, clipped to [1e-6, 1 - 1e-6]) fitted on the *test* split, and the *validation* split
  gives the AUC of the calibrated output and JSD = (ln 2 - BCE) / ln 2 (not clipped). The
  evaluator needs the same number of showers in both files; caloflow uses a random subset of the
  larger one.
* ``converged``: the project's protocol of :mod:`caloflow.evaluate.classification`: balanced
  60/20/20 train / validation / test, the inputs centred and scaled to [-1, 1] on the training
  split (:func:`standardised`), the ``vector`` backbone's 3 x 512 network (float32), Adam 5e-4,
  batches of 1000, early stopping on the validation loss, best validation-accuracy epoch, isotonic
  calibration on validation, AUC and JSD on test.

Each run draws its split, initialisation and batch order from its seed (``seed + r`` for run r);
the result is the mean and standard deviation over the runs and every run's numbers.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
import torch

from caloflow.data.datamodule import GENERATED_LABEL, REFERENCE_LABEL, split_bounds
from caloflow.data.io import Showers
from caloflow.errors import CaloflowError
from caloflow.evaluate.classification import (
    SPLIT_FRACTIONS,
    Schedule,
    calibrated_metrics,
    fit_classifier,
    held_out_metrics,
)
from caloflow.evaluate.weights import effective_sample_size
from caloflow.geometry import Geometry
from caloflow.models.classifiers import ShowerClassifier, centre_and_scale
from caloflow.radial_features import classifier_inputs

PROTOCOLS: tuple[str, ...] = ("calochallenge", "converged")
Split = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class OfficialSettings:
    """The evaluator's classifier settings (its ``--cls_*`` options; module docstring)."""

    hidden: int = 2048
    #: hidden layers in all: the evaluator's input layer and its ``cls_n_layer`` = 2 more
    n_hidden_layers: int = 3
    dropout: float = 0.0
    lr: float = 2e-4
    batch_size: int = 1000
    epochs: int = 50
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)


def _labelled(x: np.ndarray, label: float) -> tuple[np.ndarray, np.ndarray]:
    return x, np.full(len(x), label, dtype=np.float64)


def _join(parts, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if rng is None:
        return x, y
    order = rng.permutation(len(x))
    return x[order], y[order]


def official_split(
    reference: np.ndarray, generated: np.ndarray, fractions, rng: np.random.Generator
) -> Split:
    """The evaluator's split (module docstring): ``{"train" | "test" | "val": (inputs, labels)}``.

    The larger set is first cut to a random subset of the smaller one's size.
    """
    n = min(len(reference), len(generated))
    cuts = np.cumsum((n * np.asarray(fractions, np.float64)).astype(int))[:-1]
    pieces = {"train": [], "test": [], "val": []}
    for x, label in ((generated, GENERATED_LABEL), (reference, REFERENCE_LABEL)):
        x = x[rng.permutation(len(x))[:n]]
        for name, part in zip(pieces, np.split(x, cuts)):
            pieces[name].append(_labelled(part, label))
    return {name: _join(parts, rng) for name, parts in pieces.items()}


def balanced_vector_split(
    reference: np.ndarray,
    generated: np.ndarray,
    fractions,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> Split:
    """The project's balanced split (:func:`caloflow.data.datamodule.balanced_split`) of input
    vectors: n = min of both, round(f n) of each class per split, ``{"train" | "val" | "test"}``.

    With ``weights`` (one per generated vector) every split is ``(inputs, labels, weights)``: the
    same rows as without, the reference weighing 1 and the generated weights scaled so that both
    classes have the same total weight in every split (as
    :func:`caloflow.evaluate.classification.weighted_balanced_split`)."""
    n, bounds = split_bounds(len(reference), len(generated), fractions)
    pieces = {name: [] for name in bounds}
    index = {}
    for x, label in ((reference, REFERENCE_LABEL), (generated, GENERATED_LABEL)):
        index[label] = rng.permutation(len(x))[:n]
        for name, (lo, hi) in bounds.items():
            pieces[name].append(_labelled(x[index[label][lo:hi]], label))
    split = {name: _join(parts, None) for name, parts in pieces.items()}
    if weights is None:
        return split
    w_all = np.asarray(weights, dtype=np.float64)
    for name, (lo, hi) in bounds.items():
        w = w_all[index[GENERATED_LABEL][lo:hi]]
        if w.sum() <= 0:
            raise CaloflowError(
                f"classifier test: the {len(w)} generated showers of the {name} split all have "
                "weight 0; too few showers with a non-zero weight"
            )
        n_ref = hi - lo
        split[name] = (*split[name], np.concatenate([np.ones(n_ref), w * (n_ref / w.sum())]))
    return split


def _batch(x: np.ndarray, y: np.ndarray, dtype=torch.float64) -> dict[str, torch.Tensor]:
    return {"inputs": torch.as_tensor(x, dtype=dtype), "label": torch.as_tensor(y, dtype=dtype)}


def _accuracy(model: ShowerClassifier, batch: dict, batch_size: int) -> float:
    """Accuracy of the rounded sigmoid output (the evaluator's ``np.round``: 0.5 -> 0)."""
    p = model.predict_proba(batch, batch_size)
    return float(np.mean((p > 0.5) == (batch["label"].numpy() > 0.5)))


def _official_model(n_inputs: int, settings: OfficialSettings, device) -> ShowerClassifier:
    args = dict(
        n_inputs=n_inputs,
        hidden=settings.hidden,
        n_hidden_layers=settings.n_hidden_layers,
        dropout=settings.dropout,
    )
    return ShowerClassifier("vector", lr=settings.lr, backbone_args=args).double().to(device)


def train_official(
    split: Split, settings: OfficialSettings, seed: int, device=None, progress=None
) -> tuple[ShowerClassifier, dict]:
    """Train as the evaluator does and keep the best test-accuracy epoch (module docstring).

    Returns the kept model (on the CPU) and ``best_epoch``, ``best_test_accuracy``, ``epochs_run``.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    model = _official_model(split["train"][0].shape[1], settings, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    train = {k: v.to(device) for k, v in _batch(*split["train"]).items()}
    test = _batch(*split["test"])
    order_rng = torch.Generator().manual_seed(seed)
    best = {"accuracy": -np.inf, "epoch": -1, "state": None}
    epochs_run = 0
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train["label"]), generator=order_rng).to(device)
        for i in range(0, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size]
            loss = model.loss({k: v[idx] for k, v in train.items()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs_run = epoch + 1
        accuracy = _accuracy(model, test, settings.batch_size)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(test_acc=f"{accuracy:.3f}")
        if accuracy > best["accuracy"]:
            best = {"accuracy": accuracy, "epoch": epoch + 1, "state": model.state_dict()}
            best["state"] = copy.deepcopy(best["state"])
        if accuracy == 1.0:
            break
    model.load_state_dict(best["state"])
    info = {
        "best_epoch": best["epoch"],
        "best_test_accuracy": best["accuracy"],
        "epochs_run": epochs_run,
    }
    return model.cpu().eval(), info


def official_run(
    reference: np.ndarray,
    generated: np.ndarray,
    settings: OfficialSettings = OfficialSettings(),
    seed: int = 0,
    device=None,
    progress=None,
) -> dict:
    """One run of the ``calochallenge`` protocol on input vectors (N, d) of each class.

    Returns ``auc`` and ``jsd`` (calibrated, validation split; JSD not clipped), ``accuracy``
    (calibrated output rounded, validation split), ``auc_uncalibrated``, ``jsd_uncalibrated``,
    ``best_epoch``, ``best_test_accuracy``, ``epochs_run``, ``seed``.
    """
    split = official_split(reference, generated, settings.split, np.random.default_rng(seed))
    model, info = train_official(split, settings, seed, device, progress)
    test, val = _batch(*split["test"]), _batch(*split["val"])
    # the evaluator calibrates on its test split and scores the held-out validation split
    m = calibrated_metrics(
        model.predict_proba(test, settings.batch_size),
        split["test"][1],
        model.predict_proba(val, settings.batch_size),
        split["val"][1],
    )
    return {
        "auc": m["auc"],
        "jsd": m["jsd_raw"],
        "accuracy": m["test_accuracy"],
        "auc_uncalibrated": m["auc_uncalibrated"],
        "jsd_uncalibrated": m["jsd_uncalibrated"],
        **info,
        "seed": seed,
    }


class _VectorDataset(torch.utils.data.Dataset):
    """Labelled input vectors served a whole batch at a time (``__getitems__``), float32; with
    per-row weights also ``"weight"`` (the float64 weights kept as :attr:`sample_weights`)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None):
        self.tensors = _batch(x, y, torch.float32)
        self.sample_weights = None if w is None else np.asarray(w, dtype=np.float64)
        if w is not None:
            self.tensors["weight"] = torch.as_tensor(self.sample_weights, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}

    def effective_sample_size(self) -> float:
        """ESS of the generated class's weights."""
        generated = self.tensors["label"].numpy() == GENERATED_LABEL
        return effective_sample_size(self.sample_weights[generated])


class VectorDataModule(L.LightningDataModule):
    """The splits of :func:`balanced_vector_split` for a Lightning fit (shuffled training batches)."""

    def __init__(self, split: Split, batch_size: int = 1000, seed: int = 0):
        super().__init__()
        self.datasets = {name: _VectorDataset(*xy) for name, xy in split.items()}
        self.batch_size, self.seed = batch_size, seed

    def _loader(self, name: str, shuffle: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=lambda batch: batch,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def split_batch(self, name: str) -> dict[str, torch.Tensor]:
        """One split as a single batch."""
        return self.datasets[name].tensors


def standardised(split: Split) -> Split:
    """Every split's inputs centred on the training split's mean and divided by the largest
    |deviation| from it in the training split, per column (a constant column is only centred;
    :func:`caloflow.models.classifiers.centre_and_scale`); weights, if any, pass through.

    The raw inputs span many orders of magnitude (voxel fractions ~ 1e-6 next to log10 E_inc ~ 6),
    which slows the converged protocol's network down enough for early stopping to end it before it
    has learnt; dividing by the standard deviation instead blows up the rare non-zero values of
    mostly empty voxels. On a 5 % shift of one layer's energy (20k dataset-1 photons each) cls-high
    reached AUC 0.536 raw, 0.583 with the standard deviation and 0.762 with this scaling.
    """
    mean, scale = centre_and_scale(split["train"][0])
    return {name: ((x - mean) / scale, *rest) for name, (x, *rest) in split.items()}


def converged_run(
    reference: np.ndarray,
    generated: np.ndarray,
    seed: int = 0,
    epochs: int | None = None,
    max_epochs: int | None = None,
    patience: int | None = None,
    batch_size: int = 1000,
    lr: float = 5e-4,
    log_dir=None,
    name: str = "classifier",
    version: str | None = None,
    progress=None,
    weights: np.ndarray | None = None,
) -> dict:
    """One run of the ``converged`` protocol (module docstring); ``epochs``: a fixed number of
    epochs without early stopping. ``weights`` (one per generated row): the weighted test of
    :mod:`caloflow.evaluate.classification` (weighted loss, early stopping, calibration, AUC and
    JSD; the classes of every split of equal total weight). Returns the metrics of
    :func:`caloflow.evaluate.classification.run_classifier` (with weights also ``weighted`` and
    ``ess``, the effective sample size of the generated weights per split)."""
    split = balanced_vector_split(
        reference, generated, SPLIT_FRACTIONS, np.random.default_rng(seed), weights
    )
    dm = VectorDataModule(standardised(split), batch_size, seed)
    n_train = len(dm.datasets["train"])
    schedule = (
        Schedule.fixed(n_train, batch_size, epochs)
        if epochs is not None
        else Schedule.converging(n_train, batch_size, "dnn", max_epochs, patience)
    )
    L.seed_everything(seed, verbose=False)
    model = ShowerClassifier("vector", lr=lr, backbone_args={"n_inputs": reference.shape[1]})
    fitted = fit_classifier(
        model, dm, schedule, log_dir, name, version, progress, encode_inputs=False
    )
    val, test = dm.split_batch("val"), dm.split_batch("test")
    sample_weights = (
        {}
        if weights is None
        else {
            "w_val": dm.datasets["val"].sample_weights,
            "w_test": dm.datasets["test"].sample_weights,
        }
    )
    metrics = held_out_metrics(fitted["model"], val, test, **sample_weights)
    metrics.update(fitted["info"], seed=seed)
    if weights is not None:
        ess = {k: ds.effective_sample_size() for k, ds in dm.datasets.items()}
        metrics.update(weighted=True, ess=ess)
    return metrics


def _summary(results: list[dict]) -> dict:
    out: dict = {}
    for key in ("auc", "jsd"):
        values = np.array([r[key] for r in results])
        out[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out


def challenge_classifier_test(
    reference: Showers,
    generated: Showers,
    geometry: Geometry,
    kind: str,
    protocol: str = "converged",
    runs: int = 1,
    seed: int = 0,
    min_energy_mev: float | None = None,
    epochs: int | None = None,
    max_epochs: int | None = None,
    patience: int | None = None,
    settings: OfficialSettings = OfficialSettings(),
    log_dir=None,
    name: str = "classifier",
    progress=None,
    device=None,
    batch_size: int = 1000,
    weights: np.ndarray | None = None,
) -> dict:
    """``runs`` classifiers (seeds ``seed, seed + 1, ...``) of ``kind`` (``cls-low``,
    ``cls-low-normed``, ``cls-high``) under ``protocol`` between two sets of showers (voxels MeV,
    energy GeV) of ``geometry``, after the voxel threshold ``min_energy_mev`` (default: the
    geometry's).

    ``epochs`` replaces the official 50 epochs (``calochallenge``) or gives a fixed schedule
    without early stopping (``converged``); ``max_epochs`` and ``patience`` bound the converging one;
    ``batch_size`` is the ``converged`` protocol's (the official one is in ``settings``).
    ``weights`` (one per generated shower, e.g. DCTR weights; ``converged`` only): the weighted
    test (:func:`converged_run`).

    Returns ``{"protocol", "input", "auc": {"mean", "std"}, "jsd": {"mean", "std"}, "data":
    {"n_per_class", "n_inputs", "batch_size"}, "settings", "runs": [per-run metrics]}``, plus
    ``"converged"`` (every run converged) for the ``converged`` protocol, and with weights
    ``"weighted": True`` and ``"ess"`` (mean over runs of the generated weights' effective sample
    size per split).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}, choose from {', '.join(PROTOCOLS)}")
    if weights is not None and protocol != "converged":
        raise ValueError("weighted showers need the converged protocol")
    if weights is not None and len(weights) != len(generated):
        raise ValueError(f"{len(weights)} weights for {len(generated)} generated showers")
    ref_x = classifier_inputs(reference.voxels, reference.energy, geometry, kind, min_energy_mev)
    gen_x = classifier_inputs(generated.voxels, generated.energy, geometry, kind, min_energy_mev)
    run_settings = settings if epochs is None else _with_epochs(settings, epochs)
    results = []
    for r in range(runs):
        if protocol == "calochallenge":
            results.append(official_run(ref_x, gen_x, run_settings, seed + r, device, progress))
        else:
            results.append(
                converged_run(
                    ref_x, gen_x, seed + r, epochs, max_epochs, patience, batch_size,
                    log_dir=log_dir, name=name, version=f"run{r}", progress=progress,
                    weights=weights,
                )
            )  # fmt: skip
    out = {"protocol": protocol, "input": kind, **_summary(results)}
    if protocol == "converged":
        out["converged"] = all(r["converged"] for r in results)
        out["settings"] = {"split": list(SPLIT_FRACTIONS), "batch_size": batch_size, "lr": 5e-4}
    else:
        out["settings"] = asdict(run_settings)
    if weights is not None:
        out["weighted"] = True
        out["ess"] = {k: float(np.mean([r["ess"][k] for r in results])) for k in results[0]["ess"]}
    out["data"] = {
        "n_per_class": min(len(ref_x), len(gen_x)),
        "n_inputs": int(ref_x.shape[1]),
        "batch_size": out["settings"]["batch_size"],
    }
    out["runs"] = results
    return out


def _with_epochs(settings: OfficialSettings, epochs: int) -> OfficialSettings:
    return OfficialSettings(**{**asdict(settings), "epochs": int(epochs)})


__all__ = [
    "PROTOCOLS",
    "OfficialSettings",
    "official_split",
    "balanced_vector_split",
    "standardised",
    "train_official",
    "official_run",
    "VectorDataModule",
    "converged_run",
    "challenge_classifier_test",
]
