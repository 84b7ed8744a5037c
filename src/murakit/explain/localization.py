"""Do class activation maps point at the finding? Scored against boxes drawn on the images.

``murakit synth`` records each finding's box in ``synth_truth.csv``; ``murakit import
fracatlas`` records the radiologists' fracture boxes in ``truth.csv`` (an image may have
several, separated by ';'). For every image of a split that shows one, the CAM (cropped back
onto the original image, as ``murakit cam`` draws it) is scored three ways, each beside the
level a map with no information would reach:

- **hit**: its peak lies inside a box; chance is the boxes' share of the image (a peak dropped
  uniformly at random);
- **near**: its peak lies within one CAM cell of a box (the pointing game's tolerance: a
  16 x 16 map cannot place its peak more finely); chance as above, for the grown boxes;
- **hotter**: the CAM's mean inside the boxes (their union) exceeds its mean outside; chance
  is one half.

Where the truth has a ``hardware`` column (FracAtlas), the scores are also given for images
with and without orthopaedic hardware, so a map that only finds plates is seen as such.

The same scores of the *left-right mirrored* map are the control: a CAM that is flipped,
transposed or misplaced by the padding crop does no better than that control, a working one
does clearly better.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from murakit.data.truth import Box, parse_boxes, read_truth, truth_file
from murakit.infer.cam import ImageCam, cam_peak
from murakit.infer.model import Model


def finding_rows(data: Path, split: str = "valid") -> list[dict]:
    """Truth rows of ``split`` whose image shows a finding (only abnormal studies ever do)."""
    return [r for r in read_truth(data) if r["split"] == split and r["finding_box"].strip()]


def point_in_box(x: float, y: float, box: Box) -> bool:
    """Pixel (x, y) covers [x, x+1) x [y, y+1): inside when it overlaps the box."""
    x0, y0, x1, y1 = box
    return x + 1 > x0 and x < x1 and y + 1 > y0 and y < y1


def _box_mask(boxes: Sequence[Box], h: int, w: int) -> np.ndarray:
    """Pixels that overlap any box (the same rule as :func:`point_in_box`)."""
    mask = np.zeros((h, w), dtype=bool)
    for box in boxes:
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


def score_map(heat: np.ndarray, boxes: Box | Sequence[Box], cell: float) -> dict[str, float]:
    """The three scores of one (H, W) map against an image's boxes, with their chance levels.

    ``cell`` is one CAM cell's width in original pixels. Chance is the share of pixels where a
    peak would count (the union of the boxes). ``hotter`` is NaN when the boxes cover the
    whole image (or none of it): there is then no inside-outside comparison to make.
    """
    boxes = [boxes] if isinstance(boxes[0], int | float) else list(boxes)
    h, w = heat.shape
    x, y = cam_peak(heat)
    grown = [(b[0] - cell, b[1] - cell, b[2] + cell, b[3] + cell) for b in boxes]
    mask, grown_mask = _box_mask(boxes, h, w), _box_mask(grown, h, w)
    inside, outside = heat[mask], heat[~mask]
    hotter = float(inside.mean() > outside.mean()) if inside.size and outside.size else np.nan
    return {
        "hit": float(any(point_in_box(x, y, b) for b in boxes)),
        "hit_chance": float(mask.mean()),
        "near": float(any(point_in_box(x, y, b) for b in grown)),
        "near_chance": float(grown_mask.mean()),
        "hotter": hotter,
        "hotter_chance": 0.5,
    }


def localization_scores(
    model: Model,
    data: Path,
    cam_size: int = 512,
    split: str = "valid",
    limit: int = 0,
    on_image: Callable[[dict, ImageCam, dict], None] | None = None,
) -> dict:
    """The mean scores of ``model``'s CAMs over ``split``'s findings: overall, per finding kind,
    over the findings the model detects (probability >= its stored threshold), with and without
    hardware where the truth says, and, as the control, of the mirrored maps.
    ``on_image(row, cam, scores)`` is called per image (e.g. to draw it)."""
    data = Path(data)
    rows = finding_rows(data, split)[: limit or None]
    if not rows:
        raise ValueError(f"{data}: no {split} images with a finding in {truth_file(data).name}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        cam = model.cam(data / row["image"], size=cam_size)
        heat = cam.heat
        boxes = parse_boxes(row["finding_box"])
        cell = max(cam.image.shape) * 32 / cam_size
        scores = score_map(heat, boxes, cell)
        mirrored = score_map(heat[:, ::-1], boxes, cell)
        detected = cam.probability >= model.threshold
        names = ["all", f"finding:{row['finding']}"] + (["detected"] if detected else [])
        if row.get("hardware", "") in ("0", "1"):
            tag = "hardware" if row["hardware"] == "1" else "no hardware"
            names += [tag] + ([f"detected, {tag}"] if detected else [])
            if detected and tag == "no hardware":
                groups["mirrored: detected, no hardware"].append(mirrored)
        for name in names:
            groups[name].append(scores)
        groups["mirrored"].append(mirrored)
        if on_image is not None:
            on_image(row, cam, scores)
    summary = {name: _mean_scores(items) for name, items in groups.items()}
    summary["cam_size"] = cam_size
    summary["split"] = split
    summary["threshold"] = model.threshold
    return summary


def _mean_scores(items: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {"images": len(items)}
    for key in items[0]:
        values = np.array([s[key] for s in items], dtype=float)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out
