"""The layering of docs/ARCHITECTURE.md holds: import-linter's contracts (.importlinter) over
the installed package, every import counted, including those inside functions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_murakit_keeps_its_layers():
    result = _lint(ROOT / "src", "--config", str(ROOT / ".importlinter"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_forbidden_import_is_caught(tmp_path):
    """The same tool on a two-layer package whose lower layer imports the upper one."""
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("")
    (package / "low.py").write_text("def f():\n    from toy import high  # inside a function\n")
    config = tmp_path / "contracts.ini"
    config.write_text(
        "[importlinter]\nroot_package = toy\n\n"
        "[importlinter:contract:layers]\nname = toy layers\ntype = layers\n"
        "layers =\n    toy.high\n    toy.low\n"
    )
    result = _lint(tmp_path, "--config", str(config))
    assert result.returncode != 0
    assert "toy.low -> toy.high" in result.stdout
