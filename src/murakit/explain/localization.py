"""Do class activation maps point at the finding? Scored against synthetic ground truth.

``murakit synth`` records each finding's box in ``synth_truth.csv``. For every image of a split
that shows one, the CAM (cropped back onto the original image, as ``murakit cam`` draws it) is
scored three ways, each beside the level a map with no information would reach:

- **hit**: its peak lies inside the box; chance is the box's share of the image (a peak dropped
  uniformly at random);
- **near**: its peak lies within one CAM cell of the box (the pointing game's tolerance: a
  16 x 16 map cannot place its peak more finely); chance as above, for the grown box;
- **hotter**: the CAM's mean inside the box exceeds its mean outside; chance is one half.

The same scores of the *left-right mirrored* map are the control: a CAM that is flipped,
transposed or misplaced by the padding crop does no better than that control, a working one
does clearly better.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from murakit.data.dataset import apply_config_fixes
from murakit.data.imageio import read_grayscale
from murakit.explain.cam import CamResult, cam_on_original, cam_peak, compute_cam

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels


def finding_rows(data: Path, split: str = "valid") -> list[dict]:
    """Truth rows of ``split`` whose image shows a finding (only abnormal studies ever do)."""
    truth = Path(data) / "synth_truth.csv"
    if not truth.exists():
        raise FileNotFoundError(f"{truth}: not found (made by `murakit synth`)")
    with open(truth, newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split and r["finding_box"].strip()]


def parse_box(text: str) -> Box:
    x0, y0, x1, y1 = (float(v) for v in text.split())
    return x0, y0, x1, y1


def point_in_box(x: float, y: float, box: Box) -> bool:
    """Pixel (x, y) covers [x, x+1) x [y, y+1): inside when it overlaps the box."""
    x0, y0, x1, y1 = box
    return x + 1 > x0 and x < x1 and y + 1 > y0 and y < y1


def box_fraction(box: Box, h: int, w: int) -> float:
    """The share of an h x w image that the box covers (the part outside the image ignored)."""
    x0, y0, x1, y1 = box
    bw = max(0.0, min(x1, w) - max(x0, 0.0))
    bh = max(0.0, min(y1, h) - max(y0, 0.0))
    return bw * bh / (h * w)


def _box_mask(box: Box, h: int, w: int) -> np.ndarray:
    """Pixels that overlap the box (the same rule as :func:`point_in_box`)."""
    x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])), *np.ceil(box[2:]).astype(int))
    mask = np.zeros((h, w), dtype=bool)
    mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


def score_map(heat: np.ndarray, box: Box, cell: float) -> dict[str, float]:
    """The three scores of one (H, W) map against one box, with their chance levels.

    ``cell`` is one CAM cell's width in original pixels. ``hotter`` is NaN when the box covers
    the whole image (or none of it): there is then no inside-outside comparison to make.
    """
    h, w = heat.shape
    x, y = cam_peak(heat)
    grown = (box[0] - cell, box[1] - cell, box[2] + cell, box[3] + cell)
    mask = _box_mask(box, h, w)
    inside, outside = heat[mask], heat[~mask]
    hotter = float(inside.mean() > outside.mean()) if inside.size and outside.size else np.nan
    return {
        "hit": float(point_in_box(x, y, box)),
        "hit_chance": box_fraction(box, h, w),
        "near": float(point_in_box(x, y, grown)),
        "near_chance": box_fraction(grown, h, w),
        "hotter": hotter,
        "hotter_chance": 0.5,
    }


def localization_scores(
    loaded,
    data: Path,
    cam_size: int = 512,
    split: str = "valid",
    limit: int = 0,
    on_image: Callable[[dict, np.ndarray, np.ndarray, CamResult, dict], None] | None = None,
) -> dict:
    """The mean scores of ``loaded``'s CAMs over ``split``'s findings: overall, per finding kind,
    over the findings the model detects (P(abnormal) >= 0.5) and, as the control, of the mirrored
    maps. ``on_image(row, image, heat, result, scores)`` is called per image (e.g. to draw it)."""
    data = Path(data)
    rows = finding_rows(data, split)[: limit or None]
    if not rows:
        raise ValueError(f"{data}: no {split} images with a finding in synth_truth.csv")
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        image = apply_config_fixes(read_grayscale(data / row["image"]), loaded.config)
        result = compute_cam(loaded, image, cam_size)
        heat = cam_on_original(result.cam, image.shape, cam_size)
        box = parse_box(row["finding_box"])
        cell = max(image.shape) * 32 / cam_size
        scores = score_map(heat, box, cell)
        groups["all"].append(scores)
        groups[f"finding:{row['finding']}"].append(scores)
        if result.probability >= 0.5:
            groups["detected"].append(scores)
        groups["mirrored"].append(score_map(heat[:, ::-1], box, cell))
        if on_image is not None:
            on_image(row, image, heat, result, scores)
    summary = {name: _mean_scores(items) for name, items in groups.items()}
    summary["cam_size"] = cam_size
    summary["split"] = split
    return summary


def _mean_scores(items: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {"images": len(items)}
    for key in items[0]:
        values = np.array([s[key] for s in items], dtype=float)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out
