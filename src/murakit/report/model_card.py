"""MODEL_CARD.md: what a model folder says to the colleague it is handed to.

Intended use (research, not a medical device), the training data and its licence (as the
dataset declares it: MURA's research-use agreement, FracAtlas's CC BY 4.0 with its citation,
or the user's own), the recipe, per-part metrics with their intervals (from the validation
evaluation, eval-valid/metrics.json, when there is one), the operating threshold with the
validation sensitivity and specificity at it, and known limitations (hardware and letter
markers as shortcuts, synthetic vs real data, the split's own caveats), then where the
provenance is. Rendered from ``templates/model_card.md.j2``.

Who writes it: ``murakit ensemble train`` / ``ensemble select`` (an initial card: "not
evaluated yet"), ``murakit evaluate`` and ``murakit report`` (refreshed with the figures);
:func:`write_model_card` from Python. Everything is read from the folder; nothing is loaded
onto a device.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from murakit.evaluate.outputs import part_table
from murakit.evaluate.threshold import read_threshold
from murakit.fsutil import atomic_write_text
from murakit.infer.ensemble_spec import ENSEMBLE_FILE, read_ensemble_spec
from murakit.infer.results import UNCERTAIN_MARGIN
from murakit.report.html import Evaluation, ModelInfo, find_evaluations, read_model
from murakit.report.templating import render
from murakit.train.provenance import PROVENANCE_FILE, read_provenance, software_versions

MODEL_CARD_FILE = "MODEL_CARD.md"

MURA_TERMS = (
    "the MURA Dataset Research Use Agreement of the Stanford ML Group: personal, "
    "non-commercial research use; the images may not be redistributed. Check the agreement "
    "before sharing or deploying a model trained on it"
)
# The recipe fields the card lists (config.json has every one).
RECIPE_FIELDS = (
    "preset",
    "arch",
    "weights",
    "size",
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "loss",
    "box_loss",
    "dropout",
    "rotation",
    "hflip",
    "fix_inverted",
    "mask_markers",
    "panels",
    "threshold_slice",
    "threshold_sensitivity",
    "max_train_images",
)


@dataclass
class TrainingData:
    name: str
    root: str
    licence: str
    credit: str
    synthetic: bool
    is_mura: bool
    fingerprint: str | None


@dataclass
class Threshold:
    value: float
    rule: str
    slice_sensitivity: float | None = None
    slice_specificity: float | None = None
    slice_studies: int | None = None


@dataclass
class Results:
    """The evaluation the card reports (eval-valid when there is one)."""

    name: str
    split: str
    data: str
    threshold: float
    threshold_rule: str
    columns: list[str]
    rows: list[list[str]]
    overall: dict[str, Any]
    subgroups: dict[str, dict[str, Any]] = field(default_factory=dict)
    others: list[str] = field(default_factory=list)  # other eval-* folders


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _training_data(model: ModelInfo, provenance: dict | None) -> TrainingData | None:
    from murakit.data.index import DatasetInfo

    config = model.config
    if config is None:
        return None
    declared = (config.extra or {}).get("dataset")
    if declared is None and config.data and Path(config.data).is_dir():
        declared = DatasetInfo.read(Path(config.data)).to_json()
    declared = declared or DatasetInfo().to_json()
    recorded = (provenance or {}).get("dataset") or {}
    synthetic = bool(recorded.get("synthetic"))
    if not recorded and config.data:
        synthetic = (Path(config.data).expanduser().parent / "synth_truth.csv").is_file()
    return TrainingData(
        name=str(declared.get("name", "MURA")),
        root=str(config.data or "not recorded"),
        licence=str(declared.get("licence") or ""),
        credit=str(declared.get("credit") or ""),
        synthetic=synthetic,
        is_mura=bool(declared.get("is_mura", True)),
        fingerprint=recorded.get("fingerprint"),
    )


def _threshold(model: ModelInfo) -> Threshold:
    doc: dict[str, Any] = {}
    value = None
    if model.kind == "ensemble":
        try:
            spec = read_ensemble_spec(model.path)
            value = spec.get("threshold")
            doc = spec.get("threshold_rule") or {}
        except (OSError, ValueError):
            pass
    else:
        try:
            doc = read_threshold(model.path) or {}
        except (OSError, ValueError):
            doc = {}
        value = doc.get("threshold")
    if value is None:
        extra = (model.config.extra or {}) if model.config else {}
        if "threshold" in extra:
            return Threshold(float(extra["threshold"]), "fixed in the recipe")
        return Threshold(0.5, "the default 0.5 (no threshold slice was held out)")
    return Threshold(
        float(value),
        str(doc.get("rule", "")),
        doc.get("slice_sensitivity"),
        doc.get("slice_specificity"),
        doc.get("slice_studies"),
    )


def _results(evaluations: list[Evaluation]) -> Results | None:
    scored = [e for e in evaluations if e.scored]
    if not scored:
        return None
    chosen = next((e for e in scored if e.name == "eval-valid"), scored[0])
    metrics = chosen.metrics
    columns, rows = part_table(metrics)
    subgroups = {
        name: group.get("overall", {}) for name, group in (metrics.get("subgroups") or {}).items()
    }
    return Results(
        name=chosen.name,
        split=str(metrics.get("split", "?")),
        data=str(metrics.get("data", "")),
        threshold=chosen.threshold,
        threshold_rule=str(metrics.get("threshold_rule", "")),
        columns=columns,
        rows=[[_cell(c) for c in row] for row in rows],
        overall=metrics["overall"],
        subgroups=subgroups,
        others=[e.name for e in scored if e is not chosen],
    )


def _recipe(model: ModelInfo) -> list[tuple[str, str]]:
    if model.config is None:
        return []
    values = model.config.to_dict()
    out = [(name, _cell(values[name])) for name in RECIPE_FIELDS if name in values]
    seeds = sorted({s for m in model.members if m.kept and (s := _seed(m.run_dir)) is not None})
    out.append(("seeds (kept members)", ", ".join(map(str, seeds)) or str(values.get("seed"))))
    return out


def _seed(run_dir: Path) -> int | None:
    from murakit.config import TrainConfig

    try:
        return TrainConfig.load(run_dir / "config.json").seed
    except (OSError, ValueError, TypeError):
        return None


def _precision(model: ModelInfo, provenance: dict | None) -> str | None:
    if provenance and provenance.get("precision"):
        return str(provenance["precision"])
    used = {
        (read_provenance(m.run_dir) or {}).get("precision") for m in model.members if m.kept
    } - {None}
    return ", ".join(sorted(used)) or None


def render_model_card(model_dir: Path) -> str:
    """MODEL_CARD.md's text for the run or ensemble at model_dir."""
    model_dir = Path(model_dir)
    model = read_model(model_dir)
    provenance = read_provenance(model_dir)
    evaluations = find_evaluations(model_dir)
    data = _training_data(model, provenance)
    results = _results(evaluations)
    kept = [m for m in model.members if m.kept]
    positive = "abnormal"
    if model.config and (model.config.extra or {}).get("dataset"):
        positive = model.config.extra["dataset"].get("classes", ["normal", "abnormal"])[1]
    software = (provenance or {}).get("software") or {}
    git = (provenance or {}).get("git") or {}
    return render(
        "model_card.md.j2",
        name=model_dir.resolve().name,
        model=model,
        kept=kept,
        positive=positive,
        data=data,
        mura_terms=MURA_TERMS,
        recipe=_recipe(model),
        precision=_precision(model, provenance),
        threshold=_threshold(model),
        uncertain_margin=UNCERTAIN_MARGIN,
        results=results,
        evaluate_command=f"murakit evaluate --model {shlex.quote(str(model_dir))}",
        provenance_file=PROVENANCE_FILE if (model_dir / PROVENANCE_FILE).exists() else None,
        software=software,
        commit=git.get("commit"),
        written=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        version=software_versions()["murakit"] or "?",
        ensemble_file=ENSEMBLE_FILE,
    )


def write_model_card(model_dir: Path) -> Path:
    """Write (or refresh) model_dir/MODEL_CARD.md atomically; its path."""
    path = Path(model_dir) / MODEL_CARD_FILE
    atomic_write_text(path, render_model_card(model_dir))
    return path
