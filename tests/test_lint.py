"""The code is linted and formatted (ruff), the docs site builds without a warning (mkdocs --strict),
and the README is a front door whose links lead somewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.helpers import HANG_GUARD_S, REPO


def _tool(name: str, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    exe = shutil.which(name)
    assert exe, f"{name} is not installed (pip install -e '.[test]')"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S
    )


def test_ruff_check():
    proc = _tool("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_ruff_format():
    proc = _tool("ruff", "format", "--check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_docs_site_builds_strict(tmp_path):
    proc = _tool("mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # the API reference is generated from the docstrings of the library and of the commands
    for name in (
        "caloflow.sampling.CaloFlow",
        "caloflow.features",
        "caloflow.commands.cli",
        "refine.mcmc",
    ):
        assert name in api, name


README_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    links = [m.group(1) for m in README_LINK.finditer(text) if not m.group(1).startswith("http")]
    assert links, "the README links to the docs"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, missing
    # the Quick start: one code block with the two commands (install and run; install and test)
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == [
        "pip install torch==2.13.0 -e . && caloflow demo --out runs/demo",
        'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q',
    ]


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_docs_pages_are_in_the_site_navigation(page):
    assert f": {page}" in (REPO / "mkdocs.yml").read_text(), (
        f"docs/{page} is not in mkdocs.yml's nav"
    )
