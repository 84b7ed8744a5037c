"""Which studies a report's CAM gallery shows: the most confident correct abnormal and normal
studies of an evaluation, plus its worst mistakes, so a reader sees both kinds of evidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from murakit.data.index import load_index
from murakit.evaluate.outputs import read_image_predictions, read_study_predictions


def gallery_study_folders(
    eval_dir: Path, data_root: Path, per_class: int = 6, errors: int = 2
) -> list[Path]:
    """Study folders: per class, `per_class - errors` most confident correct studies and the
    `errors` most confident wrong ones (fewer where there are fewer)."""
    studies = read_study_predictions(eval_dir / "study_predictions.csv")
    images = read_image_predictions(eval_dir / "image_predictions.csv")
    chosen: list[str] = []
    for label in (1, 0):
        idx = np.flatnonzero(studies.labels == label)
        confidence = studies.probs[idx] if label else 1 - studies.probs[idx]
        correct = idx[studies.predictions[idx] == label]
        wrong = idx[studies.predictions[idx] != label]
        by_conf = {i: c for i, c in zip(idx, confidence, strict=True)}
        wrong = sorted(wrong, key=lambda i: by_conf[i])[:errors]
        correct = sorted(correct, key=lambda i: -by_conf[i])[: per_class - len(wrong)]
        chosen += [studies.keys[i] for i in [*correct, *wrong]]
    split = eval_dir.name.removeprefix("eval-") or "valid"
    paths = {r.rel: r.path for r in load_index(data_root, [split], skip_bad=True).images}
    folders: dict[str, Path] = {}
    for rel, study in zip(images.images, images.studies, strict=True):
        if study in chosen and rel in paths:
            folders.setdefault(study, paths[rel].parent)
    return [folders[s] for s in chosen if s in folders]
