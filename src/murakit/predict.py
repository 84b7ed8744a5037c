"""Predictions for new studies: files and folders in, a probability per image and per study out.

This is where a trained model meets data nobody has labelled. Inputs are whatever a person has
at hand: one image, a study folder, or a folder of studies (MURA's own tree works as is). Each
image goes through the same steps as in evaluation (content-sniffing reader, the model's
quality fixes, pad/resize/normalise, mean of the members' sigmoid outputs), so a study gets
the number `murakit evaluate` would give it. Unreadable files are reported by path, and the
rest are still predicted: one bad file must not cost a clinic the other ten.

Two backends compute the same probabilities: PyTorch (the checkpoints) and ONNX Runtime (the
graph written by :mod:`murakit.infer.onnx`, for machines that should not carry torch).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from murakit.data.imageio import MAX_PIXELS
from murakit.infer.model import Model
from murakit.infer.results import PredictionResult
from murakit.infer.studies import StudyInput

FORMATS = ("json", "csv")
CSV_COLUMNS = (
    "study",
    "part",
    "image",
    "probability",
    "label",
    "decision",
    "study_probability",
    "study_label",
    "study_decision",
    "n_images",
    "threshold",
    "uncertain_low",
    "uncertain_high",
    "cam_png",
    "error",
)


def predict_studies(
    model: Model,
    studies: Sequence[StudyInput],
    *,
    backend: str = "auto",
    onnx_path: Path | None = None,
    cam_dir: Path | None = None,
    threshold: float | None = None,
    aggregation: str = "mean",
    batch_size: int = 16,
    max_pixels: int = MAX_PIXELS,
    on_image: Callable[[int], None] | None = None,
) -> PredictionResult:
    """:meth:`Model.predict_studies`, plus a CAM overlay PNG per image in ``cam_dir`` when given.

    ``threshold`` None means the model's stored one. ``aggregation`` pools a study's image
    probabilities ("mean" as in the MURA paper, "max" or "median"). Files that cannot be read
    land in ``errors`` with the reader's message; a study with no readable image is left out.
    ``on_image(n)`` is called as images are read (for a progress bar).
    """
    result = model.predict_studies(
        studies,
        backend=backend,
        onnx_path=onnx_path,
        threshold=threshold,
        aggregation=aggregation,
        batch_size=batch_size,
        max_pixels=max_pixels,
        on_image=on_image,
    )
    if cam_dir is not None:
        taken: set[str] = set()
        for study in result.studies:
            for image in study.images:
                path = Path(image.path)
                image.cam_png = str(
                    _write_cam(
                        model,
                        path,
                        image.probability,
                        study.study,
                        Path(cam_dir),
                        taken,
                        max_pixels,
                        result.backend,  # as resolved for the predictions, once
                        onnx_path,
                    )
                )
    return result


def _write_cam(
    model: Model,
    path: Path,
    probability: float,
    study: str,
    cam_dir,
    taken,
    max_pixels,
    backend: str,
    onnx_path: Path | None,
) -> Path:
    """The overlay of one image, captioned with the probability the prediction reports (the
    CAM pass runs once per member at 512 px; no second pass at the training size)."""
    from murakit.infer.cam import CAM_SIZE, overlay_name, save_overlay

    name = overlay_name(study, path, taken)
    cam_dir.mkdir(parents=True, exist_ok=True)
    cam = model.cam(
        path,
        size=CAM_SIZE,
        predict_size=CAM_SIZE,
        max_pixels=max_pixels,
        backend=backend,
        onnx_path=onnx_path,
    )
    picture = cam.overlay(caption=f"{study}/{path.name}", probability=probability)
    return save_overlay(cam_dir / name, picture)


# ------------------------------------------------------------------------------ output


def format_predictions(result: PredictionResult, fmt: str = "json") -> str:
    """JSON (nested: studies with their images, then errors) or CSV (one row per image, the
    study's figures repeated, unreadable files as rows with `error` set).

    Both carry the decision with the uncertain band (:mod:`murakit.infer.results`):
    ``decision`` is positive, negative or uncertain (within ``uncertain_margin`` of the
    threshold); JSON states ``threshold``, ``uncertain_margin`` and ``uncertain_band`` once,
    CSV repeats ``threshold``, ``uncertain_low`` and ``uncertain_high`` on every row."""
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2) + "\n"
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    low, high = result.uncertain_band
    for study in result.studies:
        for image in study.images:
            writer.writerow(
                {
                    "study": study.study,
                    "part": study.part or "",
                    "image": image.path,
                    "probability": repr(image.probability),
                    "label": image.label,
                    "decision": image.decision,
                    "study_probability": repr(study.probability),
                    "study_label": study.label,
                    "study_decision": study.decision,
                    "n_images": study.n_images,
                    "threshold": repr(result.threshold),
                    "uncertain_low": repr(low),
                    "uncertain_high": repr(high),
                    "cam_png": image.cam_png or "",
                    "error": "",
                }
            )
    for error in result.errors:
        writer.writerow({"image": error.path, "error": error.error})
    return buffer.getvalue()


def write_predictions(result: PredictionResult, out: Path | None, fmt: str = "json") -> None:
    """Write to `out` atomically, or to stdout when `out` is None."""
    text = format_predictions(result, fmt)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from murakit.fsutil import atomic_write_text

    atomic_write_text(Path(out), text)


# ------------------------------------------------------------------------------ MURA's convention

_PART = re.compile(r"^XR_[A-Z0-9_]+$")


def read_mura_csv(path: str | Path, base: str | Path | None = None) -> list[StudyInput]:
    """The studies of a MURA image list: a header-less CSV with one image path per line (the
    format of MURA's ``valid_image_paths.csv``), each relative to `base` (default: the current
    directory, as MURA's evaluation runs from the folder holding ``MURA-v1.1/``).

    A study is the folder of its images, keyed by that folder's path as written in the CSV,
    with its trailing slash (``MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/``; the
    folder may lack ``_positive``/``_negative``, as in MURA's hidden test split); studies come
    in the order of their first image. Raises PredictInputError for an empty list or a listed
    file that does not exist (naming the line)."""
    from murakit.infer.studies import PredictInputError

    path, base = Path(path), Path(base) if base is not None else Path.cwd()
    studies: dict[str, StudyInput] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise PredictInputError(f"{path}: cannot read ({err})") from None
    for line, row in enumerate(rows, start=1):
        image = row[0].strip() if row else ""
        if not image:
            continue
        file = base / image
        if not file.is_file():
            raise PredictInputError(
                f"{path}, line {line}: {image}: no such file under {base} (MURA's paths are "
                "relative to the folder holding MURA-v1.1/: run from there)"
            )
        folder = image.replace("\\", "/").rsplit("/", 1)[0] + "/" if "/" in image else "./"
        study = studies.get(folder)
        if study is None:
            part = next((p.upper() for p in folder.split("/") if _PART.match(p.upper())), None)
            study = studies[folder] = StudyInput(folder, part, [], file.parent)
        study.paths.append(file)
    if not studies:
        raise PredictInputError(f"{path}: lists no image paths")
    return list(studies.values())


def format_mura_predictions(
    result: PredictionResult, studies: Sequence[StudyInput]
) -> tuple[str, list[str]]:
    """MURA's submission file: one header-less ``study_path,label`` line per study of
    `studies` (label 1 when the study's probability is at or above the result's threshold,
    else 0), in their order; and the studies left out because none of their images could be
    read."""
    by_key = {s.study: s for s in result.studies}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    missing = []
    for study in studies:
        predicted = by_key.get(study.study)
        if predicted is None:
            missing.append(study.study)
            continue
        writer.writerow([study.study, int(predicted.probability >= result.threshold)])
    return buffer.getvalue(), missing


def write_mura_predictions(
    result: PredictionResult, studies: Sequence[StudyInput], out: Path | None
) -> list[str]:
    """:func:`format_mura_predictions` to `out` (atomically) or stdout; the studies left out."""
    text, missing = format_mura_predictions(result, studies)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from murakit.fsutil import atomic_write_text

        atomic_write_text(Path(out), text)
    return missing
