"""The configs of ``python -m refine.laser``: jsonargparse, in the class_path / init_args style of training.

A config (``caloflow/configs/laser/TOY.yaml``) names the toy and the sample sizes, the three
LightningModules as ``{class_path, init_args}`` and plain sections for their trainings and for HMC::

    toy: gaussians                    # gaussians | donut | rings
    n_train: 480000                   # truth points for the baseline and the classifier
    n_eval: 2000000                   # points per method for the scores
    bins: 100                         # histogram bins per axis
    baseline: {class_path: refine.toys.RealNVPBaseline, init_args: {n_blocks: 12, ...}}
    baseline_training: {epochs: 20, batch_size: 2000}
    classifier: {class_path: caloflow.models.ShowerClassifier,
                 init_args: {backbone: mlp, lr: 1.0e-3, backbone_args: {hidden: 96, n_hidden: 8}}}
    classifier_training: {epochs: 15, batch_size: 4000, clip: null}
    hmc: {chains: 20000, step_size: 0.04, n_leapfrog: 10, burn_in: 10, init: weighted, clip: null}
    refiner: {class_path: refine.gan.WeightedGANRefiner, init_args: {aux_dim: 4, ...}}
    refiner_training: {epochs: 63, batch_size: 1000}
    flow_refiner: {class_path: refine.flow_refiner.WeightedFlowRefiner, init_args: {n_blocks: 8, ...}}
    flow_refiner_training: {epochs: 20, batch_size: 1000}
    quick: {n_train: 100000, baseline_training: {epochs: 12}, ...}

Init arguments that follow from the data are set by the protocol, not the config: the baseline's
``n_features``/``shift``/``scale``, the classifier backbone's ``n_features``/``shift``/``scale``,
the refiners' ``latent_dim`` (and ``context_dim``: the toys' refiners are unconditional).
``quick`` is a partial config in the same format, merged over the rest by ``--quick``
(jsonargparse's merge of a second config: ``init_args`` alone update the class already chosen).
Types are checked, unknown keys rejected; every error is reported as one line
naming the key (:class:`ConfigError`); so are values of the right type that no run can use
(a learning rate <= 0, a size < 1, a NaN or infinite step, ...: :func:`_check_values`), all before
any training.

The shower config (``caloflow/configs/laser/showers.yaml``, ``python -m refine.laser --flow1 ...``)
has its own parser (:func:`shower_config_parser`, :func:`parse_shower_config`) in the same style:
the refinement/evaluation split, the generation batch size, the weight classifier (a
``ShowerClassifier`` on showers), rejection sampling, HMC, the conditional refiner and the
evaluation; the refiner is :class:`refine.gan.WeightedGANRefiner` or
:class:`refine.flow_refiner.WeightedFlowRefiner` (its ``class_path``), and its ``latent_dim``,
``aux_dim``, ``context_dim``, ``residual`` and ``zero_init`` follow from the model (both start as
the identity, Phi(y, E) = y).
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt

from caloflow.configs import CONFIG_DIR as SHIPPED_CONFIGS

TOY_NAMES = ("gaussians", "donut", "rings")
#: the shipped LaSeR configs (``caloflow/configs/laser``, installed with the package)
CONFIG_DIR = SHIPPED_CONFIGS / "laser"
#: init arguments the protocol sets from the data (skipped in the configs)
DATA_ARGS = {
    "baseline": {"n_features", "shift", "scale"},
    "classifier": {
        "preprocessing"
    },  # the voxel preprocessing of the dnn/cnn backbones: unused on points
    "refiner": {"latent_dim", "context_dim"},  # the toys' refiners are unconditional
    "flow_refiner": {"latent_dim", "context_dim"},
}
BACKBONE_DATA_ARGS = {"n_features", "shift", "scale"}


class ConfigError(ValueError):
    """A bad config: one line naming the file and the key."""


@dataclass
class Training:
    """One Lightning training: ``epochs`` over the data in mini-batches of ``batch_size``."""

    epochs: PositiveInt
    batch_size: PositiveInt


@dataclass
class ClassifierTraining(Training):
    """The classifier's training, and ``clip``: an optional upper bound on the weights w = exp(logit)."""

    clip: Optional[PositiveFloat] = None


