"""Import labelled radiographs into a murakit dataset: MURA's layout plus ``dataset.json``.

The output is a folder every murakit command accepts: ``{train,valid}_image_paths.csv`` and
``{train,valid}_labeled_studies.csv`` in MURA's format, the images under
``SPLIT/PART/patientID/studyK_{positive,negative}/``, ``dataset.json`` (name, class names,
body parts, licence), ``truth.csv`` (per image: split, part, label, source file and whatever
else the source knows, such as fracture boxes) and ``import_log.txt`` (every rule applied and
every image it touched). A licence file travels with the data where the source has one.

The split is deterministic (seeded), stratified by label and body part, and never separates
the images of one patient, nor images with identical pixels.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from murakit.data.imageio import BadImageError, read_grayscale_salvaged
from murakit.data.index import DATASET_FILE, DatasetError
from murakit.data.quality import pixel_hash
from murakit.data.truth import TRUTH_FILE
from murakit.fsutil import atomic_open, atomic_write_json, atomic_write_text

Progress = Callable[[int], None]

FRACATLAS_PARTS = {"hand": "XR_HAND", "leg": "XR_LEG", "hip": "XR_HIP", "shoulder": "XR_SHOULDER"}
FRACATLAS_FLAGS = ("hardware", "multiscan", "frontal", "lateral", "oblique")
FRACATLAS_CLASSES = ("no fracture", "fracture")
FRACATLAS_COCO = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"
FRACATLAS_CITATION = (
    "FracAtlas: Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al., Scientific Data 10, 521 "
    "(2023), doi:10.1038/s41597-023-02432-4; CC BY 4.0"
)
FRACATLAS_CREDIT = """\
# FracAtlas: real musculoskeletal radiographs, CC BY 4.0

The images and labels in this folder come from FracAtlas:

Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al. *FracAtlas: A Dataset for Fracture
Classification, Localization and Segmentation of Musculoskeletal Radiographs.* Scientific Data
10, 521 (2023). doi:10.1038/s41597-023-02432-4. Data: figshare, doi:10.6084/m9.figshare.22363012.
Licence: Creative Commons Attribution 4.0 International (CC BY 4.0),
https://creativecommons.org/licenses/by/4.0/.

Anything built from these images (models, figures, fixtures) must credit the authors as above.

Changes made by `murakit import fracatlas`: the images were arranged into murakit's (MURA's)
folder layout and split into train and valid; JPEGs cut short were decoded as far as their data
goes and stored as PNG (see import_log.txt); labels where the release disagrees with itself
were resolved by the rules in import_log.txt.
"""


@dataclass
class SourceImage:
    """One radiograph to import. Images sharing ``patient`` (or identical pixels) share a split;
    images sharing ``patient`` and ``study`` form one study and must share ``label``."""

    source: Path
    part: str
    patient: str
    study: str
    label: int
    where: str  # for messages: the row or file this image came from
    truth: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportResult:
    out: Path
    counts: dict[str, Counter]  # split -> Counter of (part, label)
    notes: list[str]  # one line per rule applied to an image
    log: Path


# ------------------------------------------------------------------------- FracAtlas


def fracatlas_part(row: dict[str, str]) -> str:
    """One body part per image: the single region flagged among hand, leg, hip and shoulder;
    XR_MIXED when ``mixed`` is set or several (or none) of those are."""
    flagged = [part for key, part in FRACATLAS_PARTS.items() if row.get(key, "0").strip() == "1"]
    if row.get("mixed", "0").strip() == "1" or len(flagged) != 1:
        return "XR_MIXED"
    return flagged[0]


def _fracatlas_boxes(src: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Fracture boxes per file name from the COCO annotations, as (x0, y0, x1, y1)."""
    coco_path = src / FRACATLAS_COCO
    if not coco_path.exists():
        raise DatasetError(f"{coco_path}: not found (the release's COCO fracture annotations)")
    coco = json.loads(coco_path.read_text(encoding="utf-8"))
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    boxes: dict[str, list] = defaultdict(list)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[names[ann["image_id"]]].append((x, y, x + w, y + h))
    return boxes


