"""The model report: one self-contained HTML file for a run or an ensemble directory.

Inline CSS, figures as base64 PNG data URIs, no scripts, fonts or links to the network: the
file opens from disk anywhere and can be mailed or archived as the record of a model. It
reads whatever the pipeline has written so far (config, per-epoch metrics, evaluation
folders, CAMs, augmentation preview) and says plainly, with the command to run, what is
missing, so a half-finished model still gets a useful page.
It links the model card (MODEL_CARD.md, :mod:`murakit.report.model_card`) written beside it.

This module gathers the data into small objects (one per section) and draws the figures;
the markup is the Jinja2 templates in ``templates/`` (``report.html.j2`` and the ``base``
it shares with the audit page), autoescaped. Model folders are read through their owners:
ensemble.json by :mod:`murakit.infer.ensemble_spec`, config.json by
:class:`murakit.config.TrainConfig`, metrics.csv by :func:`murakit.train.history.read_history`,
evaluation folders by :mod:`murakit.evaluate.outputs`.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from murakit.config import TrainConfig
from murakit.evaluate.formatting import fmt_int, fmt_kappa, fmt_lr, fmt_num, fmt_pct, is_missing
from murakit.evaluate.outputs import (
    REFERENCE_STUDY_ACCURACY,
    looks_like_mura_valid,
    read_metrics_json,
    read_study_predictions,
)
from murakit.fsutil import atomic_write_text
from murakit.infer.ensemble_spec import ENSEMBLE_FILE, member_run_dir, read_ensemble_spec
from murakit.report.images import image_uri, png_data_uri
from murakit.report.templating import Missing, render
from murakit.train.history import read_history

__all__ = [
    "AUGMENT_PREVIEW",
    "CAMS_DIR",
    "REPORT_FILE",
    "ReportError",
    "build_report",
    "find_evaluations",
    "fmt_int",
    "fmt_kappa",
    "fmt_num",
    "fmt_pct",
    "looks_like_mura_valid",
    "part_table",
    "pick_gallery",
    "read_cams",
    "read_model",
    "render_report",
]

REPORT_FILE = "report.html"
CAMS_DIR = "cams"
AUGMENT_PREVIEW = "augment_preview.png"

# MURA v1.1 valid, and the MURA paper's baseline (Rajpurkar et al. 2017): shown beside our
# numbers only when the evaluated data is that set.
MURA_VALID_IMAGES = 3197
MURA_PAPER_KAPPA = 0.705
MURA_PAPER_AUROC = 0.929

GALLERY_SIZE = 12  # studies per class in the CAM gallery
GALLERY_ERRORS = 4  # of which at most this many misclassified
THUMB_SIDE = 320

# What to run when a section's input is missing; the CLI owns the exact wording of commands.
HINT_EVALUATE = "murakit evaluate --model {model} --data ROOT"
HINT_CAMS = "murakit cam --model {model} --gallery 12"
HINT_TRAIN = "murakit train --out {model} --data ROOT"
HINT_DATA = "murakit report {model} --data ROOT"


class ReportError(ValueError):
    """A folder that holds nothing a report could be made of."""


def _hint(template: str, model: ModelInfo) -> str:
    """A command to copy: the model path shell-quoted (folder names can hold spaces)."""
    return template.format(model=shlex.quote(str(model.path)))


# ---------------------------------------------------------------- the model folder


@dataclass
class Member:
    """One trained run: its row of the member table and its per-epoch history."""

    name: str
    run_dir: Path
    kept: bool
    epochs: int | None = None
    best_epoch: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_study_accuracy: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ModelInfo:
    """What the model folder says about itself: kind, configuration and members."""

    path: Path
    kind: str  # "run" or "ensemble"
    config: TrainConfig | None
    members: list[Member]  # sorted by validation loss, unknown last
    selection: str | None = None
    notes: list[str] = field(default_factory=list)  # files that exist but could not be read


def _best_row(history: list[dict[str, float]]) -> dict[str, float] | None:
    scored = [r for r in history if not is_missing(r.get("val_loss", float("nan")))]
    return min(scored, key=lambda r: r["val_loss"]) if scored else None


def _member_from_history(name: str, run_dir: Path, kept: bool, notes: list[str]) -> Member:
    try:
        history = read_history(run_dir)
    except (OSError, ValueError) as err:
        notes.append(f"{run_dir / 'metrics.csv'}: cannot be read ({err})")
        history = []
    member = Member(name=name, run_dir=run_dir, kept=kept, history=history)
    best = _best_row(history)
    if best is not None:
        member.epochs = len(history)
        member.best_epoch = int(best["epoch"])
        member.train_loss = best.get("train_loss")
        member.val_loss = best["val_loss"]
        member.val_accuracy = best.get("val_image_accuracy")
        member.val_study_accuracy = best.get("val_study_accuracy")
    return member


def _read_config(paths: Iterable[Path], notes: list[str]) -> TrainConfig | None:
    """The first config.json of `paths` that exists, as the TrainConfig it records."""
    for path in paths:
        if path.exists():
            try:
                return TrainConfig.load(path)
            except (OSError, ValueError, TypeError) as err:
                notes.append(f"{path}: cannot be read ({err})")
                return None
    return None


def _sort_key(member: Member) -> tuple[bool, float]:
    missing = is_missing(member.val_loss)
    return (missing, 0.0 if missing else member.val_loss)


# Member figures recorded in ensemble.json: the record of the selection wins over the CSV.
_SPEC_FIGURES = (
    "epochs",
    "best_epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_study_accuracy",
)


def read_model(model_dir: Path) -> ModelInfo:
    """The ensemble (ensemble.json) or the single run (config.json / metrics.csv) at model_dir."""
    notes: list[str] = []
    if (model_dir / ENSEMBLE_FILE).exists():
        try:
            spec = read_ensemble_spec(model_dir)
        except (OSError, ValueError) as err:
            notes.append(f"{model_dir / ENSEMBLE_FILE}: cannot be read ({err})")
            spec = {"members": []}
        members = []
        for row in spec["members"]:
            run_dir = member_run_dir(model_dir, row)
            member = _member_from_history(
                str(row.get("name", run_dir.name)), run_dir, bool(row.get("kept")), notes
            )
            for key in _SPEC_FIGURES:
                if row.get(key) is not None:
                    setattr(member, key, row[key])
            members.append(member)
        config_paths = [m.run_dir / "config.json" for m in members if m.kept]
        config_paths += [m.run_dir / "config.json" for m in members]
        config_paths.append(model_dir / "config.json")
        config = _read_config(config_paths, notes)
        selection = str(spec.get("selection") or "") or None
        members.sort(key=_sort_key)
        return ModelInfo(model_dir, "ensemble", config, members, selection, notes)
    if not any((model_dir / name).exists() for name in ("config.json", "metrics.csv", "best.pt")):
        raise ReportError(
            f"{model_dir}: neither an ensemble ({ENSEMBLE_FILE}) nor a run "
            "(config.json, metrics.csv, best.pt)"
        )
    config = _read_config([model_dir / "config.json"], notes)
    member = _member_from_history(model_dir.name, model_dir, True, notes)
    return ModelInfo(model_dir, "run", config, [member], None, notes)


# ---------------------------------------------------------------- evaluations


@dataclass
class Evaluation:
    """One eval-* folder: metrics.json and the study predictions behind the figures."""

    name: str
    path: Path
    metrics: dict[str, Any] | None
    studies: Any | None  # murakit.evaluate.outputs.StudyPredictions
    notes: list[str] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return float((self.metrics or {}).get("threshold", 0.5))

    @property
    def classes(self) -> tuple[str, str]:
        """Names of label 0 and 1 as the evaluated dataset gives them (MURA's by default)."""
        from murakit.data.index import DatasetInfo

        return tuple((self.metrics or {}).get("dataset", {}).get("classes", DatasetInfo.classes))

    @property
    def scored(self) -> bool:
        return self.metrics is not None and "overall" in self.metrics


def find_evaluations(model_dir: Path) -> list[Evaluation]:
    """Every eval-* folder with metrics or predictions, eval-valid first (it is the headline)."""
    folders = [p for p in sorted(model_dir.glob("eval-*")) if p.is_dir()]
    folders.sort(key=lambda p: p.name != "eval-valid")
    found = []
    for folder in folders:
        notes: list[str] = []
        metrics = studies = None
        if (folder / "metrics.json").exists():
            try:
                metrics = read_metrics_json(folder / "metrics.json")
            except (OSError, ValueError) as err:
                notes.append(f"{folder / 'metrics.json'}: cannot be read ({err})")
        if (folder / "study_predictions.csv").exists():
            try:
                studies = read_study_predictions(folder / "study_predictions.csv")
            except (OSError, ValueError) as err:
                notes.append(f"{folder / 'study_predictions.csv'}: cannot be read ({err})")
        if metrics is not None or studies is not None or notes:
            found.append(Evaluation(folder.name, folder, metrics, studies, notes))
    return found


# ---------------------------------------------------------------- header


@dataclass
class Header:
    title: str
    model_path: str
    kind: str
    arch: str
    preset: str
    size: str
    members: str
    trained: str
    written: str


@dataclass
class Headline:
    """The top line: the first scored evaluation's overall numbers."""

    evaluation: str
    overall: dict[str, Any]
    positive: str
    reference: str  # "; reference report …" on real MURA valid, else ""


def _header(model: ModelInfo) -> Header:
    cfg = model.config
    kept = [m for m in model.members if m.kept]
    if model.kind == "ensemble":
        members = f"{len(kept)} kept of {len(model.members)} trained"
        if model.selection:
            members += f" (selection: {model.selection})"
    else:
        members = "1 (single run)"
    stamp_file = next(
        (
            model.path / n
            for n in (ENSEMBLE_FILE, "best.pt", "metrics.csv")
            if (model.path / n).exists()
        ),
        None,
    )
    trained = (
        datetime.fromtimestamp(stamp_file.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        if stamp_file
        else "–"
    )
    return Header(
        title=f"murakit report: {model.path.resolve().name}",
        model_path=str(model.path.resolve()),
        kind=model.kind,
        arch=cfg.arch if cfg else "–",
        preset=cfg.preset if cfg else "–",
        size=f"{cfg.size}×{cfg.size} px" if cfg and cfg.size else "–",
        members=members,
        trained=trained,
        written=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )


def _headline(model: ModelInfo, evaluations: list[Evaluation]) -> Headline | Missing:
    scored = [e for e in evaluations if e.scored]
    if not scored:
        return Missing("No evaluation yet", _hint(HINT_EVALUATE, model))
    ev = scored[0]
    reference = ""
    if looks_like_mura_valid(ev.metrics):
        reference = (
            f"; reference report {fmt_pct(REFERENCE_STUDY_ACCURACY['TOTAL'])}, "
            f"MURA paper κ {MURA_PAPER_KAPPA:.3f}"
        )
    return Headline(ev.name, ev.metrics["overall"], ev.classes[1], reference)


# ---------------------------------------------------------------- dataset


@dataclass
class DatasetTable:
    """Train and valid side by side, as in the reference report: per split and part the
    normal / abnormal images (and the abnormal share), studies and patients."""

    splits: list[str]
    columns: tuple[str, ...]
    rows: list[tuple[str, list[dict[str, Any] | None]]]  # (part, counts per split or None)


@dataclass
class DatasetSection:
    name: str
    root: str
    classes: tuple[str, str]
    licence: str
    credit: str
    table: DatasetTable
    skipped: int


def dataset_table(
    stats: dict[str, dict[str, dict[str, int]]], classes: Sequence[str] = ("normal", "abnormal")
) -> DatasetTable:
    """The table of murakit.data.stats.dataset_stats, in the dataset's class names."""
    from murakit.data.stats import percent

    negative, positive = classes
    columns = (
        f"images {negative} / {positive}",
        f"{positive} images",
        f"studies {negative} / {positive}",
        "patients",
    )
    splits = [s for s in ("train", "valid") if s in stats] + sorted(
        s for s in stats if s not in ("train", "valid")
    )
    parts = sorted({p for s in splits for p in stats[s] if p != "TOTAL"}) + ["TOTAL"]
    rows = []
    for part in parts:
        cells = []
        for split in splits:
            c = stats[split].get(part)
            share = None if c is None else percent(c["abnormal_images"], _images(c))
            cells.append(None if c is None else {**c, "abnormal_share": share})
        rows.append((part, cells))
    return DatasetTable(splits, columns, rows)


def _images(counts: dict[str, int]) -> int:
    return counts["normal_images"] + counts["abnormal_images"]


def _dataset_section(
    model: ModelInfo, data_root: Path | None, evaluations: Sequence[Evaluation]
) -> DatasetSection | Missing:
    from murakit.data.index import DatasetError, load_index
    from murakit.data.stats import dataset_stats

    # The folder asked for, else the one trained on, else the one evaluated on.
    candidates = [data_root, model.config.data if model.config else None]
    candidates += [(e.metrics or {}).get("data") for e in evaluations]
    root = next((Path(c).expanduser() for c in candidates if c), None)
    if root is None:
        return Missing("No dataset folder known (the config names none)", _hint(HINT_DATA, model))
    if not root.is_dir():
        return Missing(
            f"Dataset folder {root} is not available on this machine", _hint(HINT_DATA, model)
        )
    try:
        index = load_index(root, skip_bad=True)
    except (DatasetError, OSError) as err:
        return Missing(f"Dataset folder {root} cannot be indexed: {err}")
    return DatasetSection(
        name=index.info.name,
        root=str(index.root),
        classes=tuple(index.info.classes),
        licence=index.info.licence or "not stated",
        credit=index.info.credit or "",
        table=dataset_table(dataset_stats(index.images), index.info.classes),
        skipped=len(index.skipped),
    )


# ---------------------------------------------------------------- training


@dataclass
class EpochTable:
    """A member's metrics.csv: the columns it has, formatted."""

    name: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Curve:
    """One loss-curve figure: the member and its picture (None when there is none)."""

    member: Member
    uri: str | None


@dataclass
class TrainingSection:
    ensemble: bool
    members: list[Member]
    selection: str | None
    trained: bool  # any member with metrics
    command: str  # to train when nothing is trained yet
    kept_curves: list[Curve]  # for a single run: its one curve
    other_curves: list[Curve]
    epochs: list[EpochTable]


_EPOCH_COLUMNS = (
    ("epoch", "epoch", lambda v: fmt_int(int(v))),
    ("train_loss", "train loss", lambda v: fmt_num(v, 4)),
    ("val_loss", "val loss", lambda v: fmt_num(v, 4)),
    ("val_image_accuracy", "val image acc.", fmt_pct),
    ("val_study_accuracy", "val study acc.", fmt_pct),
    ("val_study_kappa", "val study κ", fmt_num),
    ("lr", "lr", fmt_lr),
    ("seconds", "seconds", lambda v: fmt_num(v, 0)),
    ("img_per_s", "img/s", lambda v: fmt_num(v, 1)),
)


def epoch_table(name: str, history: Sequence[dict[str, float]]) -> EpochTable:
    columns = [c for c in _EPOCH_COLUMNS if any(c[0] in row for row in history)]
    rows = [[f(row[k]) if k in row else "–" for k, _, f in columns] for row in history]
    return EpochTable(name, [label for _, label, _ in columns], rows)


def _loss_curve_uri(member: Member) -> str | None:
    """The run's own loss_curve.png, or one drawn now from metrics.csv (never written back:
    a report only reads the run directory)."""
    uri = image_uri(member.run_dir / "loss_curve.png")
    if uri is not None or not member.history:
        return uri
    from murakit.evaluate.plots import plot_loss_curve

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "loss_curve.png"
        plot_loss_curve(member.history, path, title=member.name)
        return image_uri(path)


def _training_section(model: ModelInfo) -> TrainingSection | Missing:
    if not model.members:
        return Missing(f"{ENSEMBLE_FILE} lists no members")
    ensemble = model.kind == "ensemble"
    trained = any(m.history or m.val_loss is not None for m in model.members)

    def curves(members: Iterable[Member]) -> list[Curve]:
        return [Curve(m, _loss_curve_uri(m)) for m in members] if trained else []

    # Kept members' curves in view; the rest one click away (15 curves bury the page).
    shown = [m for m in model.members if m.kept] if ensemble else model.members[:1]
    return TrainingSection(
        ensemble=ensemble,
        members=model.members,
        selection=model.selection,
        trained=trained,
        command=_hint(HINT_TRAIN, model),
        kept_curves=curves(shown),
        other_curves=curves(m for m in model.members if not m.kept) if ensemble else [],
        epochs=[epoch_table(m.name, m.history) for m in model.members if m.history],
    )


# ---------------------------------------------------------------- results


@dataclass
class PartRow:
    """One row of the per-part table: a body part (or TOTAL) and its metrics group."""

    name: str
    group: dict[str, Any]
    reference: float | None = None  # the reference report's study accuracy (real MURA only)

    @property
    def delta(self) -> float | None:
        """Our study accuracy minus the reference report's, in percentage points."""
        acc = self.group.get("study_accuracy")
        if self.reference is None or is_missing(acc):
            return None
        return 100 * (acc - self.reference)


@dataclass
class PartTable:
    """Per body part then TOTAL; the reference report's column only on real MURA valid."""

    positive: str
    reference: bool
    rows: list[PartRow]


def part_table(metrics: dict[str, Any], positive: str = "abnormal") -> PartTable:
    reference = REFERENCE_STUDY_ACCURACY if looks_like_mura_valid(metrics) else None
    groups = [*sorted(metrics.get("by_part", {}).items()), ("TOTAL", metrics["overall"])]
    rows = [PartRow(name, g, reference.get(name) if reference else None) for name, g in groups]
    return PartTable(positive, reference is not None, rows)


@dataclass
class Confusion:
    """The study confusion matrix in the numbers its sentences need."""

    tn: int
    fp: int
    fn: int
    tp: int
    classes: tuple[str, str]

    @property
    def n_negative(self) -> int:
        return self.tn + self.fp

    @property
    def n_positive(self) -> int:
        return self.fn + self.tp


@dataclass
class EvaluationBlock:
    name: str
    notes: list[str]
    metrics: dict[str, Any] | None  # None: metrics.json missing or without "overall"
    metrics_path: str
    positive: str
    threshold: float
    parts: PartTable | None
    mura_valid: bool
    predictions_path: str
    has_studies: bool
    roc_uri: str | None = None
    confusion_uri: str | None = None
    confusion: Confusion | None = None


def _evaluation_block(ev: Evaluation) -> EvaluationBlock:
    from murakit.report.figures import (
        confusion_counts,
        confusion_figure,
        figure_png,
        roc_curves,
        roc_figure,
    )

    metrics = ev.metrics if ev.scored else None
    block = EvaluationBlock(
        name=ev.name,
        notes=ev.notes,
        metrics=metrics,
        metrics_path=str(ev.path / "metrics.json"),
        positive=ev.classes[1],
        threshold=ev.threshold,
        parts=part_table(metrics, ev.classes[1]) if metrics else None,
        mura_valid=bool(metrics) and looks_like_mura_valid(metrics),
        predictions_path=str(ev.path / "study_predictions.csv"),
        has_studies=ev.studies is not None and bool(ev.studies.keys),
    )
    if not block.has_studies:
        return block
    curves = roc_curves(ev.studies.labels, ev.studies.probs, ev.studies.parts)
    if curves:
        block.roc_uri = png_data_uri(figure_png(roc_figure(curves)))
    counts = confusion_counts(ev.studies.labels, ev.studies.predictions)
    block.confusion_uri = png_data_uri(figure_png(confusion_figure(counts)))
    (tn, fp), (fn, tp) = (int(v) for v in counts[0]), (int(v) for v in counts[1])
    block.confusion = Confusion(tn, fp, fn, tp, tuple(ev.classes))
    return block


# ---------------------------------------------------------------- CAM gallery


@dataclass
class CamItem:
    """One row of cams.csv with the study label joined in (None when unknown)."""

    image: str
    study: str
    probability: float
    png: Path
    label: int | None

    def correct(self, threshold: float) -> bool | None:
        return None if self.label is None else (self.probability >= threshold) == bool(self.label)


_STUDY_SUFFIX = re.compile(r"_(positive|negative)$")


def _label_from_path(image: str) -> int | None:
    """MURA study folders end in _positive/_negative: a label when no predictions are around."""
    if "_positive/" in image.replace("\\", "/"):
        return 1
    if "_negative/" in image.replace("\\", "/"):
        return 0
    return None


def read_cams(cams_dir: Path, labels: dict[str, int]) -> tuple[list[CamItem], int]:
    """cams.csv (image,study,probability,cam_png[,error]) with labels joined by study key;
    also how many rows are errors (an unreadable image has no probability and no PNG).

    The explain stage names MURA studies by folder ("XR_WRIST/patient11185/study1_positive"),
    evaluation by index key ("XR_WRIST/patient11185/study1"): the suffix is dropped to join.
    """
    items, failed = [], 0
    with (cams_dir / "cams.csv").open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            if (row.get("error") or "").strip() or not row["cam_png"] or not row["probability"]:
                failed += 1
                continue
            study = row["study"]
            label = labels.get(_STUDY_SUFFIX.sub("", study))
            for path in (row["image"], study + "/"):
                if label is None:
                    label = _label_from_path(path)
            items.append(
                CamItem(
                    row["image"], study, float(row["probability"]), cams_dir / row["cam_png"], label
                )
            )
    return items, failed


def pick_gallery(
    items: Iterable[CamItem],
    label: int,
    threshold: float,
    size: int = GALLERY_SIZE,
    errors: int = GALLERY_ERRORS,
) -> list[CamItem]:
    """One image per study of class `label`: the most confident correct ones, then up to
    `errors` of the most confident mistakes (fewer mistakes leave room for correct ones)."""
    pool = [i for i in items if i.label == label]
    # Most confident first: high probability for abnormal, low for normal.
    pool.sort(key=lambda i: -i.probability if label == 1 else i.probability)
    right = _one_per_study(i for i in pool if i.correct(threshold))
    wrong = _one_per_study(i for i in reversed(pool) if not i.correct(threshold))
    chosen_wrong = wrong[:errors]
    chosen_right = right[: size - len(chosen_wrong)]
    return chosen_right + chosen_wrong


def _one_per_study(items: Iterable[CamItem]) -> list[CamItem]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.study not in seen:
            seen.add(item.study)
            out.append(item)
    return out


@dataclass
class GalleryFigure:
    """A CAM thumbnail with its probability and, for mistakes, what kind."""

    item: CamItem
    uri: str | None
    error: str | None  # "missed" (abnormal called normal), "false alarm", or None

    @property
    def key_parts(self) -> list[str]:
        return self.item.study.split("/")


@dataclass
class GalleryGroup:
    title: str
    figures: list[GalleryFigure]
    n_studies: int | None  # None for the studies without a known label


@dataclass
class CamSection:
    positive: str
    threshold: float
    failed: int
    groups: list[GalleryGroup]


def _gallery_figure(item: CamItem, threshold: float) -> GalleryFigure:
    error = None
    if item.correct(threshold) is False:
        error = "missed" if item.label == 1 else "false alarm"
    return GalleryFigure(item, image_uri(item.png, THUMB_SIDE), error)


def _cams_section(model: ModelInfo, evaluations: list[Evaluation]) -> CamSection | Missing:
    cams_dir = model.path / CAMS_DIR
    if not (cams_dir / "cams.csv").exists():
        return Missing("No CAM gallery yet", _hint(HINT_CAMS, model))
    labelled = next((e for e in evaluations if e.studies is not None), None)
    labels = (
        {k: int(v) for k, v in zip(labelled.studies.keys, labelled.studies.labels, strict=True)}
        if labelled
        else {}
    )
    threshold = labelled.threshold if labelled else 0.5
    negative, positive = labelled.classes if labelled else ("normal", "abnormal")
    try:
        items, failed = read_cams(cams_dir, labels)
    except (OSError, ValueError, KeyError) as err:
        return Missing(f"{cams_dir / 'cams.csv'} cannot be read: {err}")
    groups = []
    for label, name in ((1, positive), (0, negative)):
        chosen = pick_gallery(items, label, threshold)
        n_studies = len({i.study for i in items if i.label == label})
        figures = [_gallery_figure(i, threshold) for i in chosen]
        groups.append(GalleryGroup(f"{name.capitalize()} studies", figures, n_studies))
    unknown = [i for i in items if i.label is None][:GALLERY_SIZE]
    if unknown:
        figures = [_gallery_figure(i, threshold) for i in unknown]
        groups.append(GalleryGroup("Studies without a known label", figures, None))
    return CamSection(positive, threshold, failed, groups)


# ---------------------------------------------------------------- the page


@dataclass
class Augmentation:
    uri: str | None


def _augment_section(model: ModelInfo) -> Augmentation | Missing:
    path = model.path / AUGMENT_PREVIEW
    if not path.exists():
        return Missing(f"No augmentation preview ({AUGMENT_PREVIEW} not found)")
    return Augmentation(image_uri(path))


@dataclass
class ModelCardLink:
    """MODEL_CARD.md beside the report: linked, and its text inline (the page stays
    self-contained when mailed alone)."""

    href: str
    text: str


def _model_card(model_dir: Path, name: str) -> ModelCardLink | None:
    try:
        return ModelCardLink(name, (model_dir / name).read_text(encoding="utf-8"))
    except OSError:
        return None


def render_report(model_dir: Path, *, data_root: Path | None = None) -> str:
    """The report's HTML text for the run or ensemble at model_dir."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ReportError(f"{model_dir}: model folder not found")
    from murakit.report.model_card import MODEL_CARD_FILE

    model = read_model(model_dir)
    evaluations = find_evaluations(model_dir)
    header = _header(model)
    return render(
        "report.html.j2",
        title=header.title,
        header=header,
        model_card=_model_card(model_dir, MODEL_CARD_FILE),
        headline=_headline(model, evaluations),
        notes=model.notes,
        dataset=_dataset_section(model, data_root, evaluations),
        training=_training_section(model),
        results=[_evaluation_block(ev) for ev in evaluations],
        no_results=Missing("No evaluation yet", _hint(HINT_EVALUATE, model)),
        cams=_cams_section(model, evaluations),
        augmentation=_augment_section(model),
        paper={"kappa": MURA_PAPER_KAPPA, "auroc": MURA_PAPER_AUROC},
    )


def build_report(model_dir: Path, *, data_root: Path | None = None) -> Path:
    """Write model_dir/report.html atomically (a reader never sees half a page), after
    refreshing the model card it links to (MODEL_CARD.md); the report's path."""
    from murakit.report.model_card import write_model_card

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ReportError(f"{model_dir}: model folder not found")
    read_model(model_dir)  # not a model folder: ReportError before anything is written
    write_model_card(model_dir)
    text = render_report(model_dir, data_root=data_root)
    path = model_dir / REPORT_FILE
    atomic_write_text(path, text)
    os.chmod(path, 0o644)  # a page to share: not the private mode of the temporary file
    return path
