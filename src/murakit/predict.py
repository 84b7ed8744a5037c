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
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from murakit.data.dataset import apply_config_fixes
from murakit.data.imageio import MAX_PIXELS, BadImageError, read_grayscale
from murakit.data.index import IMAGE_SUFFIXES, DatasetInfo, ImageRecord
from murakit.evaluate.aggregate import AGGREGATIONS, study_probabilities
from murakit.infer.model import LoadedModels
from murakit.infer.runtime import Runtime

BACKENDS = ("torch", "onnx")
CLASSES = DatasetInfo.classes
_PART_FOLDER = re.compile(r"^XR_[A-Z0-9_]+$")
FORMATS = ("json", "csv")
CSV_COLUMNS = (
    "study",
    "part",
    "image",
    "probability",
    "label",
    "study_probability",
    "study_label",
    "n_images",
    "cam_png",
    "error",
)
# DICOM files often carry .dcm/.dicom or no extension at all.
_IMAGE_SUFFIXES = frozenset(IMAGE_SUFFIXES) | {".dicom", ".dic", ".jpe"}
_MURA_STUDY = re.compile(r"^study\d+(_(positive|negative))?$")


class PredictInputError(ValueError):
    """A path given to predict that does not exist or holds no images."""


# ------------------------------------------------------------------------------ inputs


@dataclass
class StudyInput:
    """The images of one study, as found on disk."""

    study: str  # a readable key, e.g. "XR_WRIST/patient11185/study1_positive"
    part: str | None  # from an XR_* folder above the images, when there is one
    paths: list[Path] = field(default_factory=list)
    folder: Path | None = None


def collect_studies(paths: Iterable[Path]) -> list[StudyInput]:
    """Group the given paths into studies.

    A PATH is an image file, a study folder (the images directly inside form one study) or a
    folder of studies (every folder below it that directly holds images is a study: MURA's
    ``valid/`` tree works). Loose image files are grouped by the folder they are in, so
    ``study1/*.png`` means the same as ``study1/``. Hidden files and folders (macOS
    ``._image1.png``) are skipped. The body part is the nearest ``XR_*`` folder name above the
    images, if any. Raises PredictInputError for a missing path or a folder without images.
    """
    studies: dict[Path, StudyInput] = {}
    seen: set[Path] = set()

    def add(folder: Path, files: Sequence[Path]) -> None:
        key_folder = folder.absolute()
        study = studies.get(key_folder)
        if study is None:
            study = studies[key_folder] = StudyInput("", _body_part(key_folder), [], folder)
        for file in files:
            if file.absolute() not in seen:
                seen.add(file.absolute())
                study.paths.append(file)

    for path in map(Path, paths):
        if path.is_dir():
            found = list(_study_folders(path))
            if not found:
                raise PredictInputError(f"{path}: folder holds no image files")
            for folder, files in found:
                add(folder, files)
        elif path.exists():
            add(path.parent, [path])
        else:
            raise PredictInputError(f"{path}: no such file or folder")
    result = list(studies.values())
    _name_studies(result)
    return result


def _study_folders(root: Path) -> Iterable[tuple[Path, list[Path]]]:
    """(folder, its images) for `root` and every non-hidden folder below it that holds images."""
    try:
        entries = sorted(root.iterdir(), key=_natural)
    except OSError as err:
        raise PredictInputError(f"{root}: cannot list folder ({err.strerror or err})") from None
    visible = [e for e in entries if not e.name.startswith(".")]
    images = [e for e in visible if e.is_file() and _is_image_file(e)]
    if images:
        yield root, images
    for sub in visible:
        if sub.is_dir():
            yield from _study_folders(sub)


def _is_image_file(path: Path) -> bool:
    """By name; an extensionless file counts only if it looks like DICOM (a README does not)."""
    suffix = path.suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _natural(path: Path) -> list:
    """Sort key putting image2 before image10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _body_part(folder: Path) -> str | None:
    """The nearest enclosing folder named like a body part (XR_HAND, XR_LEG, ...)."""
    for name in reversed(folder.parts):
        if _PART_FOLDER.match(name.upper()):
            return name.upper()
    return None


def _name_studies(studies: Sequence[StudyInput]) -> None:
    """MURA study folders are named part/patient/study (patientX/studyK repeats across parts),
    others by their folder name; clashing names fall back to the folder's path."""
    for study in studies:
        folder = study.folder.absolute()
        if _MURA_STUDY.match(folder.name) and folder.parent.name.startswith("patient"):
            study.study = "/".join(folder.parts[-3:])
        else:
            study.study = folder.name or str(folder)
    counts: dict[str, int] = {}
    for study in studies:
        counts[study.study] = counts.get(study.study, 0) + 1
    for study in studies:
        if counts[study.study] > 1:
            study.study = str(study.folder)


