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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

SEED_LIMIT = 2**32


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line ``PROG: error: MESSAGE`` and exit status 2.

    Subparsers made with :meth:`add_subparsers` are of this class too (argparse's default).
    """

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument "):  # "argument --n: ..." -> "--n: ..."
            message = message[len("argument "):]
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
    """A file to write: not a directory, and its folder exists or can be created."""
    if not str(value).strip():
        _fail("expected a file path, got ''")
    path = Path(value)
    if path.is_dir():
        _fail(f"'{value}' is a directory, expected a file path")
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


def comma_list(choices: Iterable[str] | None = None, item: Callable[[str], Any] | None = None,
               what: str = "value") -> Callable[[str], list]:
    """A type for ``a,b,c``: the items in order, without repeats, each in ``choices`` (if given) and
    converted by ``item`` (if given). ``what`` names an item in the messages ("unknown generator 'x'")."""
    allowed = tuple(choices) if choices is not None else None

    def parse(value: str) -> list:
        items = list(dict.fromkeys(v.strip() for v in str(value).split(",") if v.strip()))
        if not items:
            _fail(f"empty list, expected comma-separated {what}s"
                  + (f" from {','.join(allowed)}" if allowed else ""))
        if allowed is not None:
            unknown = [v for v in items if v not in allowed]
            if unknown:
                _fail(f"unknown {what} '{','.join(unknown)}', choose from {', '.join(allowed)}")
        return [item(v) for v in items] if item is not None else items

    parse.__name__ = f"comma-separated {what}s"
    return parse


__all__ = [
    "ArgumentParser", "positive_int", "nonnegative_int", "seed", "finite_float", "positive_float",
    "existing_file", "output_file", "output_dir", "comma_list", "SEED_LIMIT",
]
