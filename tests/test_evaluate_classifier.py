"""The classifier test of appendix A: architectures, inputs, data split, calibration, and AUCs on real data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caloflow.data.io import Showers
from caloflow.data.simulate import simulate
from caloflow.evaluate.classification import (
    calibrated_metrics,
    classifier_data,
    classifier_test,
    jsd_from_bce,
)
from caloflow.geometry import join_layers, split_layers
from caloflow.models.classifiers import CNN, DNN, ShowerClassifier, classifier_inputs
from caloflow.nn import count_parameters

N_SHOWERS = 3000


@pytest.fixture(scope="module")
def reference() -> Showers:
    return simulate("eplus", N_SHOWERS, seed=11, progress=False)


@pytest.fixture(scope="module")
def independent() -> Showers:
    """A second, independent sample of the same distribution."""
    return simulate("eplus", N_SHOWERS, seed=12, progress=False)


def test_parameter_counts_of_appendix_a():
    assert count_parameters(DNN()) == 786_433
    assert count_parameters(CNN()) == 1_262_913
    assert count_parameters(ShowerClassifier("cnn")) == 1_262_913


def test_cnn_shapes():
    cnn = CNN()
    batch = {"voxels": torch.rand(2, 504), "energy": torch.tensor([10.0, 50.0])}
    assert cnn(batch).shape == (2,)
    # every calorimeter layer becomes 64 x 6 x 6 after the first pooling and 64 x 2 x 2 at the end
    for stack, shape in zip(cnn.stacks, ((3, 96), (12, 12), (12, 6))):
        h = torch.randn(2, 1, *shape)
        for i, module in enumerate(stack):
            h = module(h)
            if i == 4:
                assert h.shape == (2, 64, 6, 6)
        assert h.shape == (2, 64, 2, 2)


def test_inputs_of_appendix_a():
    layers = [np.zeros((1, 3, 96)), np.zeros((1, 12, 12)), np.zeros((1, 12, 6))]
    layers[0][0, 1, 10] = 2000.0  # 2 GeV
    layers[1][0, 4, 4] = 30000.0
    layers[1][0, 4, 5] = 10000.0
    voxels = join_layers(layers)
    energy = np.array([50.0])
    x = classifier_inputs(voxels, energy, "unnormalized").double()[0]
    assert x.shape == (508,)
    assert x[10 + 96] == pytest.approx(0.02, rel=1e-6)  # 2 GeV in units of 100 GeV
    assert x[504] == pytest.approx(math.log10(50 / 10), rel=1e-6)  # eq. (4.4)
    for i, e_mev in enumerate((2000.0, 40000.0, 0.0)):  # eq. (4.5), 1 keV = 1e-3 MeV
        assert x[505 + i] == pytest.approx(math.log10((e_mev + 1e-3) / 1e5) + 2, rel=1e-6)
    xn = classifier_inputs(voxels, energy, "normalized")[0].double()
    assert xn[:288].sum() == pytest.approx(1.0) and xn[288:432].sum() == pytest.approx(1.0)
    assert xn[288 + 4 * 12 + 4] == pytest.approx(0.75)
    assert xn[432:504].sum() == 0.0  # an empty layer stays zero
    xl = classifier_inputs(voxels, energy, "logit")[0].double()
    assert xl[0] == pytest.approx(math.log(1e-6 / (1 - 1e-6)) / 10, rel=1e-5)  # zero voxel
    u = 1e-6 + (1 - 2e-6) * 0.02
    assert xl[10 + 96] == pytest.approx(math.log(u / (1 - u)) / 10, rel=1e-5)
    with pytest.raises(ValueError):
        classifier_inputs(voxels, energy, "standardized")


def test_datamodule_balanced_split(reference, independent):
    dm = classifier_data(reference[:1000], independent[:700], seed=3)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 840, "val": 280, "test": 280}  # 60/20/20 of 2 x 700
    for split in dm.datasets.values():
        assert split.labels.sum().item() == len(split.labels) / 2  # balanced in every split
        assert split.noise == 0.0  # the classifier test judges the showers as they are
    # no shower of the reference (label 1) appears twice across the splits
    ref_rows = torch.cat([s.voxels[s.labels == 1] for s in dm.datasets.values()])
    assert len(torch.unique(ref_rows, dim=0)) == 700


def test_one_label_convention_reference_is_one(reference):
    """The classifier's logit is log p_ref / p_gen: high on reference showers after training."""
    brighter = Showers(reference.voxels[1000:2000] * 1.5, reference.energy[1000:2000])
    dm = classifier_data(reference[:1000], brighter, batch_size=200, seed=0)
    from caloflow.training import make_trainer

    model = ShowerClassifier("dnn", "unnormalized")
    make_trainer(20).fit(model, datamodule=dm)
    test = dm.datasets["test"].__getitems__(range(len(dm.datasets["test"])))
    p = model.predict_proba(test)
    assert p[test["label"].numpy() == 1].mean() > 0.7 > 0.3 > p[test["label"].numpy() == 0].mean()


