"""The operating threshold: chosen on a slice of the training split, never on valid.

A run trained with ``threshold_slice > 0`` holds that share of its training studies out of
training (the same studies for every member and seed: chosen by a hash of the study key,
separately for each label, so the slice keeps the label mix). Whenever validation loss
improves, the model scores the slice and the threshold is set by one rule: **the highest
threshold at which at least ``threshold_sensitivity`` of the slice's positive studies are
called positive** (a screening rule: missing a finding costs more than a false alarm).

``threshold.json`` in the run (or ``ensemble.json`` for an ensemble, from its kept members'
averaged slice probabilities) stores it; evaluate, predict and serve read it from there.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from murakit.data.index import ImageRecord
from murakit.evaluate.aggregate import study_probabilities, study_table
from murakit.fsutil import atomic_write_json

THRESHOLD_FILE = "threshold.json"
SLICE_PREDICTIONS = "threshold_slice.csv"
DEFAULT_THRESHOLD = 0.5


def split_threshold_slice(
    records: Sequence[ImageRecord], fraction: float
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(training records, slice records): ``fraction`` of each label's patients (at least one:
    the rule needs a positive), whole patients, picked by a hash of the patient key so every
    member gets the same."""
    if fraction <= 0:
        return list(records), []
    if fraction >= 1:
        raise ValueError(f"threshold slice must be below 1, got {fraction}")

    def rank(rec: ImageRecord) -> str:
        return hashlib.sha1(f"{rec.part}/{rec.patient}".encode()).hexdigest()

    chosen: set[str] = set()
    for label in (0, 1):
        patients = sorted({rank(r) for r in records if r.label == label})
        chosen.update(patients[: max(1, round(fraction * len(patients)))])
    train = [r for r in records if rank(r) not in chosen]
    held = [r for r in records if rank(r) in chosen]
    return train, held


def choose_threshold(labels: np.ndarray, probs: np.ndarray, sensitivity: float) -> float:
    """The highest threshold t with mean(probs[labels == 1] >= t) >= sensitivity."""
    positives = np.sort(np.asarray(probs, dtype=np.float64)[np.asarray(labels) == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("the threshold slice has no positive studies")
    needed = max(1, math.ceil(sensitivity * len(positives) - 1e-9))
    return float(positives[needed - 1])


def threshold_summary(
    study_labels: np.ndarray, study_probs: np.ndarray, sensitivity: float, note: str = ""
) -> dict:
    """The threshold.json document: the rule applied to the slice's study probabilities."""
    labels, probs = np.asarray(study_labels), np.asarray(study_probs, dtype=np.float64)
    threshold = choose_threshold(labels, probs, sensitivity)
    called = probs >= threshold
    negatives = labels == 0
    return {
        "threshold": threshold,
        "rule": f"highest threshold with slice sensitivity >= {sensitivity:g}{note}",
        "slice_studies": int(len(labels)),
        "slice_positive_studies": int((labels == 1).sum()),
        "slice_sensitivity": float(called[labels == 1].mean()),
        "slice_specificity": float((~called[negatives]).mean()) if negatives.any() else None,
    }


def slice_threshold(records: Sequence[ImageRecord], probs: np.ndarray, sensitivity: float) -> dict:
    """threshold_summary for image ``probs`` of the slice ``records`` (pooled per study)."""
    _keys, _parts, labels, study_probs = study_table(list(records), np.asarray(probs))
    return threshold_summary(labels, study_probs, sensitivity)


def write_slice(run_dir: Path, records: Sequence[ImageRecord], probs: np.ndarray, doc: dict):
    """threshold.json and the slice's image probabilities (for an ensemble's threshold)."""
    from murakit.evaluate.outputs import write_image_predictions

    write_image_predictions(Path(run_dir) / SLICE_PREDICTIONS, list(records), probs)
    atomic_write_json(Path(run_dir) / THRESHOLD_FILE, doc)


def ensemble_threshold(run_dirs: Sequence[Path], sensitivity: float) -> dict | None:
    """The rule applied to the members' mean slice probabilities; None when a member has no
    slice (trained without one) or the members' slices differ."""
    tables = []
    for run_dir in run_dirs:
        path = Path(run_dir) / SLICE_PREDICTIONS
        if not path.exists():
            return None
        with open(path, newline="", encoding="utf-8") as handle:
            tables.append(list(csv.DictReader(handle)))
    if any([r["image"] for r in t] != [r["image"] for r in tables[0]] for t in tables):
        return None
    probs = np.mean([[float(r["probability"]) for r in t] for t in tables], axis=0)
    keys = [r["study"] for r in tables[0]]
    label_of = {r["study"]: int(r["label"]) for r in tables[0]}
    study_keys, study_probs = study_probabilities(keys, probs)
    study_labels = np.array([label_of[k] for k in study_keys])
    note = " (mean of the kept members' slice probabilities)"
    return threshold_summary(study_labels, study_probs, sensitivity, note)


def read_threshold(run_dir: Path) -> dict | None:
    path = Path(run_dir) / THRESHOLD_FILE
    return json.loads(path.read_text()) if path.exists() else None
