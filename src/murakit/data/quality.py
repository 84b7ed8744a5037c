"""Quality checks for radiographs: the reference report's open problems, found and fixed.

The report names three things that mislead a classifier: images whose polarity is inverted
(bone dark, surround white), lead letter markers ("L", "R", initials) burnt in near the
field's edge, and several radiographs side by side in one image. Each detector here takes a
uint8 grayscale image and returns a flag, a score in [0, 1] (how sure; the flag is
``score >= 0.5``) and the geometry a fix needs. The fixes (:func:`apply_fixes`) are what
training and prediction run when asked to; :func:`audit` runs every check over a dataset
and writes ``audit.csv`` plus a page of thumbnails a person can scan.

The detectors are image statistics weighed by small learned models (a logistic regression
for polarity, boosted trees over marker candidates and over seam features for multi-panel
images; about 150 kB of weights shipped in
``quality_weights.json``, learned by ``bench/train_quality_models.py`` from real FracAtlas
radiographs, CC BY 4.0, Abedeen et al. 2023, doi:10.1038/s41597-023-02432-4, and synthetic
images), so they run at thousands of images a minute on one core. Their precision and
recall on hand-labelled real radiographs: ``python bench/quality_detectors.py --real``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from murakit.data.imageio import BadImageError, read_grayscale
from murakit.data.index import ImageRecord
from murakit.fsutil import atomic_open

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)

MIN_SIDE = 64
"""Images smaller than this on either side are too small to show anatomy."""

BLANK_RANGE = 8
"""An image whose central 98% of pixel values spans fewer gray levels is blank."""

STROKE_WIDTH = 5
"""Letter strokes are narrower than this (px); bone, casts and plates are wider."""

STROKE_CONTRAST = 40
"""A pixel at least this much brighter than its wide surroundings may belong to a stroke."""

MIN_STROKE_PIXELS = 10
"""Smaller specks of bright pixels are noise, not letters."""

MARKER_GAP = 0.01
"""Strokes closer than this fraction of the image's longer side belong to one marker."""

UNEXPOSED_LEVEL = 24
"""Unexposed surround is near black: the gap between two films is never brighter."""

PANEL_GRID = 256
"""Multi-panel and inversion checks look at a copy whose longer side is at most this."""

WEIGHTS_FILE = "quality_weights.json"
"""Package data: the learned weights (bench/train_quality_models.py writes them)."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Inversion:
    """Whether bone is dark and the surround white (a negative)."""

    flag: bool
    score: float


@dataclass(frozen=True)
class Markers:
    """Letter markers found, one box per marker (letters close together share a box)."""

    flag: bool
    score: float
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Split:
    """Where a dark gap band separates two radiographs.

    ``axis == "x"``: a vertical band at column ``at`` (panels left and right);
    ``axis == "y"``: a horizontal band at row ``at`` (panels above and below).
    """

    axis: str
    at: int

    def __str__(self) -> str:
        return f"{self.axis}={self.at}"

    @classmethod
    def parse(cls, text: str) -> Split | None:
        """Read back ``str(split)`` (e.g. from audit.csv); empty text gives None."""
        text = text.strip()
        if not text:
            return None
        axis, _, at = text.partition("=")
        if axis not in ("x", "y") or not at.strip().lstrip("-").isdigit():
            raise ValueError(f"not a panel split: {text!r} (expected x=N or y=N)")
        return cls(axis, int(at))


@dataclass(frozen=True)
class Panels:
    """Whether the image holds two radiographs, and where to cut it."""

    flag: bool
    score: float
    split: Split | None = None


# --------------------------------------------------------------------------- helpers


def _shrink(img: np.ndarray, longest: int = PANEL_GRID) -> tuple[np.ndarray, int]:
    """A block-averaged copy whose longer side is at most `longest`, and the factor used.

    Block averaging (not subsampling) keeps thin dark gaps and noise-free levels. The
    block sums are exact integers added by strided views (several times faster than a
    mean over a reshaped array, and bit for bit the same result).
    """
    factor = max(1, -(-max(img.shape) // longest))
    if factor == 1:
        return img.astype(np.float32), 1
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    if img.dtype != np.uint8:
        blocks = img[:h, :w].astype(np.float32).reshape(h // factor, factor, w // factor, factor)
        return blocks.mean(axis=(1, 3)), factor
    rows = np.zeros((h // factor, w), np.int32)
    for dy in range(factor):
        rows += img[dy:h:factor, :w]
    sums = np.zeros((h // factor, w // factor), np.int32)
    for dx in range(factor):
        sums += rows[:, dx:w:factor]
    return sums.astype(np.float32) / np.float32(factor * factor), factor


def _ring(img: np.ndarray, width: int) -> np.ndarray:
    """The pixels within `width` of the image's border, flattened."""
    inner = np.ones(img.shape, bool)
    inner[:width, :] = inner[-width:, :] = inner[:, :width] = inner[:, -width:] = False
    return img[~inner]


def _skew(values: np.ndarray) -> float:
    """Sample skewness; 0 for a constant array."""
    values = values.astype(np.float64).ravel()
    sd = values.std()
    if sd < 1e-6:
        return 0.0
    return float(np.mean(((values - values.mean()) / sd) ** 3))


