"""``caloflow demo``: the main job end to end on the embedded simulator, at demo size.

simulate -> fit Flow I -> fit Flow II -> generate -> evaluate, each step printed as the
stand-alone command that does the same thing, and the locations of all outputs at the end.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from caloflow.commands import argtypes
from caloflow.configs import shipped_config
from caloflow.errors import CaloflowError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=argtypes.output_dir,
        default="runs/demo",
        help="output folder (default runs/demo)",
    )
    parser.add_argument("--particle", default="eplus", choices=("eplus", "gamma", "piplus"))
    parser.add_argument(
        "--n",
        type=argtypes.positive_int,
        default=10_000,
        help="training showers to simulate (default 10000)",
    )
    parser.add_argument(
        "--n-reference",
        type=argtypes.positive_int,
        default=5_000,
        help="independent reference showers for the evaluation (default 5000)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="folder with flow1.yaml and flow2.yaml (default: the shipped configs/demo)",
    )
    argtypes.add_threads_option(
        parser,
        1,
        "the demo-size models gain little from more, and lose much when the cores are shared",
    )
    argtypes.add_progress_option(parser)
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default 0)")


def check_config(path: Path) -> None:
    """What can be refused in a training config before the simulation starts: YAML, the model's
    hyperparameters (the checks of ``lightning fit``; the rest is checked when each fit starts)."""
    import yaml

    from caloflow.checks import check_yaml_file, hyperparameter_problems

    check_yaml_file(path, "--configs")
    config = yaml.safe_load(path.read_text()) or {}
    model = config.get("model") if isinstance(config, dict) else None
    init = model.get("init_args") if isinstance(model, dict) else None
    for name, problem in hyperparameter_problems(init if isinstance(init, dict) else {}):
        raise CaloflowError(f"--configs {path}: model.init_args.{name}: {problem}")


def say(argv: list[str]) -> None:
    print("\n$ " + " ".join(shlex.quote(a) for a in argv), flush=True)


def run_caloflow(argv: list[str], progress: bool = True) -> None:
    from caloflow.commands.cli import main

    argv = argv if progress else [*argv, "--no-progress"]
    say(["caloflow", *argv])
    if main(argv) != 0:
        raise CaloflowError(f"step 'caloflow {argv[0]}' failed")


def fit_config(config: Path, root: Path, data: Path, seed: int, progress: bool = True) -> Path:
    from caloflow.commands.lightning_cli import cli_main

    argv = [
        "fit",
        "-c",
        str(config),
        "--data.path",
        str(data),
        "--trainer.default_root_dir",
        str(root),
        "--seed_everything",
        str(seed),
    ]
    if not progress:
        argv += ["--trainer.enable_progress_bar", "false"]
    say(["lightning", *argv])
    cli = cli_main(argv)
    best = cli.trainer.checkpoint_callback.best_model_path
    if not best:
        raise CaloflowError(f"{config}: training wrote no checkpoint")
    return Path(best)


def _check_configs(configs: Path) -> None:
    for name in ("flow1.yaml", "flow2.yaml"):
        if not (configs / name).is_file():
            raise CaloflowError(f"--configs {configs}: no {name} there")
        check_config(configs / name)


def _simulate(args: argparse.Namespace, n: int, seed: int, path: Path) -> None:
    argv = ["simulate", "--particle", args.particle, "--n", str(n), "--seed", str(seed)]
    run_caloflow([*argv, "--out", str(path)], args.progress)


def _print_outputs(outputs: dict[str, object]) -> None:
    for label, path in outputs.items():
        print(f"  {label:30s} {path}")


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    configs = Path(args.configs) if args.configs else shipped_config("demo/flow1").parent
    _check_configs(configs)
    start = time.time()
    train = out / "data" / f"{args.particle}_train.hdf5"
    reference = out / "data" / f"{args.particle}_reference.hdf5"
    _simulate(args, args.n, args.seed, train)
    _simulate(args, args.n_reference, args.seed + 1, reference)
    flow1 = fit_config(configs / "flow1.yaml", out / "flow1", train, args.seed, args.progress)
    flow2 = fit_config(configs / "flow2.yaml", out / "flow2", train, args.seed, args.progress)
    generated = out / f"caloflow_{args.particle}.hdf5"
    flows = ["--flow1", str(flow1), "--flow2", str(flow2)]
    seed = ["--seed", str(args.seed)]
    run_caloflow(
        ["generate", *flows, "--energies", str(reference), *seed, "--out", str(generated)],
        args.progress,
    )
    evaluation = out / "evaluation"
    # classifiers trained to convergence (early stopping)
    run_caloflow(
        ["evaluate", "--reference", str(reference), "--samples", f"CaloFlow={generated}"]
        + ["--out", str(evaluation), "--classifier", "dnn,features"]
        + ["--preprocessing", "normalized", "--runs", "1", *seed],
        args.progress,
    )
    print(f"\ncaloflow demo finished in {(time.time() - start) / 60:.1f} min. Outputs:")
    _print_outputs(
        {
            "training showers (simulated)": train,
            "reference showers (simulated)": reference,
            "Flow I checkpoint": flow1,
            "Flow II checkpoint": flow2,
            "generated showers": generated,
            "evaluation report": evaluation / "report.md",
            "figures": evaluation / "figures",
            "TensorBoard logs": f"tensorboard --logdir {out}",
        }
    )
    return 0


__all__ = ["add_arguments", "check_config", "say", "run_caloflow", "fit_config", "run"]
