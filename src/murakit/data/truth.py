"""Per-image ground truth beside a dataset: boxes drawn on the images and flags.

``murakit import`` writes ``truth.csv`` into the dataset folder (FracAtlas: the
radiologists' fracture boxes, hardware and view flags); ``murakit synth`` writes
``synth_truth.csv`` beside its MURA-v1.1/ folder. Image paths in both are relative to the
folder holding the file; a box is ``x0 y0 x1 y1`` in original pixels, several separated by ';'.
"""

from __future__ import annotations

import csv
from pathlib import Path

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels
TRUTH_FILE = "truth.csv"  # written by murakit import
TRUTH_FILES = (TRUTH_FILE, "synth_truth.csv")  # murakit import's, murakit synth's


def truth_file(data: Path) -> Path:
    """The ground-truth table in ``data``."""
    for name in TRUTH_FILES:
        if (Path(data) / name).exists():
            return Path(data) / name
    raise FileNotFoundError(
        f"{data}: no {' or '.join(TRUTH_FILES)} (made by `murakit import` or `murakit synth`)"
    )


def read_truth(data: Path) -> list[dict[str, str]]:
    with open(truth_file(data), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def parse_boxes(text: str) -> list[Box]:
    """'x0 y0 x1 y1', several separated by ';'."""
    boxes = []
    for piece in filter(None, (p.strip() for p in text.split(";"))):
        x0, y0, x1, y1 = (float(v) for v in piece.split())
        boxes.append((x0, y0, x1, y1))
    return boxes


def truth_boxes(data: Path) -> dict[str, list[Box]]:
    """Resolved image path -> its boxes, for every image with a finding ({} without truth)."""
    try:
        rows = read_truth(data)
    except FileNotFoundError:
        return {}
    return {
        str((Path(data) / row["image"]).resolve()): parse_boxes(row["finding_box"])
        for row in rows
        if row.get("finding_box", "").strip()
    }
