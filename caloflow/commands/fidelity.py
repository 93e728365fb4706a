"""``caloflow benchmark fidelity``: converged classifier AUC against the CPU time spent on CaloFlow.

For one pair of training configs (``flow1.yaml`` and ``flow2.yaml`` in a folder, e.g. the shipped
CPU presets ``configs/cpu/eplus`` or ``configs/cpu/ds1-photons``):

1. simulate the training showers (``data.n_simulated`` of the Flow II config) and an independent
   reference of ``--n-reference`` showers (another seed) with the embedded simulator of the
   configs' detector (``model.init_args.geometry``: CaloGAN, or the dataset-1 barrel at the
   challenge's energy mix);
2. fit Flow I, then Flow II, each with ``lightning fit`` semantics (the configs as they are);
3. for every budget (a number of Flow II epochs with a snapshot checkpoint, see the configs'
   ``snapshot-`` ModelCheckpoint), generate one shower per reference incident energy with the
   best Flow I and the Flow II snapshot;
4. score every budget with the classifier test of ``caloflow evaluate`` (converged: early
   stopping), ``--runs`` runs each. CaloGAN: voxel DNN on unnormalized and normalized showers, and
   the high-level feature classifier; dataset 1: the challenge's cls-low, cls-low-normed and
   cls-high, under ``--protocol converged`` (default) or ``calochallenge`` (the official one).

One row per budget: the wall time a user of the recipe spends up to that point (simulation of the
training showers + Flow I + Flow II up to that epoch + generation of the reference's energies;
scoring is extra), the epochs, the showers, and the AUCs (mean +- std over the runs). Written to
``fidelity.json`` and ``fidelity.md`` in ``--out``.

Every finished step is recorded in ``steps.json`` in ``--out``; running the same command again
reuses the steps already done (and their measured times), so an interrupted benchmark continues
where it stopped and more budgets or runs can be scored later. The reference is the embedded
simulator, not GEANT4.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from caloflow.atomic import write_text_atomic
from caloflow.commands import argtypes
from caloflow.commands.demo import check_config, fit_config, run_caloflow
from caloflow.errors import CaloflowError

#: the rows' AUC columns of CaloGAN runs: (classifier, preprocessing key in metrics.json, title)
COLUMNS = (
    ("dnn", "unnormalized", "DNN unnormalized"),
    ("dnn", "normalized", "DNN normalized"),
    ("features", "high-level", "features"),
)
#: the rows' AUC columns of CaloChallenge (dataset-1) runs: (classifier, None, title)
CHALLENGE_COLUMNS = (
    ("cls-low", None, "cls-low"),
    ("cls-low-normed", None, "cls-low-normed"),
    ("cls-high", None, "cls-high"),
)
#: --classifiers of each detector family (default: all of them)
CLASSIFIERS = {"calogan": ("dnn", "features"), "challenge": tuple(c[0] for c in CHALLENGE_COLUMNS)}
STEPS_FILE = "steps.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        required=True,
        help="folder with flow1.yaml and flow2.yaml, or a shipped one (cpu/eplus, demo)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=argtypes.output_dir,
        help="output folder (data, checkpoints, generated showers, evaluation, fidelity.json/md)",
    )
    parser.add_argument(
        "--budgets",
        type=argtypes.comma_list(item=argtypes.positive_int, what="budget"),
        default=None,
        help="Flow II epochs to score, comma-separated, each a snapshot epoch of "
        "the Flow II config (default: its max_epochs)",
    )
    parser.add_argument(
        "--n-reference",
        type=argtypes.positive_int,
        default=10_000,
        help="independent reference showers (default 10000)",
    )
    _add_classifier_options(parser.add_argument_group("classifier test"))
    argtypes.add_threads_option(parser, 1)
    argtypes.add_progress_option(parser)
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default 0)")


def _add_classifier_options(group) -> None:
    group.add_argument(
        "--runs",
        type=argtypes.positive_int,
        default=3,
        help="classifier runs per budget and classifier (default 3)",
    )
    group.add_argument(
        "--classifiers",
        type=argtypes.comma_list(
            CLASSIFIERS["calogan"] + CLASSIFIERS["challenge"], what="classifier"
        ),
        default=None,
        help="CaloGAN: dnn and/or features; dataset 1: cls-low, cls-low-normed, cls-high "
        "(default: all of the detector's)",
    )
    group.add_argument(
        "--protocol",
        choices=("converged", "calochallenge"),
        default="converged",
        help="dataset 1 only: the classifiers' protocol, 'converged' (early stopping, default) or "
        "'calochallenge' (the challenge evaluator's 50 epochs); see caloflow evaluate",
    )
    group.add_argument(
        "--max-epochs",
        type=argtypes.positive_int,
        default=None,
        help="classifier epoch cap (default: caloflow evaluate's, >= 2 x 7200 updates)",
    )
    group.add_argument(
        "--patience",
        type=argtypes.positive_int,
        default=None,
        help="classifier early-stopping patience in epochs (default: caloflow evaluate's)",
    )


# ----------------------------------------------------------------------------------------- checks
def _configs_dir(value: str) -> Path:
    from caloflow.configs import CONFIG_DIR, config_name

    folder = Path(value)
    if not folder.is_dir():
        folder = CONFIG_DIR / config_name(value)
    for name in ("flow1.yaml", "flow2.yaml"):
        if not (folder / name).is_file():
            raise CaloflowError(f"--configs {value}: no {name} there")
    return folder


def _read(path: Path) -> dict:
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    return config if isinstance(config, dict) else {}


def _data(config: dict) -> dict:
    return (config.get("data") or {}).get("init_args") or {}


def _geometry(folder: Path, flow1: dict, flow2: dict) -> str:
    """The detector both configs train for (``model.init_args.geometry``, default calogan): a
    detector the embedded simulators know (calogan, ds1-photons, ds1-pions)."""
    from caloflow.geometry import BUILTIN

    names = []
    for name, config in (("flow1.yaml", flow1), ("flow2.yaml", flow2)):
        init = (config.get("model") or {}).get("init_args") or {}
        geometry = init.get("geometry", "calogan")
        if geometry not in BUILTIN:
            raise CaloflowError(
                f"--configs {folder}/{name}: model.init_args.geometry {geometry!r} has no embedded "
                f"simulator (use one of {', '.join(BUILTIN)})"
            )
        names.append(geometry)
    if names[0] != names[1]:
        raise CaloflowError(
            f"--configs {folder}: flow1.yaml is for {names[0]}, flow2.yaml for {names[1]}"
        )
    return names[0]


def _snapshot_every(flow2: dict) -> int | None:
    for callback in (flow2.get("trainer") or {}).get("callbacks") or []:
        init = callback.get("init_args") or {} if isinstance(callback, dict) else {}
        if str(init.get("filename", "")).startswith("snapshot-"):
            return int(init.get("every_n_epochs") or 1)
    return None


def plan(args: argparse.Namespace) -> dict:
    """What the benchmark will do, checked before any work: the configs, particle, sizes, budgets."""
    folder = _configs_dir(args.configs)
    for name in ("flow1.yaml", "flow2.yaml"):
        check_config(folder / name)
    flow1, flow2 = _read(folder / "flow1.yaml"), _read(folder / "flow2.yaml")
    geometry = _geometry(folder, flow1, flow2)
    family = "calogan" if geometry == "calogan" else "challenge"
    data1, data2 = _data(flow1), _data(flow2)
    if family == "calogan":
        particle = data2.get("particle", "eplus")
        if data1.get("particle", "eplus") != particle:
            raise CaloflowError(
                f"--configs {folder}: flow1.yaml is for {data1.get('particle', 'eplus')}, "
                f"flow2.yaml for {particle}"
            )
    else:
        particle = geometry  # the dataset's particle is part of its detector (ds1-photons, ...)
    classifiers = list(args.classifiers or CLASSIFIERS[family])
    wrong = [c for c in classifiers if c not in CLASSIFIERS[family]]
    if wrong:
        raise CaloflowError(
            f"--classifiers {','.join(wrong)}: not a classifier of {geometry} runs "
            f"(use {', '.join(CLASSIFIERS[family])})"
        )
    if family == "calogan" and args.protocol != "converged":
        raise CaloflowError(
            f"--protocol {args.protocol}: dataset-1 configs only (CaloGAN runs are judged with "
            "the converged protocol)"
        )
    epochs = int((flow2.get("trainer") or {}).get("max_epochs") or 0)
    if epochs < 1:
        raise CaloflowError(f"--configs {folder}/flow2.yaml: trainer.max_epochs must be set (>= 1)")
    every = _snapshot_every(flow2)
    budgets = args.budgets or [epochs]
    for budget in budgets:
        if budget > epochs or (budget != epochs and (every is None or budget % every)):
            raise CaloflowError(
                f"--budgets: Flow II epoch {budget} has no snapshot in {folder}/flow2.yaml "
                f"(max_epochs {epochs}, snapshot every {every or '-'} epochs)"
            )
    return {
        "configs": str(folder.resolve()),
        "particle": particle,
        "geometry": geometry,
        "family": family,
        "classifiers": classifiers,
        "protocol": args.protocol,
        "n_train": int(data2.get("n_simulated", 100_000)),
        "n_reference": args.n_reference,
        "flow2_epochs": epochs,
        "snapshot_every": every,
        "budgets": sorted(budgets),
        "seed": args.seed,
        "threads": args.threads,
        "progress": args.progress,
    }


# ------------------------------------------------------------------------------------------ steps
class Steps:
    """The finished steps of one ``--out`` folder with their outputs and measured times."""

    def __init__(self, out: Path, setup: dict):
        self.path = out / STEPS_FILE
        self.done: dict[str, dict] = {}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            keys = ("configs", "particle", "n_train", "n_reference", "seed")
            if any(saved.get("setup", {}).get(k) != setup[k] for k in keys):
                raise CaloflowError(
                    f"--out {out}: holds a benchmark of another setup ({self.path}); "
                    "use another folder"
                )
            self.done = saved.get("steps", {})
        self.setup = setup

    def run(self, name: str, work) -> dict:
        """Run ``work()`` (returns a dict of outputs) unless ``name`` is done; record wall and CPU time."""
        record = self.done.get(name)
        if record and all(Path(p).exists() for p in record.get("paths", [])):
            print(
                f"\n[{name}] done before ({record['wall_s'] / 60:.1f} min), reusing it", flush=True
            )
            return record
        wall, cpu = time.time(), time.process_time()
        record = dict(work())
        record.update(wall_s=time.time() - wall, cpu_s=time.process_time() - cpu, started=wall)
        self.done[name] = record
        write_text_atomic(
            self.path, json.dumps({"setup": self.setup, "steps": self.done}, indent=1)
        )
        return record


def _train(steps: Steps, plan_: dict, out: Path) -> dict:
    """Steps 1-2: the simulated files and both fits; returns the step records."""
    folder, seed = Path(plan_["configs"]), plan_["seed"]
    train = out / "data" / f"{plan_['particle']}_train.hdf5"
    reference = out / "data" / f"{plan_['particle']}_reference.hdf5"

    detector = (
        ["--particle", plan_["particle"]]
        if plan_["family"] == "calogan"
        else ["--dataset", plan_["geometry"]]  # at the challenge's energy mix
    )

    def simulate(n: int, seed_: int, path: Path):
        return lambda: (
            run_caloflow(
                [
                    "simulate",
                    *detector,
                    "--n",
                    str(n),
                    "--seed",
                    str(seed_),
                    "--out",
                    str(path),
                    "--no-progress",
                ]
            )
            or {"paths": [str(path)]}
        )

    def fit(name: str):
        return lambda: {
            "paths": [
                str(fit_config(folder / f"{name}.yaml", out / name, train, seed, plan_["progress"]))
            ]
        }

    return {
        "simulate": steps.run("simulate", simulate(plan_["n_train"], seed, train)),
        # another seed: the reference showers are independent of the training showers
        "reference": steps.run("reference", simulate(plan_["n_reference"], seed + 1, reference)),
        "flow1": steps.run("flow1", fit("flow1")),
        "flow2": steps.run("flow2", fit("flow2")),
    }


def _snapshot(flow2: dict, budget: int, plan_: dict) -> tuple[Path, float]:
    """The Flow II checkpoint after ``budget`` epochs and the fit's wall seconds up to it."""
    best = Path(flow2["paths"][0])
    path = best.parent / f"snapshot-epoch={budget - 1:03d}.ckpt"
    if (
        not path.is_file() and budget == plan_["flow2_epochs"]
    ):  # a config without snapshots: the final model
        path = best.parent / "last.ckpt"
    if not path.is_file():
        raise CaloflowError(f"{path}: no snapshot after {budget} Flow II epochs (see --budgets)")
    return path, min(path.stat().st_mtime - flow2["started"], flow2["wall_s"])


