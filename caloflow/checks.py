"""Checks of user input that are not parsing: same-file outputs, YAML files, hyperparameter ranges.

The command modules and the config readers of :mod:`refine` share them; each problem is one
:class:`caloflow.errors.CaloflowError` line (or a list of ``(name, problem)`` pairs) that names the
option, file or key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caloflow.errors import CaloflowError

#: seeds are numpy/torch 32-bit seeds
SEED_LIMIT = 2**32


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name the same file (also through links, relative paths, '..')."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_an_input(out, inputs: dict[str, Any], option: str = "--out") -> None:
    """Refuse an output that is one of the inputs (``{option: path or None}``), before any work.

    Raises:
        CaloflowError: ``--out X: is the same file as --energies Y; refusing to overwrite an input``.
    """
    for name, path in inputs.items():
        if path is not None and same_file(out, path):
            raise CaloflowError(
                f"{option} {out}: is the same file as {name} {path}; refusing to overwrite an input"
            )


def check_yaml_file(path, option: str) -> None:
    """A one-line :class:`caloflow.errors.CaloflowError` naming ``option`` and the file when ``path``
    cannot be read or is not YAML (jsonargparse's own message does not name the file)."""
    import yaml

    try:
        yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise CaloflowError(f"{option} {path}: cannot read it ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CaloflowError(f"{option} {path}: not valid YAML{where} ({problem})") from None


# ------------------------------------------------------------------------- model hyperparameters
#: integer hyperparameters that may be 0 (the others named like sizes must be >= 1)
_MAY_BE_ZERO = {"num_workers", "n_warmup", "burn_in", "warmup_steps"}


def _numbers(value) -> list | None:
    """``value`` as a list of numbers (a number, or a list/tuple of numbers); None if it is not numeric."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        return None
    return items


def _rule(name: str) -> tuple[Callable[[float], bool], str] | None:
    """The range check of a hyperparameter, by its name: (ok(x), what it must be), or None for "finite"."""
    if name in ("gamma", "lr_decay") or (name.endswith("_decay") and name != "weight_decay"):
        return (lambda x: 0 < x <= 1), "in (0, 1]"
    if (
        name in ("lr", "learning_rate", "energy_scale")
        or name.startswith("lr_")
        or name.endswith("_lr")
    ):
        return (lambda x: x > 0), "a number > 0"
    if name.endswith("_scale") and name.startswith(
        "max_"
    ):  # a bound, e.g. a coupling's max_log_scale
        return (lambda x: x > 0), "a number > 0"
    if name in ("weight_decay", "threshold_kev", "energy_loss_weight") or name.endswith("_weight"):
        return (lambda x: x >= 0), "a number >= 0"
    if name == "dropout" or name.endswith("_dropout") or name in ("ema", "beta1", "beta2", "betas"):
        return (lambda x: 0 <= x < 1), "in [0, 1)"
    if name == "momentum":
        return (lambda x: 0 <= x <= 1), "in [0, 1]"
    if name == "alpha":  # the logit transform's alpha (paper eq. 4.2)
        return (lambda x: 0 < x < 0.5), "in (0, 0.5)"
    if name == "seed" or name.endswith("_seed"):
        return (lambda x: x == int(x) and 0 <= x < SEED_LIMIT), "an integer in [0, 2**32)"
    if name == "milestones" or name in _MAY_BE_ZERO:
        return (
            lambda x: x == int(x) and x >= 0
        ), "integers >= 0" if name == "milestones" else "an integer >= 0"
    if (
        name in ("hidden", "features", "epochs", "batch_size")
        or name.startswith(("n_", "num_"))
        or name.endswith(
            ("_features", "_channels", "_dim", "_kernels", "_steps", "_size", "_blocks", "_bins")
        )
    ):
        return (lambda x: x == int(x) and x >= 1), "an integer >= 1"
    return None


def hyperparameter_problems(values, prefix: str = "") -> list[tuple[str, str]]:
    """Values no training can use, judged by name (every model gets the same rules):

    * every number finite (no NaN, no inf);
    * ``lr``, ``lr_*``, ``*_lr``, ``learning_rate`` > 0; ``gamma`` and ``*_decay`` (not ``weight_decay``) in
      (0, 1]; ``weight_decay`` and ``*_weight`` >= 0; ``dropout``, ``ema``, ``beta1``/``beta2``/``betas`` in
      [0, 1); ``alpha`` (logit) in (0, 0.5);
    * sizes (``n_*``, ``num_*``, ``hidden``, ``*_features``, ``*_channels``, ``*_dim``, ``*_blocks``, ...)
      integers >= 1; ``milestones`` integers >= 0; seeds in [0, 2**32); bounds ``max_*_scale`` > 0;
    * ``energy_range*``: 0 < LOW < HIGH.

    ``values``: a mapping of hyperparameters (nested mappings are checked with dotted names).
    Returns ``[(dotted name, "must be ..., got ...")]``.
    """
    if hasattr(values, "as_dict"):  # a jsonargparse Namespace
        values = values.as_dict()
    problems: list[tuple[str, str]] = []
    items = values.items() if hasattr(values, "items") else []
    for key, value in items:
        name = f"{prefix}{key}"
        if hasattr(value, "items") or hasattr(value, "as_dict"):
            problems += hyperparameter_problems(value, f"{name}.")
            continue
        numbers = _numbers(value)
        if numbers is None:
            continue
        shown = value if not isinstance(value, float) else f"{value:g}"
        if not all(math.isfinite(x) for x in numbers):
            problems.append((name, f"must be finite, got {shown}"))
            continue
        if str(key).startswith("energy_range"):
            if len(numbers) != 2 or not 0 < numbers[0] < numbers[1]:
                problems.append((name, f"must be [LOW, HIGH] with 0 < LOW < HIGH, got {shown}"))
            continue
        rule = _rule(str(key))
        if rule is not None and not all(rule[0](x) for x in numbers):
            problems.append((name, f"must be {rule[1]}, got {shown}"))
    return problems


__all__ = [
    "SEED_LIMIT",
    "same_file",
    "check_not_an_input",
    "check_yaml_file",
    "hyperparameter_problems",
]
