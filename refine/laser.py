"""``python -m refine.laser``: the LaSeR protocol on the 2D toys (paper section 4, Table 3).

For each toy: train the Real-NVP baseline g on truth, train the post-hoc classifier between truth
and g's samples, attach w = exp(logit) to the latent points, then refine three ways:

- DCTR:  the generated data weighted by w (the weighted reference);
- HMC:   Hamiltonian Monte Carlo of log N(z) + log w(g(z)), decoded by g;
- LaSeR: the weighted-GAN refiner Phi trained on (z, w), samples g(Phi(y)).

Each method generates ``n_eval`` points (2M in the shipped configs, as in the paper's section
4.2), scored against an independent truth sample of the same size with EMD and JSD on a 2D
histogram; the error floor is the score of a second independent truth sample. The floor falls
roughly as 1/n_eval, so the ratios to the baseline depend on n_eval: ``--quick`` (100k points)
reads higher. Writes ``results.json``, ``table.md``, figures and TensorBoard logs under ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from caloflow.atomic import atomic_output, write_text_atomic

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "laser"
TOY_NAMES = ("gaussians", "donut", "rings")
TOY_TITLES = {"gaussians": "Gaussians", "donut": "Double donut", "rings": "Rings"}
METHODS = ("baseline", "hmc", "laser", "dctr", "truth")
METHOD_TITLES = {
    "baseline": "Baseline",
    "hmc": "HMC",
    "laser": "LaSeR",
    "dctr": "DCTR (weighted)",
    "truth": "Error floor (truth vs truth)",
}
SECTIONS = {
    "flow": {"n_blocks", "hidden", "n_hidden", "lr", "weight_decay", "lr_decay", "epochs", "batch_size"},
    "classifier": {"hidden", "n_hidden", "lr", "lr_decay", "epochs", "batch_size", "clip"},
    "hmc": {"chains", "step_size", "n_leapfrog", "burn_in", "init", "clip"},
    "gan": {"aux_dim", "hidden", "n_hidden", "lr", "betas", "lr_decay", "n_critic", "residual", "ema", "epochs", "batch_size"},
}
TOP_LEVEL = {"toy", "n_train", "n_eval", "bins", "quick", *SECTIONS}


class LaserError(Exception):
    """A bad option or config: reported as one line, exit 2."""


# --------------------------------------------------------------------------- configuration


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(cfg: dict, path: Path) -> None:
    unknown = set(cfg) - TOP_LEVEL
    if unknown:
        raise LaserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    for name, allowed in SECTIONS.items():
        section = cfg.get(name)
        if not isinstance(section, dict):
            raise LaserError(f"{path}: section '{name}' missing or not a mapping")
        bad = set(section) - allowed
        if bad:
            raise LaserError(f"{path}: unknown key(s) in '{name}': {', '.join(sorted(bad))}")
        missing = allowed - set(section)
        if missing:
            raise LaserError(f"{path}: missing key(s) in '{name}': {', '.join(sorted(missing))}")
    for key in ("n_train", "n_eval", "bins"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise LaserError(f"{path}: '{key}' must be a positive integer, got {cfg.get(key)!r}")
    if cfg["hmc"]["init"] not in ("weighted", "prior"):
        raise LaserError(f"{path}: hmc.init must be 'weighted' or 'prior', got {cfg['hmc']['init']!r}")
    if cfg.get("toy") not in TOY_NAMES:
        raise LaserError(f"{path}: 'toy' must be one of {', '.join(TOY_NAMES)}, got {cfg.get('toy')!r}")


def load_config(toy: str, quick: bool = False, path: str | Path | None = None) -> dict[str, Any]:
    """Hyperparameters of ``toy`` from ``configs/laser/TOY.yaml`` (or ``path``), with its ``quick``
    section merged in when ``quick`` is set."""
    path = Path(path) if path is not None else CONFIG_DIR / f"{toy}.yaml"
    if not path.is_file():
        raise LaserError(f"config file {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LaserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise LaserError(f"{path}: expected a mapping at the top level")
    quick_section = cfg.pop("quick", None) or {}
    if quick:
        cfg = _merge(cfg, quick_section)
    _validate(cfg, path)
    if cfg["toy"] != toy:
        raise LaserError(f"{path}: config is for toy '{cfg['toy']}', not '{toy}'")
    return cfg


# --------------------------------------------------------------------------- the protocol


def run_toy(toy: str, cfg: dict[str, Any], out: Path, seed: int, progress: bool = True) -> dict[str, Any]:
    """Run baseline -> classifier -> weights -> {DCTR, HMC, LaSeR} on ``toy``; returns scores and samples."""
    import lightning as L
    import torch

    from refine.classifier import log_weight, train_classifier
    from refine.data import TensorLoader
    from refine.dctr import dctr_sample, dctr_weights
    from refine.gan import WeightedGANRefiner
    from refine.generators import FlowGenerator, decode_batched, generate
    from refine.mcmc import hmc, laser_log_prob
    from refine.metrics import scores as score_sample
    from refine.rejection import resample
    from refine.toys import TOYS, RealNVPBaseline, sample_toy
    from refine.training import make_trainer

    log_root = out / toy / "logs"
    timings: dict[str, float] = {}
    L.seed_everything(seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(seed)
    n_train, n_eval = cfg["n_train"], cfg["n_eval"]
    rng_range = TOYS[toy][1]

    # independent truth samples: training, scoring, and a second one for the error floor
    truth_train = torch.from_numpy(sample_toy(toy, n_train, seed=3 * seed))
    truth_test = sample_toy(toy, n_eval, seed=3 * seed + 1)
    truth_floor = sample_toy(toy, n_eval, seed=3 * seed + 2)

    def say(msg: str) -> None:
        if progress:
            print(f"[{toy}] {msg}", file=sys.stderr, flush=True)

    def done(stage: str, t0: float) -> None:
        timings[stage] = time.time() - t0
        say(f"{stage}: {timings[stage]:.0f} s")

    # 1. baseline Real-NVP g
    t0 = time.time()
    fc = cfg["flow"]
    baseline = RealNVPBaseline(
        n_blocks=fc["n_blocks"], hidden=fc["hidden"], n_hidden=fc["n_hidden"], lr=fc["lr"],
        weight_decay=fc["weight_decay"], lr_decay=fc["lr_decay"],
        shift=truth_train.mean(0).tolist(), scale=truth_train.std(0).tolist(),
    )
    loader = TensorLoader(truth_train, batch_size=fc["batch_size"], seed=seed)
    say(f"training the Real-NVP baseline ({sum(p.numel() for p in baseline.parameters())} parameters)")
    make_trainer(log_root, "baseline", fc["epochs"], progress).fit(baseline, loader)
    baseline.eval()
    for p in baseline.parameters():
        p.requires_grad_(False)
    g = FlowGenerator(baseline.flow)
    done("baseline", t0)

    # 2. post-hoc classifier truth (1) vs generated (0); weights attached to the latent points
    t0 = time.time()
    cc = cfg["classifier"]
    z_train, x_train = generate(g, n_train, gen)
    say("training the post-hoc classifier")
    classifier = train_classifier(
        truth_train, x_train, make_trainer(log_root, "classifier", cc["epochs"], progress),
        batch_size=cc["batch_size"], seed=seed, hidden=cc["hidden"], n_hidden=cc["n_hidden"],
        lr=cc["lr"], lr_decay=cc["lr_decay"],
    )
    for p in classifier.parameters():
        p.requires_grad_(False)
    w_train = dctr_weights(classifier, x_train, clip=cc["clip"])
    done("classifier", t0)

    # 3a. baseline and DCTR on a fresh sample
    z_eval, x_eval, w_eval = dctr_sample(g, classifier, n_eval, gen, clip=cc["clip"])

    # 3b. HMC of log N(z) + log w(g(z))
    t0 = time.time()
    hc = cfg["hmc"]
    chains = min(hc["chains"], n_eval)
    n_samples = math.ceil(n_eval / chains)
    if hc["init"] == "weighted":
        init = resample(z_train, w_train, chains, gen)
    else:
        init = g.sample_latent(chains, gen)
    say(f"HMC: {chains} chains x {n_samples} samples after {hc['burn_in']} burn-in")
    target = laser_log_prob(g.decode, log_weight(classifier, clip=hc["clip"] or cc["clip"]))
    z_chain, acceptance = hmc(
        target, init, step_size=hc["step_size"], n_leapfrog=hc["n_leapfrog"], n_samples=n_samples,
        burn_in=hc["burn_in"], generator=gen, progress=progress,
    )
    z_hmc = z_chain.reshape(-1, z_chain.shape[-1])[:n_eval]
    x_hmc = decode_batched(g, z_hmc)
    done("hmc", t0)

    # 3c. LaSeR: weighted GAN Phi on (z, w); refined samples g(Phi(y))
    t0 = time.time()
    gc = cfg["gan"]
    refiner = WeightedGANRefiner(
        latent_dim=z_train.shape[1], aux_dim=gc["aux_dim"], hidden=gc["hidden"], n_hidden=gc["n_hidden"],
        lr=gc["lr"], betas=tuple(gc["betas"]), lr_decay=gc["lr_decay"], n_critic=gc["n_critic"], residual=gc["residual"],
        ema=gc["ema"],
    )
    gan_loader = TensorLoader(z_train, w_train.float(), batch_size=gc["batch_size"], seed=seed + 1)
    say("training the LaSeR refiner (weighted GAN)")
    make_trainer(log_root, "laser_refiner", gc["epochs"], progress).fit(refiner, gan_loader)
    z_laser = refiner.refine(n_eval, gen)
    x_laser = decode_batched(g, z_laser)
    done("laser", t0)

    # 4. scores on one histogram grid
    t0 = time.time()
    say("scoring (EMD, JSD)")

    def score(sample: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
        return score_sample(truth_test, sample, cfg["bins"], rng_range, weights)

    scores = {
        "baseline": score(x_eval.numpy()),
        "hmc": score(x_hmc.numpy()),
        "laser": score(x_laser.numpy()),
        "dctr": score(x_eval.numpy(), w_eval.double().numpy()),
        "truth": score(truth_floor),
    }
    done("scores", t0)
    w_np = w_train.double().numpy()
    info = {
        "hmc_acceptance": acceptance,
        "weights": {
            "min": float(w_np.min()), "max": float(w_np.max()),
            "effective_fraction": float(w_np.sum() ** 2 / (w_np ** 2).sum() / len(w_np)),
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "n_train": n_train, "n_eval": n_eval, "bins": cfg["bins"], "range": rng_range,
    }
    samples = {
        "truth": truth_test, "baseline": x_eval.numpy(), "dctr": (x_eval.numpy(), w_eval.double().numpy()),
        "hmc": x_hmc.numpy(), "laser": x_laser.numpy(), "z_prior": z_eval.numpy(),
        "z_weighted": (z_train.numpy(), w_np), "z_hmc": z_hmc.numpy(), "z_laser": z_laser.numpy(),
    }
    return {"scores": scores, "info": info, "samples": samples}


# --------------------------------------------------------------------------- reporting


def plot_toy(toy: str, samples: dict, bins: int, rng_range, path: Path) -> None:
    """Data space (truth, baseline, DCTR, HMC, LaSeR) and latent space (prior, weighted, HMC, LaSeR)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from refine.metrics import histogram2d

    def hist(x, weights=None, rng=rng_range):
        return histogram2d(x, bins, rng, weights)

    fig, axes = plt.subplots(2, 5, figsize=(17, 6.8))
    data = [
        ("Truth", samples["truth"], None), ("Baseline", samples["baseline"], None),
        ("DCTR (weighted)", *samples["dctr"]), ("HMC", samples["hmc"], None), ("LaSeR", samples["laser"], None),
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
        ("latent prior N(0, I)", samples["z_prior"], None), ("weighted latent (z, w)", *samples["z_weighted"]),
        ("HMC latent", samples["z_hmc"], None), ("LaSeR latent Phi(y)", samples["z_laser"], None),
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
    head = "| Method | " + " | ".join(f"{TOY_TITLES[t]} EMD | {TOY_TITLES[t]} JSD" for t in toys) + " |"
    sep = "|---" * (1 + 2 * len(toys)) + "|"
    lines = [
        "EMD (data units) and JSD (nats) of 2D histograms against an independent truth sample;",
        "the last row is the error floor (a second independent truth sample of the same size).",
        "",
        head,
        sep,
    ]
    for method in ("baseline", "hmc", "laser", "dctr", "truth"):
        cells = []
        for t in toys:
            s = results[t][method]
            cells += [f"{s['emd']:.4f}", f"{s['jsd']:.4f}"]
        lines.append(f"| {METHOD_TITLES[method]} | " + " | ".join(cells) + " |")
    lines.append("")
    ratios = []
    for t in toys:
        base = results[t]["baseline"]
        for m in ("hmc", "laser", "dctr"):
            ratios.append(
                f"{TOY_TITLES[t]} {METHOD_TITLES[m]}: EMD x{results[t][m]['emd'] / base['emd']:.2f}, "
                f"JSD x{results[t][m]['jsd'] / base['jsd']:.2f} of baseline"
            )
    lines += ["Ratios to the baseline:", ""] + [f"- {r}" for r in ratios]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m refine.laser", description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", required=True, choices=[*TOY_NAMES, "all"], help="which 2D toy (or all three)")
    p.add_argument("--quick", action="store_true", help="use the config's quick section (small, a few minutes)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same numbers)")
    p.add_argument("--out", required=True, help="output directory (results.json, table.md, figures, logs)")
    p.add_argument("--config", default=None, help="YAML config to use instead of configs/laser/TOY.yaml (one toy only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for these small models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        toys = list(TOY_NAMES) if args.toy == "all" else [args.toy]
        if args.config is not None and len(toys) > 1:
            raise LaserError("--config applies to one toy; use it with --toy gaussians|donut|rings")
        if args.seed < 0:
            raise LaserError(f"--seed must be non-negative, got {args.seed}")
        if args.threads is not None and args.threads < 1:
            raise LaserError(f"--threads must be >= 1, got {args.threads}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise LaserError(f"--out {out} exists and is not a directory")
        configs = {t: load_config(t, args.quick, args.config) for t in toys}
        out.mkdir(parents=True, exist_ok=True)
    except LaserError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for toy in toys:
        res = run_toy(toy, configs[toy], out, seed=args.seed, progress=not args.no_progress)
        results[toy] = res["scores"]
        details[toy] = res["info"]
        s = res["samples"]
        plot_toy(toy, s, configs[toy]["bins"], res["info"]["range"], out / f"{toy}.png")
        write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(out / "details.json", json.dumps({"seed": args.seed, "quick": args.quick, "toys": details}, indent=2) + "\n")
        write_text_atomic(out / "table.md", table_markdown(results))
    print(table_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