def _generate(steps: Steps, records: dict, plan_: dict, out: Path) -> dict[int, dict]:
    """Step 3: one shower per reference energy for every budget; returns {budget: row without AUCs}."""
    reference = records["reference"]["paths"][0]
    rows = {}
    for budget in plan_["budgets"]:
        snapshot, flow2_s = _snapshot(records["flow2"], budget, plan_)
        path = out / "generated" / f"caloflow_epochs{budget}.hdf5"
        record = steps.run(
            f"generate-{budget}",
            lambda: (
                run_caloflow(
                    [
                        "generate",
                        "--flow1",
                        records["flow1"]["paths"][0],
                        "--flow2",
                        str(snapshot),
                        "--energies",
                        reference,
                        "--seed",
                        str(plan_["seed"]),
                        "--out",
                        str(path),
                        "--no-progress",
                    ]
                )
                or {"paths": [str(path)]}
            ),
        )
        parts = {
            "simulate": records["simulate"]["wall_s"],
            "flow1": records["flow1"]["wall_s"],
            "flow2": flow2_s,
            "generate": record["wall_s"],
        }
        rows[budget] = {
            "flow2_epochs": budget,
            "flow2_checkpoint": str(snapshot),
            "samples": str(path),
            "wall_s": sum(parts.values()),
            "wall_s_parts": parts,
        }
    return rows


