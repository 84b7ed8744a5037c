"""The audit's HTML page: flagged images grouped by problem, as thumbnails a person can scan.

One self-contained file (inline CSS, thumbnails as base64 PNGs, no scripts, no network),
so it opens from disk, survives being mailed or archived, and shows the same thing
anywhere. Marker boxes and panel splits are drawn on the thumbnails, so a reader sees at
a glance whether a detector was right.

The data layer (:func:`murakit.data.quality.audit`) finds and counts; this module draws the
thumbnails and renders ``templates/audit.html.j2`` (on the report's shared base template).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from murakit.data.imageio import BadImageError, read_grayscale
from murakit.fsutil import atomic_write_text
from murakit.report.images import png_data_uri
from murakit.report.templating import render

if TYPE_CHECKING:
    from murakit.data.quality import ImageCheck

AUDIT_PAGE = "audit.html"  # written beside the data layer's audit.csv
THUMB_SIDE = 160
THUMB_COLOURS = 64
PER_GROUP = 48
BOX_COLOUR = (255, 60, 60)
SPLIT_COLOUR = (40, 200, 255)


@dataclass(frozen=True)
class Group:
    """A section of the page: the checks flagged with `key`, most certain first."""

    key: str
    title: str
    why: str


GROUPS = (
    Group(
        "inverted",
        "Inverted polarity",
        "Bone dark and surround white; a model trained on positives reads these wrongly.",
    ),
    Group(
        "marker",
        "Letter markers",
        "Burnt-in lead letters; a model can learn the letters instead of the anatomy.",
    ),
    Group(
        "multi_panel",
        "Several radiographs in one image",
        "Two views side by side; each is shrunk to half the resolution at 224 px.",
    ),
    Group("undecodable", "Undecodable files", "The file cannot be read as an image."),
    Group("tiny", "Tiny images", "Too few pixels to show anatomy."),
    Group("blank", "Blank images", "Nearly constant: nothing to see."),
    Group("duplicate", "Duplicates", "Same pixels as an earlier image; counted twice."),
)


def thumbnail(check: ImageCheck, side: int = THUMB_SIDE) -> str | None:
    """A data: URI of the downscaled image with boxes and split drawn; None if unreadable."""
    try:
        img = read_grayscale(check.path)
    except BadImageError:
        return None
    scale = min(1.0, side / max(img.shape))
    pic = Image.fromarray(img).convert("RGB")
    if scale < 1.0:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        pic = pic.resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(pic)
    for x0, y0, x1, y1 in check.markers.boxes:
        x0, y0, x1, y1 = _scaled((x0, y0, x1, y1), scale)
        draw.rectangle((x0 - 2, y0 - 2, x1 + 1, y1 + 1), outline=BOX_COLOUR, width=2)
    split = check.panels.split
    if split is not None:
        at = round(split.at * scale)
        w, h = pic.size
        line = (at, 0, at, h) if split.axis == "x" else (0, at, w, at)
        draw.line(line, fill=SPLIT_COLOUR, width=2)
    buffer = io.BytesIO()
    pic.quantize(colors=THUMB_COLOURS).save(buffer, format="PNG")  # a third of RGB's size
    return png_data_uri(buffer.getvalue())


def _scaled(box: tuple[int, ...], scale: float) -> tuple[int, ...]:
    return tuple(int(np.floor(v * scale)) for v in box)


@dataclass
class Figure:
    """One flagged image of a section: its thumbnail and the detector's score, or for a
    technical problem the problem's words."""

    rel: str
    uri: str | None
    score: float | None
    problems: list[str]


@dataclass
class Section:
    group: Group
    total: int  # images flagged; only the first `per_group` are shown
    figures: list[Figure]

    @property
    def more(self) -> int:
        return self.total - len(self.figures)


def _group_order(checks: Sequence[ImageCheck], key: str) -> list[ImageCheck]:
    """The checks flagged `key`, most certain first for detectors, dataset order otherwise."""
    flagged = [c for c in checks if c.flagged(key)]
    if flagged and flagged[0].score(key) is not None:
        flagged.sort(key=lambda c: c.score(key), reverse=True)
    return flagged


def audit_sections(checks: Sequence[ImageCheck], per_group: int = PER_GROUP) -> list[Section]:
    """The page's sections, in GROUPS order, each with at most `per_group` thumbnails
    (decoded from the images' paths on disk, once per image)."""
    thumbs: dict[str, str | None] = {}
    sections = []
    for group in GROUPS:
        flagged = _group_order(checks, group.key)
        if not flagged:
            continue
        figures = []
        for check in flagged[:per_group]:
            if check.rel not in thumbs:
                thumbs[check.rel] = thumbnail(check)
            problems = [p for p in check.problems if p.startswith(group.key)]
            figures.append(Figure(check.rel, thumbs[check.rel], check.score(group.key), problems))
        sections.append(Section(group, len(flagged), figures))
    return sections


def render_audit_page(
    checks: Sequence[ImageCheck],
    summary: dict[str, dict[str, int]],
    per_group: int = PER_GROUP,
    title: str = "murakit image audit",
) -> str:
    """The page's HTML text: the per-part counts, then the flagged images by problem."""
    return render(
        "audit.html.j2",
        title=title,
        n_checked=len(checks),
        summary=summary,
        columns=list(next(iter(summary.values()))) if summary else [],
        sections=audit_sections(checks, per_group),
    )


def write_audit_page(
    path: Path,
    checks: Sequence[ImageCheck],
    summary: dict[str, dict[str, int]],
    per_group: int = PER_GROUP,
) -> Path:
    """Write the audit page atomically to `path` and return it."""
    atomic_write_text(path, render_audit_page(checks, summary, per_group))
    return Path(path)
