"""Scoring CAMs against the synthetic ground truth: the geometry of each score and its chance."""

from __future__ import annotations

import numpy as np
import pytest

from murakit.config import make_config
from murakit.explain.localization import (
    finding_rows,
    localization_scores,
    point_in_box,
    score_map,
)
from murakit.infer.model import Model
from murakit.model.densenet import build_model
from murakit.synth.generator import generate


def _blob(h: int, w: int, x: float, y: float, spread: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * spread**2)).astype(np.float32)


def test_point_in_box_counts_the_pixel_that_overlaps_the_edge():
    box = (10.5, 20.0, 30.0, 40.0)
    assert point_in_box(10, 20, box)  # pixel [10, 11) overlaps x >= 10.5
    assert not point_in_box(9, 20, box) and not point_in_box(30, 20, box)
    assert not point_in_box(15, 40, box) and point_in_box(15, 39, box)


def test_chance_ignores_the_part_of_a_box_outside_the_image():
    heat = np.zeros((100, 100))
    assert score_map(heat, (0, 0, 50, 20), cell=0)["hit_chance"] == pytest.approx(0.1)
    assert score_map(heat, (-50, -10, 50, 20), cell=0)["hit_chance"] == pytest.approx(0.1)


def test_several_boxes_count_as_their_union():
    """A peak in any box is a hit; chance and 'hotter' use the union (overlap counted once)."""
    heat = _blob(100, 100, 80, 80, spread=2)
    boxes = [(0, 0, 20, 20), (10, 10, 30, 30), (70, 70, 90, 90)]
    score = score_map(heat, boxes, cell=0)
    assert score["hit"] == 1.0 and score["hotter"] == 1.0
    assert score["hit_chance"] == pytest.approx((400 + 400 - 100 + 400) / 10_000)
    assert score_map(heat, boxes[:2], cell=0)["hit"] == 0.0


def test_a_map_hot_on_the_box_scores_and_its_mirror_does_not():
    h, w, box = 120, 200, (20.0, 30.0, 60.0, 70.0)  # left half
    heat = _blob(h, w, 40, 50)
    good = score_map(heat, box, cell=12)
    assert (good["hit"], good["near"], good["hotter"]) == (1.0, 1.0, 1.0)
    assert good["hit_chance"] == pytest.approx(40 * 40 / (h * w))
    assert good["near_chance"] == pytest.approx(64 * 64 / (h * w))
    mirrored = score_map(heat[:, ::-1], box, cell=12)
    assert (mirrored["hit"], mirrored["near"], mirrored["hotter"]) == (0.0, 0.0, 0.0)


def test_a_peak_one_cell_beside_the_box_is_near_but_no_hit():
    box = (20.0, 30.0, 60.0, 70.0)
    score = score_map(_blob(120, 200, 68, 50, spread=3), box, cell=12)
    assert score["hit"] == 0.0 and score["near"] == 1.0


def test_a_box_over_the_whole_image_has_no_inside_outside_comparison():
    score = score_map(_blob(50, 50, 25, 25), (0.0, 0.0, 50.0, 50.0), cell=8)
    assert score["hit"] == 1.0 and score["hit_chance"] == 1.0 and np.isnan(score["hotter"])


def test_scores_cover_every_valid_finding_with_its_groups(tmp_path):
    """Whole path on real synthetic PNGs with an untrained model: every valid image with a
    finding is scored once, per kind, and its mirror once; chance is the mean box share."""
    generate(tmp_path, studies=30, seed=1, workers=1, findings=("cast", "hardware"))
    rows = finding_rows(tmp_path)
    config = make_config("demo", size=64)
    model = build_model("densenet-mini", dropout=0.0)
    loaded = Model([model], ["untrained"], config, tmp_path)
    seen = []
    result = localization_scores(
        loaded, tmp_path, cam_size=128, on_image=lambda row, *_: seen.append(row["image"])
    )
    assert seen == [r["image"] for r in rows] and len(rows) > 0
    assert result["all"]["images"] == result["mirrored"]["images"] == len(rows)
    kinds = {k: v["images"] for k, v in result.items() if k.startswith("finding:")}
    assert sum(kinds.values()) == len(rows) and set(kinds) <= {"finding:cast", "finding:hardware"}
    assert 0 < result["all"]["hit_chance"] < result["all"]["near_chance"] < 1
    assert result["all"]["hotter_chance"] == 0.5


def test_a_folder_without_truth_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="synth_truth.csv"):
        finding_rows(tmp_path)


@pytest.mark.slow
def test_trained_cams_point_into_the_synthetic_findings(tmp_path):
    """The orientation check on the generator's own ground truth (synth_truth.csv): a mini
    DenseNet trained with the demo preset at lr 3e-4 on casts and plates. Its 512 px CAMs put
    their peak inside the finding's box far more often than chance (about 3x here, 10x for
    plates), and make the box hotter than the rest of the image for most findings it detects;
    the same maps mirrored (a left-right error) do neither. (At the demo's lr 1e-3 the maps
    drift about a cell off the findings: README, "What the synthetic demo does and does not
    show".)"""
    from murakit.infer.model import Model
    from murakit.train.loop import train_run

    data = tmp_path / "synth"
    generate(data, studies=800, seed=0, workers=2, findings=("cast", "hardware"))
    config = make_config("demo", data=str(data / "MURA-v1.1"), seed=0, lr=3e-4, workers=0)
    train_run(config, tmp_path / "run")
    result = localization_scores(Model.load(tmp_path / "run"), data, cam_size=512)
    seen, detected, mirrored = result["all"], result["detected"], result["mirrored"]
    assert detected["images"] >= 0.5 * seen["images"]  # it learned the findings at all
    assert seen["hit"] >= 2 * seen["hit_chance"] and seen["hit"] >= mirrored["hit"] + 0.1
    plates = result["finding:hardware"]
    assert plates["hit"] >= 4 * plates["hit_chance"]
    assert detected["hotter"] >= 0.8 and mirrored["hotter"] <= detected["hotter"] - 0.1
