"""One way to parse numbers and paths: the argparse types of ``caloflow.commands.argtypes`` and the one-line parser."""

from __future__ import annotations

import argparse
import math

import pytest

from caloflow.commands import argtypes
from caloflow.commands.cli import main


@pytest.mark.parametrize(
    "parse, value, expected",
    [
        (argtypes.positive_int, "10000", 10000),
        (argtypes.positive_int, " 7 ", 7),
        (argtypes.nonnegative_int, "0", 0),
        (argtypes.seed, "0", 0),
        (argtypes.seed, str(2**32 - 1), 2**32 - 1),
        (argtypes.positive_float, "1e-3", 1e-3),
        (argtypes.finite_float, "-2.5", -2.5),
    ],
)
def test_good_values(parse, value, expected):
    assert parse(value) == expected


@pytest.mark.parametrize(
    "parse, value, message",
    [
        (argtypes.positive_int, "0", "must be positive, got '0'"),
        (argtypes.positive_int, "1e4", "expected an integer, got '1e4'"),
        (argtypes.positive_int, "2.0", "expected an integer"),
        (argtypes.nonnegative_int, "-1", "must be non-negative"),
        (argtypes.seed, "-1", "[0, 2**32)"),
        (argtypes.seed, str(2**32), "[0, 2**32)"),
        (argtypes.positive_float, "0", "must be positive"),
        (argtypes.positive_float, "nan", "finite"),
        (argtypes.finite_float, "inf", "finite"),
        (argtypes.finite_float, "x", "expected a number, got 'x'"),
    ],
)
def test_bad_values(parse, value, message):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse(value)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_paths(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    assert argtypes.existing_file(str(f)) == str(f)
    for bad, message in [
        (str(tmp_path / "nope"), "no such file"),
        (str(tmp_path), "is a directory"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            argtypes.existing_file(bad)
    assert argtypes.output_file(
        str(tmp_path / "new" / "deeper" / "out.h5")
    )  # folders can be created
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        argtypes.output_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="not a directory"):
        argtypes.output_file(str(f / "out.h5"))  # its folder would have to be a file
    assert argtypes.output_dir(str(tmp_path / "new")) and argtypes.output_dir(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="not a folder"):
        argtypes.output_dir(str(f))


def test_comma_list():
    parse = argtypes.comma_list(("a", "b", "c"), what="letter")
    assert parse("c, a,c") == ["c", "a"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown letter 'x', choose from a, b, c"):
        parse("a,x")
    with pytest.raises(argparse.ArgumentTypeError, match="empty list"):
        parse(" , ")
    assert argtypes.comma_list(item=float)("1,2.5") == [1.0, 2.5]
    assert math.isnan(argtypes.comma_list(item=float)("nan")[0])


def test_parser_errors_are_one_line(capsys):
    parser = argtypes.ArgumentParser(prog="caloflow thing")
    parser.add_argument("--n", type=argtypes.positive_int, required=True)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--n", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "caloflow thing: error: --n: must be positive, got '0'\n"


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["simulate", "--particle", "eplus", "--n", "1e4", "--out", "x.h5"],
            "caloflow simulate: error: --n: expected an integer, got '1e4'",
        ),
        (
            ["generate", "--calogan", "g.ckpt", "--n", "5", "--seed", "-3", "--out", "x.h5"],
            "caloflow generate: error: --seed: must be an integer in [0, 2**32), got '-3'",
        ),
        (
            ["refine", "--toy", "donut", "--threads", "0", "--out", "o"],
            "caloflow refine: error: --threads: must be positive, got '0'",
        ),
        (["demo", "--n", "-5"], "caloflow demo: error: --n: must be positive, got '-5'"),
        (["nope"], "caloflow: error: "),
    ],
)
def test_every_command_reports_bad_numbers_in_one_line(argv, line, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line), err


ALL = {"--seed", "--out", "--no-progress", "--threads"}
#: the common options of each command: each means the same everywhere (the benchmark draws no bars)
COMMON = {
    "simulate": ALL - {"--threads"},
    "generate": ALL,
    "evaluate": ALL,
    "demo": ALL,
    "refine": ALL,
    "benchmark": ALL - {"--no-progress"},
}


@pytest.mark.parametrize("command", sorted(COMMON))
def test_common_options_mean_the_same_everywhere(command, capsys):
    import importlib

    from caloflow.commands.cli import COMMANDS

    assert main([command, "--help"]) == 0
    shown = set(capsys.readouterr().out.replace("[", " ").replace("]", " ").split())
    assert COMMON[command] <= shown
    parser = argtypes.ArgumentParser(prog=command)
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    if "--no-progress" in COMMON[command]:
        assert (
            actions["--no-progress"].dest == "progress"
            and actions["--no-progress"].default is not False
        )
    if "--threads" in COMMON[command]:
        assert actions["--threads"].type is argtypes.positive_int
    assert actions["--seed"].type is argtypes.seed
