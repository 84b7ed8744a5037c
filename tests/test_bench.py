"""The bench phases run and print their figures (never their timings: benches are not tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=BENCH.parent
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_machine_line_prints_isa_and_matmul_peak():
    out = _run(str(BENCH / "_machine.py"))
    assert "CPUs:" in out and "torch kernels" in out and "load average" in out
    assert "matmul peak fp32" in out and "GFLOP/s" in out


def test_contention_phase_prints_quiet_loaded_and_ratio():
    out = _run(
        str(BENCH / "contention.py"),
        "--seconds",
        "0.5",
        "--workloads",
        "train",
        "--policies",
        "today",
        "adaptive",
    )
    assert "fixed, spin (today)" in out and "adaptive (opt-in =1)" in out
    assert "loaded/quiet" in out and "adaptive / today: quiet" in out


def test_run_all_skips_helpers():
    sys.path.insert(0, str(BENCH))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH))
    names = [p.name for p in run_all.scripts()]
    assert "contention.py" in names and "predict_latency.py" in names
    # helpers, shared code and the weights' training script are not benchmarks
    assert not {"_machine.py", "quality_real.py", "train_quality_models.py"} & set(names)
