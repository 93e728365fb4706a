"""The LaSeR protocol on the 2D toys (paper section 4, Table 3), as run by ``python -m refine.laser --toy``.

For each toy: train the Real-NVP baseline g on truth, train the post-hoc classifier between truth
and g's samples, attach w = exp(logit) to the latent points, then refine three ways:

- DCTR:  the generated data weighted by w (the weighted reference);
- HMC:   Hamiltonian Monte Carlo of log N(z) + log w(g(z)), decoded by g;
- LaSeR: the weighted-GAN refiner Phi trained on (z, w), samples g(Phi(y));
- LaSeR flow: the flow refiner Phi (:class:`refine.flow_refiner.WeightedFlowRefiner`) trained on
  the same (z, w) by weighted maximum likelihood, samples g(Phi(y)).

Each method generates ``n_eval`` points (2M in the shipped configs, as in the paper's section
4.2), scored against an independent truth sample of the same size with EMD and JSD on a 2D
histogram; the error floor is the score of a second independent truth sample. The floor falls
roughly as 1/n_eval, so the ratios to the baseline depend on n_eval: ``quick`` configs (100k
points) read higher. :func:`run_toys` writes ``results.json``, ``details.json``, ``table.md``,
figures and TensorBoard logs under the output folder.

Hyperparameters come from the shipped ``laser/TOY.yaml`` or a user's file (jsonargparse, class_path /
init_args; format in :mod:`refine.config`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloflow.atomic import atomic_output, write_text_atomic
from caloflow.evaluate.weights import weight_summary
from refine.config import CONFIG_DIR, TOY_NAMES
from refine.stages import Stages

TOY_TITLES = {"gaussians": "Gaussians", "donut": "Double donut", "rings": "Rings"}
METHODS = ("baseline", "hmc", "laser", "flow", "dctr", "truth")
METHOD_TITLES = {
    "baseline": "Baseline",
    "hmc": "HMC",
    "laser": "LaSeR (weighted GAN)",
    "flow": "LaSeR flow refiner",
    "dctr": "DCTR (weighted)",
    "truth": "Error floor (truth vs truth)",
}


class LaserError(Exception):
    """A bad option or config: reported as one line, exit 2."""


# --------------------------------------------------------------------------- configuration


def load_config(toy: str, quick: bool = False, path: str | Path | None = None):
    """The config of ``toy`` (a jsonargparse Namespace, see :mod:`refine.config`): the shipped
    ``laser/TOY.yaml`` (or ``path``), with its ``quick`` section merged in when ``quick`` is set."""
    from refine.config import ConfigError, parse_config

    path = Path(path) if path is not None else CONFIG_DIR / f"{toy}.yaml"
    if not path.is_file():
        raise LaserError(f"config file {path} not found")
    try:
        cfg = parse_config(path, quick)
    except ConfigError as e:
        raise LaserError(str(e)) from None
    if cfg.toy != toy:
        raise LaserError(f"{path}: config is for toy '{cfg.toy}', not '{toy}'")
    return cfg


# --------------------------------------------------------------------------- the protocol


@dataclass
class ToyRun(Stages):
    """What the steps of :func:`run_toy` share: the toy, its config, the seed and the sampling
    generator (one stream, drawn from in a fixed order), the log folder and the stage timings."""

    toy: str
    cfg: Any
    out: Path
    seed: int
    progress: bool
    gen: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.toy

    def trainer(self, name: str, epochs: int):
        """A Trainer logging to TensorBoard at ``OUT/TOY/logs/name``."""
        from caloflow.training import make_trainer

        return make_trainer(epochs, self.out / self.toy / "logs", name, progress=self.progress)


def truth_samples(toy: str, n_train: int, n_eval: int, seed: int):
    """Independent truth samples: training (tensor), scoring, and a second one for the error floor."""
    import torch

    from refine.toys import sample_toy

    return (
        torch.from_numpy(sample_toy(toy, n_train, seed=3 * seed)),
        sample_toy(toy, n_eval, seed=3 * seed + 1),
        sample_toy(toy, n_eval, seed=3 * seed + 2),
    )


def train_baseline(run: ToyRun, truth_train):
    """1. The Real-NVP baseline g by maximum likelihood on the truth; returned frozen, as a generator."""
    from refine.config import build
    from refine.data import TensorLoader
    from refine.generators import FlowGenerator

    baseline = build(
        run.cfg.baseline,
        n_features=truth_train.shape[1],
        shift=truth_train.mean(0).tolist(),
        scale=truth_train.std(0).tolist(),
    )
    training = run.cfg.baseline_training
    loader = TensorLoader(truth_train, batch_size=training.batch_size, seed=run.seed)
    run.say(
        f"training the Real-NVP baseline ({sum(p.numel() for p in baseline.parameters())} parameters)"
    )
    run.trainer("baseline", training.epochs).fit(baseline, loader)
    baseline.eval()
    baseline.requires_grad_(False)
    return FlowGenerator(baseline.flow)


def train_weights(run: ToyRun, g, truth_train):
    """2. The post-hoc classifier truth (1) vs g's samples (0); returns it (frozen) with the latent
    points z, their samples x = g(z) and weights w(x)."""
    from refine.classifier import train_classifier
    from refine.config import class_of, init_args
    from refine.dctr import dctr_weights
    from refine.generators import generate

    spec, training = run.cfg.classifier, run.cfg.classifier_training
    hparams = init_args(spec)
    hparams.pop("backbone")  # "mlp", checked with the config
    backbone_args = hparams.pop("backbone_args") or {}
    z_train, x_train = generate(g, run.cfg.n_train, run.gen)
    run.say("training the post-hoc classifier")
    classifier = train_classifier(
        truth_train,
        x_train,
        run.trainer("classifier", training.epochs),
        batch_size=training.batch_size,
        seed=run.seed,
        classifier_class=class_of(spec),
        **hparams,
        **backbone_args,
    )
    classifier.requires_grad_(False)
    return classifier, z_train, x_train, dctr_weights(classifier, x_train, clip=training.clip)


def run_hmc(run: ToyRun, g, classifier, z_train, w_train):
    """3b. HMC of log N(z) + log w(g(z)); returns the latent chain points, their decodes and the acceptance."""
    from refine.classifier import log_weight
    from refine.generators import decode_batched
    from refine.mcmc import hmc, laser_log_prob
    from refine.rejection import resample

    hc, n_eval = run.cfg.hmc, run.cfg.n_eval
    chains = min(hc.chains, n_eval)
    n_samples = math.ceil(n_eval / chains)
    if hc.init == "weighted":
        init = resample(z_train, w_train, chains, run.gen)
    else:
        init = g.sample_latent(chains, run.gen)
    run.say(f"HMC: {chains} chains x {n_samples} samples after {hc.burn_in} burn-in")
    target = laser_log_prob(
        g.decode, log_weight(classifier, clip=hc.clip or run.cfg.classifier_training.clip)
    )
    z_chain, acceptance = hmc(
        target,
        init,
        step_size=hc.step_size,
        n_leapfrog=hc.n_leapfrog,
        n_samples=n_samples,
        burn_in=hc.burn_in,
        generator=run.gen,
        progress=run.progress,
    )
    z_hmc = z_chain.reshape(-1, z_chain.shape[-1])[:n_eval]
    return z_hmc, decode_batched(g, z_hmc), acceptance


def train_refiner(run: ToyRun, g, z_train, w_train, section: str = "refiner"):
    """3c. LaSeR: the refiner of config ``section`` on (z, w): the weighted GAN (``refiner``) or the
    weighted-likelihood flow (``flow_refiner``); returns refined latent points Phi(y) and g(Phi(y))."""
    from refine.config import build
    from refine.data import TensorLoader
    from refine.generators import decode_batched

    refiner = build(run.cfg[section], latent_dim=z_train.shape[1])
    training = run.cfg[f"{section}_training"]
    loader = TensorLoader(
        z_train, w_train.float(), batch_size=training.batch_size, seed=run.seed + 1
    )
    kind = "weighted GAN" if section == "refiner" else "weighted maximum likelihood"
    run.say(f"training the LaSeR {section.replace('_', ' ')} ({kind})")
    name = "laser_refiner" if section == "refiner" else "laser_flow_refiner"
    run.trainer(name, training.epochs).fit(refiner, loader)
    z_laser = refiner.refine(run.cfg.n_eval, run.gen)
    return z_laser, decode_batched(g, z_laser)


def score_methods(run: ToyRun, truth_test, samples: dict) -> dict[str, dict[str, float]]:
    """4. EMD and JSD of every method against ``truth_test`` on one histogram grid (the toy's range);
    ``samples``: method -> points, or (points, weights)."""
    from refine.metrics import scores
    from refine.toys import TOYS

    rng_range = TOYS[run.toy][1]
    run.say("scoring (EMD, JSD)")

    def score(x: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
        return scores(truth_test, x, run.cfg.bins, rng_range, weights)

    return {
        method: score(*x) if isinstance(x, tuple) else score(x) for method, x in samples.items()
    }


def run_toy(toy: str, cfg: Any, out: Path, seed: int, progress: bool = True) -> dict[str, Any]:
    """Run baseline -> classifier -> weights -> {DCTR, HMC, LaSeR} on ``toy``; returns scores and samples.

    The steps draw from one generator in a fixed order (training points, DCTR sample, HMC, LaSeR),
    so the same seed gives the same numbers.
    """
    import lightning as L
    import torch

    from refine.dctr import dctr_sample
    from refine.toys import TOYS

    L.seed_everything(seed, workers=True, verbose=False)
    run = ToyRun(toy, cfg, out, seed, progress, gen=torch.Generator().manual_seed(seed))
    truth_train, truth_test, truth_floor = truth_samples(toy, cfg.n_train, cfg.n_eval, seed)
    with run.stage("baseline"):
        g = train_baseline(run, truth_train)
    with run.stage("classifier"):
        classifier, z_train, x_train, w_train = train_weights(run, g, truth_train)
    # 3a. baseline and DCTR on a fresh sample
    z_eval, x_eval, w_eval = dctr_sample(
        g, classifier, cfg.n_eval, run.gen, clip=cfg.classifier_training.clip
    )
    with run.stage("hmc"):
        z_hmc, x_hmc, acceptance = run_hmc(run, g, classifier, z_train, w_train)
    with run.stage("laser"):
        z_laser, x_laser = train_refiner(run, g, z_train, w_train)
    with run.stage("flow"):
        z_flow, x_flow = train_refiner(run, g, z_train, w_train, "flow_refiner")
    x_eval, w_eval, w_np = x_eval.numpy(), w_eval.double().numpy(), w_train.double().numpy()
    data = {
        "baseline": x_eval,
        "hmc": x_hmc.numpy(),
        "laser": x_laser.numpy(),
        "flow": x_flow.numpy(),
        "dctr": (x_eval, w_eval),
        "truth": truth_floor,
    }
    with run.stage("scores"):
        scores = score_methods(run, truth_test, data)
    info = {
        "hmc_acceptance": acceptance,
        "weights": weight_summary(w_np, cfg.classifier_training.clip),
        "timings_s": {k: round(v, 1) for k, v in run.timings.items()},
        "n_train": cfg.n_train,
        "n_eval": cfg.n_eval,
        "bins": cfg.bins,
        "range": TOYS[toy][1],
    }
    samples = {
        **data,
        "truth": truth_test,
        "z_prior": z_eval.numpy(),
        "z_weighted": (z_train.numpy(), w_np),
        "z_hmc": z_hmc.numpy(),
        "z_laser": z_laser.numpy(),
        "z_flow": z_flow.numpy(),
    }
    return {"scores": scores, "info": info, "samples": samples}


# --------------------------------------------------------------------------- reporting


def plot_toy(toy: str, samples: dict, bins: int, rng_range, path: Path) -> None:
    """Data space (truth, baseline, DCTR, HMC, both LaSeR refiners) and latent space (prior, weighted,
    HMC, both refiners)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from refine.metrics import histogram2d

    def hist(x, weights=None, rng=rng_range):
        return histogram2d(x, bins, rng, weights)

    fig, axes = plt.subplots(2, 6, figsize=(20, 6.8))
    data = [
        ("Truth", samples["truth"], None),
        ("Baseline", samples["baseline"], None),
        ("DCTR (weighted)", *samples["dctr"]),
        ("HMC", samples["hmc"], None),
        ("LaSeR (GAN)", samples["laser"], None),
        ("LaSeR flow", samples["flow"], None),
    ]
    hs = [hist(x, w) for _, x, w in data]
    vmax = max(h.max() for h, _, _ in hs)
    for ax, (title, _, _), (h, xe, ye) in zip(axes[0], data, hs):
        ax.pcolormesh(xe, ye, h.T, vmin=0, vmax=vmax, cmap="viridis", rasterized=True)
        ax.set_title(title)
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("data space")
    lat_range = ((-3.5, 3.5), (-3.5, 3.5))
    latent = [
        ("latent prior N(0, I)", samples["z_prior"], None),
        ("weighted latent (z, w)", *samples["z_weighted"]),
        ("HMC latent", samples["z_hmc"], None),
        ("GAN latent Phi(y)", samples["z_laser"], None),
        ("flow latent Phi(y)", samples["z_flow"], None),
    ]
    ls = [hist(z, w, lat_range) for _, z, w in latent]
    vmax = max(h.max() for h, _, _ in ls)
    axes[1][0].axis("off")
    for ax, (title, _, _), (h, xe, ye) in zip(axes[1][1:], latent, ls):
        ax.pcolormesh(xe, ye, h.T, vmin=0, vmax=vmax, cmap="viridis", rasterized=True)
        ax.set_title(title)
        ax.set_aspect("equal")
    axes[1][1].set_ylabel("latent space")
    fig.suptitle(f"LaSeR on the {TOY_TITLES[toy].lower()} toy")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def table_markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Table 3 layout: rows = methods, two columns (EMD, JSD) per toy; the error floor last."""
    toys = [t for t in TOY_NAMES if t in results]
    head = (
        "| Method | "
        + " | ".join(f"{TOY_TITLES[t]} EMD | {TOY_TITLES[t]} JSD" for t in toys)
        + " |"
    )
    sep = "|---" * (1 + 2 * len(toys)) + "|"
    lines = [
        "EMD (data units) and JSD (nats) of 2D histograms against an independent truth sample;",
        "the last row is the error floor (a second independent truth sample of the same size).",
        "",
        head,
        sep,
    ]
    for method in METHODS:
        cells = []
        for t in toys:
            s = results[t][method]
            cells += [f"{s['emd']:.4f}", f"{s['jsd']:.4f}"]
        lines.append(f"| {METHOD_TITLES[method]} | " + " | ".join(cells) + " |")
    lines.append("")
    ratios = []
    for t in toys:
        base = results[t]["baseline"]
        for m in ("hmc", "laser", "flow", "dctr"):
            ratios.append(
                f"{TOY_TITLES[t]} {METHOD_TITLES[m]}: EMD x{results[t][m]['emd'] / base['emd']:.2f}, "
                f"JSD x{results[t][m]['jsd'] / base['jsd']:.2f} of baseline"
            )
    lines += ["Ratios to the baseline:", ""] + [f"- {r}" for r in ratios]
    return "\n".join(lines) + "\n"


def run_toys(
    toys: list[str],
    configs: dict[str, Any],
    out: Path,
    seed: int,
    quick: bool = False,
    progress: bool = True,
) -> dict:
    """Run :func:`run_toy` for each of ``toys`` and write ``results.json``, ``details.json``,
    ``table.md`` and one figure per toy under ``out`` after each toy; returns the results (EMD, JSD)."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for toy in toys:
        res = run_toy(toy, configs[toy], out, seed=seed, progress=progress)
        results[toy] = res["scores"]
        details[toy] = res["info"]
        plot_toy(toy, res["samples"], configs[toy].bins, res["info"]["range"], out / f"{toy}.png")
        write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(
            out / "details.json",
            json.dumps({"seed": seed, "quick": quick, "toys": details}, indent=2) + "\n",
        )
        write_text_atomic(out / "table.md", table_markdown(results))
    return results


__all__ = [
    "TOY_TITLES",
    "METHODS",
    "METHOD_TITLES",
    "LaserError",
    "load_config",
    "ToyRun",
    "truth_samples",
    "train_baseline",
    "train_weights",
    "run_hmc",
    "train_refiner",
    "score_methods",
    "run_toy",
    "plot_toy",
    "table_markdown",
    "run_toys",
]
