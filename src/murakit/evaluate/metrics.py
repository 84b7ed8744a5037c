"""Binary classification metrics for normal (0) / abnormal (1) studies and images.

Everything here follows from the four confusion counts (tp, fp, tn, fn) except AUROC, so
accuracy and Cohen's kappa are exact integer arithmetic and agree with scikit-learn's
accuracy_score, cohen_kappa_score and confusion_matrix; AUROC is roc_auc_score itself.
Undefined values (AUROC with one class, kappa when both raters are constant and agree,
sensitivity without positives...) are None, so the results serialise to strict JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

GROUP_KEYS = (
    "study_accuracy",
    "kappa",
    "kappa_ci",
    "auroc",
    "auroc_ci",
    "sensitivity",
    "specificity",
    "n_studies",
    "n_abnormal_studies",
    "image_accuracy",
    "image_kappa",
    "image_auroc",
    "n_images",
)


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 0/1 and probabilities as finite float64, same length, at least one."""
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} probabilities")
    if len(labels) == 0:
        raise ValueError("no items to evaluate")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or infinity")
    return labels.astype(np.int64), probs


def _counts(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[int, ...]:
    """(tp, fp, tn, fn) with prediction = prob >= threshold."""
    pred = probs >= threshold
    pos = labels == 1
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    fn = int(np.count_nonzero(~pred & pos))
    return tp, fp, len(labels) - tp - fp - fn, fn


def _kappa(tp, fp, tn, fn):
    """Cohen's kappa from confusion counts (scalars or arrays); NaN where undefined.

    kappa = (n*agree - chance) / (n^2 - chance), chance = sum over classes of
    (predicted count * true count); all integers, so "undefined" (chance == n^2, i.e.
    both raters constant and equal) is detected exactly.
    """
    tp, fp, tn, fn = (np.asarray(c, dtype=np.int64) for c in (tp, fp, tn, fn))
    n = tp + fp + tn + fn
    chance = (tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)
    denom = n * n - chance
    defined = denom > 0
    return np.where(defined, (n * (tp + tn) - chance) / np.where(defined, denom, 1), np.nan)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def auroc(labels, probs) -> float | None:
    """Area under the ROC curve (scikit-learn's); None when only one class is present."""
    labels, probs = _check(labels, probs)
    if labels.min() == labels.max():
        return None
    from sklearn.metrics import roc_auc_score  # imported late: it is slow to import

    return float(roc_auc_score(labels, probs))


def auroc_delong_ci(labels, probs, level: float = 0.95) -> list[float] | None:
    """DeLong's interval for AUROC (DeLong et al. 1988): the AUC's variance from each item's
    placement value (the share of the other class it outranks, ties counting half), so no
    resampling is needed. None with one class, or with one item of a class."""
    from scipy.stats import norm, rankdata

    labels, probs = _check(labels, probs)
    pos, neg = probs[labels == 1], probs[labels == 0]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return None
    all_ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - rankdata(pos)) / n  # per positive: share of negatives below it
    v01 = 1 - (all_ranks[m:] - rankdata(neg)) / m  # per negative: share of positives above
    auc = float(v10.mean())
    se = float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))
    z = float(norm.ppf(1 - (1 - level) / 2))
    return [max(0.0, auc - z * se), min(1.0, auc + z * se)]


