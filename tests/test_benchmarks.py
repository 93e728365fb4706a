"""Every benchmark script runs its default comparisons at smoke size and prints its table.

Each ``benchmarks/*.py`` (helpers whose names start with ``_`` are not scripts) is run as a real
subprocess with ``--smoke``; the test parses the markdown table it prints: the header, one row per
compared variant, and the cells that say the comparison was made. Nothing is timed: a busy machine
makes the numbers larger, never the test fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.helpers import REPO, run_script

SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
NUMBER = r"~?[\d,]+(\.\d+)?(e[+-]\d+)?"


def parse_table(stdout: str, header: list[str]) -> list[dict[str, str]]:
    """The rows (column title -> cell) of the markdown table in ``stdout`` whose header is ``header``."""
    lines = stdout.splitlines()
    title = "| " + " | ".join(header) + " |"
    assert title in lines, f"no table with the header {title!r} in:\n{stdout[-3000:]}"
    start = lines.index(title)
    assert (
        re.fullmatch(r"\|(:?-+:?\|)+", lines[start + 1])
        and lines[start + 1].count("|") == len(header) + 1
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def number(cell: str) -> float:
    """A cell's number: thousands separators, a leading ~ and a trailing x or note dropped."""
    match = re.match(NUMBER, cell)
    assert match, cell
    return float(match.group(0).lstrip("~").replace(",", ""))


def check_simulate(stdout: str) -> None:
    rows = parse_table(
        stdout,
        [
            "particle",
            "n",
            "best wall [s]",
            "showers/s (best wall)",
            "showers/s (median wall)",
            "showers/s (CPU time)",
            "voxels > 0",
        ],
    )
    assert [r["particle"] for r in rows] == ["eplus", "gamma", "piplus"]
    for r in rows:
        assert (
            r["n"] == "64"
            and number(r["showers/s (best wall)"]) >= number(r["showers/s (median wall)"]) > 0
        )
        assert 0 < number(r["voxels > 0"]) <= 1
    ds1 = parse_table(
        stdout,
        [
            "detector",
            "energies",
            "n",
            "best wall [s]",
            "showers/s (best wall)",
            "showers/s (CPU time)",
            "spots per shower",
            "voxels > 0",
        ],
    )
    assert [(r["detector"], r["energies"]) for r in ds1] == [
        ("ds1-photons", "challenge mix"),
        ("ds1-pions", "challenge mix"),
        ("ds1-photons", "4194.304 GeV"),
    ]
    for r in ds1:
        assert r["n"] == "512" and number(r["showers/s (CPU time)"]) > 0
        assert 0 < number(r["voxels > 0"]) <= 1
    # the same work per shower at the highest energy as at the challenge mix
    assert ds1[0]["spots per shower"] == ds1[2]["spots per shower"]
    memory = parse_table(
        stdout,
        ["file", "n", "wall [s] (written)", "showers/s (CPU time)", "peak traced memory [MiB]"],
    )
    assert [r["n"] for r in memory] == ["256", "1024"]
    assert all(number(r["peak traced memory [MiB]"]) > 0 for r in memory)


def check_training(stdout: str, sizes: tuple[str, ...] = ("paper", "demo")) -> None:
    errors = (
        "first-step gradient error vs float64: stock / caloflow",
        "update error after the steps: stock vs float64 / caloflow vs float64 / caloflow vs stock",
    )
    rows = parse_table(
        stdout,
        [
            "size",
            "parameters",
            "batch",
            "threads",
            "stock ms/step (wall / CPU)",
            "caloflow ms/step (wall / CPU)",
            "speed-up (wall / CPU)",
            "first loss, caloflow vs stock",
            *errors,
        ],
    )
    assert [re.sub(r" \(hidden \d+\)$", "", r["size"]) for r in rows] == list(sizes)
    med_max = rf"{NUMBER} \({NUMBER}\)"
    for r in (
        rows
    ):  # both steps timed side by side, and the agreement check made (one thread: every row)
        assert r["threads"] == "1" and number(r["parameters"]) > 0
        assert re.fullmatch(rf"{NUMBER}x / {NUMBER}x", r["speed-up (wall / CPU)"])
        assert number(r["first loss, caloflow vs stock"]) < 1e-5
        assert re.fullmatch(rf"{med_max} / {med_max}", r[errors[0]])
        assert re.fullmatch(rf"{med_max} / {med_max} / {med_max}", r[errors[1]])


def check_training_float32(stdout: str) -> None:
    med_max = rf"({NUMBER}) \(({NUMBER})\)"
    pieces = parse_table(
        stdout,
        ["size", "piece", "quantity", "stock: error vs float64", "caloflow: error vs float64"],
    )
    quantities = [
        ("masked products", "output"),
        ("masked products", "input gradient"),
        ("masked products", "weight gradient"),
        ("spline", "output"),
        ("spline", "log det"),
        ("spline", "input gradient"),
        ("spline", "MADE-output gradient"),
        ("Adam step", "update"),
    ]
    assert [(re.sub(r"\d+", "N", r["size"]), r["piece"], r["quantity"]) for r in pieces] == [
        (size, *q) for size in ("paper (hidden N)", "demo (hidden N)") for q in quantities
    ]
    for r in pieces:  # every piece of both steps compared with float64: float32 rounding
        for cell in (r["stock: error vs float64"], r["caloflow: error vs float64"]):
            assert re.fullmatch(med_max, cell) and number(cell) < 1e-3, cell
    steps = parse_table(
        stdout,
        [
            "size",
            "parameters",
            "batches",
            "gradient error vs float64: stock / caloflow",
            "update error vs float64: stock / caloflow",
            "update error mean: stock / caloflow",
            "caloflow's update closer",
            "parameters carrying 90% of the squared update error: stock / caloflow",
        ],
    )
    assert [re.sub(r"\d+", "N", r["size"]) for r in steps] == [
        "paper (hidden N)",
        "demo (hidden N)",
    ]
    for r in steps:
        assert r["batches"] == "2" and re.fullmatch(r"[012] of 2", r["caloflow's update closer"])
        assert re.fullmatch(
            rf"{med_max} / {med_max}", r["update error vs float64: stock / caloflow"]
        )


