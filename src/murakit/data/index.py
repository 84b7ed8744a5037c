"""The MURA index: a dataset in MURA's layout read into typed image records.

The CSVs are the truth where they exist (official ones have no header; copies with a
header row or CRLF line ends are tolerated). Where a split has no CSVs the directory
tree is walked instead, ignoring hidden files such as macOS ``._image1.png``.

A folder without ``dataset.json`` is MURA: its seven body parts, classes normal / abnormal.
A dataset written by ``murakit import`` declares its own in ``dataset.json`` (e.g. FracAtlas:
XR_LEG, XR_HIP, ...; no fracture / fracture), so other parts are accepted only there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BODY_PARTS = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)
SPLITS = ("train", "valid")
DATASET_FILE = "dataset.json"  # written by `murakit import`: name, classes, parts, licence
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".tif", ".tiff")

_STUDY_DIR = re.compile(r"^study(\d+)(?:_(positive|negative))?$")


class DatasetError(ValueError):
    """A problem in the dataset's lists or layout, naming the file (and line) at fault."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset declares about itself; MURA's when the folder has no dataset.json."""

    name: str = "MURA"
    classes: tuple[str, str] = ("normal", "abnormal")  # label 0, label 1
    parts: tuple[str, ...] = BODY_PARTS
    licence: str = "MURA research use agreement (Stanford ML Group)"
    is_mura: bool = True
    credit: str = "MURA: Rajpurkar et al., arXiv:1712.06957 (2017), Stanford ML Group"

    @classmethod
    def read(cls, root: Path) -> DatasetInfo:
        path = Path(root) / DATASET_FILE
        if not path.exists():
            return cls()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            classes = tuple(str(c) for c in doc.get("classes", cls.classes))
            parts = tuple(str(p) for p in doc["parts"])
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path}: not a valid murakit dataset.json ({err})") from None
        if len(classes) != 2:
            raise DatasetError(f"{path}: 'classes' must name label 0 and label 1, got {classes}")
        return cls(
            str(doc.get("name", Path(root).name)),
            classes,
            parts,
            str(doc.get("licence", "")),
            is_mura=False,
            credit=str(doc.get("credit", "")),
        )

    def to_json(self) -> dict:
        return {
            "credit": self.credit,
            "name": self.name,
            "classes": list(self.classes),
            "parts": list(self.parts),
            "licence": self.licence,
            "is_mura": self.is_mura,
        }


@dataclass(frozen=True)
class ImageRecord:
    """One radiograph. `study` is the study key; it includes the body part because
    patientX/studyK repeats across parts."""

    path: Path  # where the file is on disk
    rel: str  # the path as written in the image CSV, e.g. MURA-v1.1/train/XR_HAND/...
    study: str  # e.g. "XR_HAND/patient00042/study1"
    part: str
    patient: str
    study_number: int
    split: str
    label: int  # 1 = abnormal, 0 = normal (the study's label)


@dataclass
class StudyRecord:
    """The images of one study, which share its label."""

    key: str
    part: str
    patient: str
    split: str
    label: int
    images: list[ImageRecord] = field(default_factory=list)


@dataclass
class DatasetIndex:
    """Every image of the requested splits, in CSV order, plus problems skipped."""

    root: Path
    images: list[ImageRecord]
    skipped: list[str] = field(default_factory=list)
    info: DatasetInfo = field(default_factory=DatasetInfo)

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.images if r.split == name]

    def studies(self, split: str | None = None) -> list[StudyRecord]:
        return group_studies(r for r in self.images if split is None or r.split == split)


def group_studies(images: Iterable[ImageRecord]) -> list[StudyRecord]:
    """Group image records by study key, keeping first-seen order."""
    studies: dict[str, StudyRecord] = {}
    for rec in images:
        study = studies.get(rec.study)
        if study is None:
            study = studies[rec.study] = StudyRecord(
                rec.study, rec.part, rec.patient, rec.split, rec.label
            )
        study.images.append(rec)
    return list(studies.values())


def load_index(
    root: str | Path,
    splits: Sequence[str] = SPLITS,
    *,
    skip_bad: bool = False,
    allow_unknown_parts: bool = False,
) -> DatasetIndex:
    """Read the splits of the MURA-format dataset at `root` (the folder holding the CSVs).

    With `skip_bad`, bad rows are recorded in `DatasetIndex.skipped` instead of raising.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    info = DatasetInfo.read(root)
    known_parts = None if allow_unknown_parts else info.parts
    images: list[ImageRecord] = []
    skipped: list[str] = []

    def bad(message: str) -> None:
        if not skip_bad:
            raise DatasetError(message)
        skipped.append(message)

    for split in splits:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        images.extend(_load_split(root, split, bad, known_parts))
    if not images:
        inner = sorted(p.parent for p in root.glob(f"*/{splits[0]}_image_paths.csv"))
        hint = f"; did you mean {inner[0]}?" if inner else ""
        raise DatasetError(
            f"{root}: no images found for split(s) {', '.join(splits)} "
            f"(expected {'/'.join(f'{s}_image_paths.csv' for s in splits)} or a {splits[0]}/ tree)"
            + hint
        )
    return DatasetIndex(root, images, skipped, info)


