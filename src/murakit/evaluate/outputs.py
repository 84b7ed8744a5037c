"""Evaluation files: image and study prediction CSVs, metrics.json, and the per-part table.

All files are written atomically. Probabilities are written with the shortest decimal
that round-trips their dtype, so metrics recomputed from a CSV equal the ones in
metrics.json exactly (no rounding can move a study across the threshold or tie two).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from murakit.data.index import ImageRecord
from murakit.evaluate.formatting import DASH, fmt_ci, fmt_kappa, fmt_num, fmt_pct
from murakit.fsutil import atomic_open, atomic_write_json

IMAGE_COLUMNS = ("image", "study", "part", "label", "probability")
STUDY_COLUMNS = ("study", "part", "label", "probability", "prediction")

# Study accuracy of the reference report's 4-model ensemble on MURA v1.1 valid.
REFERENCE_STUDY_ACCURACY = {
    "XR_SHOULDER": 0.742,
    "XR_HUMERUS": 0.822,
    "XR_FINGER": 0.794,
    "XR_ELBOW": 0.835,
    "XR_WRIST": 0.852,
    "XR_FOREARM": 0.796,
    "XR_HAND": 0.736,
    "TOTAL": 0.798,
}


def _prob_strings(probs, n: int) -> list[str]:
    """Shortest round-trip decimals (float32 stays '0.32', not '0.3199999928474426')."""
    probs = np.asarray(probs).reshape(-1)
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    if len(probs) != n:
        raise ValueError(f"{n} rows but {len(probs)} probabilities")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or infinity")
    return [np.format_float_positional(p, unique=True, trim="-") for p in probs]


def _write_csv(path: str | os.PathLike, header: Sequence[str], rows) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_image_predictions(path: str | os.PathLike, images: Sequence[ImageRecord], probs) -> None:
    """image_predictions.csv: image,study,part,label,probability (image = the CSV path)."""
    strings = _prob_strings(probs, len(images))
    rows = ((r.rel, r.study, r.part, r.label, p) for r, p in zip(images, strings, strict=True))
    _write_csv(path, IMAGE_COLUMNS, rows)


def write_study_predictions(
    path: str | os.PathLike,
    keys: Sequence[str],
    parts: Sequence[str],
    labels,
    probs,
    threshold: float = 0.5,
) -> None:
    """study_predictions.csv: study,part,label,probability,prediction (prob >= threshold)."""
    labels = np.asarray(labels).reshape(-1)
    if not (len(keys) == len(parts) == len(labels)):
        raise ValueError(f"{len(keys)} keys, {len(parts)} parts, {len(labels)} labels")
    strings = _prob_strings(probs, len(keys))
    predictions = (np.asarray(probs, dtype=np.float64).reshape(-1) >= threshold).astype(int)
    rows = zip(keys, parts, labels.astype(int).tolist(), strings, predictions.tolist(), strict=True)
    _write_csv(path, STUDY_COLUMNS, rows)


@dataclass
class StudyPredictions:
    """The columns of a study_predictions.csv."""

    keys: list[str]
    parts: list[str]
    labels: np.ndarray  # int64, 1 = abnormal
    probs: np.ndarray  # float64
    predictions: np.ndarray  # int64


@dataclass
class ImagePredictions:
    """The columns of an image_predictions.csv."""

    images: list[str]
    studies: list[str]
    parts: list[str]
    labels: np.ndarray  # int64
    probs: np.ndarray  # float64


def _read_csv(path: str | os.PathLike, columns: Sequence[str]) -> dict[str, list[str]]:
    """Columns by name; errors name the file and line."""
    path = Path(path)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(columns):
            raise ValueError(f"{path}: expected header {','.join(columns)}, got {header!r}")
        data: dict[str, list[str]] = {c: [] for c in columns}
        for row in reader:
            if not row:
                continue
            if len(row) != len(columns):
                raise ValueError(
                    f"{path}, line {reader.line_num}: expected {len(columns)} fields, "
                    f"got {len(row)}"
                )
            for column, value in zip(columns, row, strict=True):
                data[column].append(value)
    return data


def _ints(path, data: dict[str, list[str]], column: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in data[column]], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{path}: column {column!r}: {err}") from None


def _floats(path, data: dict[str, list[str]], column: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in data[column]], dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: column {column!r}: {err}") from None


def read_study_predictions(path: str | os.PathLike) -> StudyPredictions:
    data = _read_csv(path, STUDY_COLUMNS)
    return StudyPredictions(
        keys=data["study"],
        parts=data["part"],
        labels=_ints(path, data, "label"),
        probs=_floats(path, data, "probability"),
        predictions=_ints(path, data, "prediction"),
    )


def read_image_predictions(path: str | os.PathLike) -> ImagePredictions:
    data = _read_csv(path, IMAGE_COLUMNS)
    return ImagePredictions(
        images=data["image"],
        studies=data["study"],
        parts=data["part"],
        labels=_ints(path, data, "label"),
        probs=_floats(path, data, "probability"),
    )


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays -> Python values, NaN/inf -> None: strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_metrics_json(path: str | os.PathLike, metrics: dict[str, Any]) -> None:
    atomic_write_json(path, _plain(metrics))


def read_metrics_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def part_table(
    metrics: dict[str, Any], reference: dict[str, float] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(column names, rows of text): per body part then TOTAL, study accuracy (vs the reference
    report's when given), kappa with 95% CI, AUROC, sensitivity, specificity, study count.

    Pass reference=REFERENCE_STUDY_ACCURACY only for real MURA valid: it is meaningless
    on other data.
    """
    columns = ["part", "studies", "study acc"]
    if reference is not None:
        columns += ["reference (report)", "Δ (pts)"]
    columns += ["kappa [95% CI]", "AUROC [95% CI]", "sensitivity", "specificity"]
    rows = []
    for name, group in [*metrics["by_part"].items(), ("TOTAL", metrics["overall"])]:
        cells = [name, str(group["n_studies"]), fmt_pct(group["study_accuracy"])]
        if reference is not None:
            ref = reference.get(name)
            cells.append(fmt_pct(ref))
            cells.append(DASH if ref is None else f"{100 * (group['study_accuracy'] - ref):+.1f}")
        auroc, auroc_ci = fmt_num(group.get("auroc")), group.get("auroc_ci")
        cells += [
            fmt_kappa(group),
            f"{auroc} {fmt_ci(auroc_ci)}" if auroc_ci and auroc != DASH else auroc,
            fmt_pct(group["sensitivity"]),
            fmt_pct(group["specificity"]),
        ]
        rows.append(cells)
    return columns, rows


MURA_VALID_STUDIES = 1199


def looks_like_mura_valid(metrics: dict[str, Any]) -> bool:
    """True when the evaluated set is MURA v1.1 valid (its 1,199 studies over the 7 body parts,
    and the valid split where metrics.json records one, of a dataset that does not declare
    itself another in dataset.json): only then is the reference report's accuracy a fair
    comparison (synthetic data has the same layout; FracAtlas shares two part names)."""
    from murakit.data.index import BODY_PARTS

    overall = metrics.get("overall", {})
    return (
        metrics.get("dataset", {}).get("is_mura", True)
        and overall.get("n_studies") == MURA_VALID_STUDIES
        and metrics.get("split", "valid") == "valid"
        and set(metrics.get("by_part", {})) == set(BODY_PARTS)
    )
