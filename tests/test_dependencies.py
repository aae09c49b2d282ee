"""Every dependency a distribution declares is imported by its own code that users run,
and none is declared by a distribution whose code does not use it: the core's in
pyproject.toml, each bundled plugin's in plugins/NAME/pyproject.toml."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]


def declared(project: Path) -> set[str]:
    """The import names of what ``project`` requires (asyckpt itself aside)."""
    deps = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~; \[]", dep, maxsplit=1)[0].lower() for dep in deps}
    return {n.replace("-", "_") for n in names} - {"asyckpt"}


def imported(project: Path) -> set[str]:
    """The top-level modules its runtime code (src/) imports, at any depth of a function."""
    found: set[str] = set()
    for source in (project / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("project", DISTRIBUTIONS, ids=lambda p: p.name)
def test_every_declared_dependency_is_imported_by_its_distribution(project: Path) -> None:
    assert declared(project) <= imported(project)


@pytest.mark.parametrize("project", DISTRIBUTIONS, ids=lambda p: p.name)
def test_every_third_party_import_is_declared(project: Path) -> None:
    third_party = {"trio", "psutil", "msgspec", "pyroute2"}
    assert imported(project) & third_party <= declared(project)


def test_the_core_does_not_pull_what_only_a_plugin_needs() -> None:
    assert "pyroute2" not in declared(ROOT)
    assert "pyroute2" in declared(ROOT / "plugins" / "sockets")
    assert "psutil" in declared(ROOT)
