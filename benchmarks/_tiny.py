"""Smoke size for the benchmark scripts' ``--smoke`` runs: shrunk flows, configs and checkpoints.

Not a benchmark itself (the leading underscore keeps it out of ``tests/test_benchmarks.py``'s list of
scripts). A smoke run keeps a benchmark's default comparisons, code paths and table and shrinks only
the sizes: flows with :data:`SMOKE_BLOCKS` MADE blocks and 1/:data:`SMOKE_HIDDEN_DIVISOR` of the
hidden units, a few hundred simulated showers, an epoch or two. Its numbers say that the script
runs, not how fast anything is.

The scripts import it as ``_tiny`` (``python benchmarks/X.py`` puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

#: MADE blocks of every smoke-size flow
SMOKE_BLOCKS = 2
#: a smoke-size flow has this fraction (1/n) of its config's hidden units, at least SMOKE_MIN_HIDDEN
SMOKE_HIDDEN_DIVISOR = 12
SMOKE_MIN_HIDDEN = 8
#: simulated training showers of a smoke-size fit
SMOKE_SHOWERS = 400
#: the training recipe shrunk for smoke runs that fit flows (the one ``benchmarks/README.md`` measures)
SMOKE_PRESET = "cpu/eplus"


def tiny_model_args(init_args: dict) -> dict:
    """A flow's ``init_args`` at smoke size: :data:`SMOKE_BLOCKS` blocks, 1/12 of the hidden units (>= 8).

    Everything else (bins, dropout, spline minima, learning rate, ``fast_training``) is kept.
    """
    hidden = max(
        SMOKE_MIN_HIDDEN, int(init_args.get("hidden_features", 64)) // SMOKE_HIDDEN_DIVISOR
    )
    return {**init_args, "n_blocks": SMOKE_BLOCKS, "hidden_features": hidden}


def tiny_config(source: Path, target: Path, epochs: int, showers: int = SMOKE_SHOWERS) -> Path:
    """Write the training config ``source`` at smoke size to ``target`` and return ``target``.

    The model per :func:`tiny_model_args`; ``epochs`` epochs (learning-rate milestones, counted in
    epochs, as they are); ``showers`` simulated showers (``data.n_simulated``); no progress bar; a
    snapshot checkpoint (``snapshot-`` ModelCheckpoint) every epoch where the config takes snapshots.
    """
    config = yaml.safe_load(Path(source).read_text())
    config["model"]["init_args"] = tiny_model_args(config["model"]["init_args"])
    trainer = config["trainer"]
    trainer.update(max_epochs=epochs, enable_progress_bar=False)
    for callback in trainer.get("callbacks") or []:
        init = callback.get("init_args") or {}
        if str(init.get("filename", "")).startswith("snapshot-"):
            init["every_n_epochs"] = 1
    config["data"]["init_args"]["n_simulated"] = showers
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def tiny_configs(folder: Path, epochs: int, preset: str = SMOKE_PRESET) -> Path:
    """``flow1.yaml`` and ``flow2.yaml`` of the shipped ``preset`` at smoke size (:func:`tiny_config`) in ``folder``."""
    from caloflow.configs import CONFIG_DIR, config_name

    source = CONFIG_DIR / config_name(preset)
    for name in ("flow1.yaml", "flow2.yaml"):
        tiny_config(source / name, Path(folder) / name, epochs)
    return Path(folder)


def tiny_checkpoints(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Flow I and Flow II checkpoints of the smoke-size preset, one epoch each on :data:`SMOKE_SHOWERS`
    simulated showers (``lightning fit`` semantics); the best checkpoint of each fit."""
    from caloflow.commands.demo import fit_config
    from caloflow.data.simulate import simulate_to_file

    folder = Path(folder)
    configs = tiny_configs(folder / "configs", epochs=1)
    particle = yaml.safe_load((configs / "flow2.yaml").read_text())["data"]["init_args"]["particle"]
    data = simulate_to_file(
        folder / f"{particle}_train.hdf5", particle, SMOKE_SHOWERS, seed=seed, progress=False
    )
    flow1 = fit_config(configs / "flow1.yaml", folder / "flow1", data, seed)
    flow2 = fit_config(configs / "flow2.yaml", folder / "flow2", data, seed)
    return flow1, flow2


def add_smoke_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--smoke``: the default run at smoke size; ``what`` says what shrinks (the option's help)."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"smoke size, the default run's comparisons and table, for testing the script: {what}",
    )


def apply_smoke(
    parser: argparse.ArgumentParser, args: argparse.Namespace, sizes: dict
) -> argparse.Namespace:
    """With ``args.smoke``, every option in ``sizes`` left at its default takes the smoke value; returns ``args``."""
    if args.smoke:
        for name, value in sizes.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args