def columns(plan_: dict) -> tuple[tuple[str, str | None, str], ...]:
    """The AUC columns of the plan's detector family."""
    return COLUMNS if plan_.get("family", "calogan") == "calogan" else CHALLENGE_COLUMNS


def _evaluate_options(plan_: dict) -> list[str]:
    """The classifier options of ``caloflow evaluate`` for the plan's detector family."""
    classifiers = plan_["classifiers"]
    if plan_.get("family", "calogan") == "challenge":
        return ["--classifier", ",".join(classifiers), "--protocol", plan_["protocol"]]
    preprocessings = ["unnormalized", "normalized"] if "dnn" in classifiers else ["normalized"]
    return ["--classifier", ",".join(classifiers), "--preprocessing", ",".join(preprocessings)]


def _auc_entry(result: dict) -> dict:
    return {
        "mean": result["auc"]["mean"],
        "std": result["auc"]["std"],
        # the official protocol runs 50 epochs and keeps the best: nothing to converge
        "converged": result.get("converged", True),
        "runs": [r["auc"] for r in result["runs"]],
        "best_epochs": [r["best_epoch"] for r in result["runs"]],
    }


def _score(
    rows: dict[int, dict], records: dict, args: argparse.Namespace, plan_: dict, out: Path
) -> dict:
    """Step 4: ``caloflow evaluate`` of every budget's showers; fills the rows' AUCs, returns metrics."""
    # one folder per set of budgets (and protocol), so that scoring more later keeps earlier reports
    protocol = "" if plan_["protocol"] == "converged" else f"-{plan_['protocol']}"
    evaluation = out / ("evaluation-epochs" + "-".join(str(b) for b in rows) + protocol)
    run_caloflow(
        [
            "evaluate",
            "--reference",
            records["reference"]["paths"][0],
            "--samples",
            *[f"epochs{b}={row['samples']}" for b, row in rows.items()],
            *_evaluate_options(plan_),
            "--runs",
            str(args.runs),
            "--seed",
            str(args.seed),
            "--out",
            str(evaluation),
            *(["--max-epochs", str(args.max_epochs)] if args.max_epochs else []),
            *(["--patience", str(args.patience)] if args.patience else []),
        ],
        plan_["progress"],
    )
    metrics = json.loads((evaluation / "metrics.json").read_text())
    for budget, row in rows.items():
        scores = metrics["samples"][f"epochs{budget}"].get("classifier", {})
        row["auc"] = {}
        for classifier, key, _ in columns(plan_):
            result = scores.get(classifier, {})
            result = result.get(key) if key else result
            if result:
                row["auc"][_column_key(classifier, key, plan_)] = _auc_entry(result)
    return metrics


