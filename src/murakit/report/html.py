"""The model report: one self-contained HTML file for a run or an ensemble directory.

Inline CSS, figures as base64 PNG data URIs, no scripts, fonts or links to the network: the
file opens from disk anywhere and can be mailed or archived as the record of a model. It
reads whatever the pipeline has written so far (config, per-epoch metrics, evaluation
folders, CAMs, augmentation preview) and says plainly, with the command to run, what is
missing, so a half-finished model still gets a useful page.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from murakit.evaluate.outputs import looks_like_mura_valid
from murakit.fsutil import atomic_write_text
from murakit.train.history import read_history

REPORT_FILE = "report.html"
ENSEMBLE_FILE = "ensemble.json"
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

CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dde5;--zebra:#f5f7fa;--head:#e8ecf2;
--accent:#1f4e9c;--ok:#1a7f37;--bad:#b42318;--warn:#8a6d00}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;font:15px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.5rem 4rem}
h1{font-size:1.65rem;margin:.3rem 0 .7rem}
h2{font-size:1.3rem;margin:2.4rem 0 .8rem;padding-bottom:.25rem;border-bottom:2px solid var(--line)}
h3{font-size:1.05rem;margin:1.6rem 0 .4rem}
nav{font-size:.9rem;margin:0 0 1rem;color:var(--muted)}
nav a{color:var(--accent);text-decoration:none;margin-right:1rem}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1.2rem;margin:0 0 1rem}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;overflow-wrap:anywhere}
.headline{border-left:5px solid var(--accent);background:#eef3fb;padding:.7rem 1.1rem;
margin:.6rem 0 1rem;border-radius:0 4px 4px 0}
.headline .big{font-size:1.55rem;font-weight:650;margin-right:1.2rem}
.headline .ci{color:var(--muted);font-size:1.05rem;font-weight:500}
.missing{border-left:5px solid #d4a017;background:#fdf8e6;color:#4d3d00;
padding:.55rem 1rem;margin:.6rem 0 1rem;border-radius:0 4px 4px 0}
.note{color:var(--muted);font-size:.88rem;margin:.3rem 0 .6rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
font-size:.88em;background:#eff1f4;padding:.05rem .3rem;border-radius:3px;overflow-wrap:anywhere}
.tw{overflow-x:auto;margin:.4rem 0 1rem}
table{border-collapse:collapse;font-size:.85rem}
th,td{padding:.28rem .5rem;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{white-space:normal;line-height:1.25}
thead th{background:var(--head);border-bottom:2px solid #b7c0cd;vertical-align:bottom}
thead tr.group th{text-align:center;border-bottom:1px solid #b7c0cd}
tbody tr:nth-child(even){background:var(--zebra)}
th.n,td.n{text-align:right;font-variant-numeric:tabular-nums}
td.c{text-align:center}
th.sep,td.sep{border-left:1px solid #b7c0cd}
tr.total td{font-weight:650;border-top:2px solid #b7c0cd}
tr.kept td:first-child{box-shadow:inset 4px 0 0 var(--ok)}
.tick{color:var(--ok);font-weight:700}
.up{color:var(--ok)}.down{color:var(--bad)}
figure{margin:0}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:.8rem;color:var(--muted);margin-top:.2rem}
figure.roc,figure.cm{margin:.6rem 0 1.2rem}
figure.roc img{max-width:min(100%,1000px)}
figure.cm img{max-width:360px}
.curves{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem;
margin:.4rem 0 1rem}
.curves.single{grid-template-columns:minmax(320px,560px)}
.curves figure{border:1px solid var(--line);border-radius:4px;padding:6px;background:#fff}
.curves figure.kept{border-color:var(--ok)}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:.7rem;
margin:.4rem 0 1.2rem}
.gallery figure{border:1px solid var(--line);border-radius:4px;padding:4px;background:#fff}
.gallery figure.error{border:2px solid var(--bad)}
.gallery img{width:100%;background:#000}
.gallery figcaption{color:var(--fg);overflow-wrap:break-word}
.cmrow{display:flex;flex-wrap:wrap;gap:1rem 2rem;align-items:center}
ul.words{margin:0;padding-left:1.2rem;max-width:34rem}ul.words li{margin:.25rem 0}
.gallery .key{color:var(--muted);font-size:.72rem}
.badge{display:inline-block;font-size:.7rem;font-weight:650;padding:0 .35rem;border-radius:3px;
color:#fff;background:var(--bad);margin-left:.2rem}
.noimg{display:flex;align-items:center;justify-content:center;height:120px;background:#eee;
color:var(--bad);font-size:.8rem;text-align:center;padding:.4rem}
figure.preview img{max-width:min(100%,1000px)}
details{margin:.4rem 0 1rem}summary{cursor:pointer;color:var(--accent)}
details h4{margin:.8rem 0 .2rem;font-size:.9rem}
footer{margin-top:3rem;color:var(--muted);font-size:.8rem;border-top:1px solid var(--line);
padding-top:.6rem}
"""