def test_calibrated_metrics_limits():
    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 500)
    perfect = calibrated_metrics(y.copy(), y, y.copy(), y)
    assert perfect["auc"] == 1.0 and perfect["jsd"] == pytest.approx(1.0, abs=1e-5)
    noise = calibrated_metrics(rng.uniform(size=1000), y, rng.uniform(size=1000), y)
    assert 0.0 <= noise["jsd"] <= 0.02 and abs(noise["auc"] - 0.5) < 0.06
    assert jsd_from_bce(math.log(2)) == 0.0


@pytest.fixture(scope="module")
def large_pair() -> tuple[Showers, Showers]:
    """Two independent 8,000-shower samples of one distribution: 1,600 test showers per class, so a
    calibrated AUC of indistinguishable samples lies within 0.5 +- 0.03 (about 3 standard deviations)."""
    return simulate("eplus", 8000, seed=21, progress=False), simulate(
        "eplus", 8000, seed=22, progress=False
    )


@pytest.mark.parametrize("architecture", ["dnn", "features"])
def test_same_distribution_auc_is_half_after_convergence(large_pair, architecture, tmp_path):
    res = classifier_test(
        *large_pair,
        architecture,
        "unnormalized",
        runs=1,
        seed=0,
        patience=10,
        log_dir=tmp_path,
        name="same",
    )
    print(architecture, "same distribution:", res["auc"], res["jsd"], res["runs"][0]["epochs_run"])
    run = res["runs"][0]
    assert res["converged"] and run["stopped_early"] and run["best_epoch"] < run["max_epochs"]
    assert abs(res["auc"]["mean"] - 0.5) <= 0.03
    assert 0.0 <= run["jsd"] < 0.02
    # real TensorBoard event files with the training curves and the test metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "same" / "run0"))
    acc.Reload()
    assert {"train_loss", "val_loss", "val_acc", "val_auc", "test_auc", "test_jsd"} <= set(
        acc.Tags()["scalars"]
    )
    assert len(acc.Scalars("val_acc")) == run["epochs_run"]


def test_cnn_same_distribution_auc_is_half(reference, independent):
    """The appendix-A CNN costs ~8 ms per shower and step on one CPU thread: 2,000 showers per sample and a
    patience of one epoch (on indistinguishable samples the validation loss bottoms out at once)."""
    res = classifier_test(
        reference[:2000],
        independent[:2000],
        "cnn",
        "normalized",
        runs=1,
        seed=0,
        batch_size=250,
        patience=1,
    )
    print("cnn same distribution:", res["auc"], res["runs"][0]["epochs_run"])
    assert res["converged"] and abs(res["auc"]["mean"] - 0.5) <= 0.03


def _layer1_shifted(showers: Showers) -> Showers:
    layers = [x.copy() for x in split_layers(showers.voxels)]
    layers[1] = np.roll(layers[1], 1, axis=2)  # layer 1 shifted by one 40 mm cell in eta
    return Showers(join_layers(layers), showers.energy)


@pytest.mark.parametrize(
    "architecture,preprocessing", [("dnn", "normalized"), ("features", "high-level")]
)
def test_obvious_distortion_auc_near_one(reference, independent, architecture, preprocessing):
    res = classifier_test(
        reference,
        _layer1_shifted(independent),
        architecture,
        preprocessing,
        runs=1,
        seed=0,
        batch_size=200,
        patience=5,
    )
    print(architecture, "shifted layer 1:", res["auc"], res["jsd"])
    assert res["auc"]["mean"] > 0.95
    assert 0.5 < res["jsd"]["mean"] <= 1.0


def test_early_stopping_trains_longer_than_a_fixed_ten_epochs_and_sees_more(reference, independent):
    """On a small set (600 vs 600, one batch per epoch) ten epochs are ten updates: not converged."""
    different = Showers(
        independent.voxels[:600] * 1.05, independent.energy[:600]
    )  # 5 % too much energy
    fixed = classifier_test(
        reference[:600], different, "dnn", "unnormalized", runs=1, epochs=10, seed=0
    )
    converged = classifier_test(
        reference[:600], different, "dnn", "unnormalized", runs=1, seed=0, patience=30
    )
    print(
        "fixed 10:",
        fixed["auc"],
        "converged:",
        converged["auc"],
        converged["runs"][0]["epochs_run"],
    )
    assert not fixed["converged"] and converged["converged"]
    assert converged["runs"][0]["epochs_run"] > 10
    assert converged["auc"]["mean"] > fixed["auc"]["mean"] + 0.05


def test_schedule_keeps_the_papers_updates_on_small_data():
    from caloflow.evaluate.classification import PAPER_UPDATES, Schedule

    paper = Schedule.converging(120_000, 1000)  # 120 batches per epoch
    small = Schedule.converging(6_000, 1000)  # 6 batches per epoch
    assert paper.max_epochs == 120 and paper.patience == 10
    assert small.max_epochs * small.steps_per_epoch >= 2 * PAPER_UPDATES and small.patience == 200
    assert Schedule.fixed(6_000, 1000, 10).patience is None