def fracatlas_images(src: Path) -> tuple[list[SourceImage], list[str]]:
    """The release's images with their labels, parts, boxes and flags, plus notes on every
    label the rules decided.

    Label rule: the image's folder (``images/Fractured`` or ``images/Non_fractured``) and
    dataset.csv's ``fractured`` normally agree; where they do not, the COCO annotations decide
    (an image with a fracture box is fractured, one without is not)."""
    src = Path(src)
    table = src / "dataset.csv"
    if not table.exists():
        raise DatasetError(f"{table}: not found; SRC must be the FracAtlas release folder")
    boxes = _fracatlas_boxes(src)
    folders = {"Fractured": 1, "Non_fractured": 0}
    located = {
        path.name: (path, label)
        for folder, label in folders.items()
        for path in sorted((src / "images" / folder).glob("*"))
        if path.is_file() and not path.name.startswith(".")
    }
    images, notes = [], []
    with open(table, newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            name = row["image_id"].strip()
            where = f"{table}, line {number}"
            if name not in located:
                raise DatasetError(
                    f"{where}: {name} is in neither images/Fractured nor Non_fractured"
                )
            path, folder_label = located.pop(name)
            label = folder_label
            if row["fractured"].strip() != str(folder_label):
                label = int(bool(boxes.get(name)))
                notes.append(
                    f"{name}: folder says {folder_label}, dataset.csv says fractured="
                    f"{row['fractured'].strip()}; {len(boxes.get(name, []))} fracture box(es) "
                    f"in the COCO annotations, so label {label}"
                )
            truth = {flag: row.get(flag, "").strip() for flag in FRACATLAS_FLAGS}
            truth["finding"] = "fracture" if boxes.get(name) else ""
            truth["finding_box"] = _format_boxes(boxes.get(name, []))
            patient = "patient" + (re.sub(r"\D", "", Path(name).stem) or Path(name).stem)
            images.append(SourceImage(path, fracatlas_part(row), patient, "1", label, where, truth))
    for name in sorted(located):
        notes.append(f"{name}: in images/ but not in dataset.csv; left out")
    return images, notes


def import_fracatlas(
    src: Path,
    out: Path,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Import the FracAtlas release at ``src`` into a murakit dataset at ``out``."""
    images, notes = fracatlas_images(Path(src))
    info = {
        "name": "FracAtlas",
        "classes": list(FRACATLAS_CLASSES),
        "licence": "CC BY 4.0",
        "credit": FRACATLAS_CITATION,
        "source": str(Path(src).resolve()),
    }
    return write_dataset(
        images,
        out,
        info=info,
        credit=FRACATLAS_CREDIT,
        notes=notes,
        valid_fraction=valid_fraction,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
    )


# ----------------------------------------------------------------------- a user's CSV

_TRUE = {"1", "true", "yes", "positive", "abnormal", "y", "t"}
_FALSE = {"0", "false", "no", "negative", "normal", "n", "f"}


def normalize_part(value: str) -> str:
    """'hand', 'Hand ', 'XR_HAND' -> 'XR_HAND'; other characters become '_'."""
    name = re.sub(r"[^A-Z0-9]+", "_", value.strip().upper()).strip("_")
    if not name:
        raise ValueError("empty body part")
    return name if name.startswith("XR_") else f"XR_{name}"


def csv_images(
    table: Path,
    *,
    image_col: str = "image",
    label_col: str = "label",
    part_col: str | None = None,
    patient_col: str | None = None,
    study_col: str | None = None,
    parts: Sequence[str] | None = None,
    default_part: str = "XR_UNSPECIFIED",
) -> list[SourceImage]:
    """Read a table of labelled images; errors name the row. Paths are relative to the table.

    Without ``patient_col`` every image is its own patient; without ``study_col`` every image
    is its own study. ``parts`` restricts the accepted body-part values."""
    table = Path(table)
    if not table.exists():
        raise DatasetError(f"{table}: not found")
    allowed = None if parts is None else {normalize_part(p) for p in parts}
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for option, col in (
            ("--image-col", image_col),
            ("--label-col", label_col),
            ("--part-col", part_col),
            ("--patient-col", patient_col),
            ("--study-col", study_col),
        ):
            if col is not None and col not in columns:
                raise DatasetError(
                    f"{table}: no column {col!r} ({option}); columns: {', '.join(columns)}"
                )
        images = []
        for number, row in enumerate(reader, start=2):
            where = f"{table}, row {number}"
            raw_path = (row[image_col] or "").strip()
            if not raw_path:
                raise DatasetError(f"{where}: empty {image_col!r}")
            path = Path(raw_path).expanduser()
            path = path if path.is_absolute() else table.parent / path
            if not path.is_file():
                raise DatasetError(f"{where}: image file {raw_path!r} not found ({path})")
            raw_label = (row[label_col] or "").strip().lower()
            if raw_label not in _TRUE | _FALSE:
                raise DatasetError(
                    f"{where}: label {row[label_col]!r} in column {label_col!r} is not one of "
                    "1/0, true/false, yes/no, positive/negative, abnormal/normal"
                )
            try:
                part = normalize_part(row[part_col] or "") if part_col else default_part
            except ValueError:
                raise DatasetError(f"{where}: empty body part in column {part_col!r}") from None
            if allowed is not None and part not in allowed:
                raise DatasetError(
                    f"{where}: unknown body part {row[part_col]!r} (read as {part}); "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
            patient = _safe_id(row[patient_col]) if patient_col else f"row{number}"
            study = _safe_id(row[study_col]) if study_col else f"row{number}"
            if not patient or not study:
                raise DatasetError(f"{where}: empty patient or study id")
            images.append(
                SourceImage(
                    path.resolve(),
                    part,
                    f"patient{patient}",
                    study,
                    int(raw_label in _TRUE),
                    where,
                    {"source_row": str(number)},
                )
            )
    if not images:
        raise DatasetError(f"{table}: no rows")
    return images


def _safe_id(value: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", (value or "").strip()).strip("-.")


def import_csv(
    table: Path,
    out: Path,
    *,
    name: str | None = None,
    classes: Sequence[str] = ("normal", "abnormal"),
    licence: str = "",
    valid_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
    **columns,
) -> ImportResult:
    """Import a user's table of labelled radiographs (see :func:`csv_images`)."""
    images = csv_images(Path(table), **columns)
    info = {
        "name": name or Path(table).stem,
        "classes": list(classes),
        "licence": licence,
        "source": str(Path(table).resolve()),
    }
    return write_dataset(
        images,
        out,
        info=info,
        credit=None,
        notes=[],
        valid_fraction=valid_fraction,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
    )


# ---------------------------------------------------------------------- the writer


def _format_boxes(boxes: Iterable[tuple[float, ...]]) -> str:
    return "; ".join(" ".join(f"{v:g}" for v in box) for box in boxes)


def _clip_boxes(text: str, height: int) -> str:
    """Boxes cut to an image whose bottom rows were dropped; boxes left empty are removed."""
    kept = []
    for piece in filter(None, (p.strip() for p in text.split(";"))):
        x0, y0, x1, y1 = (float(v) for v in piece.split())
        if y0 < height:
            kept.append((x0, y0, x1, min(y1, height)))
    return _format_boxes(kept)


class _Groups:
    """Union-find over image indices: images that must land in the same split."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def assign_splits(
    strata: Sequence[tuple], groups: Sequence[int], valid_fraction: float, seed: int
) -> list[str]:
    """'train' or 'valid' per image. Whole groups move together; groups are stratified by the
    stratum of their first image, shuffled by ``seed``, and round(fraction x n) of each stratum
    go to valid."""
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    first: dict[int, tuple] = {}
    for stratum, group in zip(strata, groups, strict=True):
        first.setdefault(group, stratum)
    by_stratum: dict[tuple, list[int]] = defaultdict(list)
    for group, stratum in first.items():
        by_stratum[stratum].append(group)
    rng = np.random.default_rng(seed)
    valid: set[int] = set()
    for stratum in sorted(by_stratum, key=repr):
        members = by_stratum[stratum]
        order = rng.permutation(len(members))
        valid.update(members[i] for i in order[: round(valid_fraction * len(members))])
    return ["valid" if g in valid else "train" for g in groups]


def write_dataset(
    images: list[SourceImage],
    out: Path,
    *,
    info: dict,
    credit: str | None,
    notes: list[str],
    valid_fraction: float,
    seed: int,
    overwrite: bool,
    progress: Progress | None = None,
) -> ImportResult:
    """Decode every image once (to find identical pixels and files cut short), split, and
    write the dataset into a temporary folder renamed to ``out`` at the end."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    notes = list(notes)

    # 1. decode: pixel hashes and salvaged files
    hashes, salvaged = [], {}
    kept: list[SourceImage] = []
    for image in images:
        try:
            pixels, dropped = read_grayscale_salvaged(image.source)
        except BadImageError as err:
            notes.append(f"{image.source.name}: left out: {err.problem}")
            if progress:
                progress(1)
            continue
        if dropped is not None:
            salvaged[len(kept)] = pixels
            notes.append(
                f"{image.source.name}: file ends early (truncated); decoded as far as its data "
                f"goes, {dropped} unfilled bottom row(s) dropped, stored as PNG"
            )
            if dropped and image.truth.get("finding_box"):
                image.truth["finding_box"] = _clip_boxes(image.truth["finding_box"], len(pixels))
        hashes.append(pixel_hash(pixels))
        kept.append(image)
        if progress:
            progress(1)

    # 2. identical pixels: one split per group; opposite labels are left out
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(hashes):
        by_hash[digest].append(i)
    dropped_idx: set[int] = set()
    groups = _Groups(len(kept))
    patients: dict[str, int] = {}
    for i, image in enumerate(kept):
        groups.join(i, patients.setdefault(image.patient, i))
    for members in by_hash.values():
        if len(members) < 2:
            continue
        names = ", ".join(kept[i].source.name for i in members)
        if len({kept[i].label for i in members}) > 1:
            dropped_idx.update(members)
            notes.append(f"identical pixels, opposite labels: {names}; all left out")
            continue
        for i in members[1:]:
            groups.join(i, members[0])
        notes.append(f"identical pixels: {names}; kept in one split")

    # 3. studies must agree on their label
    first_of_study: dict[tuple, SourceImage] = {}
    for image in kept:
        first = first_of_study.setdefault((image.patient, image.part, image.study), image)
        if image.label != first.label:
            raise DatasetError(
                f"{image.where}: label {image.label}, but {first.where} gives study "
                f"{image.study!r} of {image.patient} ({image.part}) label {first.label}; "
                "a study has one label"
            )

    index = [i for i in range(len(kept)) if i not in dropped_idx]
    splits = assign_splits(
        [(kept[i].label, kept[i].part) for i in index],
        [groups.find(i) for i in index],
        valid_fraction,
        seed,
    )

    # 4. write into a temporary folder, then rename
    tmp = out.with_name(f".{out.name}.importing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    study_numbers: dict[tuple, int] = {}
    per_patient: Counter = Counter()
    rows: dict[str, list[str]] = {"train": [], "valid": []}
    studies: dict[str, dict[str, int]] = {"train": {}, "valid": {}}
    truth_rows = []
    counts: dict[str, Counter] = {"train": Counter(), "valid": Counter()}
    for i, split in zip(index, splits, strict=True):
        image = kept[i]
        key = (image.patient, image.part, image.study)
        if key not in study_numbers:
            per_patient[(image.patient, image.part)] += 1
            study_numbers[key] = per_patient[(image.patient, image.part)]
        label_dir = "positive" if image.label else "negative"
        study_rel = f"{split}/{image.part}/{image.patient}/study{study_numbers[key]}_{label_dir}"
        name = image.source.name if i not in salvaged else image.source.stem + ".png"
        rel = f"{study_rel}/{name}"
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if i in salvaged:
            with atomic_open(target, "wb") as handle:
                Image.fromarray(salvaged[i]).save(handle, format="PNG")
        else:
            shutil.copyfile(image.source, target)
        rows[split].append(rel)
        studies[split][study_rel + "/"] = image.label
        counts[split][(image.part, image.label)] += 1
        truth_rows.append(
            {
                "image": rel,
                "split": split,
                "part": image.part,
                "label": image.label,
                "source": image.source.name,
                **image.truth,
            }
        )
    for split in ("train", "valid"):
        atomic_write_text(tmp / f"{split}_image_paths.csv", "".join(f"{r}\n" for r in rows[split]))
        atomic_write_text(
            tmp / f"{split}_labeled_studies.csv",
            "".join(f"{s},{label}\n" for s, label in studies[split].items()),
        )
    columns = list(dict.fromkeys(k for row in truth_rows for k in row))
    with atomic_open(tmp / TRUTH_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(truth_rows)
    parts = sorted({image.part for image in kept})
    atomic_write_json(
        tmp / DATASET_FILE,
        {
            **info,
            "parts": parts,
            "truth": TRUTH_FILE,
            "attribution": "ATTRIBUTION.md" if credit else "",
            "split": {"valid_fraction": valid_fraction, "seed": seed},
        },
    )
    if credit:
        atomic_write_text(tmp / "ATTRIBUTION.md", credit)
    log = tmp / "import_log.txt"
    atomic_write_text(
        log,
        f"murakit import of {info['source']}\n"
        f"{len(truth_rows)} images written, {len(images) - len(truth_rows)} left out\n\n"
        + "".join(f"{note}\n" for note in notes),
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return ImportResult(out, counts, notes, out / log.name)