class ReportError(ValueError):
    """A folder that holds nothing a report could be made of."""


# ---------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """0.8123 -> '81.2%'; undefined -> an en dash (the same text the tests expect)."""
    return "–" if _missing(value) else f"{100 * value:.{digits}f}%"


def fmt_num(value: float | None, digits: int = 3) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{int(value):,}"


def fmt_kappa(group: dict[str, Any]) -> str:
    """'0.620 [0.570, 0.671]': kappa with its 95% bootstrap interval when there is one."""
    text = fmt_num(group.get("kappa"))
    ci = group.get("kappa_ci")
    if ci is None or text == "–":
        return text
    return f"{text} [{fmt_num(ci[0])}, {fmt_num(ci[1])}]"


def _missing_box(what: str, command: str | None = None) -> str:
    run = f": run <code>{esc(command)}</code>" if command else ""
    return f'<p class="missing">{esc(what)}{run}</p>'


def _hint(template: str, model: ModelInfo) -> str:
    """A command to copy: the model path shell-quoted (folder names can hold spaces)."""
    return template.format(model=shlex.quote(str(model.path)))


def _cell(text: str, cls: str = "n") -> str:
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def _thead(headers: Sequence[tuple[str, str]]) -> str:
    """(label, class) pairs; class 'n' right-aligns the column like its numbers."""
    cells = "".join(
        f'<th class="{c}">{esc(h)}</th>' if c else f"<th>{esc(h)}</th>" for h, c in headers
    )
    return f"<thead><tr>{cells}</tr></thead>"


# ---------------------------------------------------------------- images


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_uri(path: Path, max_side: int | None = None) -> str | None:
    """A PNG data URI of an image file, shrunk to `max_side` when larger; None if unreadable.

    Re-encoding keeps the page light (a full-size CAM overlay is a few hundred kB) and
    guarantees the embedded bytes really are PNG, whatever the file was.
    """
    try:
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if img.format == "PNG" and (max_side is None or max(img.size) <= max_side):
                return data_uri(raw)
            pic = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    if max_side is not None:
        pic.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pic.save(buffer, format="PNG", optimize=True)
    return data_uri(buffer.getvalue())


def _img(uri: str | None, alt: str, missing: str) -> str:
    if uri is None:
        return f'<div class="noimg">{esc(missing)}</div>'
    return f'<img src="{uri}" alt="{esc(alt)}">'


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
    config: dict[str, Any]
    members: list[Member]  # sorted by validation loss, unknown last
    selection: str | None = None
    notes: list[str] = field(default_factory=list)  # files that exist but could not be read


def _best_row(history: list[dict[str, float]]) -> dict[str, float] | None:
    scored = [r for r in history if math.isfinite(r.get("val_loss", math.nan))]
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


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        notes.append(f"{path}: cannot be read ({err})")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path}: expected a JSON object")
        return None
    return value


def _sort_key(member: Member) -> tuple[bool, float]:
    return (_missing(member.val_loss), member.val_loss if not _missing(member.val_loss) else 0.0)


