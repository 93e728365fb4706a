"""``python -m refine.laser --flow1 F1 --flow2 F2 --reference REF --out DIR``: LaSeR on calorimeter showers.

The LaSeR protocol (arXiv:2106.00792, section 3) for a shower model g(z | E_inc), conditional on the
incident energy, measured on a held-out split of the reference file:

1. **Splits.** A seeded permutation of the reference rows gives a refinement split (default 50 %)
   and an evaluation split (``DIR/splits.json``). Every refinement step reads only refinement rows
   (by index, :func:`caloflow.data.io.read_rows`); the evaluation rows are read only by the
   evaluation, and their energies only once the refiner is trained and saved.
2. **Weights.** One unrefined shower x_i = g(z_i | E_i) per refinement shower at its energy E_i
   (latents z_i kept); a ShowerClassifier (label 1 = reference, 0 = generated; its input carries
   log10(E_inc / 10 GeV), eq. 4.4 of CaloFlow) trained with early stopping on a validation part of
   the refinement split. Both classes have the same energies, so f / (1 - f) estimates
   p_ref(x | E) / p_g(x | E): w(x, E) = exp(logit) (optionally clipped), attached to z_i.
3. **Refinement** of q(z | E) = N(z; 0, I) w(g(z | E), E) / Z_0(E) (eq. 3, per energy):
   (a) rejection sampling at fixed E: z ~ N(0, I), accepted with min(1, w / w_max);
   (b) HMC of log N(z) + log w(g(z | E), E), one chain per requested energy (gradients through the
   differentiable decode and the classifier);
   (c) the weighted-GAN refiner Phi(y, E) = y + MLP([y, c(E)]) (last layer zero: the identity at the
   start), trained with the paper's loss (only the real term weighted) on the weighted latent points
   (z_i, w_i, E_i) and on further prior draws at the refinement energies, weighted by the same
   classifier (``refiner_training.draws_per_energy``);
   (d) DCTR: the unrefined showers at the evaluation energies with their weights w.
4. **Evaluation** (:mod:`refine.shower_report`): every method's showers at the evaluation energies
   against the evaluation split with caloflow's classifier test (held-out AUC and JSD, converged,
   mean +- std over runs; DCTR weighted) and the separation powers of the features.

With ``--rounds K`` (the flow refiner) rounds k > 1 repeat steps 2 and 3c on the refined generator
(:func:`refinement_steps`), each round with its own LaSeR row (``laser-roundK``; the last is
``laser``). A method that cannot run on its weights is reported in its row
(:func:`attempt`, :class:`refine.failures.MethodFailed`) and the others go on.

Writes ``DIR/splits.json``, ``DIR/refiner.ckpt`` (and ``DIR/refiner-roundK.ckpt`` of earlier
rounds), ``DIR/showers/{unrefined,dctr,rejection,hmc,laser}.hdf5``,
``DIR/results.json``, ``DIR/table.md`` and TensorBoard logs under ``DIR/logs``. The unrefined and
the LaSeR showers are drawn as ``caloflow generate`` draws them (fresh ``torch.Generator`` seeded with
``--seed``, latents per batch of ``batch_size``), so ``caloflow generate --flow1 F1 --flow2 F2
[--refiner DIR/refiner.ckpt] --energies DIR/showers/unrefined.hdf5 --seed S --batch-size B``
writes the same showers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from caloflow.atomic import write_text_atomic
from caloflow.checks import check_not_an_input
from caloflow.errors import CaloflowError
from caloflow.evaluate.weights import weight_summary
from refine.failures import MethodFailed
from refine.stages import Stages

if TYPE_CHECKING:
    import torch

METHODS = ("unrefined", "dctr", "rejection", "hmc", "laser")
OUTPUT_FILES = (
    "splits.json",
    "refiner.ckpt",
    "results.json",
    "table.md",
    *(f"showers/{m}.hdf5" for m in METHODS),
)
#: the fewest showers of each split a run can use (the classifier tests need 10 of each class)
MIN_SPLIT = 20
#: independent random streams of the steps (seeds derived from --seed)
STREAMS = {
    "weights": 1,
    "classifier": 2,
    "refiner": 3,
    "rejection": 4,
    "hmc": 5,
    "refiner_points": 6,
    "refiner_split": 7,
}


# --------------------------------------------------------------------------- inputs


@dataclass
class ShowerInputs:
    """The checked inputs: the generator kind, its checkpoints and loaded models, the reference file."""

    kind: str  # caloflow | calogan
    checkpoints: dict[str, str]  # option name without -- -> path
    models: tuple
    reference: Path
    n_reference: int
    geometry: Any = (
        None  # the detector of the model and of the reference (caloflow.geometry.Geometry)
    )


def check_inputs(
    checkpoints: dict[str, str | None], reference: str | None, out: Path, config: str | None = None
) -> ShowerInputs:
    """Every input checked before any work, each problem one :class:`CaloflowError` line naming its
    option: the model (``checkpoints``: ``flow1``, ``flow2``, ``calogan`` -> path or None), the outputs
    under ``out`` against the inputs, the ``reference`` file (keys, shapes), the checkpoints
    (readable, of the right model class, finite; both flows and the reference of one geometry)."""
    from caloflow.data.io import count_showers

    calogan, flow1, flow2 = (checkpoints.get(k) for k in ("calogan", "flow1", "flow2"))
    if calogan and (flow1 or flow2):
        raise CaloflowError("give either --calogan or --flow1/--flow2, not both")
    if not calogan and not (flow1 and flow2):
        raise CaloflowError("--flow1 and --flow2 are both required (or --calogan)")
    if not reference:
        raise CaloflowError(
            "--reference: required (the reference showers, CaloGAN or CaloChallenge HDF5)"
        )
    used = {"calogan": calogan} if calogan else {"flow1": flow1, "flow2": flow2}
    inputs = {f"--{k}": v for k, v in used.items()} | {"--reference": reference}
    if config is not None:
        inputs["--config"] = config
    for name in OUTPUT_FILES:
        check_not_an_input(out / name, inputs, option="--out")
    try:
        n = count_showers(reference)
    except CaloflowError as e:
        raise CaloflowError(f"--reference: {e}") from None
    models = _load_models(used)
    geometry = _common_geometry(models, reference)
    return ShowerInputs(
        "calogan" if calogan else "caloflow", used, models, Path(reference), n, geometry
    )


def _common_geometry(models: tuple, reference: str):
    """The detector of the loaded ``models`` (the flows agree: :class:`caloflow.sampling.CaloFlow`
    refuses two geometries), refused in one line unless the ``reference`` file holds showers of it."""
    from caloflow.data.io import file_geometry

    model = models[-1].geometry
    try:
        found = file_geometry(reference)
    except CaloflowError as e:
        raise CaloflowError(f"--reference: {e}") from None
    if found != model:
        raise CaloflowError(
            f"--reference: {reference} holds {found.name} showers ({found.n_voxels} voxels), but "
            f"the model generates {model.name} showers ({model.n_voxels} voxels)"
        )
    return model


def _load_models(checkpoints: dict[str, str]) -> tuple:
    """The generator's modules, loaded and checked as ``caloflow generate`` loads them (one-line errors)."""
    from caloflow.sampling import CaloFlow, CaloGANSampler

    if "calogan" in checkpoints:
        return (CaloGANSampler.load(checkpoints["calogan"]).model,)
    sampler = CaloFlow.load(checkpoints["flow1"], checkpoints["flow2"])
    return sampler.flow1, sampler.flow2