@dataclass
class HMCOptions:
    """Hamiltonian Monte Carlo of log N(z) + log w(g(z)) (:func:`refine.mcmc.hmc`).

    ``init``: ``weighted`` starts the chains from weight-resampled latent points, ``prior`` from
    N(0, I); ``clip``: cap on w inside HMC (default: the classifier's clip).
    """

    chains: PositiveInt
    step_size: PositiveFloat
    n_leapfrog: PositiveInt
    burn_in: NonNegativeInt
    init: Literal["weighted", "prior"] = "weighted"
    clip: Optional[PositiveFloat] = None


@functools.lru_cache(maxsize=1)
def config_parser():
    """The jsonargparse parser of a laser config (``--config FILE`` takes a path or YAML text)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from caloflow.models import ShowerClassifier
    from refine.flow_refiner import WeightedFlowRefiner
    from refine.gan import WeightedGANRefiner
    from refine.toys import RealNVPBaseline

    p = ArgumentParser(prog="refine.laser config", exit_on_error=False, default_meta=False)
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--toy", type=Literal[TOY_NAMES], required=True, help="which 2D toy")
    p.add_argument(
        "--n_train",
        type=PositiveInt,
        required=True,
        help="truth points for baseline and classifier",
    )
    p.add_argument(
        "--n_eval", type=PositiveInt, required=True, help="points per method for the scores"
    )
    p.add_argument("--bins", type=PositiveInt, required=True, help="histogram bins per axis")
    p.add_subclass_arguments(RealNVPBaseline, "baseline", skip=DATA_ARGS["baseline"], required=True)
    p.add_class_arguments(Training, "baseline_training")
    p.add_subclass_arguments(
        ShowerClassifier, "classifier", skip=DATA_ARGS["classifier"], required=True
    )
    p.add_class_arguments(ClassifierTraining, "classifier_training")
    p.add_class_arguments(HMCOptions, "hmc")
    p.add_subclass_arguments(
        WeightedGANRefiner, "refiner", skip=DATA_ARGS["refiner"], required=True
    )
    p.add_class_arguments(Training, "refiner_training")
    p.add_subclass_arguments(
        WeightedFlowRefiner, "flow_refiner", skip=DATA_ARGS["flow_refiner"], required=True
    )
    p.add_class_arguments(Training, "flow_refiner_training")
    p.add_argument(
        "--quick",
        type=Optional[dict],
        default=None,
        help="partial config merged over the rest by --quick",
    )
    return p


@functools.lru_cache(maxsize=1)
def _backbone_parser():
    """The ``mlp`` backbone's arguments a config may set (``classifier.init_args.backbone_args``)."""
    from jsonargparse import ArgumentParser

    from caloflow.models.classifiers import PointMLP

    p = ArgumentParser(exit_on_error=False, default_meta=False)
    p.add_class_arguments(PointMLP, skip=BACKBONE_DATA_ARGS)
    return p


def one_line(message: str, *prefix: str) -> str:
    """jsonargparse's (nested, multi-line) error as one line ``key.path: problem`` (the path below ``prefix``)."""
    keys: list[str] = list(prefix)
    problems: list[str] = []
    for raw in str(message).splitlines():
        line = raw.strip().removeprefix("- ").strip()
        key = re.fullmatch(r'Parser key "([^"]+)":?', line)
        if key:
            keys.append(key.group(1))
        elif line.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif line and not line.startswith(
            (
                "Does not validate against",
                "Subtypes:",
                "Errors:",
                "Given value",
                "Expected a <class 'NoneType'>",
            )
        ):
            group = re.fullmatch(r"Group '([^']+)' does not accept option '([^']+)'\.?", line)
            if group:
                keys.append(group.group(1))
                line = f"unknown key '{group.group(2)}'"
            line = re.sub(r"^Option '([^']+)' is not accepted$", r"unknown key '\1'", line)
            line = re.sub(r"<class '([\w.]+)'>", r"\1", line)
            line = re.sub(r"^Expected an? (.+?)\. Got value: (.*)$", r"expected \1, got \2", line)
            line = re.sub(
                r"^Not of type (\w+): ?(.*?) ?does not conform to restriction (.+)$",
                _restriction,
                line,
            )
            line = re.sub(r"^the following arguments are required: ", "missing key(s): ", line)
            problems.append(line)
    where = ".".join(keys)
    text = "; ".join(problems) or "invalid"
    return f"{where}: {text}" if where else text