def read_model(model_dir: Path) -> ModelInfo:
    """The ensemble (ensemble.json) or the single run (config.json / metrics.csv) at model_dir."""
    notes: list[str] = []
    if (model_dir / ENSEMBLE_FILE).exists():
        spec = _read_json(model_dir / ENSEMBLE_FILE, notes) or {}
        members = []
        for row in spec.get("members", []):
            run_dir = Path(str(row.get("run_dir", "")))
            run_dir = run_dir if run_dir.is_absolute() else model_dir / run_dir
            member = _member_from_history(
                str(row.get("name", run_dir.name)), run_dir, bool(row.get("kept")), notes
            )
            # ensemble.json is the record of the selection: its figures win over the CSV's.
            for key in (
                "epochs",
                "best_epoch",
                "train_loss",
                "val_loss",
                "val_accuracy",
                "val_study_accuracy",
            ):
                if row.get(key) is not None:
                    setattr(member, key, row[key])
            members.append(member)
        config_paths = [m.run_dir / "config.json" for m in members if m.kept]
        config_paths += [m.run_dir / "config.json" for m in members]
        config_paths.append(model_dir / "config.json")
        config = next((_read_json(p, notes) for p in config_paths if p.exists()), None) or {}
        return ModelInfo(
            model_dir,
            "ensemble",
            config,
            sorted(members, key=_sort_key),
            str(spec.get("selection") or "") or None,
            notes,
        )
    if not any((model_dir / name).exists() for name in ("config.json", "metrics.csv", "best.pt")):
        raise ReportError(
            f"{model_dir}: neither an ensemble ({ENSEMBLE_FILE}) nor a run "
            "(config.json, metrics.csv, best.pt)"
        )
    config = {}
    if (model_dir / "config.json").exists():
        config = _read_json(model_dir / "config.json", notes) or {}
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


def find_evaluations(model_dir: Path) -> list[Evaluation]:
    """Every eval-* folder with metrics or predictions, eval-valid first (it is the headline)."""
    from murakit.evaluate.outputs import read_metrics_json, read_study_predictions

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


# ---------------------------------------------------------------- sections


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def _header(model: ModelInfo, evaluations: list[Evaluation]) -> str:
    cfg = model.config
    kept = [m for m in model.members if m.kept]
    if model.kind == "ensemble":
        members = f"{len(kept)} kept of {len(model.members)} trained"
        if model.selection:
            members += f" (selection: {model.selection})"
    else:
        members = "1 (single run)"
    size = cfg.get("size")
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
    rows = [
        ("model", f"<code>{esc(model.path.resolve())}</code> ({esc(model.kind)})"),
        ("architecture", esc(cfg.get("arch", "–"))),
        ("preset", esc(cfg.get("preset", "–"))),
        ("input size", esc(f"{size}×{size} px" if size else "–")),
        ("members", esc(members)),
        ("trained", esc(trained)),
        ("report written", esc(datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))),
    ]
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    title = f"murakit report: {model.path.resolve().name}"
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("dataset", "Dataset"),
            ("training", "Training"),
            ("results", "Results"),
            ("cams", "CAM gallery"),
            ("augmentation", "Augmentation"),
        )
    )
    return (
        f'<header><h1>{esc(title)}</h1><nav>{nav}</nav><dl class="meta">{meta}</dl>'
        f"{_headline(model, evaluations)}</header>"
    )


def _headline(model: ModelInfo, evaluations: list[Evaluation]) -> str:
    scored = [e for e in evaluations if e.metrics and "overall" in e.metrics]
    if not scored:
        return _missing_box("No evaluation yet", _hint(HINT_EVALUATE, model))
    ev = scored[0]
    overall = ev.metrics["overall"]
    ci = overall.get("kappa_ci")
    ci_text = f" [{fmt_num(ci[0])}, {fmt_num(ci[1])}]" if ci else ""
    reference = ""
    if looks_like_mura_valid(ev.metrics):
        from murakit.evaluate.outputs import REFERENCE_STUDY_ACCURACY

        reference = (
            f"; reference report {fmt_pct(REFERENCE_STUDY_ACCURACY['TOTAL'])}, "
            f"MURA paper κ {MURA_PAPER_KAPPA:.3f}"
        )
    return (
        '<div class="headline">'
        f'<span class="big">study accuracy {fmt_pct(overall.get("study_accuracy"))}</span>'
        f'<span class="big">κ {fmt_num(overall.get("kappa"))}'
        f'<span class="ci">{esc(ci_text)}</span></span><br>'
        f"AUROC {fmt_num(overall.get('auroc'))} on {fmt_int(overall.get('n_studies'))} studies "
        f"({fmt_int(overall.get('n_abnormal_studies'))} {esc(ev.classes[1])}) in "
        f"<code>{esc(ev.name)}</code>{esc(reference)}</div>"
    )


