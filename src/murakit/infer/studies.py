"""Paths -> studies: the one collector of images and study folders given on a command line or
to :meth:`murakit.infer.model.Model.predict` (used by predict, cam and the Python API)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from murakit.data.imageio import sniff_format
from murakit.data.index import IMAGE_SUFFIXES

# DICOM files often carry .dcm/.dicom or no extension at all.
_IMAGE_SUFFIXES = frozenset(IMAGE_SUFFIXES) | {".dicom", ".dic", ".jpe"}
_PART_FOLDER = re.compile(r"^XR_[A-Z0-9_]+$")
_MURA_STUDY = re.compile(r"^study\d+(_(positive|negative))?$")


class PredictInputError(ValueError):
    """A path given to predict that does not exist or holds no images."""


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
    """By name; an extensionless file counts only if its content is an image (DICOM often has
    no extension; a README does not count)."""
    suffix = path.suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as handle:
            return sniff_format(handle.read(132)) is not None
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
