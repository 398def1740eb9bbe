"""The companion as installed is the companion as tested: every subpackage is installed, and imports flow one way."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_every_subpackage_of_companion_is_listed_for_setuptools():
    # pyproject lists the packages by name; a folder missing there is left out of `pip install git+...`
    # (what Colab runs), though an editable install finds it
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "companion").rglob("__init__.py")
    }
    assert folders <= listed, (
        f"add {sorted(folders - listed)} to [tool.setuptools] packages in pyproject.toml"
    )


def _companion_imports(path: Path) -> set[str]:
    """The companion modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("companion"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("companion"))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MINE = [
    "companion.checks",
    "companion.datasets",
    "companion.debugging",
    "companion.debugging.curves",
    "companion.debugging.gradients",
    "companion.debugging.hygiene",
    "companion.debugging.mistakes",
    "companion.debugging.nonfinite",
    "companion.debugging.sanity",
    "companion.device",
    "companion.linear",
    "companion.loading",
    "companion.losses",
    "companion.lr_finder",
    "companion.optim",
    "companion.perf",
    "companion.recipes",
    "companion.seeding",
    "companion.significance",
    "companion.wrappers",
]


@pytest.mark.parametrize("module", MINE)
def test_a_module_imports_nothing_that_imports_it_back(module):
    # explicit imports only: the package companion/__init__.py, which imports the loop for the reader, is left out
    files = {_module_name(p): p for p in (ROOT / "companion").rglob("*.py")}
    del files["companion"]
    graph = {
        name: {m for m in _companion_imports(p) if m in files and m != name} for name, p in files.items()
    }
    reached, frontier = set(), set(graph[module])
    while frontier:
        name = frontier.pop()
        if name not in reached:
            reached.add(name)
            frontier |= graph[name]
    assert module not in reached