def _column_key(classifier: str, key: str | None, plan_: dict) -> str:
    """The key of an AUC in a row: ``dnn/normalized``; ``cls-low`` or ``cls-low/calochallenge``."""
    if key:
        return f"{classifier}/{key}"
    return (
        classifier
        if plan_.get("protocol", "converged") == "converged"
        else f"{classifier}/{plan_['protocol']}"
    )


def render(plan_: dict, rows: list[dict]) -> str:
    """The markdown table: one row per budget."""
    shown = _shown_columns(plan_, rows)
    head = ["particle", "Flow II epochs", "training showers", "wall [min]", "runs"] + [
        title for title, _ in shown
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            plan_["particle"],
            str(row["flow2_epochs"]),
            f"{plan_['n_train']:,}",
            f"{row['wall_s'] / 60:.1f}",
            _runs(row),
        ]
        for _, column in shown:
            auc = row.get("auc", {}).get(column)
            cells.append(
                "-"
                if auc is None
                else f"{auc['mean']:.3f} +- {auc['std']:.3f}"
                + ("" if auc["converged"] else " (NOT CONVERGED)")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _runs(row: dict) -> str:
    """The classifier runs behind a row's AUCs (``3``, or ``1, 3`` when scorings differ)."""
    counts = sorted({len(auc["runs"]) for auc in row.get("auc", {}).values() if "runs" in auc})
    return ", ".join(map(str, counts)) if counts else str(row.get("runs", "-"))


def _shown_columns(plan_: dict, rows: list[dict]) -> list[tuple[str, str]]:
    """(title, AUC key) of the table: the family's columns; for dataset 1 the official protocol's
    beside the converged ones when a row has them."""
    shown = []
    for classifier, key, title in columns(plan_):
        if key:
            shown.append((title, f"{classifier}/{key}"))
            continue
        for protocol in ("converged", "calochallenge"):
            column = classifier if protocol == "converged" else f"{classifier}/{protocol}"
            if protocol == plan_.get("protocol", "converged") or any(
                column in row.get("auc", {}) for row in rows
            ):
                shown.append((f"{title} ({protocol})", column))
    return shown


def _merge(path: Path, rows: dict[int, dict]) -> dict[int, dict]:
    """Rows scored by an earlier run of the same benchmark (other budgets) kept next to the new ones."""
    earlier = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    merged = {row["flow2_epochs"]: row for row in earlier}
    for budget, row in rows.items():
        # AUCs of another protocol or classifier scored earlier stay next to the new ones
        row["auc"] = {**merged.get(budget, {}).get("auc", {}), **row.get("auc", {})}
        merged[budget] = row
    return dict(sorted(merged.items()))


def run(args: argparse.Namespace) -> int:
    import torch

    from caloflow.timing import machine_info

    plan_ = plan(args)  # everything that can be refused, before any work
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out, plan_)
    records = _train(steps, plan_, out)
    rows = _generate(steps, records, plan_, out)
    _score(rows, records, args, plan_, out)
    for row in rows.values():
        row["runs"] = args.runs
    rows = _merge(out / "fidelity.json", rows)
    table = render(plan_, list(rows.values()))
    note = (
        "wall = simulation of the training showers + Flow I + Flow II up to the budget + generation of "
        f"{plan_['n_reference']:,} showers (scoring extra); AUC: held-out, mean +- std over the runs "
        "given per row (converged: early stopping; calochallenge: the official 50-epoch protocol), "
        "against an independent reference from the embedded simulator (not GEANT4)"
    )
    result = {
        "plan": plan_,
        "machine": machine_info(),
        "rows": list(rows.values()),
        "note": note,
        "steps": {k: {"wall_s": v["wall_s"], "cpu_s": v["cpu_s"]} for k, v in steps.done.items()},
    }
    write_text_atomic(out / "fidelity.json", json.dumps(result, indent=1))
    write_text_atomic(out / "fidelity.md", table + "\n" + note + "\n")
    print("\n" + table + "\n" + note)
    return 0


__all__ = ["COLUMNS", "STEPS_FILE", "add_arguments", "plan", "Steps", "render", "run"]
