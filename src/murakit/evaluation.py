"""Evaluate a run or an ensemble on a split: image probabilities averaged over members, study
probabilities pooled over images, metrics per body part, and the files a person opens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from murakit.data.index import load_index
from murakit.evaluate.aggregate import study_table
from murakit.evaluate.metrics import evaluation_metrics
from murakit.evaluate.outputs import (
    write_image_predictions,
    write_metrics_json,
    write_study_predictions,
)
from murakit.infer.model import Model


@dataclass
class EvaluationResult:
    out_dir: Path
    metrics: dict
    n_images: int
    skipped: list[str]


def evaluate_model(
    model_dir: Path,
    data_root: Path | None = None,
    *,
    split: str = "valid",
    out_dir: Path | None = None,
    aggregation: str = "mean",
    threshold: float | None = None,
    tta_flip: bool = False,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    skip_bad: bool = False,
    by_markers: bool = False,
    on_batch: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> EvaluationResult:
    """Write image_predictions.csv, study_predictions.csv and metrics.json into `out_dir`
    (default: <model_dir>/eval-<split>/). `data_root` defaults to the data the model was
    trained on. Where the dataset's truth.csv flags orthopaedic hardware (FracAtlas), and with
    ``by_markers`` (images where the marker detector finds a letter marker), the metrics are
    repeated for each subgroup: how much of the score comes from plates and letters."""
    model_dir = Path(model_dir)
    loaded = Model.load(model_dir, device=device)
    rule = loaded.threshold_rule if threshold is None else "given on the command line"
    threshold = loaded.threshold if threshold is None else threshold
    root = Path(data_root or loaded.config.data)
    index = load_index(root, [split], skip_bad=skip_bad)
    records = index.images
    skipped = list(index.skipped)
    if skip_bad:
        from murakit.data.verify import drop_unreadable

        records, bad = drop_unreadable(records, workers)
        skipped += bad
    if on_start:
        on_start(len(records) * len(loaded.models))
    probs = loaded.probabilities(
        records,
        batch_size=batch_size,
        workers=workers,
        tta_flip=tta_flip,
        on_batch=on_batch,
    )
    keys, parts, labels, study_probs = study_table(records, probs, aggregation)
    metrics = evaluation_metrics(
        keys,
        parts,
        labels,
        study_probs,
        np.array([r.label for r in records]),
        probs,
        [r.part for r in records],
        threshold=threshold,
    )
    metrics["model"] = str(model_dir)
    metrics["data"] = str(root)
    metrics["split"] = split
    metrics["dataset"] = index.info.to_json()
    groups = subgroups(root, records, by_markers=by_markers)
    if groups:
        metrics["subgroups"] = subgroup_metrics(records, probs, groups, threshold, aggregation)
    if rule:
        metrics["threshold_rule"] = rule
    metrics["aggregation"] = aggregation
    metrics["tta_flip"] = tta_flip
    metrics["members"] = loaded.names
    out_dir = Path(out_dir or model_dir / f"eval-{split}")
    write_image_predictions(out_dir / "image_predictions.csv", records, probs)
    write_study_predictions(
        out_dir / "study_predictions.csv", keys, parts, labels, study_probs, threshold
    )
    write_metrics_json(out_dir / "metrics.json", metrics)
    return EvaluationResult(out_dir, metrics, len(records), skipped)


def subgroups(root: Path, records, *, by_markers: bool = False) -> dict[str, np.ndarray]:
    """Boolean masks over ``records``: ``hardware`` / ``no hardware`` from the truth.csv of an
    imported dataset, ``marker`` / ``no marker`` from the marker detector when asked."""
    from murakit.data.truth import TRUTH_FILE, read_truth

    groups: dict[str, np.ndarray] = {}
    truth = Path(root) / TRUTH_FILE
    if truth.exists():
        flags = {row["image"]: row.get("hardware", "") for row in read_truth(root)}
        hardware = np.array([flags.get(r.rel, "") == "1" for r in records])
        if any(flags.get(r.rel, "") in ("0", "1") for r in records):
            groups.update({"hardware": hardware, "no hardware": ~hardware})
    if by_markers:
        from murakit.data.imageio import read_grayscale
        from murakit.data.quality import detect_markers

        marker = np.array([detect_markers(read_grayscale(r.path)).flag for r in records])
        groups.update({"marker": marker, "no marker": ~marker})
    return groups


def subgroup_metrics(records, probs, groups, threshold: float, aggregation: str) -> dict:
    """The metrics.json document (overall and per part) of each subgroup; a study belongs to
    it through its images."""
    out = {}
    for name, mask in groups.items():
        chosen = [r for r, keep in zip(records, mask, strict=True) if keep]
        if not chosen:
            continue
        keys, parts, labels, study_probs = study_table(chosen, probs[mask], aggregation)
        out[name] = evaluation_metrics(
            keys,
            parts,
            labels,
            study_probs,
            np.array([r.label for r in chosen]),
            probs[mask],
            [r.part for r in chosen],
            threshold=threshold,
        )
    return out
