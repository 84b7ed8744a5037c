"""Every third-party import of the package is a declared dependency and every declared
dependency is used: deptry over src/, configured in pyproject.toml ([tool.deptry])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPTRY = Path(sys.executable).with_name("deptry")


def _deptry(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DEPTRY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )


def test_dependencies_are_declared_and_used():
    result = _deptry(ROOT, "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No dependency issues found" in result.stdout + result.stderr


def test_scipy_is_declared():
    """data/quality.py imports scipy: it must not arrive only through scikit-learn."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.replace(" ", "").startswith("scipy") for d in project["dependencies"])


def _toy_project(tmp_path: Path, dependencies: list[str], code: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'toy'\nversion = '0'\n"
        f"dependencies = {dependencies!r}\n\n"
        "[tool.deptry]\nknown_first_party = ['toy']\n"
    )
    (tmp_path / "src" / "toy").mkdir(parents=True)
    (tmp_path / "src" / "toy" / "__init__.py").write_text(code)
    return tmp_path


def test_an_undeclared_import_fails(tmp_path):
    """scipy imported, only scikit-learn declared: the check fails and names scipy."""
    project = _toy_project(tmp_path, ["scikit-learn"], "import scipy\nimport sklearn\n")
    result = _deptry(project, "src")
    assert result.returncode != 0
    assert "'scipy'" in result.stdout + result.stderr
    assert "DEP003" in result.stdout + result.stderr  # transitive: installed, not declared


def test_an_unused_dependency_fails(tmp_path):
    project = _toy_project(tmp_path, ["numpy", "Jinja2"], "import numpy\n")
    result = _deptry(project, "src")
    assert result.returncode != 0
    assert "DEP002" in result.stdout + result.stderr
    assert "'Jinja2'" in result.stdout + result.stderr