def make_splits(n: int, split, seed: int) -> dict[str, Any]:
    """The refinement / evaluation split of ``n`` reference rows by a permutation seeded with ``seed``.

    The first round(refinement_fraction x n) permuted rows refine, the rest evaluate; the rows used
    are the first ``n_refine`` / ``n_eval`` of each split in permutation order. All index lists are
    file rows, sorted.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_ref = int(round(split.refinement_fraction * n))
    refinement, evaluation = perm[:n_ref], perm[n_ref:]
    used_ref = refinement[: split.n_refine] if split.n_refine else refinement
    used_eval = evaluation[: split.n_eval] if split.n_eval else evaluation
    if min(len(used_ref), len(used_eval)) < MIN_SPLIT:
        raise CaloflowError(
            f"--reference: {n} showers give {len(used_ref)} refinement and {len(used_eval)} "
            f"evaluation showers; need at least {MIN_SPLIT} of each (split in the config)"
        )
    rows = {
        k: sorted(int(i) for i in v)
        for k, v in (
            ("refinement", refinement),
            ("evaluation", evaluation),
            ("refinement_used", used_ref),
            ("evaluation_used", used_eval),
        )
    }
    return {
        "n_showers": int(n),
        "seed": int(seed),
        "refinement_fraction": float(split.refinement_fraction),
        **rows,
    }


# --------------------------------------------------------------------------- the run


@dataclass
class ShowerRun(Stages):
    """What the steps share: the config, output folder, seed, inputs, the LaSeR generator g and timings."""

    label = "showers"  # the prefix of the progress lines

    cfg: Any
    out: Path
    seed: int
    inputs: ShowerInputs
    progress: bool = True
    g: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    rounds: int = 1  # refinement rounds (--rounds)
    round: int = 1  # the round being refined now

    @property
    def suffix(self) -> str:
        """What names the current round in log and stage names: nothing in round 1."""
        return "" if self.round == 1 else f"_round{self.round}"

    def stream_seed(self, name: str) -> int:
        """The seed of one step's random stream, derived from ``seed`` (and the round after the first)."""
        key = [self.seed, STREAMS[name]] + ([] if self.round == 1 else [self.round])
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    def generator(self, name: str):
        import torch

        return torch.Generator().manual_seed(self.stream_seed(name))

    def trainer(self, name: str, epochs: int):
        from caloflow.training import make_trainer

        return make_trainer(epochs, self.out / "logs", name, progress=self.progress)

    def base_sampler(self):
        """The unrefined sampler of ``caloflow generate`` for these models."""
        from caloflow.sampling import CaloFlow, CaloGANSampler

        return (
            CaloGANSampler(*self.inputs.models)
            if self.inputs.kind == "calogan"
            else CaloFlow(*self.inputs.models)
        )


def laser_generator(inputs: ShowerInputs):
    """The model as a LaSeR generator g(z | E): :class:`CaloFlowGenerator` (z in R^(L + V)) or
    :class:`CaloGANGenerator`."""
    from refine.showers import CaloFlowGenerator, CaloGANGenerator

    if inputs.kind == "calogan":
        return CaloGANGenerator(inputs.models[0])
    return CaloFlowGenerator(*inputs.models)


def attempt(run: ShowerRun, method: str, step, *stale: Path) -> tuple[Any, dict | None]:
    """``(step(), None)``, or ``(None, failure)`` when the method cannot run on these weights
    (:class:`refine.failures.MethodFailed`): then one warning line is printed, the ``stale`` outputs
    of an earlier run (and ``showers/METHOD.hdf5``) are removed, and ``failure`` is what its row reports."""
    try:
        return step(), None
    except MethodFailed as e:
        run.say(
            f"warning: {method} failed (reported in its row, the other methods go on): {e.reason}"
        )
        for path in (run.out / "showers" / f"{method}.hdf5", *stale):
            path.unlink(missing_ok=True)
        return None, e.entry()