# ------------------------------------------------------------------------------ results


@dataclass
class ImagePrediction:
    path: str
    study: str
    probability: float
    label: str  # the class name: "abnormal" | "normal" for MURA, as the dataset names them
    cam_png: str | None = None


@dataclass
class StudyPrediction:
    study: str
    part: str | None
    n_images: int
    probability: float
    label: str
    images: list[ImagePrediction] = field(default_factory=list)


@dataclass
class PredictError:
    path: str
    error: str


@dataclass
class PredictionResult:
    studies: list[StudyPrediction]
    errors: list[PredictError]
    threshold: float
    aggregation: str
    backend: str
    model: str
    members: list[str]

    @property
    def images(self) -> list[ImagePrediction]:
        return [image for study in self.studies for image in study.images]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_of(probability: float, threshold: float, classes: Sequence[str] = CLASSES) -> str:
    """The name of the class called: ``classes[1]`` (positive) at or above the threshold."""
    return classes[1] if probability >= threshold else classes[0]


# ------------------------------------------------------------------------------ inference


def read_image(path: Path, loaded: LoadedModels, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A file as the model sees it before resizing: gray uint8 with the model's quality fixes."""
    return apply_config_fixes(read_grayscale(path, max_pixels=max_pixels), loaded.config)


def image_probabilities(
    loaded: LoadedModels,
    images: Sequence[np.ndarray],
    runtime: Runtime,
    *,
    backend: str = "torch",
    onnx_path: Path | None = None,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """P(abnormal) per already-read image (output of :func:`read_image`), mean over members.

    The torch backend runs :func:`~murakit.infer.batched.ensemble_probabilities` itself, so a
    prediction is by construction what evaluation gives for the same picture.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not images:
        return np.empty(0, dtype=np.float64)
    if backend == "onnx":
        return onnx_probabilities(onnx_file(loaded, onnx_path), images, batch_size=batch_size)
    from murakit.infer.batched import ensemble_probabilities

    records = [_memory_record(i) for i in range(len(images))]
    return ensemble_probabilities(
        loaded,
        records,
        runtime,
        batch_size=batch_size,
        load=lambda record: images[int(record.rel)],
        on_batch=on_batch,
    )


def _memory_record(index: int) -> ImageRecord:
    """A stand-in record for an image already in memory; `rel` carries its index."""
    return ImageRecord(Path(f"<image {index}>"), str(index), "", "", "", 0, "predict", 0)


def onnx_file(loaded: LoadedModels, onnx_path: Path | None) -> Path:
    """The ONNX graph to use: the one given, else model.onnx in the model folder."""
    path = Path(onnx_path) if onnx_path else Path(loaded.source) / "model.onnx"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no ONNX model; write one with `murakit export {loaded.source}`"
        )
    return path


_sessions: dict[tuple[str, int], Any] = {}
_sessions_lock = threading.Lock()


def onnx_session(path: Path) -> tuple[Any, dict[str, Any]]:
    """(onnxruntime session, sidecar metadata), cached per file version: building a session
    costs far more than running one study."""
    path = Path(path).resolve()
    key = (str(path), path.stat().st_mtime_ns)
    with _sessions_lock:
        if key not in _sessions:
            import onnxruntime as ort

            meta_file = path.with_name(path.name + ".json")
            if not meta_file.exists():
                raise FileNotFoundError(f"{meta_file}: missing (it says how to preprocess)")
            meta = json.loads(meta_file.read_text())
            options = ort.SessionOptions()
            options.log_severity_level = 3
            # Idle threads sleep instead of spinning: a server shares its cores with decoding,
            # CAMs and other requests (measured faster on a busy 2-core machine, too).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            _sessions[key] = (session, meta)
        return _sessions[key]


def onnx_probabilities(
    path: Path, images: Sequence[np.ndarray], *, batch_size: int = 16
) -> np.ndarray:
    """P(abnormal) per image from the exported graph, preprocessed as its sidecar says."""
    from murakit.data.transforms import EvalTransform

    session, meta = onnx_session(path)
    transform = EvalTransform(int(meta["input"]["size"]))
    input_name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([transform(img).numpy() for img in images[start : start + batch_size]])
        out.append(session.run(None, {input_name: batch})[0].reshape(-1))
    return np.concatenate(out).astype(np.float64)


def cam_overlay(
    loaded: LoadedModels, image: np.ndarray, probability: float, caption: str = "", size: int = 0
):
    """The CAM overlay (PIL RGB image) of one image, captioned with `probability` (the number
    the prediction reports; the CAM pass itself runs at `size`, 512 px by default)."""
    from murakit.explain.cam import CAM_SIZE, cam_on_original, compute_cam, overlay

    size = size or CAM_SIZE
    # predict_size=size: one forward pass per member; the probability comes from the caller.
    result = compute_cam(loaded.models, image, size=size, predict_size=size)
    heat = cam_on_original(result.cam, image.shape, size)
    return overlay(image, heat, probability, caption)


def predict_studies(
    loaded: LoadedModels,
    studies: Sequence[StudyInput],
    runtime: Runtime,
    *,
    backend: str = "torch",
    onnx_path: Path | None = None,
    cam_dir: Path | None = None,
    threshold: float | None = None,
    aggregation: str = "mean",
    batch_size: int = 16,
    max_pixels: int = MAX_PIXELS,
    on_image: Callable[[int], None] | None = None,
) -> PredictionResult:
    """Probabilities and labels per image and per study.

    ``threshold`` None means the model's stored one (``LoadedModels.threshold``). ``aggregation``
    pools a study's image probabilities ("mean" as in the MURA paper, "max" or "median").
    With ``cam_dir``, a CAM overlay PNG per image is written there. Files that cannot be read
    land in ``errors`` with the reader's message; a study with no readable image is left out.
    ``on_image(n)`` is called as images are read (for a progress bar).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")
    if threshold is None:
        threshold = loaded.threshold
    if backend == "onnx":
        onnx_file(loaded, onnx_path)  # fail before reading anything
    images: list[np.ndarray] = []
    owners: list[tuple[StudyInput, Path]] = []
    errors: list[PredictError] = []
    for study in studies:
        for path in study.paths:
            try:
                images.append(read_image(path, loaded, max_pixels=max_pixels))
                owners.append((study, path))
            except BadImageError as err:
                errors.append(PredictError(str(path), err.problem))
            if on_image:
                on_image(1)
    probs = image_probabilities(
        loaded, images, runtime, backend=backend, onnx_path=onnx_path, batch_size=batch_size
    )
    keys, pooled = study_probabilities([s.study for s, _ in owners], probs, aggregation)
    parts = {study.study: study.part for study in studies}
    by_key = {
        key: StudyPrediction(
            key, parts[key], 0, float(p), label_of(float(p), threshold, loaded.classes)
        )
        for key, p in zip(keys, pooled, strict=True)
    }
    taken: set[str] = set()
    for (study, path), image, p in zip(owners, images, probs, strict=True):
        entry = ImagePrediction(
            str(path), study.study, float(p), label_of(float(p), threshold, loaded.classes)
        )
        if cam_dir is not None:
            entry.cam_png = str(
                _write_cam(loaded, image, float(p), study.study, path, Path(cam_dir), taken)
            )
        target = by_key[study.study]
        target.images.append(entry)
        target.n_images += 1
    return PredictionResult(
        studies=[by_key[k] for k in keys],
        errors=errors,
        threshold=float(threshold),
        aggregation=aggregation,
        backend=backend,
        model=str(loaded.source),
        members=list(loaded.names),
    )


def _write_cam(loaded, image, probability, study, path, cam_dir, taken) -> Path:
    from murakit.explain.cam import save_overlay

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{study}__{path.stem}").strip("_") or "image"
    name, k = f"{safe}.png", 2
    while name in taken:
        name, k = f"{safe}-{k}.png", k + 1
    taken.add(name)
    cam_dir.mkdir(parents=True, exist_ok=True)
    picture = cam_overlay(loaded, image, probability, caption=f"{study}/{path.name}")
    return save_overlay(cam_dir / name, picture)


# ------------------------------------------------------------------------------ output


def format_predictions(result: PredictionResult, fmt: str = "json") -> str:
    """JSON (nested: studies with their images, then errors) or CSV (one row per image, the
    study's figures repeated, unreadable files as rows with `error` set)."""
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2) + "\n"
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for study in result.studies:
        for image in study.images:
            writer.writerow(
                {
                    "study": study.study,
                    "part": study.part or "",
                    "image": image.path,
                    "probability": repr(image.probability),
                    "label": image.label,
                    "study_probability": repr(study.probability),
                    "study_label": study.label,
                    "n_images": study.n_images,
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
