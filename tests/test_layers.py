"""The direction of dependency: commands > refine, callbacks > the library, and no import cycles.

``lint-imports`` checks the contracts of ``pyproject.toml``; these tests run it on the checkout,
show that an import against the layers breaks it (on a copy of the sources), and look for import
cycles with an independent graph search.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD_S, REPO

PACKAGES = ("caloflow", "refine", "callbacks")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is not installed (pip install -e '.[test]')"
    return subprocess.run(
        [lint, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def _copy_sources(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_contracts_hold():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        # the library reaching up to refine, to a command, to callbacks; the library parsing options
        ("caloflow/sampling.py", "import refine.shower_refiner", "The library imports neither"),
        ("caloflow/data/io.py", "import caloflow.commands.argtypes", "Inside caloflow"),
        ("caloflow/models/flows.py", "import callbacks.samples", "The library imports neither"),
        ("caloflow/features.py", "import argparse", "Only command modules parse arguments"),
        # features sit below the models; refine's protocols below its command
        ("caloflow/features.py", "import caloflow.models.classifiers", "Inside caloflow"),
        ("refine/shower_laser.py", "import refine.laser", "Inside refine"),
        ("refine/gan.py", "import caloflow.commands.cli", "refine and callbacks import no command"),
    ],
)
def test_an_upward_import_breaks_them(tmp_path, module, line, contract):
    root = _copy_sources(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{line}  # against the layers\n")
    proc = _lint_imports(root)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert " 0 broken" not in proc.stdout and "broken." in proc.stdout, proc.stdout[-3000:]
    # the report names the broken contract and the offending import
    report = proc.stdout.split("Broken contracts")[1]
    assert contract in report and f"{module[:-3].replace('/', '.')} -> " in report, report


def _imports(path: Path, module: str, is_package: bool) -> set[str]:
    """Project modules imported anywhere in ``path`` (also inside functions), as module names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _module_graph() -> dict[str, set[str]]:
    files = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = (path, parts[-1] == "__init__")
    graph = {}
    for name, (path, is_package) in files.items():
        targets = set()
        for imported in _imports(path, name, is_package):
            while imported not in files and "." in imported:  # `from pkg.mod import name`
                imported = imported.rsplit(".", 1)[0]
            if imported in files and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_search_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    """Between modules, counting imports inside functions too (a package's ``__init__`` importing its
    own submodules is not a cycle unless a submodule imports the package back)."""
    graph = _module_graph()
    assert {"caloflow.sampling", "caloflow.commands.cli", "refine.laser"} <= set(graph)
    assert _cycles(graph) == []
