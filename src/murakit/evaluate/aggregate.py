"""Image probabilities -> study probabilities.

The label belongs to the study, so evaluation is per study: the probabilities of a study's
images are pooled into one (the MURA paper and the reference report take the mean).
Grouping is vectorised (one sort), so 40k images take milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from murakit.data.index import ImageRecord

AGGREGATIONS = ("mean", "max", "median")


def study_probabilities(
    studies: Sequence[str], probs: np.ndarray, how: str = "mean"
) -> tuple[list[str], np.ndarray]:
    """Pool per-image `probs` by study key; keys come back in first-seen order.

    `how` is "mean", "max" or "median". Returns (keys, float64 probabilities).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; expected one of {', '.join(AGGREGATIONS)}")
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(studies) != len(probs):
        raise ValueError(f"{len(studies)} study keys but {len(probs)} probabilities")
    if len(probs) == 0:
        return [], np.empty(0, dtype=np.float64)
    if not np.all(np.isfinite(probs)):
        raise ValueError("image probabilities contain NaN or infinity")

    # unique() sorts the keys; `first` lets us put groups back in first-seen order.
    keys, first, inverse = np.unique(
        np.asarray(list(studies), dtype=str), return_index=True, return_inverse=True
    )
    rank = np.empty(len(keys), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(keys))
    group = rank[inverse.reshape(-1)]  # group number of each image, in first-seen order

    counts = np.bincount(group, minlength=len(keys))
    if how == "mean":
        pooled = np.bincount(group, weights=probs, minlength=len(keys)) / counts
    else:
        # Sort by (group, prob): each group is then a contiguous, ascending run.
        order = np.lexsort((probs, group))
        sorted_probs = probs[order]
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        if how == "max":
            pooled = sorted_probs[starts + counts - 1]
        else:  # median: mean of the two middle elements (the same one when the count is odd)
            pooled = 0.5 * (
                sorted_probs[starts + (counts - 1) // 2] + sorted_probs[starts + counts // 2]
            )
    ordered_keys = [str(k) for k in keys[np.argsort(first, kind="stable")]]
    return ordered_keys, pooled


def study_table(
    images: Sequence[ImageRecord], probs: np.ndarray, how: str = "mean"
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(keys, parts, labels, probabilities) per study from image records and their probs.

    Raises if a study's images disagree on the label: that means a broken index.
    """
    keys, study_probs = study_probabilities([r.study for r in images], probs, how)
    info: dict[str, tuple[str, int]] = {}
    for rec in images:
        seen = info.setdefault(rec.study, (rec.part, rec.label))
        if seen[1] != rec.label:
            raise ValueError(f"study {rec.study!r} has images labelled both 0 and 1")
    parts = [info[k][0] for k in keys]
    labels = np.array([info[k][1] for k in keys], dtype=np.int64)
    return keys, parts, labels, study_probs