def _restriction(match: re.Match) -> str:
    """jsonargparse's "Not of type PositiveInt: 0 does not conform to restriction v>0" in plain words."""
    kind, value, restriction = match.groups()
    what = "an integer" if kind.endswith("Int") else "a number"
    bound = re.sub(r"^v\s*(>=|<=|>|<)\s*", r"\1 ", restriction.strip())
    return f"must be {what} {bound}" + (f", got {value}" if value else "")


def _check_values(cfg, where: str) -> None:
    """Values of the right type that no run can use (checked before any training), each refused in
    one line naming the key: the classes' hyperparameters by name (the rules of every caloflow model,
    :func:`caloflow.checks.hyperparameter_problems`: learning rates > 0, decays in (0, 1], sizes
    >= 1, everything finite), a non-finite HMC step or weight clip, and histograms of fewer than 2
    bins per axis (every method would score 0)."""
    _check_trainable(cfg, where, ("baseline", "classifier", "refiner", "flow_refiner"))
    if cfg.bins < 2:
        raise ConfigError(
            f"{where}: bins: must be at least 2 (one bin scores every method 0), got {cfg.bins}"
        )


def _parse(args: list[str], where: str, parser=None):
    from jsonargparse import ArgumentError

    try:
        return (parser or config_parser()).parse_args(args)
    except (ArgumentError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {one_line(str(e))}") from None


def _check_backbone_args(init, parser, where: str) -> None:
    """``classifier.init_args.backbone_args``: a mapping of the backbone's own arguments (checked by
    ``parser``), stored back as a plain dict; each problem one :class:`ConfigError` line."""
    from jsonargparse import ArgumentError

    args = init.backbone_args or {}
    if not isinstance(args, dict):
        raise ConfigError(
            f"{where}: classifier.init_args.backbone_args: expected a mapping, got {args!r}"
        )
    try:
        init.backbone_args = parser.parse_object(args).as_dict()
    except (ArgumentError, TypeError, ValueError) as e:
        raise ConfigError(
            f"{where}: {one_line(str(e), 'classifier', 'init_args', 'backbone_args')}"
        ) from None


def _check_classifier(cfg, where: str) -> None:
    """refine classifies points: the ``mlp`` backbone, with only its own arguments in ``backbone_args``."""
    init = cfg.classifier.init_args
    if init.backbone != "mlp":
        raise ConfigError(
            f"{where}: classifier.init_args.backbone: refine classifies 2D points, use 'mlp', "
            f"got '{init.backbone}'"
        )
    _check_backbone_args(init, _backbone_parser(), where)


def _read_mapping(path: Path) -> dict:
    """The YAML mapping at ``path``; :class:`ConfigError` when it is not YAML or not a mapping."""
    import yaml

    try:
        text = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(text, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return text


def _parse_with_quick(path: Path, quick: bool, parser=None):
    """``path`` parsed by ``parser`` (default: the toys'), with its ``quick`` section merged in when
    ``quick`` is set (then ``quick`` is None); returns the config and how errors name it."""
    import yaml

    cfg, where = _parse(["--config", str(path)], str(path), parser), str(path)
    if quick and cfg.quick:
        where = f"{path} (with its quick section)"
        cfg = _parse(["--config", str(path), "--config", yaml.safe_dump(cfg.quick)], where, parser)
        cfg.quick = None
    return cfg, where


def parse_config(path: str | Path, quick: bool = False):
    """The config at ``path`` (a jsonargparse Namespace), with its ``quick`` section merged in when
    ``quick`` is set (then ``quick`` is None). Raises :class:`ConfigError`."""
    path = Path(path)
    _read_mapping(path)
    cfg, where = _parse_with_quick(path, quick)
    _check_classifier(cfg, str(path))
    _check_values(cfg, where)
    return cfg


def dump_config(cfg) -> str:
    """``cfg`` as YAML in the format it was read from (what ``--print_config`` prints)."""
    parser = shower_config_parser() if "split" in cfg else config_parser()
    # parsed again from plain values: the checks turn nested mappings (backbone_args) into Namespaces,
    # which the dump's validation would refuse; this way the printed config is validated as it is printed
    return parser.dump(parser.parse_object(cfg.as_dict()), skip_none=False)


def build(spec, **data_args: Any):
    """Instantiate a ``{class_path, init_args}`` entry, adding the init arguments taken from the data."""
    return class_of(spec)(**init_args(spec), **data_args)


def class_of(spec) -> type:
    """The class named by ``spec.class_path``."""
    module, name = spec.class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def init_args(spec) -> dict[str, Any]:
    """``spec.init_args`` as a plain dict."""
    from jsonargparse import Namespace

    return (
        spec.init_args.as_dict()
        if isinstance(spec.init_args, Namespace)
        else dict(spec.init_args or {})
    )


# --------------------------------------------------------------------------- the shower config

#: refiner arguments the shower protocol sets: Phi(y, E) = y + MLP([y, c(E)]) on the model's latent space
SHOWER_REFINER_ARGS = {"latent_dim", "aux_dim", "context_dim", "residual", "zero_init"}
#: the classifiers that read showers (the ``mlp`` backbone reads points)
SHOWER_BACKBONES = ("dnn", "cnn", "features")


@dataclass
class ShowerSplit:
    """The reference file split by a seeded permutation: ``refinement_fraction`` of its showers refine,
    the rest evaluate; ``n_refine`` / ``n_eval`` cap how many of each split are used (None: all)."""

    refinement_fraction: OpenUnitInterval = 0.5
    n_refine: Optional[PositiveInt] = None
    n_eval: Optional[PositiveInt] = None


@dataclass
class WeightTraining:
    """The weight classifier's training: mini-batches of ``batch_size``, ``val_fraction`` of the
    refinement split for early stopping, the converging schedule of the classifier test unless
    ``max_epochs`` / ``patience`` are given, ``clip``: an optional upper bound on w = exp(logit), and
    ``challenge_input``: what the weight classifier reads for a model of a polar (CaloChallenge,
    e.g. dataset-1) geometry, one of the evaluator's classifier inputs
    (:func:`caloflow.radial_features.classifier_inputs`; CaloGAN models ignore it)."""

    batch_size: PositiveInt = 1000
    val_fraction: OpenUnitInterval = 0.2
    max_epochs: Optional[PositiveInt] = None
    patience: Optional[PositiveInt] = None
    clip: Optional[PositiveFloat] = None
    challenge_input: Literal["cls-low", "cls-low-normed", "cls-high"] = "cls-low"


@dataclass
class RejectionOptions:
    """Rejection sampling at fixed E_inc: accept with min(1, w / w_max), w_max the ``w_max_quantile``
    of the training weights; refuse after ``max_rounds`` rejected proposals for one energy."""

    w_max_quantile: OpenUnitInterval = 0.99
    max_rounds: PositiveInt = 1000


@dataclass
class ShowerHMCOptions:
    """HMC of log N(z) + log w(g(z | E), E): one chain per requested energy for the first ``n_hmc``
    evaluation energies, ``burn_in`` trajectories of ``n_leapfrog`` steps discarded, the next state
    kept; the step starts at ``step_size`` and, with ``target_acceptance``, adapts per chain during
    burn-in (:func:`refine.mcmc.hmc`); ``clip``: cap on w inside HMC (default: the classifier's clip);
    ``chunk_size``: chains per gradient evaluation (None: all at once; same numbers up to rounding)."""

    n_hmc: PositiveInt = 500
    step_size: PositiveFloat = 0.02
    n_leapfrog: PositiveInt = 10
    burn_in: NonNegativeInt = 20
    target_acceptance: Optional[OpenUnitInterval] = 0.8
    clip: Optional[PositiveFloat] = None
    chunk_size: Optional[PositiveInt] = None


@dataclass
class ShowerRefinerTraining(Training):
    """The shower refiner's training: ``epochs`` over its weighted latent points in mini-batches of
    ``batch_size``. The points are the latents of the weight classifier's generated showers plus
    ``draws_per_energy - 1`` further prior draws z ~ N(0, I) at each refinement energy, all weighted
    by w(g(z | E), E): the weights are a function on the whole latent space, and more weighted points
    let the discriminator learn it instead of memorising a finite set. ``val_fraction`` (flow refiner
    only): the share of the points held out; the refiner is kept at its lowest held-out weighted NLL,
    or at its start when no epoch beats it there."""

    draws_per_energy: PositiveInt = 1
    val_fraction: float = 0.0


@dataclass
class EvaluationOptions:
    """The held-out classifier tests: ``runs`` classifiers per method and input, trained to convergence
    (early stopping) unless ``epochs`` fixes their length; ``max_epochs`` / ``patience`` override the
    converging schedule; mini-batches of ``batch_size``."""

    runs: PositiveInt = 5
    epochs: Optional[PositiveInt] = None
    max_epochs: Optional[PositiveInt] = None
    patience: Optional[PositiveInt] = None
    batch_size: PositiveInt = 1000


@functools.lru_cache(maxsize=1)
def shower_config_parser():
    """The jsonargparse parser of the shower config (``caloflow/configs/laser/showers.yaml``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from caloflow.models import ShowerClassifier
    from refine.flow_refiner import WeightedFlowRefiner
    from refine.gan import WeightedGANRefiner

    p = ArgumentParser(prog="refine.laser showers config", exit_on_error=False, default_meta=False)
    p.add_argument("--config", action=ActionConfigFile)
    p.add_class_arguments(ShowerSplit, "split")
    p.add_argument(
        "--batch_size",
        type=PositiveInt,
        default=10_000,
        help="generation batch (caloflow generate --batch-size)",
    )
    p.add_subclass_arguments(ShowerClassifier, "classifier", required=True)
    p.add_class_arguments(WeightTraining, "classifier_training")
    p.add_class_arguments(RejectionOptions, "rejection")
    p.add_class_arguments(ShowerHMCOptions, "hmc")
    # the refiner is the weighted GAN or the weighted-likelihood flow, chosen by its class_path
    p.add_subclass_arguments(
        (WeightedGANRefiner, WeightedFlowRefiner),
        "refiner",
        skip=SHOWER_REFINER_ARGS,
        required=True,
    )
    p.add_class_arguments(ShowerRefinerTraining, "refiner_training")
    p.add_class_arguments(EvaluationOptions, "evaluation")
    p.add_argument(
        "--quick",
        type=Optional[dict],
        default=None,
        help="partial config merged over the rest by --quick",
    )
    return p


@functools.lru_cache(maxsize=4)
def _shower_backbone_parser(backbone: str):
    """The arguments of a shower backbone a config may set (``classifier.init_args.backbone_args``)."""
    from jsonargparse import ArgumentParser

    from caloflow.models.classifiers import BACKBONES

    p = ArgumentParser(exit_on_error=False, default_meta=False)
    p.add_class_arguments(BACKBONES[backbone], skip={"preprocessing"})
    return p


def _check_shower_classifier(cfg, where: str) -> None:
    """The weight classifier reads showers: a ``dnn``, ``cnn`` or ``features`` backbone, with only its
    own arguments in ``backbone_args``."""
    init = cfg.classifier.init_args
    if init.backbone not in SHOWER_BACKBONES:
        raise ConfigError(
            f"{where}: classifier.init_args.backbone: the weights classify showers, use one of "
            f"{', '.join(SHOWER_BACKBONES)}, got '{init.backbone}'"
        )
    _check_backbone_args(init, _shower_backbone_parser(init.backbone), where)


def _check_trainable(cfg, where: str, sections: tuple[str, ...]) -> None:
    """The checks toy and shower configs share: the ``sections``' class hyperparameters by name
    (:func:`caloflow.checks.hyperparameter_problems`) and a finite HMC step and weight clips."""
    import math

    from caloflow.checks import hyperparameter_problems

    for section in sections:
        for name, problem in hyperparameter_problems(init_args(cfg[section])):
            raise ConfigError(f"{where}: {section}.init_args.{name}: {problem}")
    for key, value in (
        ("hmc.step_size", cfg.hmc.step_size),
        ("hmc.clip", cfg.hmc.clip),
        ("classifier_training.clip", cfg.classifier_training.clip),
    ):
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{where}: {key}: must be finite, got {value}")


def _check_shower_values(cfg, where: str) -> None:
    """Values of the right type that no shower run can use, each refused in one line naming the key;
    a refiner validation share must be in [0, 1) and needs the flow refiner (the GAN has no held-out loss)."""
    _check_trainable(cfg, where, ("classifier", "refiner"))
    share = cfg.refiner_training.val_fraction
    if not 0 <= share < 1:
        raise ConfigError(f"{where}: refiner_training.val_fraction: must be in [0, 1), got {share}")
    from refine.flow_refiner import WeightedFlowRefiner

    if share > 0 and not issubclass(class_of(cfg.refiner), WeightedFlowRefiner):
        raise ConfigError(
            f"{where}: refiner_training.val_fraction: a held-out share needs the flow refiner "
            f"(refine.flow_refiner.WeightedFlowRefiner), got {cfg.refiner.class_path}"
        )


def parse_shower_config(path: str | Path, quick: bool = False):
    """The shower config at ``path`` (a jsonargparse Namespace), with its ``quick`` section merged in
    when ``quick`` is set (then ``quick`` is None). Raises :class:`ConfigError` (one line)."""
    path = Path(path)
    text = _read_mapping(path)
    if "toy" in text:
        raise ConfigError(
            f"{path}: a config of the 2D toys (it names toy '{text['toy']}'), not of showers"
        )
    cfg, where = _parse_with_quick(path, quick, shower_config_parser())
    _check_shower_classifier(cfg, str(path))
    _check_shower_values(cfg, where)
    return _plain_namespace(cfg)


def _plain(value: Any) -> Any:
    """``value`` with jsonargparse's restricted numbers (PositiveInt, OpenUnitInterval, ...) as plain
    int / float, so that they can be saved in checkpoints that ``torch.load(weights_only=True)`` reads."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _plain_namespace(cfg):
    """``cfg`` (a jsonargparse Namespace) with plain int / float values (:func:`_plain`)."""
    from jsonargparse import dict_to_namespace

    return dict_to_namespace(_plain(cfg.as_dict()))


__all__ = [
    "TOY_NAMES",
    "CONFIG_DIR",
    "DATA_ARGS",
    "BACKBONE_DATA_ARGS",
    "ConfigError",
    "Training",
    "ClassifierTraining",
    "HMCOptions",
    "config_parser",
    "one_line",
    "parse_config",
    "dump_config",
    "build",
    "class_of",
    "init_args",
    "SHOWER_REFINER_ARGS",
    "SHOWER_BACKBONES",
    "ShowerSplit",
    "WeightTraining",
    "RejectionOptions",
    "ShowerHMCOptions",
    "ShowerRefinerTraining",
    "EvaluationOptions",
    "shower_config_parser",
    "parse_shower_config",
]
