"""The companion builds from pyproject.toml with every build warning an error.

Every Colab reader and `make` builds the package. setuptools announces what it will stop supporting as
warnings first (the `project.license` table was one: "By 2027-Feb-18, you need to update your project"), so a
build that warns today is an install that breaks later. The build runs in a copy of the files it needs, with
this environment's setuptools, which must satisfy `build-system.requires`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

BUILD = """
import sys
from setuptools import build_meta
hook = getattr(build_meta, sys.argv[1])
print(hook(sys.argv[2]))
"""


def build(tmp_path: Path, hook: str) -> subprocess.CompletedProcess:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "companion", source / "companion", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    out.mkdir()
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", BUILD, hook, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_this_environment_has_the_setuptools_the_build_asks_for():
    wanted = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    setuptools = next(r for r in wanted if r.name == "setuptools")
    assert setuptools.specifier.contains(version("setuptools")), (setuptools, version("setuptools"))


@pytest.mark.parametrize("hook", ["build_wheel", "build_sdist"])
def test_the_package_builds_with_warnings_as_errors(tmp_path, hook):
    result = build(tmp_path, hook)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "dist").iterdir()), "no file was built"


def test_the_wheel_carries_the_license_and_the_ablation_and_search_results(tmp_path):
    result = build(tmp_path, "build_wheel")
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "companion/ablation_results.json" in names  # chapter 8 reads it in Colab
    assert "companion/search_results.json" in names  # and this one
    assert "companion/debugging/__init__.py" in names  # a subpackage: chapter 9 imports it
    assert "License-Expression: MIT" in metadata.splitlines()