def _dataset_section(
    model: ModelInfo, data_root: Path | None, evaluations: Sequence[Evaluation]
) -> str:
    from murakit.data.index import DatasetError, load_index
    from murakit.data.stats import dataset_stats

    # The folder asked for, else the one trained on, else the one evaluated on.
    candidates = [data_root, model.config.get("data")]
    candidates += [(e.metrics or {}).get("data") for e in evaluations]
    root = next((Path(c).expanduser() for c in candidates if c), None)
    if root is None:
        body = _missing_box(
            "No dataset folder known (the config names none)", _hint(HINT_DATA, model)
        )
        return _section("dataset", "Dataset", body)
    if not root.is_dir():
        body = _missing_box(
            f"Dataset folder {root} is not available on this machine", _hint(HINT_DATA, model)
        )
        return _section("dataset", "Dataset", body)
    try:
        index = load_index(root, skip_bad=True)
    except (DatasetError, OSError) as err:
        body = _missing_box(f"Dataset folder {root} cannot be indexed: {err}")
        return _section("dataset", "Dataset", body)
    stats = dataset_stats(index.images)
    negative, positive = index.info.classes
    body = (
        f'<p class="note">{esc(index.info.name)}, from <code>{esc(index.root)}</code>: '
        f"{esc(negative)} / {esc(positive)} counts per body part; a study's label is shared by "
        f"all its images. Licence: {esc(index.info.licence or 'not stated')}."
        + (f" Images: {esc(index.info.credit)}." if index.info.credit else "")
        + "</p>"
        f"{dataset_table(stats, index.info.classes)}"
    )
    if index.skipped:
        body += f'<p class="note">{len(index.skipped):,} bad rows skipped while indexing.</p>'
    return _section("dataset", "Dataset", body)


def dataset_table(
    stats: dict[str, dict[str, dict[str, int]]], classes: Sequence[str] = ("normal", "abnormal")
) -> str:
    """Train and valid side by side, as in the reference report: normal / abnormal images
    (and the abnormal share), normal / abnormal studies, patients (in the dataset's names)."""
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
    width = len(columns)
    group = "".join(f'<th class="sep" colspan="{width}">{esc(s)}</th>' for s in splits)
    head = (
        f'<thead><tr class="group"><th></th>{group}</tr><tr><th>part</th>'
        + "".join(
            f'<th class="{"n sep" if i == 0 else "n"}">{esc(h)}</th>'
            for _ in splits
            for i, h in enumerate(columns)
        )
        + "</tr></thead>"
    )
    rows = []
    for part in parts:
        cells = [_cell(esc(part), "")]
        for split in splits:
            c = stats[split].get(part)
            if c is None:
                cells += [_cell("–")] * width
                continue
            total = c["normal_images"] + c["abnormal_images"]
            cells += [
                _cell(f"{c['normal_images']:,} / {c['abnormal_images']:,}", "n sep"),
                _cell(percent(c["abnormal_images"], total)),
                _cell(f"{c['normal_studies']:,} / {c['abnormal_studies']:,}"),
                _cell(f"{c['patients']:,}"),
            ]
        cls = ' class="total"' if part == "TOTAL" else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<div class="tw"><table>{head}<tbody>{"".join(rows)}</tbody></table></div>'


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


