"""The configs shipped inside the package, and ``caloflow config NAME``.

The YAML files in this folder (``flow1``, ``flow2``, ``calogan``, ``demo/``, ``smoke/``,
``laser/``) are installed with caloflow; in a checkout, the repository's ``configs`` is a link to
this folder. A config is named by its path below the folder, with or without ``.yaml`` and with or
without a leading ``configs/``: ``flow2``, ``smoke/flow1.yaml``, ``configs/laser/gaussians.yaml``.
``lightning fit -c NAME`` falls back to the shipped file when ``NAME`` is not a file, and
``caloflow config NAME`` copies one where it can be edited.
"""

from __future__ import annotations

from pathlib import Path

from caloflow.errors import CaloflowError

CONFIG_DIR = Path(__file__).resolve().parent
_SUFFIXES = (".yaml", ".yml")
_PREFIXES = ("caloflow/configs/", "configs/")


def list_configs() -> list[str]:
    """The names of every shipped config, sorted (``calogan``, ``demo/flow1``, ...)."""
    return sorted(
        p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        for p in CONFIG_DIR.rglob("*")
        if p.suffix in _SUFFIXES and p.is_file()
    )


def config_name(name: str) -> str:
    """``name`` in the canonical form of :func:`list_configs` (no ``./``, ``configs/`` or ``.yaml``)."""
    name = str(name).strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name


def is_shipped(name: str) -> bool:
    """Whether ``name`` names a shipped config."""
    return config_name(name) in list_configs()


def shipped_config(name: str) -> Path:
    """The installed path of the shipped config ``name`` (``flow2``, ``demo/flow1``, ``configs/flow2.yaml``).

    Raises:
        CaloflowError: no shipped config has that name (the message lists them).
    """
    key = config_name(name)
    if key not in list_configs():
        raise CaloflowError(
            f"unknown config '{name}' (shipped configs: {', '.join(list_configs())})"
        )
    return CONFIG_DIR / f"{key}.yaml"


__all__ = ["CONFIG_DIR", "list_configs", "config_name", "is_shipped", "shipped_config"]