def check_sampling(stdout: str) -> None:
    rows = parse_table(
        stdout,
        [
            "batch",
            "nflows inverse",
            "fast_inverse",
            "log_prob",
            "speed-up vs nflows",
            "fast / log_prob",
            "max abs diff (rows)",
        ],
    )
    assert [r["batch"] for r in rows] == ["4", "32"]
    measured, estimated = rows
    assert re.fullmatch(NUMBER, measured["nflows inverse"]) and measured[
        "max abs diff (rows)"
    ].endswith("(4)")
    assert estimated["nflows inverse"].endswith("(est., skipped)") and estimated[
        "max abs diff (rows)"
    ].endswith("(2)")
    for r in rows:  # the same showers from both samplers (float32 rounding)
        assert number(r["max abs diff (rows)"]) < 1e-3 and number(r["fast_inverse"]) > 0


def check_encode_once(stdout: str) -> None:
    rows = parse_table(
        stdout,
        [
            "classifier",
            "s / epoch, encoded every batch",
            "s / epoch, encoded once",
            "speedup",
            "same weights",
        ],
    )
    assert [r["classifier"] for r in rows] == [
        "dnn unnormalized",
        "dnn normalized",
        "features high-level",
    ]
    for r in rows:
        assert r["same weights"] == "yes" and re.fullmatch(rf"{NUMBER}x", r["speedup"])


def check_hmc_chunks(stdout: str) -> None:
    rows = parse_table(
        stdout, ["chains per block", "ms / chain", "speed-up", "max abs grad difference"]
    )
    assert [r["chains per block"] for r in rows] == ["all (40, baseline)", "20", "10", "5"]
    assert rows[0]["speed-up"] == "1.00x" and rows[0]["max abs grad difference"] == "0"
    for r in rows:  # the same gradient in blocks (float32 rounding)
        assert number(r["ms / chain"]) > 0 and number(r["max abs grad difference"]) < 1e-3


def check_fidelity(stdout: str) -> None:
    auc = ["DNN unnormalized", "DNN normalized", "features"]
    rows = parse_table(
        stdout, ["particle", "Flow II epochs", "training showers", "wall [min]", "runs", *auc]
    )
    assert len(rows) == 1  # one budget: the Flow II config's epochs
    (row,) = rows
    assert (row["particle"], row["Flow II epochs"], row["training showers"], row["runs"]) == (
        "eplus",
        "2",
        "400",
        "2",
    )
    for column in auc:  # every classifier scored, mean +- std over the runs
        assert re.match(r"[01]\.\d{3} \+- \d\.\d{3}", row[column]), row[column]


#: script -> the check of its --smoke output
def check_challenge_evaluation(stdout: str) -> None:
    rows = parse_table(
        stdout, ["sample", "input", "AUC", "AUC spread", "JSD", "converged", "minutes"]
    )
    assert [r["input"] for r in rows] == ["cls-low", "cls-low-normed", "cls-high"] * 2
    assert rows[0]["sample"].startswith("same distribution") and " x 1.05" in rows[-1]["sample"]
    for r in rows:
        assert 0 <= number(r["AUC"]) <= 1 and number(r["AUC spread"]) >= 0
        assert r["converged"] in ("yes", "no", "n/a")


CHECKS: dict[str, Callable[[str], None]] = {
    "challenge_evaluation.py": check_challenge_evaluation,
    "simulate.py": check_simulate,
    "training.py": check_training,
    "training_float32.py": check_training_float32,
    "sampling.py": check_sampling,
    "encode_once.py": check_encode_once,
    "hmc_chunks.py": check_hmc_chunks,
    "fidelity.py": check_fidelity,
}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_runs_at_smoke_size_and_prints_its_table(script):
    assert script.name in CHECKS, (
        f"benchmarks/{script.name} has no smoke test: add its check to CHECKS"
    )
    proc = run_script(script.relative_to(REPO), "--smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    CHECKS[script.name](proc.stdout)


def test_training_times_the_dataset_1_teacher_sizes():
    """The dataset-1 teacher's Flow II (ds1 configs, ds1 showers) at smoke size: both steps timed, same
    first loss, the agreement check made."""
    proc = run_script("benchmarks/training.py", "--smoke", "--sizes", "ds1-photons", "ds1-pions")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_training(proc.stdout, sizes=("ds1-photons", "ds1-pions"))


def test_every_check_has_its_script():
    assert sorted(CHECKS) == [p.name for p in SCRIPTS]
