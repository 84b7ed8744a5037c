"""Pictures embedded in the pages as PNG data URIs: the pages stay single files that open
from disk with no network."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError


def png_data_uri(png: bytes) -> str:
    """A data: URI of PNG bytes (the only image URIs the pages hold)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_uri(path: Path, max_side: int | None = None) -> str | None:
    """A PNG data URI of an image file, shrunk to `max_side` when larger; None if unreadable.

    Re-encoding keeps the page light (a full-size CAM overlay is a few hundred kB) and
    guarantees the embedded bytes really are PNG, whatever the file was.
    """
    try:
        raw = Path(path).read_bytes()
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if img.format == "PNG" and (max_side is None or max(img.size) <= max_side):
                return png_data_uri(raw)
            pic = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    if max_side is not None:
        pic.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pic.save(buffer, format="PNG", optimize=True)
    return png_data_uri(buffer.getvalue())