def round_method(k: int, rounds: int) -> str:
    """The method (row, shower file) of refinement round ``k`` of ``rounds``: ``laser`` for the last
    round (its refiner is ``refiner.ckpt``), ``laser-roundK`` before."""
    return "laser" if k == rounds else f"laser-round{k}"


def round_checkpoint(run: ShowerRun, k: int) -> Path:
    """The refiner checkpoint of round ``k``: ``refiner.ckpt`` for the last round, else ``refiner-roundK.ckpt``."""
    return run.out / ("refiner.ckpt" if k == run.rounds else f"refiner-round{k}.ckpt")


def refiner_phi(refiner):
    """(y, E GeV) -> Phi(y, c(E)): a trained refiner as the latent map of the refined generator."""
    from refine.shower_refiner import incident_context

    def phi(y, energies):
        return refiner.decode(y, incident_context(energies).to(y.device)).to(y.dtype)

    return phi


def refinement_steps(run: ShowerRun, splits: dict) -> dict[str, Any]:
    """Steps 1-3c on the refinement split only, for ``run.rounds`` rounds: weights, then the trained
    refiner (saved and loaded back). Round k > 1 (iterated LaSeR, paper section 3) trains a new
    weight classifier between the refinement split and the showers of the refined generator
    g(Phi_{k-1}(y) | E), weights the refined latent points z = Phi_{k-1}(y) with it (their density
    is q_{k-1}; the weighted one q_{k-1} w_k), and trains Phi_k starting from Phi_{k-1}.

    Returns round 1's classifier and training weights (rejection, HMC and DCTR use them), the
    trained refiners by method (:func:`round_method`), the failed rounds and a summary per round."""
    from caloflow.data.io import read_rows

    with run.stage("read_refinement"):
        reference = read_rows(run.inputs.reference, splits["refinement_used"])
    run.say(f"refinement split: {len(reference)} showers")
    refiners: dict[str, Any] = {}
    failed: dict[str, dict] = {}
    summaries: list[dict] = []
    previous, first = None, None
    for k in range(1, run.rounds + 1):
        run.round, method = k, round_method(k, run.rounds)
        if previous is None and k > 1:  # an earlier round failed: nothing to start from
            failed[method] = {"reason": f"round {k - 1} failed: no refiner to start from"}
            continue
        weights, summary, refiner, failure = _one_round(run, reference, previous, method)
        first = first or weights
        summaries.append(summary)
        if failure is not None:
            failed[method] = failure
        else:
            refiners[method] = refiner
        previous = refiner
    run.round = 1
    first.update(
        refiners=refiners,
        refiner=refiners.get("laser"),
        failed=failed,
        refiner_points=summaries[0]["refiner_points"],
        rounds=summaries,
    )
    return first


def _one_round(run: ShowerRun, reference, previous, method: str):
    """One refinement round (:func:`refinement_steps`): ``(weights, summary, refiner, failure)``."""
    phi = None if previous is None else refiner_phi(previous)
    if run.rounds > 1:
        run.say(f"refinement round {run.round} of {run.rounds}")
    with run.stage(f"weights{run.suffix}"):
        weights = train_weights(run, reference, phi)
    with run.stage(f"refiner_points{run.suffix}"):
        z, w, energies = refiner_points(run, weights, phi)
    path = round_checkpoint(run, run.round)
    with run.stage(f"refiner{run.suffix}"):
        trained, failure = attempt(
            run, method, lambda: _trained_refiner(run, z, w, energies, path, previous), path
        )
    refiner, training = trained if failure is None else (None, {})
    summary = {
        "round": run.round,
        "method": method,
        "weights": weight_summary(weights["w"], run.cfg.classifier_training.clip),
        "weight_classifier": weights["classifier_info"],
        "refiner_points": {
            "n": len(z),
            "draws_per_energy": run.cfg.refiner_training.draws_per_energy,
            "ess_fraction": weight_summary(w)["ess_fraction"],
        },
        "refiner_training": training,
    }
    return weights, summary, refiner, failure


def _trained_refiner(run: ShowerRun, z, w, energies, path: Path, start=None):
    """The refiner trained on (z, w, E) (from ``start``'s parameters when given), saved as ``path`` and
    loaded back from it (so the run generates with exactly what ``caloflow generate --refiner`` loads),
    with what its training measured."""
    from refine.shower_refiner import load_refiner, save_refiner

    refiner, info = train_refiner(run, z, w, energies, start)
    path = save_refiner(
        path,
        refiner,
        run.inputs.kind,
        run.inputs.checkpoints,
        seed=run.seed,
        batch_size=int(run.cfg.batch_size),
    )
    run.say(f"wrote {path}")
    return load_refiner(path, path.name, run.inputs.checkpoints)[0], info


