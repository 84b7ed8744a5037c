"""CAM overlays for files: one PNG per image of the given images and study folders, and a
cams.csv naming them (``murakit cam``). The maps come from :meth:`murakit.infer.model.Model.cam`;
images and studies are collected as ``murakit predict`` collects them."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from murakit.data.imageio import BadImageError
from murakit.fsutil import atomic_write_text
from murakit.infer.cam import CAM_SIZE, overlay_name, save_overlay
from murakit.infer.model import Model
from murakit.infer.studies import collect_studies

CSV_COLUMNS = ("image", "study", "probability", "cam_png", "error")


def cam_paths(
    model: Model | str | Path,
    inputs: Sequence[Path],
    out_dir: Path,
    size: int = CAM_SIZE,
    progress: Callable[[int], None] | None = None,
    boxes: Mapping[str, Sequence[tuple[float, float, float, float]]] | None = None,
) -> list[dict]:
    """CAM overlays for images and study folders: ``<study>__<image>.png`` per image in
    ``out_dir``, plus ``cams.csv``; returns its rows. ``boxes`` maps an image's resolved path
    to ground-truth boxes drawn on its overlay.

    ``model`` is a :class:`Model` or a run/ensemble folder. Images get the quality fixes the
    model was trained with, as in prediction; if a fix changes the geometry
    (``panels="largest"``), the overlay is drawn on the panel the model saw. An unreadable
    image gets a row with its path and the reason in ``error`` (and no PNG); the others are
    still processed. ``progress(1)`` is called after each image.
    """
    model = model if isinstance(model, Model) else Model.load(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    taken: set[str] = set()
    for study in collect_studies(inputs):
        for path in study.paths:
            row = {"image": str(path), "study": study.study, "probability": "", "cam_png": ""}
            row["error"] = ""
            try:
                cam = model.cam(path, size=size)
            except BadImageError as err:
                row["error"] = err.problem
            else:
                name = overlay_name(study.study, path, taken)
                drawn = (boxes or {}).get(str(Path(path).resolve()), ())
                save_overlay(out_dir / name, cam.overlay(f"{study.study}/{path.name}", drawn))
                row.update(probability=round(cam.probability, 6), cam_png=name)
            rows.append(row)
            if progress:
                progress(1)
    _write_csv(out_dir / "cams.csv", rows)
    return rows


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
