"""The reference report's augmentation figure: one radiograph, padded to square, beside n
versions of it as training sees them.

The versions go through the real training steps (``square_resize`` then ``augment``), not a
re-implementation, so the figure shows what the network is actually fed.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from murakit.data.imageio import read_grayscale  # noqa: E402
from murakit.data.transforms import augment, draw_augmentation, square_resize  # noqa: E402
from murakit.fsutil import atomic_write_bytes  # noqa: E402

PANEL_PX = 240  # width of one panel in the PNG
TITLE_PX = 44  # height of the title strip above the panels
GAP_PX = 3
_DPI = 100


def augment_preview(
    image_path: Path,
    n: int = 5,
    size: int = 224,
    rotation: float = 30.0,
    hflip: bool = True,
    seed: int = 0,
    out: Path = Path("augment_preview.png"),
) -> Path:
    """Write the figure to ``out`` (PNG, atomically) and return ``out``.

    Panel 0 is the image padded to a ``size`` square; panels 1..n are augmented with
    ``np.random.default_rng([seed, i])``. The PNG is exactly ``(n + 1) * PANEL_PX`` wide.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    image_path, out = Path(image_path), Path(out)
    square = square_resize(read_grayscale(image_path), size)
    panels = [(square, "original, padded to square")]
    for i in range(1, n + 1):
        angle, flip = draw_augmentation(np.random.default_rng([seed, i]), rotation, hflip)
        version = augment(square, np.random.default_rng([seed, i]), rotation, hflip)
        panels.append((version, f"rotated {angle:+.1f}° ccw" + (", flipped" if flip else "")))

    width = (n + 1) * PANEL_PX
    fig = plt.figure(figsize=(width / _DPI, (PANEL_PX + TITLE_PX) / _DPI), dpi=_DPI)
    top = PANEL_PX / (PANEL_PX + TITLE_PX)
    for i, (pixels, title) in enumerate(panels):
        gap = GAP_PX / width  # a white seam, so rotated corners do not run together
        ax = fig.add_axes((i / (n + 1) + gap, 0.0, 1 / (n + 1) - 2 * gap, top))
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        ax.set_axis_off()
        ax.text(
            0.5,
            0.97,
            title,
            transform=ax.transAxes,
            ha="center",
            va="top",
            color="white",
            fontsize=8,
            bbox=dict(facecolor="black", alpha=0.6, lw=0),
        )
    fig.text(
        0.5,
        1 - 0.5 * (1 - top),
        f"{image_path.name}: {size} px, rotation within "
        f"±{rotation:g}°" + (", random horizontal flip" if hflip else ""),
        ha="center",
        va="center",
        fontsize=10,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)  # no tight bbox: the size stays exact
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out