def member_table(members: Sequence[Member], show_kept: bool = True) -> str:
    """The reference report's table: one row per member, sorted by validation loss; losses
    and accuracies at each member's best epoch. `show_kept` is off for a single run."""
    headers = [
        ("member", ""),
        ("epochs", "n"),
        ("best epoch", "n"),
        ("train loss", "n"),
        ("val loss", "n"),
        ("val image accuracy", "n"),
        ("val study accuracy", "n"),
    ]
    head = _thead(headers + [("kept", "c")] if show_kept else headers)
    rows = []
    for m in members:
        cells = [
            _cell(esc(m.name), ""),
            _cell(fmt_int(m.epochs)),
            _cell(fmt_int(m.best_epoch)),
            _cell(fmt_num(m.train_loss, 4)),
            _cell(fmt_num(m.val_loss, 4)),
            _cell(fmt_pct(m.val_accuracy)),
            _cell(fmt_pct(m.val_study_accuracy)),
        ]
        if show_kept:
            cells.append(_cell('<span class="tick" title="kept">✓</span>' if m.kept else "", "c"))
        cls = ' class="kept"' if m.kept and show_kept else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<div class="tw"><table>{head}<tbody>{"".join(rows)}</tbody></table></div>'


def _epoch_table(history: Sequence[dict[str, float]]) -> str:
    columns = [
        ("epoch", "epoch", lambda v: fmt_int(int(v))),
        ("train_loss", "train loss", lambda v: fmt_num(v, 4)),
        ("val_loss", "val loss", lambda v: fmt_num(v, 4)),
        ("val_image_accuracy", "val image acc.", fmt_pct),
        ("val_study_accuracy", "val study acc.", fmt_pct),
        ("val_study_kappa", "val study κ", fmt_num),
        ("lr", "lr", lambda v: "–" if _missing(v) else f"{v:.2g}"),
        ("seconds", "seconds", lambda v: fmt_num(v, 0)),
        ("img_per_s", "img/s", lambda v: fmt_num(v, 1)),
    ]
    columns = [c for c in columns if any(c[0] in row for row in history)]
    head = _thead([(label, "n") for _, label, _ in columns])
    rows = "".join(
        "<tr>"
        + "".join(_cell(esc(f(row[k])) if k in row else "–") for k, _, f in columns)
        + "</tr>"
        for row in history
    )
    return f'<div class="tw"><table>{head}<tbody>{rows}</tbody></table></div>'


def _training_section(model: ModelInfo) -> str:
    if not model.members:
        return _section("training", "Training", _missing_box(f"{ENSEMBLE_FILE} lists no members"))
    parts = []
    if model.kind == "ensemble":
        kept = sum(m.kept for m in model.members)
        parts.append(
            f'<p class="note">{len(model.members)} members trained, {kept} kept '
            f"({esc(model.selection or 'selection not recorded')}); sorted by "
            "validation loss at each member's best epoch. Green: kept.</p>"
        )
    trained = [m for m in model.members if m.history or m.val_loss is not None]
    if not trained:
        parts.append(
            _missing_box("No training metrics yet (no metrics.csv)", _hint(HINT_TRAIN, model))
        )
        return _section("training", "Training", "".join(parts))
    ensemble = model.kind == "ensemble"
    parts.append(member_table(model.members, show_kept=ensemble))
    parts.append("<h3>Loss curves</h3>" if ensemble else "<h3>Loss curve</h3>")
    if not ensemble:
        parts.append(f'<div class="curves single">{_curve_figure(model.members[0], False)}</div>')
    else:
        # Kept members' curves in view; the rest one click away (15 curves bury the page).
        kept = "".join(_curve_figure(m, True) for m in model.members if m.kept)
        others = [m for m in model.members if not m.kept]
        parts.append(f'<div class="curves">{kept}</div>')
        if others:
            rest = "".join(_curve_figure(m, True) for m in others)
            parts.append(
                f"<details><summary>Loss curves of the {len(others)} "
                f"member{'s' if len(others) > 1 else ''} not kept"
                f'</summary><div class="curves">{rest}</div></details>'
            )
    details = "".join(
        f"<h4>{esc(m.name)}</h4>{_epoch_table(m.history)}" for m in model.members if m.history
    )
    if details:
        is_open = "" if ensemble else " open"
        parts.append(f"<details{is_open}><summary>Per-epoch metrics</summary>{details}</details>")
    return _section("training", "Training", "".join(parts))


