"""The audit's HTML page: flagged images grouped by problem, as thumbnails a person can scan.

One self-contained file (inline CSS, thumbnails as base64 PNGs, no scripts, no network),
so it opens from disk, survives being mailed or archived, and shows the same thing
anywhere. Marker boxes and panel splits are drawn on the thumbnails, so a reader sees at
a glance whether a detector was right.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from murakit.data.imageio import BadImageError, read_grayscale
from murakit.fsutil import atomic_write_text

if TYPE_CHECKING:
    from murakit.data.quality import ImageCheck

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

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#222;
background:#fafafa}
h1{margin:0 0 .3rem}h2{margin:2rem 0 .2rem;border-bottom:1px solid #ccc}
p.why{margin:.2rem 0 .8rem;color:#555}
table{border-collapse:collapse;margin:.8rem 0}
td,th{border:1px solid #ccc;padding:.2rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}tr.total{font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:.6rem}
figure{margin:0;width:170px;background:#fff;border:1px solid #ddd;padding:4px}
figure img{display:block;margin:auto;max-width:160px;max-height:160px;background:#000}
figcaption{font-size:.72rem;word-break:break-all;margin-top:3px}
.score{font-weight:bold}.none{height:60px;display:flex;align-items:center;
justify-content:center;color:#a00;background:#eee}
.more{color:#555;font-style:italic;margin:.5rem 0}
"""


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
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _scaled(box: tuple[int, ...], scale: float) -> tuple[int, ...]:
    return tuple(int(np.floor(v * scale)) for v in box)


def _caption(check: ImageCheck, key: str) -> str:
    """Path plus the detector's score, or the problem's words for technical problems."""
    score = check.score(key)
    if score is not None:
        detail = f'<span class="score">score {score:.2f}</span>'
    else:
        detail = "; ".join(html.escape(p) for p in check.problems if p.startswith(key))
    return f"{html.escape(check.rel)}<br>{detail}"


def _group_order(checks: Sequence[ImageCheck], key: str) -> list[ImageCheck]:
    """The checks flagged `key`, most certain first for detectors, dataset order otherwise."""
    flagged = [c for c in checks if c.flagged(key)]
    if flagged and flagged[0].score(key) is not None:
        flagged.sort(key=lambda c: c.score(key), reverse=True)
    return flagged


def _summary_table(summary: dict[str, dict[str, int]]) -> str:
    if not summary:
        return "<p>No images.</p>"
    keys = list(next(iter(summary.values())))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["part", *keys])
    rows = []
    for part, counts in summary.items():
        cells = "".join(f"<td>{counts[k]:,}</td>" for k in keys)
        cls = ' class="total"' if part == "TOTAL" else ""
        rows.append(f"<tr{cls}><td>{html.escape(part)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_audit_page(
    checks: Sequence[ImageCheck],
    summary: dict[str, dict[str, int]],
    per_group: int = PER_GROUP,
    title: str = "murakit image audit",
) -> str:
    """The page's HTML text; thumbnails are decoded from the images' paths on disk."""
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
            uri = thumbs[check.rel]
            picture = (
                f'<img src="{uri}" alt="{html.escape(check.rel)}">'
                if uri
                else '<div class="none">no image</div>'
            )
            figures.append(
                f"<figure>{picture}<figcaption>{_caption(check, group.key)}</figcaption></figure>"
            )
        more = len(flagged) - per_group
        more_note = (
            f'<p class="more">and {more:,} more (listed in audit.csv)</p>' if more > 0 else ""
        )
        sections.append(
            f'<section id="{group.key}"><h2>{html.escape(group.title)} ({len(flagged):,})</h2>'
            f'<p class="why">{html.escape(group.why)}</p>'
            f'<div class="grid">{"".join(figures)}</div>{more_note}</section>'
        )
    body = "".join(sections) or "<p>No image was flagged.</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(checks):,} images checked. Red boxes: letter markers; blue lines: where a "
        "multi-panel image would be cut.</p>"
        f"{_summary_table(summary)}{body}</body></html>\n"
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