def test_same_seed_same_numbers(reference, independent):
    kw = dict(
        architecture="dnn",
        preprocessing="logit",
        runs=1,
        epochs=3,
        seed=5,
        batch_size=500,
        max_showers=600,
    )
    a = classifier_test(reference, independent, **kw)
    b = classifier_test(reference, independent, **kw)
    assert a["runs"][0]["auc_uncalibrated"] == b["runs"][0]["auc_uncalibrated"]


def test_weight_classifiers_keep_the_epoch_of_the_lowest_validation_loss(
    reference, independent, tmp_path
):
    """``keep="val_loss"`` (the weights w = f / (1 - f) of refine) reloads the epoch whose logged validation
    BCE is lowest; the classifier test keeps the best accuracy. Read back from the real TensorBoard file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from caloflow.evaluate.classification import fit_classifier, schedule_for

    different = Showers(independent.voxels[:600] * 1.05, independent.energy[:600])
    dm = classifier_data(reference[:600], different, batch_size=100, seed=0)
    torch.manual_seed(0)
    fitted = fit_classifier(
        ShowerClassifier("dnn", "unnormalized"),
        dm,
        schedule_for(dm, "dnn", epochs=12),
        tmp_path,
        "weights",
        "",
        None,
        keep="val_loss",
    )
    events = EventAccumulator(str(tmp_path / "weights"))
    events.Reload()
    losses = [e.value for e in events.Scalars("val_loss")]
    assert len(losses) == 12 and fitted["info"]["epochs_run"] == 12
    assert fitted["info"]["best_epoch"] == int(np.argmin(losses)) + 1
    assert fitted["info"]["best_val_loss"] == pytest.approx(min(losses), rel=1e-6)
    with pytest.raises(ValueError, match="keep"):
        fit_classifier(
            ShowerClassifier("dnn"),
            dm,
            schedule_for(dm, "dnn", epochs=1),
            tmp_path,
            "x",
            "",
            None,
            keep="val_auc",
        )


@pytest.mark.parametrize(
    "architecture,preprocessing", [("dnn", "unnormalized"), ("features", "high-level")]
)
def test_inputs_encoded_once_train_the_same_classifier(
    reference, independent, architecture, preprocessing
):
    """The classifier test encodes its noise-free showers once (EncodedDataset); training on those
    inputs gives bit for bit the classifier that encodes every batch anew."""
    import caloflow.evaluate.classification as ct

    different = Showers(independent.voxels[:600] * 1.05, independent.energy[:600])

    def train(encode_inputs: bool):
        dm = classifier_data(reference[:600], different, batch_size=100, seed=0)
        torch.manual_seed(0)
        fitted = ct.fit_classifier(
            ShowerClassifier(architecture, preprocessing),
            dm,
            ct.schedule_for(dm, architecture, epochs=3),
            None,
            "",
            "",
            None,
            encode_inputs=encode_inputs,
        )
        return fitted["model"], dm

    (once, dm_once), (every, dm_every) = train(True), train(False)
    assert isinstance(dm_once.datasets["train"], ct.EncodedDataset)
    assert not isinstance(dm_every.datasets["train"], ct.EncodedDataset)
    for (name, a), (_, b) in zip(once.state_dict().items(), every.state_dict().items()):
        assert torch.equal(a, b), name
    test = ct._split_batch(dm_once, "test")
    assert once.input_key in test
    plain = {k: v for k, v in test.items() if not k.startswith("inputs:")}
    assert np.array_equal(once.predict_proba(test), once.predict_proba(plain))


def test_encoded_batches_serve_only_their_own_backbone(reference):
    """A batch encoded for one backbone is ignored by another, which encodes the showers itself;
    a dataset with noise (new inputs every epoch) is refused."""
    from caloflow.data.datamodule import ShowerDataset
    from caloflow.evaluate.classification import EncodedDataset

    showers = reference[:50]
    unnormalized, normalized = (
        ShowerClassifier("dnn", "unnormalized"),
        ShowerClassifier("dnn", "normalized"),
    )
    assert unnormalized.input_key == "inputs:dnn/unnormalized" != normalized.input_key
    batch = EncodedDataset(ShowerDataset(showers), unnormalized).__getitems__(range(50))
    assert torch.equal(
        batch[unnormalized.input_key], classifier_inputs(batch["voxels"], batch["energy"])
    )
    assert normalized.input_key not in batch
    assert torch.equal(
        normalized.logits(batch),
        normalized.logits({"voxels": batch["voxels"], "energy": batch["energy"]}),
    )
    with pytest.raises(ValueError, match="noise-free"):
        EncodedDataset(ShowerDataset(showers, noise_kev=1.0), unnormalized)