def _curve_figure(member: Member, show_kept: bool) -> str:
    uri = _loss_curve_uri(member)
    caption = esc(member.name)
    if show_kept and member.kept:
        caption += ' <span class="tick">✓ kept</span>'
    if member.val_loss is not None:
        caption += (
            f" · best epoch {fmt_int(member.best_epoch)}, val loss {fmt_num(member.val_loss, 4)}"
        )
    cls = ' class="kept"' if show_kept and member.kept else ""
    return (
        f"<figure{cls}>{_img(uri, f'loss curve of {member.name}', 'no loss curve')}"
        f"<figcaption>{caption}</figcaption></figure>"
    )


def part_table(metrics: dict[str, Any], positive: str = "abnormal") -> str:
    """Per body part then TOTAL; the reference report's accuracy only on real MURA valid."""
    from murakit.evaluate.outputs import REFERENCE_STUDY_ACCURACY

    reference = REFERENCE_STUDY_ACCURACY if looks_like_mura_valid(metrics) else None
    headers = [("part", ""), ("studies", "n"), (positive, "n"), ("study accuracy", "n")]
    if reference:
        headers += [("reference report", "n"), ("Δ (points)", "n")]
    headers += [
        ("κ [95% CI]", "n"),
        ("AUROC", "n"),
        ("sensitivity", "n"),
        ("specificity", "n"),
        ("images", "n"),
        ("image accuracy", "n"),
    ]
    groups = [*sorted(metrics.get("by_part", {}).items()), ("TOTAL", metrics["overall"])]
    rows = []
    for name, g in groups:
        cells = [
            _cell(esc(name), ""),
            _cell(fmt_int(g.get("n_studies"))),
            _cell(fmt_int(g.get("n_abnormal_studies"))),
            _cell(fmt_pct(g.get("study_accuracy"))),
        ]
        if reference:
            ref = reference.get(name)
            acc = g.get("study_accuracy")
            delta = "–"
            if ref is not None and not _missing(acc):
                pts = 100 * (acc - ref)
                delta = f'<span class="{"up" if pts >= 0 else "down"}">{pts:+.1f}</span>'
            cells += [_cell(fmt_pct(ref)), _cell(delta)]
        cells += [
            _cell(esc(fmt_kappa(g))),
            _cell(fmt_num(g.get("auroc")) + _ci_text(g.get("auroc_ci"))),
            _cell(fmt_pct(g.get("sensitivity"))),
            _cell(fmt_pct(g.get("specificity"))),
            _cell(fmt_int(g.get("n_images"))),
            _cell(fmt_pct(g.get("image_accuracy"))),
        ]
        cls = ' class="total"' if name == "TOTAL" else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<div class="tw"><table>{_thead(headers)}<tbody>{"".join(rows)}</tbody></table></div>'


def _evaluation_note(ev: Evaluation) -> str:
    """How the numbers were made, from what metrics.json records about its own run."""
    m = ev.metrics or {}
    source = ""
    if m.get("split") or m.get("data"):
        source = f"Split <b>{esc(m.get('split', '?'))}</b>"
        source += f" of <code>{esc(m['data'])}</code>. " if m.get("data") else ". "
    aggregation = esc(m.get("aggregation", "mean"))
    tta = " (with horizontal-flip test-time augmentation)" if m.get("tta_flip") else ""
    return (
        f"{source}A study's probability is the {aggregation} of its images'{tta}; it is called "
        f"{esc(ev.classes[1])} when ≥ {ev.threshold:g}"
        f"{esc(_threshold_origin(m))}. κ: Cohen's kappa with a 95% bootstrap interval."
    )


