"""The README's Python API example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs_as_written(tmp_path):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split()[-1] in ("normal", "abnormal") for line in lines)
    assert (tmp_path / "api-demo" / "run" / "best.pt").exists()
    assert (tmp_path / "api-demo" / "cam.png").stat().st_size > 0
    print(f"README example: {seconds:.0f} s")