def kappa_bootstrap_ci(
    tp: int, fp: int, tn: int, fn: int, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap CI of Cohen's kappa, resampling items with replacement.

    Kappa depends on the items only through the confusion counts, so resampling n items
    with replacement is exactly a multinomial draw of the four counts with the observed
    proportions: n_boot draws cost microseconds instead of n_boot * n index look-ups.
    Resamples where kappa is undefined are dropped. Fixed `seed`: the same data always
    gives the same interval. Items are treated as independent (a patient's several
    studies are not resampled together).
    """
    n = tp + fp + tn + fn
    if n_boot <= 0 or n == 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.array([tp, fp, tn, fn]) / n, size=n_boot)
    kappas = _kappa(*draws.T)
    kappas = kappas[np.isfinite(kappas)]
    if len(kappas) == 0:
        return None
    alpha = (1 - level) / 2
    lo, hi = np.percentile(kappas, [100 * alpha, 100 * (1 - alpha)])
    return [float(lo), float(hi)]


def study_accuracy_kappa(labels, probs, threshold: float = 0.5) -> tuple[float, float]:
    """(accuracy, Cohen's kappa) without bootstrap or AUROC: cheap enough for every epoch.

    Kappa is NaN where undefined (a float, for per-epoch CSV logs).
    """
    labels, probs = _check(labels, probs)
    tp, fp, tn, fn = _counts(labels, probs, threshold)
    return (tp + tn) / len(labels), float(_kappa(tp, fp, tn, fn))


def binary_metrics(
    labels, probs, threshold: float = 0.5, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy, kappa (+ 95% bootstrap CI), AUROC, sensitivity, specificity and counts.

    Predictions are prob >= threshold. `kappa_ci` is a percentile bootstrap interval over
    items (see kappa_bootstrap_ci; n_boot=0 skips it and gives None).
    """
    labels, probs = _check(labels, probs)
    tp, fp, tn, fn = _counts(labels, probs, threshold)
    n = len(labels)
    return {
        "accuracy": (tp + tn) / n,
        "kappa": _none_if_nan(float(_kappa(tp, fp, tn, fn))),
        "kappa_ci": kappa_bootstrap_ci(tp, fp, tn, fn, n_boot=n_boot, seed=seed),
        "auroc": auroc(labels, probs),
        "auroc_ci": auroc_delong_ci(labels, probs),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "n": n,
        "n_positive": tp + fn,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _group_metrics(
    study_labels, study_probs, image_labels, image_probs, threshold, n_boot, seed
) -> dict[str, Any]:
    study = binary_metrics(study_labels, study_probs, threshold, n_boot=n_boot, seed=seed)
    image = binary_metrics(image_labels, image_probs, threshold, n_boot=0)
    return {
        "study_accuracy": study["accuracy"],
        "kappa": study["kappa"],
        "kappa_ci": study["kappa_ci"],
        "auroc": study["auroc"],
        "auroc_ci": study["auroc_ci"],
        "sensitivity": study["sensitivity"],
        "specificity": study["specificity"],
        "n_studies": study["n"],
        "n_abnormal_studies": study["n_positive"],
        "image_accuracy": image["accuracy"],
        "image_kappa": image["kappa"],
        "image_auroc": image["auroc"],
        "n_images": image["n"],
    }


def evaluation_metrics(
    study_keys: Sequence[str],
    study_parts: Sequence[str],
    study_labels,
    study_probs,
    image_labels,
    image_probs,
    image_parts: Sequence[str],
    threshold: float = 0.5,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics.json document: {"overall": {...}, "by_part": {part: {...}}, "threshold"}.

    Study-level figures (the headline: MURA labels studies) and image-level ones side by
    side, overall and per body part (parts sorted). Plain Python values, None where undefined.
    """
    study_labels, study_probs = _check(study_labels, study_probs)
    image_labels, image_probs = _check(image_labels, image_probs)
    study_parts = np.asarray(list(study_parts), dtype=str)
    image_parts = np.asarray(list(image_parts), dtype=str)
    if not (len(study_keys) == len(study_parts) == len(study_labels)):
        raise ValueError(
            f"{len(study_keys)} study keys, {len(study_parts)} parts, {len(study_labels)} labels"
        )
    if len(set(study_keys)) != len(study_keys):
        raise ValueError("study keys are not unique: aggregate image probabilities first")
    if len(image_parts) != len(image_labels):
        raise ValueError(f"{len(image_parts)} image parts but {len(image_labels)} image labels")
    if set(study_parts) != set(image_parts):
        raise ValueError("studies and images cover different body parts")

    def group(study_mask, image_mask):
        return _group_metrics(
            study_labels[study_mask],
            study_probs[study_mask],
            image_labels[image_mask],
            image_probs[image_mask],
            threshold,
            n_boot,
            seed,
        )

    everything_s = np.ones(len(study_labels), dtype=bool)
    everything_i = np.ones(len(image_labels), dtype=bool)
    return {
        "overall": group(everything_s, everything_i),
        "by_part": {
            part: group(study_parts == part, image_parts == part)
            for part in sorted(set(study_parts.tolist()))
        },
        "threshold": float(threshold),
    }