def _evaluation_block(ev: Evaluation) -> str:
    from murakit.report.figures import (
        confusion_counts,
        confusion_figure,
        figure_png,
        roc_curves,
        roc_figure,
    )

    parts = [f"<h3>{esc(ev.name)}</h3>"]
    parts += [f'<p class="missing">{esc(n)}</p>' for n in ev.notes]
    if ev.metrics is not None and "overall" in ev.metrics:
        parts.append(f'<p class="note">{_evaluation_note(ev)}</p>')
        parts.append(part_table(ev.metrics, ev.classes[1]))
        if looks_like_mura_valid(ev.metrics):
            parts.append(
                f'<p class="note">MURA paper baseline (DenseNet-169 ensemble): κ '
                f"{MURA_PAPER_KAPPA:.3f}, AUROC {MURA_PAPER_AUROC:.3f}.</p>"
            )
    else:
        parts.append(_missing_box(f"{ev.path / 'metrics.json'} is missing"))
    if ev.studies is None or not ev.studies.keys:
        parts.append(
            _missing_box(
                f"{ev.path / 'study_predictions.csv'} is missing: no ROC curves or confusion matrix"
            )
        )
        return "".join(parts)
    figures = []
    curves = roc_curves(ev.studies.labels, ev.studies.probs, ev.studies.parts)
    if curves:
        uri = data_uri(figure_png(roc_figure(curves)))
        figures.append(
            f'<figure class="roc"><img src="{uri}" alt="ROC curves"><figcaption>'
            "Study-level ROC curves; AUC and study counts in the legends."
            "</figcaption></figure>"
        )
    else:
        figures.append(_missing_box("ROC curves need studies of both classes"))
    counts = confusion_counts(ev.studies.labels, ev.studies.predictions)
    uri = data_uri(figure_png(confusion_figure(counts)))
    figures.append(
        f'<div class="cmrow"><figure class="cm"><img src="{uri}" '
        'alt="confusion matrix"><figcaption>Rows: true class; diagonal: specificity, '
        f"sensitivity.</figcaption></figure>{_confusion_words(counts, ev.classes)}</div>"
    )
    parts.append("".join(figures))
    return "".join(parts)


def _ci_text(ci: Sequence[float] | None) -> str:
    return f' <span class="ci">[{fmt_num(ci[0])}, {fmt_num(ci[1])}]</span>' if ci else ""


def _threshold_origin(metrics: dict[str, Any]) -> str:
    """Where the threshold came from, when the model stored one with its rule."""
    rule = metrics.get("threshold_rule")
    return f" ({rule})" if rule else ""


def _confusion_words(counts, classes: Sequence[str] = ("normal", "abnormal")) -> str:
    """The confusion matrix in sentences: what a clinician asks of it."""
    (tn, fp), (fn, tp) = (int(v) for v in counts[0]), (int(v) for v in counts[1])
    normal, abnormal = tn + fp, fn + tp
    negative, positive = (esc(c) for c in classes)
    items = [
        f"<b>{tp:,}</b> of {abnormal:,} {positive} studies found ({fmt_pct(tp / abnormal)} "
        f"sensitivity); <b>{fn:,}</b> missed."
        if abnormal
        else f"No {positive} studies.",
        f"<b>{tn:,}</b> of {normal:,} {negative} studies cleared ({fmt_pct(tn / normal)} "
        f"specificity); <b>{fp:,}</b> false alarms."
        if normal
        else f"No {negative} studies.",
    ]
    if tp + fp:
        items.append(
            f"Of {tp + fp:,} studies called {positive}, {fmt_pct(tp / (tp + fp))} are "
            "(positive predictive value)."
        )
    return '<ul class="words">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _results_section(model: ModelInfo, evaluations: list[Evaluation]) -> str:
    if not evaluations:
        body = _missing_box("No evaluation yet", _hint(HINT_EVALUATE, model))
    else:
        body = "".join(_evaluation_block(ev) for ev in evaluations)
    return _section("results", "Results", body)


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


def _gallery_figure(item: CamItem, threshold: float) -> str:
    """Probability, and for mistakes what kind: an abnormal study missed or a false alarm."""
    correct = item.correct(threshold)
    badge = ""
    if correct is False:
        badge = f'<span class="badge">{"missed" if item.label == 1 else "false alarm"}</span>'
    elif item.label is None:
        badge = " · label unknown"
    uri = image_uri(item.png, THUMB_SIDE)
    cls = ' class="error"' if correct is False else ""
    key = "/<wbr>".join(esc(piece) for piece in item.study.split("/"))
    return (
        f"<figure{cls}>{_img(uri, f'CAM of {item.image}', f'cannot read {item.png.name}')}"
        f"<figcaption><b>p = {item.probability:.3f}</b>{badge}<br>"
        f'<span class="key">{key}</span></figcaption></figure>'
    )


