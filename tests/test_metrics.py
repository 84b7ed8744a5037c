"""Evaluation maths: aggregation, metrics against scikit-learn, and the evaluation files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    roc_auc_score,
)

from murakit.data.index import BODY_PARTS, ImageRecord
from murakit.evaluate.aggregate import study_probabilities, study_table
from murakit.evaluate.metrics import (
    GROUP_KEYS,
    binary_metrics,
    evaluation_metrics,
    kappa_bootstrap_ci,
    study_accuracy_kappa,
)
from murakit.evaluate.outputs import (
    IMAGE_COLUMNS,
    REFERENCE_STUDY_ACCURACY,
    STUDY_COLUMNS,
    read_image_predictions,
    read_metrics_json,
    read_study_predictions,
    write_image_predictions,
    write_metrics_json,
    write_study_predictions,
)


def noisy_predictions(rng: np.random.Generator, n: int, skill: float = 1.5):
    """Labels and probabilities that carry some signal, so kappa and AUROC are non-trivial."""
    labels = rng.integers(0, 2, n)
    logits = skill * (2 * labels - 1) + rng.normal(0, 1.5, n)
    return labels, 1 / (1 + np.exp(-logits))


def fake_images(rng: np.random.Generator, n_studies: int) -> tuple[list[ImageRecord], np.ndarray]:
    """Image records of random studies (1-4 views each), shuffled, with noisy probabilities."""
    images = []
    for s in range(n_studies):
        part = BODY_PARTS[s % len(BODY_PARTS)]
        label = int(rng.integers(0, 2))
        for v in range(int(rng.integers(1, 5))):
            rel = f"MURA-v1.1/valid/{part}/patient{s:05d}/study1/image{v + 1}.png"
            images.append(ImageRecord(
                Path(rel), rel, f"{part}/patient{s:05d}/study1", part, f"patient{s:05d}", 1,
                "valid", label,
            ))  # fmt: skip
    images = [images[i] for i in rng.permutation(len(images))]
    labels = np.array([r.label for r in images])
    logits = 1.5 * (2 * labels - 1) + rng.normal(0, 1.5, len(images))
    return images, (1 / (1 + np.exp(-logits))).astype(np.float32)


# --- aggregation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected"),
    [("mean", [0.3, 0.8, 0.4]), ("max", [0.5, 0.8, 0.9]), ("median", [0.3, 0.8, 0.25])],
)
def test_study_probabilities_hand_made(how, expected):
    studies = ["b", "c", "b", "a", "b", "a", "a", "a"]
    probs = [0.1, 0.8, 0.5, 0.9, 0.3, 0.2, 0.3, 0.2]
    keys, pooled = study_probabilities(studies, np.array(probs), how)
    assert keys == ["b", "c", "a"]  # first-seen order, not sorted
    np.testing.assert_allclose(pooled, expected)


def test_study_probabilities_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    studies = [f"XR_HAND/patient{i:05d}/study1" for i in rng.integers(0, 2000, 6000)]
    probs = rng.random(6000)
    groups: dict[str, list[float]] = {}
    for s, p in zip(studies, probs, strict=True):
        groups.setdefault(s, []).append(p)
    for how, fn in (("mean", np.mean), ("max", np.max), ("median", np.median)):
        keys, pooled = study_probabilities(studies, probs, how)
        assert keys == list(groups)
        np.testing.assert_allclose(pooled, [fn(groups[k]) for k in keys])


def test_study_probabilities_is_fast_on_mura_sized_input():
    rng = np.random.default_rng(4)
    studies = [f"XR_HAND/patient{i:05d}/study1" for i in rng.integers(0, 14000, 40000)]
    probs = rng.random(40000).astype(np.float32)
    start = time.perf_counter()
    for how in ("mean", "max", "median"):
        study_probabilities(studies, probs, how)
    assert time.perf_counter() - start < 2.0  # about 0.2 s; a Python dict loop is ~10x slower


def test_study_probabilities_errors():
    with pytest.raises(ValueError, match="unknown aggregation 'mode'"):
        study_probabilities(["a"], np.array([0.5]), "mode")
    with pytest.raises(ValueError, match="2 study keys but 1"):
        study_probabilities(["a", "b"], np.array([0.5]))
    with pytest.raises(ValueError, match="NaN"):
        study_probabilities(["a"], np.array([np.nan]))
    keys, pooled = study_probabilities([], np.array([]))
    assert keys == [] and pooled.shape == (0,)


def test_study_table_rejects_mixed_labels():
    images, probs = fake_images(np.random.default_rng(0), 5)
    keys, parts, labels, pooled = study_table(images, probs)
    assert len(keys) == len(parts) == len(labels) == len(pooled) == 5
    broken = [
        *images,
        ImageRecord(
            images[0].path,
            "x.png",
            images[0].study,
            images[0].part,
            images[0].patient,
            1,
            "valid",
            1 - images[0].label,
        ),
    ]
    with pytest.raises(ValueError, match="labelled both"):
        study_table(broken, np.append(probs, 0.5))


# --- metrics --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.72])
def test_binary_metrics_agree_with_sklearn(seed, threshold):
    rng = np.random.default_rng(seed)
    labels, probs = noisy_predictions(rng, int(rng.integers(20, 400)))
    if seed == 3:
        probs = np.round(probs, 1)  # ties in the scores and exactly at the threshold
    pred = (probs >= threshold).astype(int)
    m = binary_metrics(labels, probs, threshold)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["n"] == len(labels) and m["n_positive"] == labels.sum()
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(labels, pred), abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    acc, kappa = study_accuracy_kappa(labels, probs, threshold)
    assert (acc, kappa) == pytest.approx((m["accuracy"], m["kappa"]), abs=1e-12)
    json.dumps(m, allow_nan=False)  # plain Python values


@pytest.mark.parametrize("seed", range(6))
def test_kappa_ci_contains_kappa_and_is_reproducible(seed):
    rng = np.random.default_rng(100 + seed)
    labels, probs = noisy_predictions(rng, int(rng.integers(30, 3000)), skill=rng.uniform(0, 2))
    m = binary_metrics(labels, probs, seed=seed)
    lo, hi = m["kappa_ci"]
    assert -1 <= lo <= m["kappa"] <= hi <= 1
    assert binary_metrics(labels, probs, seed=seed)["kappa_ci"] == [lo, hi]
    assert binary_metrics(labels, probs, n_boot=0)["kappa_ci"] is None


def test_kappa_ci_matches_an_index_bootstrap():
    """The multinomial shortcut has the same distribution as resampling items directly."""
    rng = np.random.default_rng(7)
    labels, probs = noisy_predictions(rng, 500)
    pred = (probs >= 0.5).astype(int)
    idx = rng.integers(0, len(labels), (4000, len(labels)))
    y, p = labels[idx], pred[idx]  # one resample per row; kappa = (po - pe) / (1 - pe)
    po = (y == p).mean(axis=1)
    pe = y.mean(axis=1) * p.mean(axis=1) + (1 - y.mean(axis=1)) * (1 - p.mean(axis=1))
    lo, hi = np.percentile((po - pe) / (1 - pe), [2.5, 97.5])
    m = binary_metrics(labels, probs, n_boot=4000)
    assert m["kappa_ci"] == pytest.approx([lo, hi], abs=0.01)
    assert cohen_kappa_score(labels[idx[0]], pred[idx[0]]) == pytest.approx(
        (po[0] - pe[0]) / (1 - pe[0])
    )


def test_undefined_metrics_are_none():
    m = binary_metrics([1, 1, 1, 1], [0.9, 0.8, 0.2, 0.7])
    assert m["auroc"] is None and m["specificity"] is None
    assert m["sensitivity"] == 0.75
    assert m["kappa"] == 0.0 == cohen_kappa_score([1, 1, 1, 1], [1, 1, 0, 1])
    m = binary_metrics([0, 0], [0.1, 0.2])  # constant raters that agree: kappa undefined
    assert m["kappa"] is None and m["kappa_ci"] is None and m["auroc"] is None
    assert m["accuracy"] == 1.0 and m["sensitivity"] is None
    acc, kappa = study_accuracy_kappa([0, 0], [0.1, 0.2])
    assert acc == 1.0 and np.isnan(kappa)
    assert kappa_bootstrap_ci(0, 0, 0, 0) is None


def test_metric_input_errors():
    with pytest.raises(ValueError, match="3 labels but 2"):
        binary_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="no items"):
        binary_metrics([], [])


def evaluate_fake(seed: int = 0, n_studies: int = 300):
    rng = np.random.default_rng(seed)
    images, probs = fake_images(rng, n_studies)
    keys, parts, labels, study_probs = study_table(images, probs)
    metrics = evaluation_metrics(
        keys, parts, labels, study_probs,
        [r.label for r in images], probs, [r.part for r in images],
    )  # fmt: skip
    return images, probs, (keys, parts, labels, study_probs), metrics


def test_evaluation_metrics_shape_and_per_part_agreement():
    images, probs, (keys, parts, labels, study_probs), metrics = evaluate_fake()
    assert list(metrics) == ["overall", "by_part", "threshold"]
    assert list(metrics["by_part"]) == sorted(BODY_PARTS)
    assert list(metrics["overall"]) == list(GROUP_KEYS)
    json.dumps(metrics, allow_nan=False)

    parts, img_parts = np.array(parts), np.array([r.part for r in images])
    img_labels = np.array([r.label for r in images])
    for part, group in [*metrics["by_part"].items(), ("TOTAL", metrics["overall"])]:
        s = np.ones(len(parts), bool) if part == "TOTAL" else parts == part
        i = np.ones(len(img_parts), bool) if part == "TOTAL" else img_parts == part
        assert list(group) == list(GROUP_KEYS)
        pred = (study_probs[s] >= 0.5).astype(int)
        assert group["n_studies"] == s.sum() and group["n_abnormal_studies"] == labels[s].sum()
        assert group["study_accuracy"] == pytest.approx(accuracy_score(labels[s], pred))
        assert group["kappa"] == pytest.approx(cohen_kappa_score(labels[s], pred))
        assert group["auroc"] == pytest.approx(roc_auc_score(labels[s], study_probs[s]))
        tn, fp, fn, tp = confusion_matrix(labels[s], pred, labels=[0, 1]).ravel()
        assert group["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert group["specificity"] == pytest.approx(tn / (tn + fp))
        ipred = (probs[i] >= 0.5).astype(int)
        assert group["n_images"] == i.sum()
        assert group["image_accuracy"] == pytest.approx(accuracy_score(img_labels[i], ipred))
        assert group["image_kappa"] == pytest.approx(cohen_kappa_score(img_labels[i], ipred))
        assert group["image_auroc"] == pytest.approx(roc_auc_score(img_labels[i], probs[i]))


def test_evaluation_metrics_rejects_duplicate_studies():
    with pytest.raises(ValueError, match="not unique"):
        evaluation_metrics(
            ["a", "a"], ["P", "P"], [0, 1], [0.1, 0.9], [0, 1], [0.1, 0.9], ["P", "P"]
        )


# --- files ----------------------------------------------------------------------------------


def test_metrics_json_agrees_with_sklearn_from_study_predictions_csv(tmp_path):
    """The issue's check: metrics.json agrees with scikit-learn computed from the CSV."""
    threshold = 0.45
    rng = np.random.default_rng(11)
    images, probs = fake_images(rng, 250)
    keys, parts, labels, study_probs = study_table(images, probs)
    metrics = evaluation_metrics(
        keys,
        parts,
        labels,
        study_probs,
        [r.label for r in images],
        probs,
        [r.part for r in images],
        threshold,
    )
    write_study_predictions(
        tmp_path / "study_predictions.csv", keys, parts, labels, study_probs, threshold
    )
    write_image_predictions(tmp_path / "image_predictions.csv", images, probs)
    write_metrics_json(tmp_path / "metrics.json", metrics)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "image_predictions.csv",
        "metrics.json",
        "study_predictions.csv",
    ]  # no temporary files left behind

    header = (tmp_path / "study_predictions.csv").read_text().splitlines()[0]
    assert header == ",".join(STUDY_COLUMNS)
    assert (tmp_path / "image_predictions.csv").read_text().splitlines()[0] == ",".join(
        IMAGE_COLUMNS
    )

    table = read_study_predictions(tmp_path / "study_predictions.csv")
    saved = read_metrics_json(tmp_path / "metrics.json")
    assert saved["threshold"] == threshold
    assert table.keys == keys
    np.testing.assert_array_equal(table.probs, study_probs)  # exact round trip
    np.testing.assert_array_equal(table.predictions, (table.probs >= threshold).astype(int))
    csv_parts = np.array(table.parts)
    for part in sorted(set(parts)) + ["TOTAL"]:
        group = saved["overall"] if part == "TOTAL" else saved["by_part"][part]
        s = np.ones(len(csv_parts), bool) if part == "TOTAL" else csv_parts == part
        y, p, pred = table.labels[s], table.probs[s], table.predictions[s]
        assert group["study_accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert group["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12)
        assert group["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert group["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert group["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert group["n_studies"] == len(y) and group["n_abnormal_studies"] == y.sum()
        lo, hi = group["kappa_ci"]
        assert lo <= group["kappa"] <= hi

    image_table = read_image_predictions(tmp_path / "image_predictions.csv")
    assert image_table.images == [r.rel for r in images]
    np.testing.assert_array_equal(image_table.probs.astype(np.float32), probs)
    assert study_probabilities(image_table.studies, image_table.probs)[0] == keys


def test_metrics_json_is_strict(tmp_path):
    write_metrics_json(
        tmp_path / "m.json",
        {"a": np.float32(0.5), "b": float("nan"), "c": np.array([1, 2]), "d": np.int64(3)},
    )
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": 0.5, "b": None, "c": [1, 2], "d": 3}
    assert "NaN" not in text


def test_read_study_predictions_rejects_wrong_header(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("study,label\nXR_HAND/p/study1,1\n")
    with pytest.raises(ValueError, match="expected header"):
        read_study_predictions(path)


def test_part_table():
    from murakit.cli import part_table as format_part_table

    *_, metrics = evaluate_fake()

    def render(table) -> str:
        console = Console(record=True, width=200)
        console.print(table)
        return console.export_text()

    text = render(format_part_table(metrics, REFERENCE_STUDY_ACCURACY))
    assert "reference (report)" in text and "79.8%" in text and "TOTAL" in text
    lines = [line for line in text.splitlines() if "XR_" in line or "TOTAL" in line]
    assert [line.split()[1] for line in lines] == sorted(BODY_PARTS) + ["TOTAL"]
    total = metrics["overall"]
    assert f"{100 * total['study_accuracy']:.1f}%" in lines[-1]
    assert f"{total['kappa']:.3f} [{total['kappa_ci'][0]:.3f}" in lines[-1]
    assert "reference" not in render(format_part_table(metrics))


def test_auroc_delong_interval_matches_a_bootstrap():
    """DeLong's analytic interval against a percentile bootstrap of the same data."""
    from murakit.evaluate.metrics import auroc, auroc_delong_ci

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(labels * 0.3 + rng.normal(0.4, 0.25, 400), 0, 1)
    lo, hi = auroc_delong_ci(labels, probs)
    assert lo < auroc(labels, probs) < hi
    draws = [auroc(labels[i], probs[i]) for i in rng.integers(0, 400, (1000, 400))]
    boot_lo, boot_hi = np.percentile(draws, [2.5, 97.5])
    assert lo == pytest.approx(boot_lo, abs=0.01) and hi == pytest.approx(boot_hi, abs=0.01)
    assert auroc_delong_ci([1, 0, 0], [0.9, 0.1, 0.2]) is None  # one positive: no variance
