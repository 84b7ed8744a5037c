"""Reading a run's per-epoch metrics (metrics.csv, written by the training loop)."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv as float rows; [] when absent, NaN for empty cells. Torch-free, so the
    report can read runs without importing the training loop."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = []
        for row in csv.DictReader(handle):
            rows.append(
                {k: float(v) if v not in ("", None) else math.nan for k, v in row.items() if k}
            )
    return rows