def _load_split(root: Path, split: str, bad, known_parts) -> list[ImageRecord]:
    image_csv = root / f"{split}_image_paths.csv"
    label_csv = root / f"{split}_labeled_studies.csv"
    labels = _read_study_labels(root, label_csv, bad) if label_csv.exists() else None
    if image_csv.exists():
        rows = [(f"{image_csv}, line {n}", p) for n, p in _read_image_list(image_csv)]
    else:
        rows = [(str(_resolve(root, p)), p) for p in _walk_tree(root, split)]

    records: list[ImageRecord] = []
    seen: set[str] = set()
    for where, rel in rows:
        try:
            parsed = _parse_image_path(rel, split, known_parts)
        except ValueError as err:
            bad(f"{where}: {err}")
            continue
        part, patient, study_number, suffix_label, study_rel = parsed
        if rel in seen:
            bad(f"{where}: duplicate row {rel!r}")
            continue
        seen.add(rel)
        if labels is not None:
            if study_rel not in labels:
                bad(f"{where}: study {study_rel!r} is not listed in {label_csv}")
                continue
            label = labels[study_rel]
        elif suffix_label is not None:
            label = suffix_label
        else:
            bad(
                f"{where}: no label: {label_csv.name} is absent and the study folder "
                "name has no _positive/_negative suffix"
            )
            continue
        records.append(
            ImageRecord(
                path=_resolve(root, rel),
                rel=rel,
                study=f"{part}/{patient}/study{study_number}",
                part=part,
                patient=patient,
                study_number=study_number,
                split=split,
                label=label,
            )
        )
    return records


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; tolerates a BOM and CRLF line ends."""
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def _read_image_list(path: Path) -> list[tuple[int, str]]:
    rows = []
    for number, line in _lines(path):
        value = line.split(",")[0].strip().strip('"')
        if number == 1 and not value.lower().endswith(IMAGE_SUFFIXES):
            continue  # a header row such as "path"
        rows.append((number, value))
    return rows


def _read_study_labels(root: Path, path: Path, bad) -> dict[str, int]:
    """Map 'split/part/patient/studydir' -> label from a labeled_studies CSV."""
    labels: dict[str, int] = {}
    for number, line in _lines(path):
        parts = [p.strip().strip('"') for p in line.split(",")]
        if len(parts) != 2:
            bad(f"{path}, line {number}: expected 'study_dir/,label', got {line!r}")
            continue
        study, raw = parts
        if raw not in ("0", "1"):
            if number == 1 and "/" not in study:
                continue  # a header row such as "study,label"
            bad(f"{path}, line {number}: label must be 0 or 1, got {raw!r} for {study!r}")
            continue
        key = "/".join(study.replace("\\", "/").rstrip("/").split("/")[-4:])
        if key in labels:
            if labels[key] != int(raw):
                bad(f"{path}, line {number}: study {study!r} listed twice with different labels")
            continue
        labels[key] = int(raw)
    return labels


def _parse_image_path(rel: str, split: str, known_parts: Sequence[str] | None):
    """Split `.../<split>/XR_PART/patientN/studyK_positive/imageM.png` into its fields."""
    pieces = rel.replace("\\", "/").split("/")
    if len(pieces) < 5 or pieces[-5] != split:
        raise ValueError(
            f"path {rel!r} is not of the form "
            f".../{split}/XR_PART/patientNNNNN/studyK_label/imageM.png"
        )
    part, patient, study_dir, name = pieces[-4:]
    if known_parts is not None and part not in known_parts:
        raise ValueError(
            f"unknown body part folder {part!r} in {rel!r}; known: {', '.join(known_parts)}"
        )
    match = _STUDY_DIR.match(study_dir)
    if not match:
        raise ValueError(
            f"study folder {study_dir!r} in {rel!r} is not named studyK[_positive|_negative]"
        )
    if not name.lower().endswith(IMAGE_SUFFIXES):
        raise ValueError(f"{rel!r} is not an image file name ({', '.join(IMAGE_SUFFIXES)})")
    suffix = match.group(2)
    suffix_label = None if suffix is None else int(suffix == "positive")
    study_rel = "/".join(pieces[-5:-1])  # split/part/patient/studydir: the label CSV's key
    return part, patient, int(match.group(1)), suffix_label, study_rel


def _resolve(root: Path, rel: str) -> Path:
    """CSV paths that begin with the root folder's name resolve against its parent; so do
    paths like MURA's own (``MURA-v1.1/train/...``) when the folder was renamed or copied
    under another name: their first part names the dataset folder, the second a split."""
    rel_path = Path(rel)
    if rel_path.is_absolute():
        return rel_path
    parts = rel_path.parts
    if parts and parts[0] == root.name:
        return root.parent / rel_path
    if len(parts) > 1 and parts[0] not in SPLITS and parts[1] in SPLITS:
        return root.joinpath(*parts[1:])
    return root / rel_path


def _walk_tree(root: Path, split: str) -> list[str]:
    """Image paths under root/split in CSV form (prefixed by the root's name); hidden files
    such as macOS ._image1.png are skipped."""
    base = root / split
    if not base.is_dir():
        return []
    found = []
    for path in sorted(base.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(p.startswith(".") for p in rel_parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append("/".join((root.name, *rel_parts)))
    return found