def draw_unrefined(
    run: ShowerRun, energies: torch.Tensor, gen: torch.Generator, phi=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One unrefined shower per incident energy (GeV) in generation batches of ``batch_size``, latents kept:
    (z (n, N), x (n, V) MeV) on the CPU; with ``phi`` (:func:`refiner_phi`) the showers of the refined
    generator, z = phi(y, E) the refined latents."""
    import torch

    from refine.shower_refiner import draw_latent_showers

    parts = [
        draw_latent_showers(run.g, chunk, gen, phi)
        for chunk in energies.split(int(run.cfg.batch_size))
    ]
    return torch.cat([p[1] for p in parts]).cpu(), torch.cat([p[2] for p in parts]).cpu()


def train_weights(run: ShowerRun, reference, phi=None) -> dict[str, Any]:
    """Step 2: one unrefined shower per refinement shower at its energy (latents kept; with ``phi`` a
    shower of the refined generator and its refined latent), the weight classifier, and
    w(x_i, E_i) = exp(logit) (clipped at ``classifier_training.clip``) for every z_i."""
    import torch

    from caloflow.data.io import Showers

    energies = torch.as_tensor(reference.energy, dtype=torch.float32)
    z, x = draw_unrefined(run, energies, run.generator("weights"), phi)
    run.say(
        f"generated {len(x)} unrefined showers at the refinement energies; training the weight classifier"
    )
    generated = Showers(x.numpy(), reference.energy, geometry=run.inputs.geometry)
    classifier, info = train_weight_classifier(run, reference, generated)
    w = shower_weights(classifier, x, energies, run.cfg.classifier_training.clip)
    run.say(
        f"weights: min {float(w.min()):.3g}, median {float(w.median()):.3g}, max {float(w.max()):.3g}"
    )
    return {"classifier": classifier, "classifier_info": info, "z": z, "w": w, "energy": energies}


def train_weight_classifier(run: ShowerRun, reference, generated):
    """The weight classifier (config ``classifier``; on a polar geometry :func:`weight_classifier`),
    reference (1) vs generated (0) showers of the refinement split, with early stopping on its
    ``val_fraction``, kept at its lowest validation loss:
    w = f / (1 - f) needs a calibrated f, and the epoch of the best accuracy can be an overconfident
    one. Returns it (frozen) and how the training went (:func:`caloflow.evaluate.classification.fit_classifier`)."""
    import lightning as L

    from caloflow.data.datamodule import CaloDataModule
    from caloflow.evaluate.classification import fit_classifier, schedule_for

    training = run.cfg.classifier_training
    split = (1 - training.val_fraction, training.val_fraction, 0.0)
    dm = CaloDataModule.from_showers(
        reference,
        generated,
        split=split,
        batch_size=training.batch_size,
        seed=run.stream_seed("classifier"),
        noise_kev=0.0,
    )
    L.seed_everything(run.stream_seed("classifier"), verbose=False)
    model = weight_classifier(run.cfg, run.inputs.geometry)
    if model.hparams.backbone == "challenge":
        # a fixed affine map of the inputs to [-1, 1], from the training showers only
        dm.setup("fit")
        train = dm.datasets["train"]
        model.net.fit_scaling({"voxels": train.voxels, "energy": train.energy})
    schedule = schedule_for(
        dm, model.hparams.backbone, None, training.max_epochs, training.patience
    )
    fitted = fit_classifier(
        model,
        dm,
        schedule,
        run.out / "logs",
        f"weight_classifier{run.suffix}",
        "",
        None,
        keep="val_loss",
    )
    info = fitted["info"]
    run.say(
        f"weight classifier: best epoch {info['best_epoch']}/{info['epochs_run']}, val loss "
        f"{info['best_val_loss']:.4f}, {'converged' if info['converged'] else 'NOT converged'}"
    )
    return fitted["model"].eval().requires_grad_(False), info


def check_weight_classifier(cfg, geometry) -> None:
    """Refuse in one line a weight classifier that cannot read showers of ``geometry``: on a polar
    geometry the config's ``classifier`` must be the ``dnn`` (its sizes become those of
    :func:`weight_classifier`)."""
    from caloflow.radial_features import is_polar

    backbone = cfg.classifier.init_args.backbone
    if is_polar(geometry) and backbone != "dnn":
        raise CaloflowError(
            f"classifier.init_args.backbone: {backbone} reads CaloGAN showers; the weight "
            f"classifier of a {geometry.name} model is the dnn (on the "
            f"{cfg.classifier_training.challenge_input} input)"
        )


def weight_classifier(cfg, geometry):
    """The untrained weight classifier: the config's ``classifier`` for CaloGAN showers; on a polar
    (CaloChallenge) geometry the ``challenge`` backbone (:class:`caloflow.models.classifiers.ChallengeDNN`):
    the dnn's layers, learning rate and decay on the CaloChallenge input
    ``classifier_training.challenge_input`` (default ``cls-low``: log10 E_inc and the voxels / E_inc
    after the evaluator's voxel threshold, 1 MeV for dataset 1), which the dataset-1 evaluation uses too."""
    from caloflow.models import ShowerClassifier
    from caloflow.radial_features import is_polar
    from refine.config import build

    if not is_polar(geometry):
        return build(cfg.classifier)
    check_weight_classifier(cfg, geometry)
    init = cfg.classifier.init_args
    layers = init.backbone_args
    sizes = {k: layers[k] for k in ("hidden", "n_hidden_layers", "slope") if k in (layers or {})}
    return ShowerClassifier(
        "challenge",
        lr=init.lr,
        lr_decay=init.lr_decay,
        weight_decay=init.weight_decay,
        backbone_args={**sizes, "kind": cfg.classifier_training.challenge_input},
        geometry=geometry,
    )


def shower_log_weight(classifier, clip: float | None = None):
    """(x (n, V) MeV, E (n,) GeV) -> log w(x, E) = logit, capped at log(clip); differentiable in x."""
    import math

    import torch

    def fn(x, energies):
        logit = classifier({"voxels": x, "energy": torch.as_tensor(energies, device=x.device)})
        return logit if clip is None else torch.clamp(logit, max=math.log(clip))

    return fn


def shower_weights(classifier, x, energies, clip: float | None = None):
    """w(x, E) = exp(logit) (clipped at ``clip``) of showers x (n, V) MeV at E (n,) GeV, float64 (n,)."""
    import torch

    from refine.classifier import weights_from_logits

    batch = {
        "voxels": torch.as_tensor(x, dtype=torch.float32),
        "energy": torch.as_tensor(energies, dtype=torch.float32),
    }
    logits = classifier.logits(batch)
    return weights_from_logits(logits.double(), clip=clip, normalise=False)


def refiner_points(
    run: ShowerRun, weights: dict[str, Any], phi=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3c's weighted latent points (z, w, E): the weight classifier's generated latents z_i with
    w_i, then ``refiner_training.draws_per_energy - 1`` rounds of prior draws z ~ N(0, I) at every
    refinement energy, weighted by the same classifier, w(g(z | E), E) (clipped likewise).

    w is a function on the latent space, so the refiner may see it at as many points as it likes;
    none of them is a reference shower."""
    import torch

    energies = weights["energy"]
    z, w = [weights["z"]], [weights["w"]]
    rounds, gen = run.cfg.refiner_training.draws_per_energy - 1, run.generator("refiner_points")
    for r in range(rounds):
        run.say(
            f"refiner points: draw {r + 2}/{rounds + 1} at the {len(energies)} refinement energies"
        )
        z_new, x_new = draw_unrefined(run, energies, gen, phi)
        z.append(z_new)
        w.append(
            shower_weights(weights["classifier"], x_new, energies, run.cfg.classifier_training.clip)
        )
    return torch.cat(z), torch.cat(w), energies.repeat(rounds + 1)


def build_shower_refiner(spec, dim: int):
    """The config's refiner (``spec``) on the latent space R^``dim``, conditional on c(E_inc), as the
    identity: the weighted GAN Phi(y, E) = y + MLP([y, c(E)]) with a zero last layer, or the
    weighted-likelihood flow (:class:`refine.flow_refiner.WeightedFlowRefiner`, zero conditioners)."""
    from refine.config import build, class_of
    from refine.flow_refiner import WeightedFlowRefiner

    if issubclass(class_of(spec), WeightedFlowRefiner):
        return build(spec, latent_dim=dim, context_dim=1)
    return build(spec, latent_dim=dim, aux_dim=dim, context_dim=1, residual=True, zero_init=True)


def refiner_loaders(run: ShowerRun, z, w, energies):
    """The refiner's batches of (z, w, c(E)): a training loader and, with ``refiner_training.val_fraction``
    > 0, one validation batch of that share of the points (a seeded random choice), else None."""
    import torch

    from refine.data import TensorLoader
    from refine.shower_refiner import incident_context

    training = run.cfg.refiner_training
    tensors = (z.float(), w.float(), incident_context(energies))
    n_val = int(round(training.val_fraction * len(z)))
    seed = run.stream_seed("refiner")
    if n_val == 0:
        return TensorLoader(*tensors, batch_size=training.batch_size, seed=seed), None
    order = torch.randperm(len(z), generator=run.generator("refiner_split"))
    fit, val = order[n_val:], order[:n_val]
    return (
        TensorLoader(*(t[fit] for t in tensors), batch_size=training.batch_size, seed=seed),
        TensorLoader(*(t[val] for t in tensors), batch_size=n_val, shuffle=False),
    )


def train_refiner(run: ShowerRun, z, w, energies, start=None):
    """Step 3c: the conditional refiner (:func:`build_shower_refiner`: the weighted GAN with the
    paper's loss, or the flow by weighted maximum likelihood), starting as the identity (or from the
    parameters of ``start``, the previous round's refiner), on the weighted latent points (z_i, w_i, E_i).

    With a validation share (flow refiner) the refiner is kept at its lowest held-out weighted NLL,
    and stays at its start when no epoch beats the start there (:func:`fit_kept_best`).
    Returns the refiner and what its training measured."""
    import lightning as L

    dim = z.shape[1]
    L.seed_everything(run.stream_seed("refiner"), verbose=False)
    refiner = build_shower_refiner(run.cfg.refiner, dim)
    if start is not None:
        refiner.load_state_dict(start.state_dict())
    loader, val = refiner_loaders(run, z, w, energies)
    run.say(
        f"training the LaSeR refiner on {len(loader.tensors[0])} weighted latent points (R^{dim}, "
        f"conditional on E_inc)" + (f", {len(val.tensors[0])} held out" if val else "")
    )
    trainer = run.trainer(f"laser_refiner{run.suffix}", run.cfg.refiner_training.epochs)
    if val is None:
        trainer.fit(refiner, loader)
        info = {}
    else:
        info = fit_kept_best(trainer, refiner, loader, val)
        run.say(
            f"refiner: held-out weighted NLL {info['val_nll_start']:.4f} at the start, "
            f"{info['val_nll_best']:.4f} at epoch {info['best_epoch']} (target gain "
            f"KL(q || start) ~ {info['target_gain']:.4f} nats)"
        )
    check_refiner_finite(refiner, trainer.callback_metrics)
    return refiner.eval(), info


def fit_kept_best(trainer, refiner, loader, val) -> dict[str, float]:
    """Fit ``refiner`` and keep its state at the lowest held-out weighted NLL (``val``, one batch),
    the start included: epoch 0 when no epoch beat it. Returns the start's and the best NLL (nats per
    point), the best epoch, and the gain a perfect refiner would make on these points,
    E_q[log w] - log E_p[w] = KL(q || start) for weights w of points drawn from the start's density."""
    import math

    import torch

    from caloflow.training import best_epoch, keep_best

    z, w, c = next(iter(val))
    with torch.no_grad():
        start = float(refiner.weighted_nll(z, w, c))
    w64 = w.double()
    target = float((w64 * w64.log()).sum() / w64.sum() - math.log(float(w64.mean())))
    initial = {k: v.clone() for k, v in refiner.state_dict().items()}
    with keep_best("val/loss", "min") as best:
        trainer.callbacks.append(best)
        trainer.fit(refiner, loader, val)
        score = float(best.best_model_score)
        if score < start:
            state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
            refiner.load_state_dict(state["state_dict"])
            epoch = best_epoch(best)
        else:
            refiner.load_state_dict(initial)
            epoch, score = 0, start
    return {
        "val_nll_start": start,
        "val_nll_best": score,
        "best_epoch": epoch,
        "target_gain": target,
    }


def check_refiner_finite(refiner, metrics: dict) -> None:
    """Raise :class:`MethodFailed` when a logged training loss of the refiner (``metrics``: the trainer's
    ``callback_metrics``) or one of its parameters is not finite: such a refiner cannot sample."""
    import math

    import torch

    losses = {k.replace("/", "_"): float(v) for k, v in metrics.items() if "loss" in k}
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    tensors = [t for t in refiner.state_dict().values() if t.is_floating_point()]
    if bad or not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise MethodFailed(
            "the refiner's training loss or parameters are not finite "
            f"({', '.join(f'{k} {v:.3g}' for k, v in losses.items()) or 'no loss logged'})",
            **losses,
        )


# --------------------------------------------------------------------------- showers of every method


def _writer(run: ShowerRun, method: str, n: int, **attrs):
    """A ShowerWriter for ``DIR/showers/METHOD.hdf5`` with the attributes ``caloflow generate`` writes."""
    from caloflow.data.io import ShowerWriter

    base = {
        "generator": run.inputs.kind,
        "seed": run.seed,
        "fast_sampling": True,
        "method": method,
        "batch_size": int(run.cfg.batch_size),
        "training_domain": run.base_sampler().domain.to_json(),
    }
    return ShowerWriter(
        run.out / "showers" / f"{method}.hdf5",
        attrs={**base, **attrs},
        expected_rows=n,
        geometry=run.inputs.geometry,
    )


def generate_unrefined(run: ShowerRun, energies: np.ndarray) -> float:
    """Unrefined showers at the evaluation energies, as ``caloflow generate --seed S`` draws them; seconds."""
    import torch

    t0, sampler = time.perf_counter(), run.base_sampler()
    with _writer(run, "unrefined", len(energies)) as out:
        sampler.sample(
            energies,
            torch.Generator().manual_seed(run.seed),
            batch_size=int(run.cfg.batch_size),
            out=out,
        )
        out.attrs["redrawn_nonfinite"] = sampler.redraws
    return time.perf_counter() - t0


def generate_laser(
    run: ShowerRun, refiner, energies: np.ndarray, method: str = "laser", k: int | None = None
) -> float:
    """LaSeR showers g(Phi(y, E) | E) at the evaluation energies with the y of :func:`generate_unrefined`
    (``caloflow generate --refiner DIR/refiner.ckpt --seed S``), as ``showers/METHOD.hdf5`` (round
    ``k``'s refiner; default the last); seconds."""
    import torch

    from refine.shower_refiner import RefinedSampler

    path = round_checkpoint(run, run.rounds if k is None else k)
    t0, sampler = time.perf_counter(), RefinedSampler(run.base_sampler(), refiner)
    with _writer(run, method, len(energies), refiner=str(path)) as out:
        sampler.sample(
            energies,
            torch.Generator().manual_seed(run.seed),
            batch_size=int(run.cfg.batch_size),
            out=out,
        )
        out.attrs["redrawn_nonfinite"] = sampler.redraws
    return time.perf_counter() - t0


def write_dctr(run: ShowerRun, classifier) -> tuple[np.ndarray, float]:
    """Step 3d: the unrefined showers with their weights w(x, E) as dataset ``weight``; (weights, seconds)."""
    import shutil

    import h5py

    from caloflow.atomic import atomic_output
    from caloflow.data.io import read_showers
    from caloflow.evaluate.weights import WEIGHT_KEY

    t0 = time.perf_counter()
    source = run.out / "showers" / "unrefined.hdf5"
    showers = read_showers(source)
    w = shower_weights(
        classifier, showers.voxels, showers.energy, run.cfg.classifier_training.clip
    ).numpy()
    with atomic_output(run.out / "showers" / "dctr.hdf5") as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "a") as f:
            f.create_dataset(WEIGHT_KEY, data=w)
            f.attrs["method"] = "dctr"
    return w, time.perf_counter() - t0


def run_rejection(run: ShowerRun, classifier, w_train, energies: np.ndarray) -> dict[str, float]:
    """Step 3a: one shower per evaluation energy by rejection sampling at that energy, w_max the
    configured quantile of the training weights; returns acceptance, w_max and seconds."""
    import torch

    from refine.rejection import rejection_sample_conditional

    opts, gen = run.cfg.rejection, run.generator("rejection")
    w_max = float(np.quantile(np.asarray(w_train, dtype=np.float64), opts.w_max_quantile))
    log_w = shower_log_weight(classifier, run.cfg.classifier_training.clip)

    @torch.no_grad()
    def propose(e):
        z = run.g.sample_latent(len(e), gen)
        return z, run.g.decode(z, e)

    @torch.no_grad()
    def weight(x, e):
        return torch.exp(log_w(x, e).double())

    t0, accepted, proposed = time.perf_counter(), 0, 0.0
    with _writer(run, "rejection", len(energies), w_max=w_max) as out:
        chunks = torch.as_tensor(energies, dtype=torch.float32).split(int(run.cfg.batch_size))
        for i, chunk in enumerate(chunks):
            try:
                _, x, rate = rejection_sample_conditional(
                    propose, weight, chunk, w_max, gen, opts.max_rounds
                )
            except MethodFailed as e:
                where = f" (generation batch {i + 1} of {len(chunks)}, w_max {w_max:.3g})"
                raise MethodFailed(e.reason + where, **e.figures, w_max=w_max) from None
            out.append(x.cpu().numpy(), chunk.numpy())
            accepted, proposed = accepted + len(chunk), proposed + len(chunk) / rate
    return {"acceptance": accepted / proposed, "w_max": w_max, "seconds": time.perf_counter() - t0}


def hmc_clip(cfg) -> float | None:
    """The cap on w inside HMC: ``hmc.clip``, else the weight classifier's ``classifier_training.clip``."""
    return cfg.hmc.clip or cfg.classifier_training.clip


def run_hmc(run: ShowerRun, classifier, energies: np.ndarray, w_unrefined) -> dict[str, float]:
    """Step 3b: HMC of log N(z) + log w(g(z | E), E), one chain per energy of the first ``hmc.n_hmc``
    evaluation energies (started from prior draws with finite showers), the state after ``burn_in``
    trajectories kept; returns the acceptance after burn-in, the number of showers, seconds and
    :func:`hmc_log_w` (does the chain reach its target?) with the target from ``w_unrefined``, the
    DCTR weights of the unrefined showers at the evaluation energies."""
    import torch

    from refine.mcmc import hmc, laser_log_prob
    from refine.shower_refiner import draw_latent_showers

    opts, gen = run.cfg.hmc, run.generator("hmc")
    chains = torch.as_tensor(energies[: opts.n_hmc], dtype=torch.float32)
    clip = hmc_clip(run.cfg)
    log_w = shower_log_weight(classifier, clip)
    target = laser_log_prob(
        run.g.decode, log_w
    )  # target(z, E): chunks of chains carry their energies
    t0 = time.perf_counter()
    _, init, x_init, _ = draw_latent_showers(run.g, chains, gen)
    adapt = (
        ""
        if opts.target_acceptance is None
        else f", adapted towards acceptance {opts.target_acceptance:g}"
    )
    run.say(
        f"HMC: {len(chains)} chains, {opts.burn_in} burn-in trajectories of {opts.n_leapfrog} steps of "
        f"{opts.step_size:g}{adapt}"
    )
    info: dict = {}
    samples, acceptance = hmc(
        target,
        init,
        step_size=opts.step_size,
        n_leapfrog=opts.n_leapfrog,
        n_samples=1,
        burn_in=opts.burn_in,
        generator=gen,
        progress=run.progress,
        target_acceptance=opts.target_acceptance,
        info=info,
        context=(chains,),
        chunk_size=opts.chunk_size,
    )
    steps = info["step_size"]
    with torch.no_grad():
        x = run.g.decode(samples[-1], chains)
    check_hmc_chains(x, acceptance)
    seconds = time.perf_counter() - t0
    with _writer(run, "hmc", len(chains), hmc_acceptance=acceptance) as out:
        out.append(x.cpu().numpy(), chains.numpy())
    with torch.no_grad():
        mean_log_w = hmc_log_w(log_w(x_init, chains), log_w(x, chains), w_unrefined, clip)
    return {
        "acceptance": acceptance,
        "n_showers": len(chains),
        "seconds": seconds,
        "step_size": {
            "median": float(steps.median()),
            "min": float(steps.min()),
            "max": float(steps.max()),
        },
        "mean_log_w": mean_log_w,
    }


def check_hmc_chains(x, acceptance: float) -> None:
    """Raise :class:`MethodFailed` when HMC diverged: no trajectory was accepted after burn-in (every
    one ended at a non-finite or far worse energy, so the chains did not move), or a chain ended at a
    non-finite shower ``x`` (chains, V)."""
    import torch

    bad = int((~torch.isfinite(x).all(dim=1)).sum())
    if bad:
        raise MethodFailed(
            f"HMC: {bad} of {len(x)} chains ended at a non-finite shower (acceptance {acceptance:.3g})",
            acceptance=acceptance,
            nonfinite_chains=bad,
            chains=len(x),
        )
    if acceptance == 0:
        raise MethodFailed(
            f"HMC diverged: no trajectory of the {len(x)} chains was accepted after burn-in "
            "(acceptance 0); lower hmc.step_size or set hmc.target_acceptance",
            acceptance=acceptance,
            chains=len(x),
        )


def hmc_log_w(start, end, w_prior, clip: float | None) -> dict[str, float]:
    """Mean log w of the chains' start (prior draws) and kept states, and the target's,
    E_q[log w] = sum w log w / sum w over showers of fresh prior draws with their weights ``w_prior``
    (weighting prior draws by w samples q(z) = N(z) w / Z_0, eq. 3; w capped at HMC's ``clip``). A chain
    that has reached q ends near the target, one that has not moved stays at the start. The draws
    must be new to the weight classifier: on its own training showers w is biased low (measured on
    the e+ preset, docs/results.md)."""
    w = np.minimum(np.asarray(w_prior, dtype=np.float64), np.inf if clip is None else clip)
    return {
        "start": float(start.double().mean()),
        "end": float(end.double().mean()),
        "target": float((w * np.log(w)).sum() / w.sum()),
    }


def generation_steps(run: ShowerRun, splits: dict, refined: dict) -> dict[str, Any]:
    """Steps 3a, 3b, 3d and the LaSeR and unrefined showers at the evaluation energies (the only read of
    the evaluation split before the evaluation: its incident energies). Returns timings and acceptances."""
    from caloflow.data.io import read_energies

    energies = read_energies(run.inputs.reference, splits["evaluation_used"])
    n = len(energies)
    run.say(f"evaluation energies: {n}; generating unrefined and LaSeR showers")
    failed = dict(refined.get("failed", {}))
    seconds = {"unrefined": generate_unrefined(run, energies)}
    for k in range(1, run.rounds + 1):
        method = round_method(k, run.rounds)
        if method in refined["refiners"]:
            seconds[method] = generate_laser(run, refined["refiners"][method], energies, method, k)
    w_dctr, dctr_s = write_dctr(run, refined["classifier"])
    seconds["dctr"] = seconds["unrefined"] + dctr_s
    run.say("rejection sampling at the evaluation energies")
    found = {
        "rejection": lambda: run_rejection(run, refined["classifier"], refined["w"], energies),
        "hmc": lambda: run_hmc(run, refined["classifier"], energies, w_dctr),
    }
    reports = {}
    for method, step in found.items():
        report, failure = attempt(run, method, step)
        if failure is None:
            seconds[method] = report.pop("seconds")
            reports[method] = report
        else:
            failed[method], reports[method] = failure, {"failed": failure}
    counts = {m: n for m in seconds} | (
        {"hmc": reports["hmc"]["n_showers"]} if "hmc" in seconds else {}
    )
    per_shower = {m: seconds[m] / counts[m] for m in seconds}
    return {
        "seconds_per_shower": per_shower,
        "n_showers": counts,
        "relative_to_unrefined": {m: v / per_shower["unrefined"] for m, v in per_shower.items()},
        **reports,
        "failed": failed,
        "dctr_weights": w_dctr,
    }


# --------------------------------------------------------------------------- the whole protocol


def check_rounds(cfg, rounds: int) -> None:
    """Refuse in one line ``--rounds`` > 1 with a refiner that cannot start from the previous round:
    the weighted GAN's ``paired`` fakes assume prior draws, not a previous refiner's latents."""
    from refine.config import class_of
    from refine.flow_refiner import WeightedFlowRefiner

    if rounds < 1:
        raise CaloflowError(f"--rounds: must be at least 1, got {rounds}")
    if rounds > 1 and not issubclass(class_of(cfg.refiner), WeightedFlowRefiner):
        raise CaloflowError(
            f"--rounds {rounds}: iterated refinement needs the flow refiner "
            f"(refiner.class_path refine.flow_refiner.WeightedFlowRefiner), got {cfg.refiner.class_path}"
        )


def run_showers(
    inputs: ShowerInputs,
    cfg,
    out: Path,
    seed: int,
    quick: bool = False,
    progress: bool = True,
    rounds: int = 1,
) -> dict[str, Any]:
    """The whole protocol (module docstring) on checked ``inputs`` with the shower config ``cfg`` and
    ``rounds`` refinement rounds; writes every output under ``out`` and returns what ``results.json``
    holds."""
    import lightning as L

    from refine.shower_report import evaluate_methods, write_outputs

    check_rounds(cfg, rounds)
    check_weight_classifier(cfg, inputs.geometry)
    splits = make_splits(inputs.n_reference, cfg.split, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "showers").mkdir(exist_ok=True)
    write_text_atomic(
        out / "splits.json", json.dumps({"reference": str(inputs.reference), **splits}) + "\n"
    )
    L.seed_everything(seed, verbose=False)
    run = ShowerRun(cfg, out, seed, inputs, progress, g=laser_generator(inputs), rounds=rounds)
    run.say(
        f"splits: {len(splits['refinement_used'])} refinement / {len(splits['evaluation_used'])} evaluation "
        f"showers of {inputs.n_reference} (written to {out / 'splits.json'})"
    )
    refined = refinement_steps(run, splits)
    with run.stage("generation"):
        sampling = generation_steps(run, splits, refined)
    with run.stage("evaluation"):
        methods = evaluate_methods(run, splits, sampling.pop("dctr_weights"), sampling["failed"])
    results = {
        "settings": {
            "seed": seed,
            "quick": bool(quick),
            "generator": inputs.kind,
            "geometry": inputs.geometry.name,
            "checkpoints": inputs.checkpoints,
            "reference": str(inputs.reference),
            "batch_size": int(cfg.batch_size),
            "evaluation_runs": cfg.evaluation.runs,
            "evaluation_epochs": cfg.evaluation.epochs,
            "evaluation_patience": cfg.evaluation.patience,
            "w_max_quantile": cfg.rejection.w_max_quantile,
            "refiner": cfg.refiner.class_path,
            "rounds": rounds,
        },
        "splits": {
            k: len(splits[k])
            for k in ("refinement", "evaluation", "refinement_used", "evaluation_used")
        },
        "weights": weight_summary(refined["w"], cfg.classifier_training.clip),
        "weight_classifier": refined["classifier_info"],
        "refiner_points": refined["refiner_points"],
        "rounds": refined["rounds"],
        "rejection": sampling["rejection"],
        "hmc": sampling["hmc"],
        "sampling": {
            k: sampling[k] for k in ("seconds_per_shower", "relative_to_unrefined", "n_showers")
        },
        "methods": methods,
        "failed": sampling["failed"],
        "timings_s": {k: round(v, 2) for k, v in run.timings.items()},
    }
    write_outputs(out, results)
    return results


def load_shower_config(quick: bool = False, path: str | Path | None = None):
    """The shower config: the shipped ``laser/showers.yaml`` (or ``path``), its quick section merged with ``quick``."""
    from refine.config import CONFIG_DIR, ConfigError, parse_shower_config

    path = Path(path) if path is not None else CONFIG_DIR / "showers.yaml"
    if not path.is_file():
        raise CaloflowError(f"config file {path} not found")
    try:
        return parse_shower_config(path, quick)
    except ConfigError as e:
        raise CaloflowError(str(e)) from None


__all__ = [
    "METHODS",
    "OUTPUT_FILES",
    "MIN_SPLIT",
    "STREAMS",
    "ShowerInputs",
    "check_inputs",
    "make_splits",
    "ShowerRun",
    "laser_generator",
    "attempt",
    "refinement_steps",
    "draw_unrefined",
    "train_weights",
    "train_weight_classifier",
    "check_weight_classifier",
    "weight_classifier",
    "shower_log_weight",
    "shower_weights",
    "refiner_points",
    "build_shower_refiner",
    "train_refiner",
    "check_refiner_finite",
    "generate_unrefined",
    "generate_laser",
    "write_dctr",
    "run_rejection",
    "hmc_clip",
    "run_hmc",
    "check_hmc_chains",
    "hmc_log_w",
    "generation_steps",
    "check_rounds",
    "round_method",
    "round_checkpoint",
    "refiner_phi",
    "run_showers",
    "load_shower_config",
]