def _percentiles(img: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Percentiles of an image's gray levels via a 256-bin histogram (no sort: fast)."""
    levels = np.clip(np.rint(img), 0, 255).astype(np.intp).ravel()
    cumulative = np.cumsum(np.bincount(levels, minlength=256))
    ranks = [min(cumulative[-1] - 1, int(q / 100 * cumulative[-1])) for q in qs]
    return [float(np.searchsorted(cumulative, r, side="right")) for r in ranks]


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


# --------------------------------------------------------------------------- inversion


INVERSION_FEATURES = (
    "skew",
    "median",
    "mode",
    "ring_minus_centre",
    "thin_ratio3",
    "thin_ratio7",
    "dark_share",
    "bright_share",
    "spread",
    "content_share",
)
"""What :func:`inversion_features` measures, in the order the learned weights expect."""


def content_mask(small: np.ndarray) -> np.ndarray:
    """Pixels that are not export padding: padding is flat (one gray level, no film noise)
    and touches the image border, whatever its level (white, grey or black canvas, the
    corners left by a rotated field, the outside of a round fluoroscopy field)."""
    mean = ndimage.uniform_filter(small, 5)
    var = ndimage.uniform_filter(small * small, 5) - mean * mean
    flat = var < 0.004**2
    labels, n = ndimage.label(flat)
    if n == 0:
        return np.ones(small.shape, bool)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touching = np.zeros(n + 1, bool)
    touching[edge] = True
    touching[0] = False
    padding = ndimage.binary_dilation(touching[labels], iterations=2)
    content = ~padding
    return content if content.sum() >= 0.1 * content.size else np.ones(small.shape, bool)


def inversion_features(img: np.ndarray) -> dict[str, float]:
    """The statistics the inversion score weighs, measured on the exposed content only
    (export padding of any level left out, see :func:`content_mask`).

    - ``skew``, ``median``, ``mode``, ``dark_share``, ``bright_share``: a radiograph's
      largest smooth area is the direct-exposure background, dark, with anatomy and bone
      as a bright tail; in a negative the background is the bright end.
    - ``thin_ratio3``, ``thin_ratio7``: log ratio of thin bright to thin dark structure
      (white over black top-hat): cortices, trabeculae, letters and metal are thin and
      bright in a radiograph, dark in a negative.
    - ``ring_minus_centre``: content border minus content centre (collimation, surround).
    - ``spread``, ``content_share``: context for the weights.
    """
    small, _ = _shrink(img, 128)
    small = small / 255.0
    content = content_mask(small)
    values = small[content]
    p1, p25, p50, p75, p99 = np.percentile(values, [1, 25, 50, 75, 99])
    spread = max(float(p99 - p1), 1e-3)
    hist, _ = np.histogram(values, bins=32, range=(p1, p99 if p99 > p1 else p1 + 1e-3))
    ys, xs = np.nonzero(content)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    ch, cw = y1 - y0, x1 - x0
    centre = np.zeros(small.shape, bool)
    centre[y0 + ch // 4 : y1 - ch // 4, x0 + cw // 4 : x1 - cw // 4] = True
    centre &= content
    ring = content.copy()
    rw = max(2, min(ch, cw) // 10)
    ring[y0 + rw : y1 - rw, x0 + rw : x1 - rw] = False
    ring_med = float(np.median(small[ring])) if ring.any() else float(p50)
    centre_med = float(np.median(small[centre])) if centre.any() else float(p50)
    thin = []
    for size in (3, 7):
        white = small - ndimage.grey_opening(small, size=(size, size))
        black = ndimage.grey_closing(small, size=(size, size)) - small
        thin.append(float(np.log((white[content].mean() + 1e-4) / (black[content].mean() + 1e-4))))
    return {
        "skew": _skew(values),
        "median": float(p50 - p1) / spread,
        "mode": (float(np.argmax(hist)) + 0.5) / len(hist),
        "ring_minus_centre": (ring_med - centre_med) / spread,
        "thin_ratio3": thin[0],
        "thin_ratio7": thin[1],
        "dark_share": float(np.mean(values < p1 + 0.1 * spread)),
        "bright_share": float(np.mean(values > p99 - 0.1 * spread)),
        "spread": float(p75 - p25) / spread,
        "content_share": float(content.mean()),
    }


@functools.cache
def learned_weights() -> dict:
    """The small learned models shipped with the package (quality_weights.json), written
    by bench/train_quality_models.py from FracAtlas (CC BY 4.0) and synthetic images."""
    text = resources.files("murakit.data").joinpath(WEIGHTS_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _logistic(model: dict, features: dict[str, float]) -> float:
    x = np.array([features[name] for name in model["features"]], np.float64)
    z = (x - np.array(model["mean"])) / np.array(model["scale"])
    return _sigmoid(float(z @ np.array(model["coef"]) + model["bias"]))


def detect_inverted(img: np.ndarray) -> Inversion:
    """Flag a negative: dark bone and a bright background, on any export canvas (a
    logistic model of :func:`inversion_features`, see :func:`learned_weights`)."""
    score = _logistic(learned_weights()["inversion"], inversion_features(img))
    return Inversion(score >= 0.5, round(score, 4))


def fix_inverted(img: np.ndarray) -> np.ndarray:
    """The positive of a negative (255 - img): bone bright again."""
    return 255 - img


def _upright(img: np.ndarray, inverted: bool | None) -> np.ndarray:
    """The image with bone bright, detecting polarity when the caller did not say."""
    if inverted is None:
        inverted = detect_inverted(img).flag
    return fix_inverted(img) if inverted else img


# ----------------------------------------------------------------------------- markers


def _ramp(x: float, zero: float, one: float) -> float:
    """0 at `zero`, 1 at `one`, linear between (either may be the larger)."""
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask grown by a square of `size` (a max filter)."""
    return _square_filter(mask.view(np.uint8), size, np.maximum).view(bool)


def _square_filter(img: np.ndarray, size: int, op: np.ufunc) -> np.ndarray:
    """A small square min or max filter (scipy's 'reflect' border) by shifted views: for
    a 5 px square on uint8 this is several times faster than ndimage's filters."""
    r = size // 2
    padded = np.pad(img, r, mode="symmetric")
    h, w = img.shape
    rows = padded[0:h, :].copy()
    for dy in range(1, size):
        op(rows, padded[dy : dy + h, :], out=rows)
    out = rows[:, 0:w].copy()
    for dx in range(1, size):
        op(out, rows[:, dx : dx + w], out=out)
    return out


def stroke_map(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of thin bright strokes, white top-hat) of an upright image.

    The top-hat is the image minus its grey opening with a square of STROKE_WIDTH: what
    stays bright is narrower than that square. Letter strokes (2-4 px at 512 px) stay;
    bone, casts and plates, all wider, vanish, which is what keeps metal out.
    """
    opened = _square_filter(_square_filter(img, STROKE_WIDTH, np.minimum), STROKE_WIDTH, np.maximum)
    tophat = img.astype(np.int16) - opened
    return tophat >= STROKE_CONTRAST, tophat


def field_depth(img: np.ndarray) -> tuple[np.ndarray, int]:
    """Distance (px, on a shrunk grid) from each point to the unexposed surround or the
    image border, and the grid's factor: small where a marker usually sits."""
    small, factor = _shrink(img, 128)
    exposed = np.pad(small > _dark_level(small), 1)
    return ndimage.distance_transform_edt(exposed)[1:-1, 1:-1] * factor, factor


def _stroke_groups(strokes: np.ndarray, gap: int) -> list[tuple[Box, np.ndarray]]:
    """Connected groups of stroke pixels (letters of one marker within `gap` px merged):
    each group's tight box and its stroke mask inside that box."""
    grown = _dilate(strokes, 2 * gap + 1)
    labels, _ = ndimage.label(grown, structure=np.ones((3, 3), bool))
    groups = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        inside = strokes[sl] & (labels[sl] == i)
        ys, xs = np.nonzero(inside)
        if len(ys) < MIN_STROKE_PIXELS:
            continue
        y0, x0 = sl[0].start + ys.min(), sl[1].start + xs.min()
        y1, x1 = sl[0].start + ys.max() + 1, sl[1].start + xs.max() + 1
        box = (int(x0), int(y0), int(x1), int(y1))
        groups.append(
            (box, inside[y0 - sl[0].start : y1 - sl[0].start, x0 - sl[1].start : x1 - sl[1].start])
        )
    return groups


def _shape_features(box: Box, mask: np.ndarray, side: int) -> dict[str, float]:
    """Size, thickness (shorter box side), fill and aspect of a stroke group's box."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    return {
        "size": max(bw, bh) / side,
        "thickness": min(bw, bh) / side,
        "fill": float(mask.sum()) / (bw * bh),
        "aspect": max(bw, bh) / max(1, min(bw, bh)),
    }


def _could_be_marker(f: dict[str, float]) -> bool:
    """Hard limits: a word of one or two capitals, not a dot, a whole bone or a long line."""
    return (
        0.02 <= f["size"] <= 0.13
        and f["thickness"] >= 0.012
        and 0.12 <= f["fill"] <= 0.85
        and f["aspect"] <= 3.0
    )


def _look_features(
    img: np.ndarray,
    strokes: np.ndarray,
    tophat: np.ndarray,
    depth: tuple[np.ndarray, int],
    box: Box,
    mask: np.ndarray,
) -> dict[str, float]:
    """Pieces (separate strokes: a plate's screws make many), elongation (a lens of
    overlapping bone is a line, a word is not), contrast (stroke level minus the median
    around the group), stroke_tophat (how white the strokes are against what lies under
    them) and edge_distance (how far inside the field)."""
    h, w = img.shape
    x0, y0, x1, y1 = box
    pad = max(3, max(x1 - x0, y1 - y0) // 2)
    ya, yb, xa, xb = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
    near = _dilate(strokes[ya:yb, xa:xb], 5)
    around = img[ya:yb, xa:xb][~near]
    values = img[y0:y1, x0:x1][mask]
    grid, factor = depth
    cy = min((y0 + y1) // 2 // factor, grid.shape[0] - 1)
    cx = min((x0 + x1) // 2 // factor, grid.shape[1] - 1)
    background = float(np.median(around)) if around.size else 255.0
    return {
        "pieces": _major_pieces(mask),
        "elongation": _elongation(mask),
        "contrast": float(np.percentile(values, 75)) - background,
        "stroke_tophat": float(np.median(tophat[y0:y1, x0:x1][mask])),
        "edge_distance": float(grid[cy, cx]) / max(h, w),
    }


def marker_score(f: dict[str, float]) -> float:
    """How much a stroke group looks like a lead marker, in [0, 1], by hand-set rules:
    every cue must agree. Each soft cue is a ramp whose midpoint was tuned on the
    synthetic set; on real images it is one feature of the learned model, not the
    decision."""
    if not _could_be_marker(f):
        return 0.0
    return min(
        _ramp(f["contrast"], 30, 70),
        _ramp(f["stroke_tophat"], 40, 60),
        _ramp(f["pieces"], 3, 2),  # a word of one or two letters, not a ladder of screws
        _ramp(f["elongation"], 3.4, 2.2),
        _ramp(f["edge_distance"], 0.18, 0.10),
    )


def stroke_candidates(img: np.ndarray) -> list[tuple[Box, dict[str, float], float]]:
    """Every plausibly shaped group of thin bright strokes of an upright image (lead
    letters drawn in strokes): box, features and the hand-set rule's score
    (:func:`marker_score`), which becomes one feature of the learned model."""
    strokes, tophat = stroke_map(img)
    if not strokes.any():
        return []
    side = max(img.shape)
    depth = None
    found = []
    for box, mask in _stroke_groups(strokes, max(2, round(side * MARKER_GAP))):
        features = _shape_features(box, mask, side)
        if not _could_be_marker(features):
            continue
        depth = depth or field_depth(img)  # only paid for images with a candidate
        features.update(_look_features(img, strokes, tophat, depth, box, mask))
        found.append((box, features, marker_score(features)))
    return found


MARKER_FEATURES = (
    "size",
    "thickness",
    "aspect",
    "fill",
    "pieces",
    "elongation",
    "tophat_mean",
    "tophat_p90",
    "level_mean",
    "level_p90",
    "white_share",
    "ring_median",
    "ring_spread",
    "ring_p90_minus_median",
    "contrast",
    "box_spread",
    "edge_distance",
    "dark_inside",
    "gap",
    "image_median",
    "stroke_rule",
    "bright_touching",
    "bright_nearby",
)
"""What :func:`marker_features` measures, in the order the learned weights expect."""

MARKER_LEVELS = (35, 110)
"""Top-hat levels a candidate's brightest pixels must reach (gray levels above the local
background): low for thin or dim lettering, high to cut a bright marker free from
bright anatomy beside it."""

MARKER_GAPS = (2,)
"""Pieces closer than this (on the marker grid) are grouped: letter strokes, a letter and
its typed label, a whole boxed marker."""

MARKER_GRID = 256
"""Markers are looked for on a copy whose longer side is at most this (2x smaller than a
MURA image): letters stay several pixels tall, and it is 4x cheaper."""


def marker_tophat(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(grid copy, white top-hat, factor): what stays bright after a grey opening with a
    square a tenth of the image's side, i.e. bright things smaller than that: letters,
    boxed markers, screws; not bone, plates or soft tissue, which are wider."""
    small, factor = _shrink(img, MARKER_GRID)
    k = max(9, int(0.1 * max(small.shape))) | 1
    opened = ndimage.maximum_filter(ndimage.minimum_filter(small, size=k), size=k)
    return small, small - opened, factor


def _level_pieces(tophat: np.ndarray, strong: float, side: int) -> np.ndarray:
    """Pixels at least `strong` above the background, grown by 3 px into pixels half as
    bright (thin or anti-aliased strokes), in pieces smaller than 15% of the side."""
    seeds = tophat >= strong
    mask = seeds | ((tophat >= 0.55 * strong) & _dilate(seeds, 7))
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    keep = np.zeros(n + 1, bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        keep[i] = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) <= 0.15 * side
    return keep[labels]


def _groups(mask: np.ndarray, gap: int) -> list[tuple[Box, np.ndarray]]:
    """Pieces within `gap` px grouped: each group's tight box and its mask in that box."""
    grown = _dilate(mask, 2 * gap + 1) if gap else mask
    labels, _ = ndimage.label(grown, structure=np.ones((3, 3), bool))
    groups = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        inside = mask[sl] & (labels[sl] == i)
        ys, xs = np.nonzero(inside)
        if len(ys) < 6:
            continue
        y0, x0 = ys.min(), xs.min()
        y1, x1 = ys.max() + 1, xs.max() + 1
        box = (int(sl[1].start + x0), int(sl[0].start + y0), int(sl[1].start + x1))
        box = (*box, int(sl[0].start + y1))
        groups.append((box, inside[y0:y1, x0:x1]))
    return groups


def _split_rows(box: Box, mask: np.ndarray) -> list[tuple[Box, np.ndarray]]:
    """A group split at its widest band of empty rows into the part above and the part
    below (a boxed marker above a letter and its label), or nothing when no row is empty."""
    empty = ~mask.any(axis=1)
    if not empty[1:-1].any():
        return []
    rows = np.flatnonzero(empty)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    at = int(max(runs, key=len).mean())
    parts = []
    for part, top in ((mask[:at], 0), (mask[at:], at)):
        ys, xs = np.nonzero(part)
        if len(ys) < 6:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        sub = (box[0] + int(x0), box[1] + top + int(y0), box[0] + int(x1), box[1] + top + int(y1))
        parts.append((sub, part[y0:y1, x0:x1]))
    return parts


def _elongation(mask: np.ndarray) -> float:
    """sqrt of the ratio of the principal second moments: 1 for a blob, large for a line,
    whatever its angle (a box's aspect misses diagonal lines)."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) + np.eye(2) * 0.25
    small, large = np.linalg.eigvalsh(cov)
    return float(np.sqrt(large / small))


def _major_pieces(mask: np.ndarray) -> float:
    """Separate pieces holding at least a tenth of the group's pixels (specks of noise
    near a letter do not count; each screw of a plate does)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return float((sizes >= 0.1 * sizes.sum()).sum())


def _quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) of a 1-d array by partial sort (cheaper than np.percentile)."""
    k = min(len(values) - 1, int(q * len(values)))
    return float(np.partition(values, k)[k])


def marker_features(
    small: np.ndarray, tophat: np.ndarray, box: Box, mask: np.ndarray, gap: int, median: float
) -> dict[str, float]:
    """Shape (size, thickness, aspect, fill, pieces, elongation), brightness (top-hat and
    level of the candidate's pixels, share near white, dark holes inside: a letter cut
    out of a white box), surroundings (level and spread of a ring around it), and where
    it sits, all on the marker grid and relative to its side."""
    h, w = small.shape
    side = max(h, w)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    values = small[y0:y1, x0:x1][mask]
    lifted = tophat[y0:y1, x0:x1][mask]
    pad = max(3, max(bw, bh) // 3)
    ya, yb, xa, xb = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
    ring = np.ones((yb - ya, xb - xa), bool)
    ring[y0 - ya : y1 - ya, x0 - xa : x1 - xa] = False
    around = small[ya:yb, xa:xb][ring]
    ring_median = _quantile(around, 0.5) if around.size else 0.0
    ring_p90 = _quantile(around, 0.9) if around.size else 0.0
    inside = small[y0:y1, x0:x1]
    level_p90 = _quantile(values, 0.9)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    touching, nearby = _bright_around(small, box, 0.85 * float(np.percentile(inside, 90)))
    return {
        "size": max(bw, bh) / side,
        "thickness": min(bw, bh) / side,
        "aspect": max(bw, bh) / max(1, min(bw, bh)),
        "fill": float(mask.mean()),
        "pieces": _major_pieces(mask),
        "elongation": _elongation(mask),
        "tophat_mean": float(lifted.mean()),
        "tophat_p90": _quantile(lifted, 0.9),
        "level_mean": float(values.mean()),
        "level_p90": level_p90,
        "white_share": float(np.mean(values >= 200)),
        "ring_median": ring_median,
        "ring_spread": float(around.std()) if around.size else 0.0,
        "ring_p90_minus_median": ring_p90 - ring_median,
        "contrast": level_p90 - ring_median,
        "box_spread": float(inside.std()),
        "edge_distance": min(cx, cy, w - cx, h - cy) / side,
        "dark_inside": float(np.mean(inside < _quantile(values, 0.5) - 60)),
        "gap": gap / side,
        "image_median": median,
        "bright_touching": touching,
        "bright_nearby": nearby,
    }


def _bright_around(small: np.ndarray, box: Box, level: float) -> tuple[float, float]:
    """Shares of the 1 px ring just outside a box and of a window around it (the box's
    longer side on every side, the box left out) at least `level` bright: a screw head
    on its plate or nail, or a bead of a bracelet, has metal as bright as itself touching
    or near it; a lead letter lies on film."""
    h, w = small.shape
    x0, y0, x1, y1 = box
    shares = []
    for grow in (1, max(x1 - x0, y1 - y0)):
        ya, yb, xa, xb = max(0, y0 - grow), min(h, y1 + grow), max(0, x0 - grow), min(w, x1 + grow)
        around = np.ones((yb - ya, xb - xa), bool)
        around[y0 - ya : y1 - ya, x0 - xa : x1 - xa] = False
        values = small[ya:yb, xa:xb][around]
        shares.append(float(np.mean(values >= level)) if values.size else 0.0)
    return shares[0], shares[1]


def raw_marker_candidates(img: np.ndarray) -> tuple[list, int]:
    """Every plausibly sized bright group on the marker grid, at each level and gap, once,
    plus the stroke groups of the hand-set rule (found on the full image, where letter
    strokes are a few pixels wide): ([(grid box, features)], factor). Each candidate's
    ``stroke_rule`` feature is the best rule score of a stroke group overlapping it
    (IoU >= 0.3)."""
    small, tophat, factor = marker_tophat(img)
    side = max(small.shape)
    median = float(np.median(small))
    strokes = []
    for (x0, y0, x1, y1), _, score in stroke_candidates(img):
        if score > 0:  # full-image box onto the grid
            box = (x0 // factor, y0 // factor, max(x0 // factor + 1, -(-x1 // factor)))
            strokes.append(((*box, max(y0 // factor + 1, -(-y1 // factor))), score))
    seen: list[Box] = []
    found = []

    def add(box: Box, mask: np.ndarray, gap: int) -> None:
        rule = max((sc for b, sc in strokes if box_iou(box, b) >= 0.3), default=0.0)
        features = marker_features(small, tophat, box, mask, gap, median)
        features["stroke_rule"] = rule
        seen.append(box)
        found.append((box, features))

    for strong in MARKER_LEVELS:
        if not (tophat >= strong).any():
            continue
        pieces = _level_pieces(tophat, strong, side)
        for gap in MARKER_GAPS:
            groups = _groups(pieces, gap)
            if gap > 1:  # also split at empty rows
                groups += [part for group in groups for part in _split_rows(*group)]
            for box, mask in groups:
                longest = max(box[2] - box[0], box[3] - box[1])
                shortest = min(box[2] - box[0], box[3] - box[1])
                if not 0.012 * side <= longest <= 0.2 * side or longest > 6 * shortest:
                    continue  # too small, too big, or a line (a plate's edge, a wire)
                if any(box_iou(box, other) >= 0.8 for other in seen):
                    continue  # the same thing found at another level or gap
                add(box, mask, gap)
    for box, _ in strokes:
        if any(box_iou(box, other) >= 0.8 for other in seen):
            continue
        patch = tophat[box[1] : box[3], box[0] : box[2]]
        mask = patch >= max(10.0, 0.5 * float(patch.max()))
        if mask.sum() >= 3:
            add(box, mask, 0)
    return found, factor


LETTER_MIN_SIZE = 0.028
"""Smallest longer side (share of the image's longer side) of a candidate that may pass at
the stroke rule's lower cut: lead letters are larger than screw heads, press studs and
specks (about 10 px of a 400 px image)."""

LETTER_MAX_FILL = 0.7
"""Largest share of its box a candidate passing at the lower cut may fill: letters are
strokes; a solid blob (a ring seen edge-on, a screw head) fills its box."""

LETTER_MIN_EDGE = 0.02
"""Least distance of its centre from the image border (share of the longer side) for the
lower cut: what sits on the very border or in a corner is mostly a cassette bracket."""


def letter_like(f: dict[str, float]) -> bool:
    """Whether a candidate is judged at the lower cut of the learned model
    (``rule_threshold``): the hand-set stroke rule likes it (a thin lead letter, which
    the real labels, boxing letters with their typed labels, teach the model to score
    low) and it is neither tiny, solid nor on the border."""
    return (
        f["stroke_rule"] >= 0.5
        and f["size"] >= LETTER_MIN_SIZE
        and f["fill"] <= LETTER_MAX_FILL
        and f["edge_distance"] >= LETTER_MIN_EDGE
    )


_FORESTS: dict[int, tuple[np.ndarray, ...]] = {}


def _forest(model: dict) -> tuple[np.ndarray, ...]:
    """A tree ensemble as (trees x nodes) arrays, padded to equal length (cached per model
    object: the shipped weights are loaded once)."""
    if id(model) in _FORESTS:
        return _FORESTS[id(model)]
    trees = model["trees"]
    width = max(len(t["feature"]) for t in trees)

    def stack(key: str, fill: float, dtype) -> np.ndarray:
        out = np.full((len(trees), width), fill, dtype)
        for i, t in enumerate(trees):
            out[i, : len(t[key])] = t[key]
        return out

    arrays = (
        np.maximum(stack("feature", 0, np.intp), 0),
        stack("threshold", 0.0, np.float64),
        stack("left", -1, np.intp),
        stack("right", -1, np.intp),
        stack("value", 0.0, np.float64),
    )
    if any(model is m for m in learned_weights().values()):
        _FORESTS[id(model)] = arrays
    return arrays


def _tree_scores(model: dict, x: np.ndarray) -> np.ndarray:
    """Probabilities from an exported gradient-boosted tree ensemble: every tree and row
    at once, one step down per iteration."""
    x = x.astype(np.float32).astype(np.float64)  # the trees split float32 features
    feature, threshold, left, right, value = _forest(model)
    trees = np.arange(len(feature))[:, None]
    rows = np.arange(len(x))[None, :]
    node = np.zeros((len(feature), len(x)), np.intp)
    for _ in range(64):
        nxt_left = left[trees, node]
        leaf = nxt_left < 0
        if leaf.all():
            break
        go_left = x[rows, feature[trees, node]] <= threshold[trees, node]
        node = np.where(leaf, node, np.where(go_left, nxt_left, right[trees, node]))
    raw = model["init"] + model["rate"] * value[trees, node].sum(axis=0)
    return 1.0 / (1.0 + np.exp(-np.clip(raw, -30, 30)))


def marker_candidates(img: np.ndarray) -> list[tuple[Box, dict[str, float], float]]:
    """Every candidate of an upright image: box (image pixels), features, score (the
    learned model's probability that it is a marker)."""
    found, factor = raw_marker_candidates(img)
    if not found:
        return []
    model = learned_weights()["marker"]
    x = np.array([[f[name] for name in model["features"]] for _, f in found], np.float64)
    scores = _tree_scores(model, x)
    h, w = img.shape
    out = []
    for (box, features), score in zip(found, scores, strict=True):
        x0, y0, x1, y1 = (v * factor for v in box)
        out.append(((x0, y0, min(w, x1), min(h, y1)), features, float(score)))
    return out


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when both are empty)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _nested(a: Box, b: Box) -> bool:
    inside = a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]
    return inside or (b[0] >= a[0] and b[1] >= a[1] and b[2] <= a[2] and b[3] <= a[3])


def detect_markers(img: np.ndarray, *, inverted: bool | None = None) -> Markers:
    """Find burnt-in markers (lead letters, typed labels, boxed markers): small, compact,
    bright groups on their background, scored by a learned model
    (:func:`marker_candidates`); overlapping or nested candidates keep the best one.

    `inverted` says whether `img` is a negative (None: detect it), since a negative's
    markers are black.
    """
    candidates = marker_candidates(_upright(img, inverted))
    model = learned_weights()["marker"]
    kept: list[Box] = []
    best = 0.0
    for box, features, score in sorted(candidates, key=lambda c: -c[2]):
        cut = model["rule_threshold"] if letter_like(features) else model["threshold"]
        # the model's probability, mapped so that this candidate's cut lands at 0.5
        shown = 0.5 * score / cut if score < cut else 0.5 + 0.5 * (score - cut) / (1 - cut)
        best = max(best, shown)
        if score < cut:
            continue
        if all(box_iou(box, other) <= 0.2 and not _nested(box, other) for other in kept):
            kept.append(box)
    return Markers(bool(kept), round(best, 4), tuple(kept))


def mask_markers(img: np.ndarray, boxes: Iterable[Box]) -> np.ndarray:
    """A copy with each box (grown by the strokes' blur) filled with the median of a band
    around it, i.e. the local background, so no bright letter is left to learn from."""
    out = img.copy()
    h, w = img.shape
    for x0, y0, x1, y1 in boxes:
        grow = max(2, max(x1 - x0, y1 - y0) // 8)
        x0, y0, x1, y1 = max(0, x0 - grow), max(0, y0 - grow), min(w, x1 + grow), min(h, y1 + grow)
        pad = max(3, max(x1 - x0, y1 - y0) // 3)
        ya, yb, xa, xb = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
        band = np.ones((yb - ya, xb - xa), bool)
        band[y0 - ya : y1 - ya, x0 - xa : x1 - xa] = False
        around = img[ya:yb, xa:xb][band]
        out[y0:y1, x0:x1] = np.uint8(np.median(around)) if around.size else 0
    return out


# ------------------------------------------------------------------------- multi-panel


def _dark_level(small: np.ndarray) -> float:
    """The gray level below which a pixel counts as unexposed surround: a little above the
    darkest pixels, and never above UNEXPOSED_LEVEL (surround is near black; a field's
    own background, however dark, is not a gap between two films)."""
    lo, hi = _percentiles(small, (1, 75))
    return min(lo + max(8.0, 0.35 * (hi - lo)), UNEXPOSED_LEVEL)


def _gap_along(exposed: np.ndarray) -> tuple[float, int]:
    """Best vertical gap band in an exposed-field mask: (score, column).

    A real gap has exposed field on both sides (each a fair share of the image) and
    almost none in it; the score is the weakest of those three cues.
    """
    occupancy = ndimage.uniform_filter1d(exposed.mean(axis=0), 3)
    w = len(occupancy)
    lo, hi = int(0.15 * w), int(0.85 * w)
    if hi - lo < 3:
        return 0.0, 0
    interior = occupancy[lo:hi]
    floor = float(interior.min())
    # the centre of the longest run of emptiest columns, so the cut lands mid-gap
    emptiest = np.flatnonzero(interior <= floor + 0.02) + lo
    runs = np.split(emptiest, np.flatnonzero(np.diff(emptiest) > 1) + 1)
    best = max(runs, key=len)
    at = int(best[len(best) // 2])
    left, right = occupancy[:at], occupancy[at + 1 :]
    if not len(left) or not len(right):
        return 0.0, at
    sides = min(float(left.max()), float(right.max()))
    share = min(float(left.sum()), float(right.sum())) / w
    return min(_ramp(sides, 0.3, 0.6), _ramp(floor, 0.12, 0.04), _ramp(share, 0.04, 0.1)), at


_SEAM_NAMES = (
    "seam_cover",
    "seam_joint",
    "seam_cover_at",
    "seam_sign_at",
    "seam_anatomy_at",
    "seam_strip_at",
    "seam_strip",
    "seam_level_step",
    "seam_lines",
    "seam_off_centre",
    "seam_faint_cover",
    "seam_faint_joint",
    "seam_mismatch_at",
    "seam_mismatch",
)


PANEL_FEATURES = tuple(
    f"{axis}_{name}"
    for axis in ("x", "y")
    for name in (
        "gap",
        "step_line",
        "ridge_line",
        "valley_line",
        "side_texture",
        "balance",
        "level_step",
        *_SEAM_NAMES,
        "mirror",
    )
)
"""What :func:`panel_features` measures, in the order the learned weights expect."""

SEAM_GRID = 128
"""Seams between exposures are looked for on a copy whose longer side is at most this."""

SEAM_SLOPES = np.tan(np.deg2rad(np.arange(-5.0, 5.01, 1.25)))
"""Seam lines may lean this far off the image axis (a cassette set in slightly askew)."""

SEAM_EDGE = 0.035
"""A column-to-column step of at least this (gray level / 255 per px) is an edge pixel."""

SEAM_FAINT_EDGE = 0.018
"""A lower edge level: the step between two exposures' backgrounds can be this faint."""

SEAM_TEXTURE = 0.02
"""Local standard deviation (gray level / 255) above which a pixel shows anatomy."""

_SLOPES = np.tan(np.deg2rad((-8.0, 0.0, 8.0)))


def _line_cover(mask: np.ndarray) -> tuple[float, int, float]:
    """The near-vertical straight line (0 or 8 degrees off, 1 px of wobble) that runs
    through the most rows of `mask` inside the middle 70% of the width: (share of rows,
    column at mid-height, slope). Counted along every line at once by
    :func:`_sheared_sums` over the mask grown by 1 px sideways (and by one column beyond
    each border, where a line's wobble may still reach the image)."""
    h, w = mask.shape
    lo, hi = int(0.15 * w), int(0.85 * w)
    best = (0.0, w // 2, 0.0)
    if hi - lo < 3:
        return best
    grown = np.zeros((h, w + 2), np.int32)  # column c + 1 holds c - 1..c + 1 of the mask
    for dx in range(3):
        grown[:, dx : dx + w] |= mask
    sums = _sheared_sums(grown, _SLOPES)
    for slope, counts in zip(_SLOPES, sums, strict=True):
        cover = counts[2:w] / h  # cover[j]: the line through column j + 1
        k = lo + int(np.argmax(cover[lo - 1 : hi - 1]))
        if cover[k - 1] > best[0]:
            best = (float(cover[k - 1]), k, float(slope))
    return best


def _axis_panel_features(small: np.ndarray, gap: float) -> tuple[dict, int]:
    """Features of the best vertical boundary of a grid image (values in [0, 1]): the
    dark-gap score, how far straight step, bright-strip and dark-strip lines run, texture
    on both sides of the best line (anatomy on both sides, not a shutter with nothing
    beyond it) and the step in background level across it; then the line's column at
    mid-height. `gap` is the dark-gap score, measured on a finer grid."""
    h, w = small.shape
    along = ndimage.uniform_filter1d(small, 5, axis=0)  # smooth along the line
    step = (np.roll(along, -2, axis=1) - np.roll(along, 2, axis=1)) / 4
    side = np.maximum(np.roll(along, -3, axis=1), np.roll(along, 3, axis=1))
    under = np.minimum(np.roll(along, -3, axis=1), np.roll(along, 3, axis=1))
    maps = {
        "step_line": np.abs(step) > 0.03,
        "ridge_line": along - side > 0.05,
        "valley_line": under - along > 0.05,
    }
    features = {"gap": gap}
    best = (0.0, w // 2, 0.0)
    for name, mask in maps.items():
        mask[:, :3] = mask[:, -3:] = False
        found = _line_cover(mask)
        features[name] = found[0]
        best = max(best, found)
    _, x, slope = best
    grad = np.hypot(*np.gradient(ndimage.uniform_filter(small, 2)))
    line = x + (np.arange(h) - h / 2) * slope
    cols = np.arange(w)[None, :]
    band = max(2, w // 25)
    left, right = cols < line[:, None] - band, cols > line[:, None] + band
    tl = _quantile(grad[left], 0.9) if left.sum() > 20 else 0.0
    tr = _quantile(grad[right], 0.9) if right.sum() > 20 else 0.0
    features["side_texture"] = min(tl, tr)
    features["balance"] = min(tl, tr) / (max(tl, tr) + 1e-9)
    level = np.percentile(small, 20, axis=0)
    k = int(np.clip(x, band + 1, w - band - 2))
    features["level_step"] = abs(
        float(np.median(level[max(0, k - 4 * band) : k - 1]))
        - float(np.median(level[k + 1 : k + 4 * band]))
    )
    return features, int(x)


def _sheared_sums(mask: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """(slopes, width): for each slope and column x, the sum over rows y of
    ``mask[y, x + round((y - h/2) * slope)]``, i.e. along a straight line through (x, h/2).
    Rows sharing a shift form bands (the shift is monotone in y), so each band is summed
    once and shifted as a whole."""
    h, w = mask.shape
    out = np.zeros((len(slopes), w), np.int64)
    offsets = np.arange(h) - h / 2
    for i, slope in enumerate(slopes):
        shift = np.rint(offsets * slope).astype(np.intp)
        starts = np.flatnonzero(np.r_[True, np.diff(shift) != 0])
        sums = np.add.reduceat(mask, starts, axis=0)
        for band, start in enumerate(starts):
            d = int(shift[start])
            if abs(d) >= w:
                continue  # the line has left the image in these rows
            if d >= 0:
                out[i, : w - d] += sums[band, d:]
            else:
                out[i, -d:] += sums[band, : w + d]
    return out


def _seam_features(unit: np.ndarray, texture: np.ndarray) -> dict[str, float]:
    """Features of the best near-vertical seam of a grid image (values in [0, 1]): how far
    a straight line of sharp edges runs (either sign: ``seam_cover``; one sign: a step),
    anatomy on both of its sides (``seam_anatomy_at``: the less textured side's share of
    textured pixels; a collimator shutter has nothing beyond it), a rising and a falling
    edge side by side (``seam_strip``: the unexposed strip or lead divider between two
    exposures), the step in background level across it, how many such lines there are
    and how far from the centre. ``seam_joint`` weighs straightness against anatomy on
    both sides, and the ``*_at`` features describe the line that maximises it. The
    ``seam_faint_*`` features count fainter edges (two exposures' backgrounds can differ
    by a few gray levels only), and ``seam_mismatch`` how far a horizontal edge runs
    across one side of a line but not the other: each exposure has its own collimation,
    so the shutter edges of two exposures stop at the seam, while one exposure's run
    across it."""
    h, w = unit.shape
    along = ndimage.uniform_filter1d(unit, 3, axis=0)
    grad = np.zeros_like(along)
    grad[:, 1:-1] = (along[:, 2:] - along[:, :-2]) / 2
    rise, fall = grad > SEAM_EDGE, grad < -SEAM_EDGE
    rise[:, 1:] |= rise[:, :-1].copy()  # 1 px of wobble either way
    rise[:, :-1] |= rise[:, 1:].copy()
    fall[:, 1:] |= fall[:, :-1].copy()
    fall[:, :-1] |= fall[:, 1:].copy()
    faint = np.abs(grad) > SEAM_FAINT_EDGE
    faint[:, 1:] |= faint[:, :-1].copy()
    faint[:, :-1] |= faint[:, 1:].copy()
    code = rise.astype(np.int64) + (fall.astype(np.int64) << 10)
    code += (rise | fall).astype(np.int64) << 20
    code += faint.astype(np.int64) << 30  # four counts (< 1024 rows each) in one sum
    sums = _sheared_sums(code, SEAM_SLOPES)
    rising = ((sums & 1023) / h).max(axis=0)
    falling = (((sums >> 10) & 1023) / h).max(axis=0)
    cover = (((sums >> 20) & 1023) / h).max(axis=0)
    faint_cover = ((sums >> 30) / h).max(axis=0)
    one_sign = np.maximum(rising, falling)
    reach = max(2, w // 12)
    strip = np.minimum(
        ndimage.maximum_filter1d(rising, 2 * reach + 1),
        ndimage.maximum_filter1d(falling, 2 * reach + 1),
    )
    column = np.r_[0.0, np.cumsum(texture.mean(axis=0))]
    band, span = max(2, w // 30), int(0.4 * w)
    x = np.arange(w)
    la, lb = np.clip(x - span, 0, w), np.clip(x - band, 0, w)
    ra, rb = np.clip(x + band + 1, 0, w), np.clip(x + span + 1, 0, w)
    left = (column[lb] - column[la]) / np.maximum(lb - la, 1)
    right = (column[rb] - column[ra]) / np.maximum(rb - ra, 1)
    anatomy = np.minimum(left, right)
    lo, hi = int(0.12 * w), int(0.88 * w)
    if hi - lo < 3:
        return dict.fromkeys(_SEAM_NAMES, 0.0)
    mid = slice(lo, hi)
    joint = np.minimum(cover[mid], anatomy[mid] / 0.3)
    faint_joint = np.minimum(faint_cover[mid], anatomy[mid] / 0.3)
    k = int(np.argmax(joint))
    at = lo + k
    # horizontal edges (collimation) that run across one side of a line and not the other
    across = ndimage.uniform_filter1d(unit, 3, axis=1)
    edge = np.zeros(unit.shape, bool)
    edge[1:-1] = np.abs(across[2:] - across[:-2]) / 2 > SEAM_EDGE
    edge[1:] |= edge[:-1].copy()
    edge[:-1] |= edge[1:].copy()
    cum = np.concatenate([np.zeros((h, 1)), np.cumsum(edge, axis=1)], axis=1)
    near, far = int(0.05 * w) + 1, int(0.3 * w) + 1
    xs = np.arange(lo, hi)
    l0, l1 = np.clip(xs - far, 0, w), np.clip(xs - near, 0, w)
    r0, r1 = np.clip(xs + near, 0, w), np.clip(xs + far, 0, w)
    left_edges = (cum[:, l1] - cum[:, l0]) / np.maximum(l1 - l0, 1)
    right_edges = (cum[:, r1] - cum[:, r0]) / np.maximum(r1 - r0, 1)
    mismatch = np.abs(left_edges - right_edges).max(axis=0)
    level = np.partition(unit, h // 5, axis=0)[h // 5]  # 20th percentile of each column
    r = max(3, w // 10)
    step = 0.0
    if 1 <= at < w - 2:
        step = abs(
            float(np.median(level[max(0, at - r) : max(1, at - 1)]))
            - float(np.median(level[at + 2 : at + r + 1]))
        )
    return {
        "seam_cover": float(cover[mid].max()),
        "seam_joint": float(joint[k]),
        "seam_cover_at": float(cover[at]),
        "seam_sign_at": float(one_sign[at]),
        "seam_anatomy_at": float(anatomy[at]),
        "seam_strip_at": float(strip[at]),
        "seam_strip": float(strip[mid].max()),
        "seam_level_step": step,
        "seam_lines": float(
            np.count_nonzero(np.diff(np.r_[0, cover[mid] > 0.6].astype(np.int8)) == 1)
        ),
        "seam_off_centre": abs(at / w - 0.5),
        "seam_faint_cover": float(faint_cover[mid].max()),
        "seam_faint_joint": float(faint_joint.max()),
        "seam_mismatch_at": float(mismatch[k]),
        "seam_mismatch": float(np.minimum(mismatch, anatomy[mid] / 0.3).max()),
    }


def _mirror_similarity(small: np.ndarray) -> float:
    """How alike the two sides of the best vertical mirror line (placed at 35-65% of the
    width) are: the correlation of the left part with the mirrored right part. Both limbs
    in one exposure are mirror images of each other; two separate exposures usually show
    different projections (an AP beside a lateral)."""
    h, w = small.shape
    best = -1.0
    for c in range(int(0.35 * w), int(0.65 * w) + 1):
        k = min(c, w - c)
        if k < 2:
            continue
        left = small[:, c - k : c].ravel()
        right = small[:, c : c + k][:, ::-1].ravel()
        left, right = left - left.mean(), right - right.mean()
        norm = float(np.sqrt((left @ left) * (right @ right)))
        best = max(best, float(left @ right) / (norm + 1e-9))
    return best


def panel_features(img: np.ndarray) -> tuple[dict[str, float], dict[str, int]]:
    """:func:`_axis_panel_features`, :func:`_seam_features` and
    :func:`_mirror_similarity` for vertical (x) and horizontal (y) boundaries of an
    upright image, and where each axis would be cut (image pixels): in the dark gap when
    there is one, else on the straight boundary."""
    fine, fine_factor = _shrink(img, PANEL_GRID)
    small, factor = _shrink(img, 96)
    if min(small.shape) < 12:
        return dict.fromkeys(PANEL_FEATURES, 0.0), {"x": img.shape[1] // 2, "y": img.shape[0] // 2}
    fine = ndimage.uniform_filter(fine, 3)  # film noise would speckle the gap
    exposed = fine > _dark_level(fine)
    gap_x, at_x = _gap_along(exposed)
    gap_y, at_y = _gap_along(exposed.T)
    unit = ndimage.uniform_filter(small, 3) / 255.0
    fx, line_x = _axis_panel_features(unit, gap_x)
    fy, line_y = _axis_panel_features(unit.T, gap_y)
    seam, _ = _shrink(img, SEAM_GRID)
    seam /= 255.0
    mean = ndimage.uniform_filter(seam, 5)
    texture = ndimage.uniform_filter(seam * seam, 5) - mean * mean > SEAM_TEXTURE**2
    fx |= _seam_features(seam, texture)
    fy |= _seam_features(seam.T, texture.T)
    mirror = _shrink(img, 64)[0].astype(np.float64) / 255.0
    fx["mirror"] = _mirror_similarity(mirror)
    fy["mirror"] = _mirror_similarity(mirror.T)
    features = {f"x_{k}": v for k, v in fx.items()} | {f"y_{k}": v for k, v in fy.items()}
    if max(gap_x, gap_y) >= 0.1:
        cuts = {
            "x": at_x * fine_factor + fine_factor // 2,
            "y": at_y * fine_factor + fine_factor // 2,
        }
    else:
        cuts = {"x": line_x * factor + factor // 2, "y": line_y * factor + factor // 2}
    return features, cuts


def detect_panels(img: np.ndarray, *, inverted: bool | None = None) -> Panels:
    """Find several radiographs (separate exposures) in one image: boosted trees over
    :func:`panel_features` (a dark gap between films; a straight seam of sharp or faint
    edges running the whole height with anatomy on both sides; an unexposed strip; a step
    in background level; collimation edges that stop at the seam; how alike the two sides
    are as mirror images, since both limbs in one exposure are), learned from real
    FracAtlas tuning images, unlabelled FracAtlas single exposures and synthetic images.
    The cut goes where the gap is."""
    upright = _upright(img, inverted)
    features, cuts = panel_features(upright)
    model = learned_weights()["panels"]
    x = np.array([[features[name] for name in model["features"]]], np.float64)
    prob = float(_tree_scores(model, x)[0])
    gap = max(features["x_gap"], features["y_gap"]) >= 0.5  # films apart: a dark band
    cut = model["gap_threshold"] if gap else model["threshold"]
    score = 0.5 * prob / cut if prob < cut else 0.5 + 0.5 * (prob - cut) / (1 - cut)
    flag = score >= 0.5
    if not flag:
        return Panels(False, round(score, 4), None)
    axis = "x" if features["x_gap"] >= features["y_gap"] else "y"
    if max(features["x_gap"], features["y_gap"]) < 0.1:  # no gap: the straight boundary
        axis = "x" if features["x_step_line"] >= features["y_step_line"] else "y"
    return Panels(True, round(score, 4), Split(axis, int(cuts[axis])))


def split_panels(img: np.ndarray, split: Split | None) -> list[np.ndarray]:
    """The image cut at the split (two views); the whole image when there is no split."""
    if split is None:
        return [img]
    if split.axis == "x":
        return [img[:, : split.at], img[:, split.at :]]
    return [img[: split.at], img[split.at :]]


def largest_panel(img: np.ndarray, split: Split | None) -> np.ndarray:
    """The panel with the most exposed field (the main view), for one-view pipelines."""
    panels = [p for p in split_panels(img, split) if p.size]
    if len(panels) == 1:
        return panels[0]
    level = _dark_level(_shrink(img)[0])
    return max(panels, key=lambda p: int((p > level).sum()))


# ------------------------------------------------------------------------------ fixes


def apply_fixes(
    img: np.ndarray, *, invert: bool, mask_markers: bool, panels: str = "keep"
) -> np.ndarray:
    """Run the requested fixes, detecting only what they need, in a safe order.

    Polarity comes first (the other detectors expect bone bright), markers are masked
    before any cut (their boxes are in full-image coordinates), and ``panels="largest"``
    keeps the main view of a multi-panel image. Without `invert` the result keeps the
    input's polarity; with no fix asked for, the input itself comes back.
    """
    if panels not in ("keep", "largest"):
        raise ValueError(f"panels must be 'keep' or 'largest', got {panels!r}")
    negative = (invert or mask_markers or panels != "keep") and detect_inverted(img).flag
    work = fix_inverted(img) if negative else img
    if mask_markers:
        work = _fill_boxes(work, detect_markers(work, inverted=False).boxes)
    if panels == "largest":
        work = largest_panel(work, detect_panels(work, inverted=False).split)
    return fix_inverted(work) if negative and not invert else work


_fill_boxes = mask_markers  # apply_fixes's `mask_markers` argument shadows the function


# ------------------------------------------------------------------- technical checks


def technical_problems(img: np.ndarray) -> list[str]:
    """Problems that make an image useless whatever its content: too small or blank."""
    problems = []
    h, w = img.shape
    if min(h, w) < MIN_SIDE:
        problems.append(f"tiny: {w}x{h} px (under {MIN_SIDE} px a side)")
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 0)
    if hi - lo < BLANK_RANGE:
        problems.append(f"blank: pixel values span only {int(hi - lo)} gray levels")
    return problems


def pixel_hash(img: np.ndarray) -> str:
    """sha1 of the pixels and shape: equal for the same picture saved in any container."""
    digest = hashlib.sha1(f"{img.shape}".encode())
    digest.update(np.ascontiguousarray(img).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ audit

LEADING_COLUMNS = (
    "image",
    "inverted",
    "inverted_score",
    "marker",
    "marker_score",
    "multi_panel",
    "multi_panel_score",
    "problems",
)
EXTRA_COLUMNS = ("marker_boxes", "panel_split", "part", "split", "label", "width", "height")
PROBLEM_KINDS = ("undecodable", "tiny", "blank", "duplicate")
FLAGS = ("inverted", "marker", "multi_panel")
AUDIT_CSV = "audit.csv"


@dataclass
class ImageCheck:
    """Everything the audit learnt about one image (one row of audit.csv)."""

    rel: str
    part: str
    split: str = ""
    label: int = 0
    path: str = ""
    width: int = 0
    height: int = 0
    inverted: Inversion = Inversion(False, 0.0)
    markers: Markers = Markers(False, 0.0)
    panels: Panels = Panels(False, 0.0)
    problems: list[str] = field(default_factory=list)
    digest: str = ""

    def _detection(self, name: str) -> Inversion | Markers | Panels | None:
        detections = {"inverted": self.inverted, "marker": self.markers}
        detections["multi_panel"] = self.panels
        return detections.get(name)

    def flagged(self, name: str) -> bool:
        """Whether this image carries a flag (inverted/marker/multi_panel) or a problem kind."""
        found = self._detection(name)
        if found is not None:
            return found.flag
        return any(p.startswith(name) for p in self.problems)

    def score(self, name: str) -> float | None:
        """A detector's score for a flag name; None for technical problem kinds."""
        found = self._detection(name)
        return None if found is None else found.score

    def row(self) -> dict[str, str]:
        return {
            "image": self.rel,
            "inverted": str(int(self.inverted.flag)),
            "inverted_score": f"{self.inverted.score:.4f}",
            "marker": str(int(self.markers.flag)),
            "marker_score": f"{self.markers.score:.4f}",
            "multi_panel": str(int(self.panels.flag)),
            "multi_panel_score": f"{self.panels.score:.4f}",
            "problems": "; ".join(self.problems),
            "marker_boxes": ";".join(" ".join(map(str, b)) for b in self.markers.boxes),
            "panel_split": str(self.panels.split) if self.panels.split else "",
            "part": self.part,
            "split": self.split,
            "label": str(self.label),
            "width": str(self.width),
            "height": str(self.height),
        }


def check_image(img: np.ndarray) -> tuple[Inversion, Markers, Panels, list[str]]:
    """All content checks on one decoded image (the detectors skip tiny or blank ones)."""
    problems = technical_problems(img)
    if problems:
        return Inversion(False, 0.0), Markers(False, 0.0), Panels(False, 0.0), problems
    inversion = detect_inverted(img)
    upright = fix_inverted(img) if inversion.flag else img
    markers = detect_markers(upright, inverted=False)
    panels = detect_panels(upright, inverted=False)
    return inversion, markers, panels, problems


def _check_record(rec: ImageRecord) -> ImageCheck:
    """Decode one file and run every check; a bad file becomes an 'undecodable' problem."""
    check = ImageCheck(rec.rel, rec.part, rec.split, rec.label, str(rec.path))
    try:
        img = read_grayscale(rec.path)
    except BadImageError as err:
        check.problems.append(f"undecodable: {err.problem}")
        return check
    check.height, check.width = img.shape
    check.digest = pixel_hash(img)
    check.inverted, check.markers, check.panels, check.problems = check_image(img)
    return check


def _mark_duplicates(checks: Sequence[ImageCheck]) -> None:
    """Add 'duplicate of <rel>' to every image whose pixels equal an earlier one's."""
    first: dict[str, str] = {}
    for check in checks:
        if not check.digest:
            continue
        original = first.setdefault(check.digest, check.rel)
        if original != check.rel:
            check.problems.append(f"duplicate of {original}")


@dataclass
class AuditResult:
    """What :func:`audit` found: per-image checks, per-part counts, and audit.csv's path when
    it was asked to write one (the HTML page is the report layer's:
    :func:`murakit.report.audit_page.write_audit_page`)."""

    checks: list[ImageCheck]
    summary: dict[str, dict[str, int]]  # part (and "TOTAL") -> {"images", flag/problem: count}
    csv_path: Path | None = None


def summarize(checks: Iterable[ImageCheck]) -> dict[str, dict[str, int]]:
    """Counts of each flag and problem kind per body part, parts sorted, TOTAL last."""
    counts: dict[str, Counter] = {}
    for check in checks:
        for part in (check.part, "TOTAL"):
            c = counts.setdefault(part, Counter())
            c["images"] += 1
            for name in FLAGS + PROBLEM_KINDS:
                c[name] += check.flagged(name)
    order = sorted(p for p in counts if p != "TOTAL") + (["TOTAL"] if counts else [])
    keys = ("images",) + FLAGS + PROBLEM_KINDS
    return {part: {k: int(counts[part][k]) for k in keys} for part in order}


def write_audit_csv(path: Path, checks: Sequence[ImageCheck]) -> None:
    """One row per image, the leading columns first (the CLI and lead's tools read them)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEADING_COLUMNS + EXTRA_COLUMNS)
        writer.writeheader()
        for check in checks:
            writer.writerow(check.row())


def run_checks(
    images: Sequence[ImageRecord],
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ImageCheck]:
    """Check every image, in parallel processes, keeping the input order. `workers`: worker
    processes, 0 = none (check in this process), None = one per CPU core."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    total = len(images)
    pool = ProcessPoolExecutor(workers) if workers > 0 and total >= 32 else None
    results = pool.map(_check_record, images, chunksize=16) if pool else map(_check_record, images)
    checks = []
    try:
        for check in results:
            checks.append(check)
            if progress:
                progress(len(checks), total)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    _mark_duplicates(checks)
    return checks


def audit(
    index_images: Sequence[ImageRecord],
    out_dir: Path | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Check every image and count flags per part; with `out_dir`, also write
    out_dir/audit.csv (nothing is written without it).

    `progress(done, total)` is called after each image; `workers` as in :func:`run_checks`.
    """
    checks = run_checks(index_images, workers, progress)
    csv_path = None
    if out_dir is not None:
        csv_path = Path(out_dir) / AUDIT_CSV
        write_audit_csv(csv_path, checks)
    return AuditResult(checks, summarize(checks), csv_path)