def _cams_section(model: ModelInfo, evaluations: list[Evaluation]) -> str:
    cams_dir = model.path / CAMS_DIR
    if not (cams_dir / "cams.csv").exists():
        return _section(
            "cams",
            "Class activation maps",
            _missing_box("No CAM gallery yet", _hint(HINT_CAMS, model)),
        )
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
        return _section(
            "cams",
            "Class activation maps",
            _missing_box(f"{cams_dir / 'cams.csv'} cannot be read: {err}"),
        )
    body = [
        f'<p class="note">Where the network looks: last-layer activations weighted by the '
        f"classifier. Most confident correct studies first, then mistakes (red border); p is "
        f"the predicted probability of {esc(positive)} (threshold {threshold:g}).</p>"
    ]
    if failed:
        body.append(
            f'<p class="note">{failed:,} image{"s" if failed != 1 else ""} in cams.csv could '
            "not be read (see its error column).</p>"
        )
    for label, title in (
        (1, f"{positive.capitalize()} studies"),
        (0, f"{negative.capitalize()} studies"),
    ):
        chosen = pick_gallery(items, label, threshold)
        n_studies = len({i.study for i in items if i.label == label})
        body.append(f"<h3>{esc(title)} ({len(chosen)} of {n_studies})</h3>")
        if chosen:
            figs = "".join(_gallery_figure(i, threshold) for i in chosen)
            body.append(f'<div class="gallery">{figs}</div>')
        else:
            body.append(f'<p class="note">No {esc(title.lower())} among the CAMs.</p>')
    unknown = [i for i in items if i.label is None][:GALLERY_SIZE]
    if unknown:
        figs = "".join(_gallery_figure(i, threshold) for i in unknown)
        body.append(
            f"<h3>Studies without a known label ({len(unknown)})</h3>"
            f'<div class="gallery">{figs}</div>'
        )
    return _section("cams", "Class activation maps", "".join(body))


def _augment_section(model: ModelInfo) -> str:
    path = model.path / AUGMENT_PREVIEW
    if not path.exists():
        body = _missing_box(f"No augmentation preview ({AUGMENT_PREVIEW} not found)")
    else:
        uri = image_uri(path)
        body = (
            f'<figure class="preview">{_img(uri, "augmentation preview", "unreadable")}'
            "<figcaption>Training images as the network sees them after augmentation."
            "</figcaption></figure>"
        )
    return _section("augmentation", "Augmentation", body)


# ---------------------------------------------------------------- the page


def render_report(model_dir: Path, *, data_root: Path | None = None) -> str:
    """The report's HTML text for the run or ensemble at model_dir."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ReportError(f"{model_dir}: model folder not found")
    model = read_model(model_dir)
    evaluations = find_evaluations(model_dir)
    notes = "".join(f'<p class="missing">{esc(n)}</p>' for n in model.notes)
    body = "".join(
        [
            _header(model, evaluations),
            notes,
            _dataset_section(model, data_root, evaluations),
            _training_section(model),
            _results_section(model, evaluations),
            _cams_section(model, evaluations),
            _augment_section(model),
        ]
    )
    title = f"murakit report: {model_dir.resolve().name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}"
        "<footer>Written by murakit; self-contained (no network needed to view).</footer>"
        "</main></body></html>\n"
    )


def build_report(model_dir: Path, *, data_root: Path | None = None) -> Path:
    """Write model_dir/report.html atomically (a reader never sees half a page); its path."""
    model_dir = Path(model_dir)
    text = render_report(model_dir, data_root=data_root)
    path = model_dir / REPORT_FILE
    atomic_write_text(path, text)
    os.chmod(path, 0o644)  # a page to share: not the private mode of the temporary file
    return path
