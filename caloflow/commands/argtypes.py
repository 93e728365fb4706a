"""One way to parse numbers and paths on every ``caloflow`` command (and ``python -m refine.laser``).

The functions are argparse ``type=`` callables: each returns the parsed value or raises
:class:`argparse.ArgumentTypeError` with a short message, which :class:`ArgumentParser` prints as
one line ``caloflow <command>: error: --option: message`` (no usage block) with exit status 2.

Path types check and return the value as given (a ``str``), so code that used the plain string
keeps working.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from caloflow.checks import SEED_LIMIT

#: a negative number as a value ("-1e-3", "-.5", "-inf"), not an option
NEGATIVE_NUMBER = re.compile(
    r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
)


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (``args.progress`` False): no progress bars; the one-line status messages stay."""
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (status lines are still printed)",
    )


def add_threads_option(
    parser: argparse.ArgumentParser, default: int | None = 1, why: str = ""
) -> None:
    """``--threads N``: torch's CPU threads (``torch.set_num_threads``) for the whole command."""
    shown = "torch's choice" if default is None else str(default)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        help=f"torch CPU threads (default {shown}{': ' + why if why else ''})",
    )


def report_error(prog: str, message: str, code: int = 2) -> int:
    """Print ``PROG: error: MESSAGE`` on stderr (one line) and return the exit status ``code``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line ``PROG: error: MESSAGE`` and exit status 2.

    Subparsers made with :meth:`add_subparsers` are of this class too (argparse's default).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "-1e-3", "-.5", "-inf" are values, not options (argparse knows only "-1" and "-1.5"), so that
        # "--energy-range -1e-3 5" reaches the type check instead of "expected 2 arguments"
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument "):  # "argument --n: ..." -> "--n: ..."
            message = message[len("argument ") :]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fail(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(message)


def _integer(value: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        _fail(f"expected an integer, got '{value}'")


def _number(value: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        _fail(f"expected a number, got '{value}'")
    if not math.isfinite(x):
        _fail(f"expected a finite number, got '{value}'")
    return x


def _within(x, value: str, ok: bool, what: str):
    """``x`` if ``ok``, else a one-line error saying what ``value`` must be."""
    if not ok:
        _fail(f"must be {what}, got '{value}'")
    return x


def positive_int(value: str) -> int:
    """An integer > 0 (plain digits: ``10000``, not ``1e4``)."""
    n = _integer(value)
    return _within(n, value, n > 0, "positive")


def nonnegative_int(value: str) -> int:
    """An integer >= 0."""
    n = _integer(value)
    return _within(n, value, n >= 0, "non-negative")


def seed(value: str) -> int:
    """A random seed: an integer with 0 <= seed < 2**32 (what numpy and torch both accept)."""
    n = _integer(value)
    return _within(n, value, 0 <= n < SEED_LIMIT, "an integer in [0, 2**32)")


def finite_float(value: str) -> float:
    """A finite number (no nan, no inf)."""
    return _number(value)


def positive_float(value: str) -> float:
    """A finite number > 0."""
    x = _number(value)
    return _within(x, value, x > 0, "positive")


def existing_file(value: str) -> str:
    """The path of an existing file."""
    path = Path(value)
    if path.is_dir():
        _fail(f"'{value}' is a directory, expected a file")
    if not path.is_file():
        _fail(f"no such file: {value}")
    return value


#: --energies value for the official CaloChallenge dataset-1 energy mix.
CHALLENGE_ENERGIES = "challenge"


def energies_source(value: str) -> str:
    """``--energies``: ``challenge`` or the path of an existing shower file."""
    return value if value == CHALLENGE_ENERGIES else existing_file(value)


def add_energies_option(parser: argparse.ArgumentParser) -> None:
    """``--energies challenge|FILE``, with the same meaning in every command that makes showers."""
    parser.add_argument(
        "--energies",
        type=energies_source,
        metavar="challenge|FILE",
        help="incident energies: FILE, a shower file (CaloGAN or CaloChallenge) whose incident "
        "energies are used in order (the first --n; all by default); or 'challenge', the "
        "official dataset-1 mix, 2^8..2^22 MeV (0.256..4194.304 GeV) with the challenge's counts "
        "scaled to --n (dataset-1 geometries only)",
    )


def _creatable_dir(path: Path, value: str) -> None:
    """``path`` is, or can be made, a directory: its first existing ancestor is a writable directory."""
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                _fail(f"cannot create '{value}': '{ancestor}' is not a directory")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                _fail(f"cannot write in '{ancestor}' (permission denied)")
            return


def output_file(value: str) -> str:
    """A file to write: not a directory (nor a name ending in '/'), not a device or other special
    file, and its folder exists or can be created, in a writable place."""
    if not str(value).strip():
        _fail("expected a file path, got ''")
    path = Path(value)
    if path.is_dir():
        _fail(f"'{value}' is a directory, expected a file path")
    if str(value).endswith(("/", os.sep)):
        _fail(f"'{value}' names a folder, expected a file path")
    if path.exists() and not path.is_file():
        _fail(f"'{value}' exists and is not a regular file")
    _creatable_dir(path.absolute().parent, value)
    return value


def output_dir(value: str) -> str:
    """A folder to write into: an existing folder, or one that can be created."""
    if not str(value).strip():
        _fail("expected a folder path, got ''")
    path = Path(value)
    if path.exists() and not path.is_dir():
        _fail(f"'{value}' exists and is not a folder")
    _creatable_dir(path.absolute(), value)
    return value


def device(value: str) -> str:
    """A torch device that this machine has: ``cpu``, ``cuda``, ``cuda:N`` (or ``mps``); returned as given."""
    import torch

    text = str(value).strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        _fail(f"'{value}' is not a torch device (cpu, cuda, cuda:N)")
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            _fail(
                f"'{value}' is not available: this torch {torch.__version__} is built without CUDA (use cpu)"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            _fail(f"'{value}' is not available: no CUDA device on this machine (use cpu)")
        if dev.index is not None and dev.index >= count:
            _fail(
                f"'{value}' is not available: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return text
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            _fail(f"'{value}' is not available on this machine (use cpu)")
        return text
    _fail(f"'{value}' is not supported, expected cpu, cuda or cuda:N")


def comma_list(
    choices: Iterable[str] | None = None,
    item: Callable[[str], Any] | None = None,
    what: str = "value",
) -> Callable[[str], list]:
    """A type for ``a,b,c``: the items in order, without repeats, each in ``choices`` (if given) and
    converted by ``item`` (if given). ``what`` names an item in the messages ("unknown generator 'x'")."""
    allowed = tuple(choices) if choices is not None else None

    def parse(value: str) -> list:
        items = list(dict.fromkeys(v.strip() for v in str(value).split(",") if v.strip()))
        if not items:
            _fail(
                f"empty list, expected comma-separated {what}s"
                + (f" from {','.join(allowed)}" if allowed else "")
            )
        if allowed is not None:
            unknown = [v for v in items if v not in allowed]
            if unknown:
                _fail(f"unknown {what} '{','.join(unknown)}', choose from {', '.join(allowed)}")
        return [item(v) for v in items] if item is not None else items

    parse.__name__ = f"comma-separated {what}s"
    return parse


__all__ = [
    "CHALLENGE_ENERGIES",
    "energies_source",
    "add_energies_option",
    "ArgumentParser",
    "NEGATIVE_NUMBER",
    "add_progress_option",
    "add_threads_option",
    "report_error",
    "positive_int",
    "nonnegative_int",
    "seed",
    "finite_float",
    "positive_float",
    "existing_file",
    "output_file",
    "output_dir",
    "comma_list",
    "device",
]
