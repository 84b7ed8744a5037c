"""The HTML model report, built from real files in the formats the pipeline writes.

A fake-but-realistic run, ensemble, evaluation folder, CAM gallery and MURA-layout dataset
are written to tmp_path (CSV/JSON exactly as the other modules write them, real PNGs); no
model is trained, so the whole module runs in a few seconds.
"""

from __future__ import annotations

import csv
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from murakit.config import make_config
from murakit.data.index import BODY_PARTS, ImageRecord
from murakit.evaluate.metrics import evaluation_metrics
from murakit.evaluate.outputs import (
    read_metrics_json,
    read_study_predictions,
    write_image_predictions,
    write_metrics_json,
    write_study_predictions,
)
from murakit.evaluate.plots import plot_loss_curve
from murakit.fsutil import atomic_write_json
from murakit.report.figures import confusion_counts, roc_curves, roc_figure
from murakit.report.html import (
    build_report,
    fmt_int,
    fmt_kappa,
    fmt_num,
    fmt_pct,
    looks_like_mura_valid,
    part_table,
)
from murakit.train.callbacks import METRIC_COLUMNS

PARTS = ("XR_ELBOW", "XR_HAND", "XR_WRIST")
SECTIONS = ("Dataset", "Training", "Results", "Class activation maps", "Augmentation")

# ------------------------------------------------------------------ fake pipeline outputs


def write_dataset(root: Path, rng: np.random.Generator, studies_per_part: int = 12) -> None:
    """MURA-layout CSVs (no image files: the index reads the CSVs only)."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        paths, labels = [], []
        for part in PARTS:
            for i in range(studies_per_part):
                label = int(rng.random() < 0.45)
                study = (
                    f"MURA-v1.1/{split}/{part}/patient{i:05d}/"
                    f"study1_{'positive' if label else 'negative'}/"
                )
                labels.append(f"{study},{label}")
                paths += [f"{study}image{k + 1}.png" for k in range(1 + i % 3)]
        (root / f"{split}_image_paths.csv").write_text("\n".join(paths) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(labels) + "\n")


def write_run(run_dir: Path, data: Path, seed: int, epochs: int = 6) -> list[dict]:
    """config.json, metrics.csv, loss_curve.png and a placeholder best.pt, like train_run."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    make_config("demo", data=str(data), seed=seed).save(run_dir / "config.json")
    history = []
    floor = 0.5 + 0.1 * rng.random()
    for epoch in range(1, epochs + 1):
        val = floor + 0.3 / epoch + 0.02 * rng.standard_normal()
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(0.4 + 0.4 / epoch, 4),
                "val_loss": round(val, 4),
                "val_image_accuracy": round(0.6 + 0.02 * epoch, 4),
                "val_study_accuracy": round(0.62 + 0.02 * epoch, 4),
                "val_study_kappa": round(0.2 + 0.05 * epoch, 4),
                "lr": 0.002,
                "seconds": 12.5,
                "img_per_s": 80.0,
            }
        )
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    plot_loss_curve(history, run_dir / "loss_curve.png", title=run_dir.name)
    (run_dir / "best.pt").write_bytes(b"not a real checkpoint")
    return history


def write_ensemble(ens_dir: Path, data: Path, n: int = 4, keep: int = 2) -> list[dict]:
    """members/member-NN runs plus ensemble.json and members.csv (write_ensemble's format)."""
    rows = []
    for i in range(n):
        run_dir = ens_dir / "members" / f"member-{i:02d}"
        history = write_run(run_dir, data, seed=i)
        best = min(history, key=lambda r: r["val_loss"])
        rows.append(
            {
                "name": run_dir.name,
                "run_dir": f"members/{run_dir.name}",
                "epochs": len(history),
                "best_epoch": best["epoch"],
                "train_loss": best["train_loss"],
                "val_loss": best["val_loss"],
                "val_accuracy": best["val_image_accuracy"],
                "val_study_accuracy": best["val_study_accuracy"],
                "kept": False,
            }
        )
    rows.sort(key=lambda r: r["val_loss"])
    for row in rows[:keep]:
        row["kept"] = True
    atomic_write_json(
        ens_dir / "ensemble.json",
        {"selection": "lowest validation loss", "kept": keep, "members": rows},
    )
    with (ens_dir / "members.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def fake_images(rng: np.random.Generator, parts=PARTS, studies_per_part: int = 30):
    """Valid-split image records with probabilities that separate the classes imperfectly."""
    images, probs = [], []
    for part in parts:
        for i in range(studies_per_part):
            label = int(rng.random() < 0.45)
            key = f"{part}/patient{i:05d}/study1"
            for k in range(1 + i % 3):
                rel = (
                    f"MURA-v1.1/valid/{key}_{'positive' if label else 'negative'}/image{k + 1}.png"
                )
                images.append(
                    ImageRecord(Path(rel), rel, key, part, f"patient{i:05d}", 1, "valid", label)
                )
                probs.append(
                    float(np.clip(0.3 + 0.35 * label + 0.25 * rng.standard_normal(), 0.001, 0.999))
                )
    return images, np.array(probs)


def write_evaluation(out: Path, images, image_probs, threshold: float = 0.5) -> dict:
    """eval-valid/ as the evaluate stage writes it: image and study CSVs, metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    write_image_predictions(out / "image_predictions.csv", images, image_probs)
    keys = list(dict.fromkeys(r.study for r in images))
    by_key = {k: [] for k in keys}
    for rec, p in zip(images, image_probs, strict=True):
        by_key[rec.study].append(p)
    first = {r.study: r for r in reversed(images)}
    parts = [first[k].part for k in keys]
    labels = np.array([first[k].label for k in keys])
    probs = np.array([np.mean(by_key[k]) for k in keys])
    write_study_predictions(out / "study_predictions.csv", keys, parts, labels, probs, threshold)
    metrics = evaluation_metrics(
        keys,
        parts,
        labels,
        probs,
        [r.label for r in images],
        image_probs,
        [r.part for r in images],
        threshold,
        n_boot=200,
    )
    metrics.update(split="valid", aggregation="mean", tta_flip=False)  # as evaluate_model adds
    write_metrics_json(out / "metrics.json", metrics)
    return read_metrics_json(out / "metrics.json")


def write_cams(cams_dir: Path, images, image_probs) -> None:
    """cams.csv plus one small overlay PNG per image, as murakit.explain.cam writes them:
    studies named by folder (with the _positive/_negative suffix), an error column, and a
    row for an unreadable image."""
    cams_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (rec, p) in enumerate(zip(images, image_probs, strict=True)):
        name = f"cam-{n:04d}.png"
        yy, xx = np.mgrid[0:48, 0:48]
        heat = np.exp(-((xx - 10 - n % 28) ** 2 + (yy - 24) ** 2) / 90.0)
        rgb = np.stack([255 * heat, 60 + 0 * heat, 255 * (1 - heat)], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(cams_dir / name)
        folder = f"{rec.study}_{'positive' if rec.label else 'negative'}"
        rows.append((f"/data/{rec.rel}", folder, f"{p:.6g}", name, ""))
    rows.append(
        ("/data/broken.png", "XR_HAND/patient09999/study1_negative", "", "", "cannot decode")
    )
    with (cams_dir / "cams.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("image", "study", "probability", "cam_png", "error"))
        writer.writerows(rows)


def write_preview(path: Path) -> None:
    Image.fromarray(np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 4))).save(path)


@pytest.fixture(scope="module")
def full_ensemble(tmp_path_factory):
    """An ensemble with everything: dataset, members, evaluation, CAMs, preview."""
    rng = np.random.default_rng(7)
    base = tmp_path_factory.mktemp("report")
    data = base / "MURA-v1.1"
    write_dataset(data, rng)
    ens = base / "ens"
    members = write_ensemble(ens, data)
    images, probs = fake_images(rng)
    metrics = write_evaluation(ens / "eval-valid", images, probs)
    write_cams(ens / "cams", images, probs)
    write_preview(ens / "augment_preview.png")
    path = build_report(ens)
    return {
        "dir": ens,
        "data": data,
        "members": members,
        "metrics": metrics,
        "path": path,
        "text": path.read_text(encoding="utf-8"),
    }


# ------------------------------------------------------------------ HTML inspection


class _Page(HTMLParser):
    """Collects tags, attributes and text, and checks that elements nest and close."""

    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.headings: list[str] = []
        self.rows: list[list[str]] = []
        self._heading: list[str] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag in ("h1", "h2", "h3"):
            self._heading = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        for sink in (self._heading, self._cell):
            if sink is not None:
                sink.append(data)


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.errors == [], page.errors[:5]
    assert page.stack == [], f"unclosed: {page.stack}"
    return page


def row_for(page: _Page, first: str, after: int = 0) -> list[str]:
    return [r for r in page.rows if r and r[0] == first][after]


def plain(text: str) -> str:
    return re.sub(r"<[^>]+>", "", text)


# ------------------------------------------------------------------ tests


def test_report_written_with_every_section(full_ensemble):
    path = full_ensemble["path"]
    assert path == full_ensemble["dir"] / "report.html"
    page = parse(full_ensemble["text"])
    h2 = [h for h in page.headings if h in SECTIONS]
    assert h2 == list(SECTIONS)  # all sections, in order
    assert page.headings[0].startswith("murakit report")
    assert not list(path.parent.glob(".report.html.*"))  # the atomic write left no temp file


def test_self_contained(full_ensemble):
    page = parse(full_ensemble["text"])
    srcs = [v for tag, k, v in page.attrs if tag == "img" and k == "src"]
    assert len(srcs) >= 4 + 2 + 1 + 1  # loss curves, ROC + confusion, CAMs, preview
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    links = [v for _tag, k, v in page.attrs if k in ("src", "href")]
    assert not [v for v in links if "http://" in v or "https://" in v]
    # the one file link: the model card written beside the page (its text is inline too)
    assert not [v for v in links if not v.startswith(("data:", "#")) and v != "MODEL_CARD.md"]
    assert not {tag for tag, _k, _v in page.attrs} & {"script", "link", "iframe"}
    assert "<script" not in full_ensemble["text"]
    assert "@import" not in full_ensemble["text"] and "url(" not in full_ensemble["text"]


def test_header_headline(full_ensemble):
    text = plain(full_ensemble["text"])
    overall = full_ensemble["metrics"]["overall"]
    assert f"study accuracy {fmt_pct(overall['study_accuracy'])}" in text
    lo, hi = overall["kappa_ci"]
    assert f"κ {fmt_num(overall['kappa'])} [{fmt_num(lo)}, {fmt_num(hi)}]" in text
    assert f"{fmt_int(overall['n_studies'])} studies" in text
    assert "densenet-mini" in text and "demo" in text and "128×128 px" in text
    assert "2 kept of 4 trained" in text
    assert "Split valid. A study's probability is the mean of its images'" in text


def test_member_table_marks_kept_sorted_by_val_loss(full_ensemble):
    page = parse(full_ensemble["text"])
    members = full_ensemble["members"]  # sorted by val loss, first two kept
    rows = [r for r in page.rows if r and r[0].startswith("member-")]
    assert [r[0] for r in rows] == [m["name"] for m in members]
    for row, member in zip(rows, members, strict=True):
        assert row[4] == fmt_num(member["val_loss"], 4)
        assert row[5] == fmt_pct(member["val_accuracy"])
        assert (row[-1] == "✓") == member["kept"]
    assert sum(r[-1] == "✓" for r in rows) == 2


def test_part_table_matches_metrics_json(full_ensemble):
    page = parse(full_ensemble["text"])
    metrics = full_ensemble["metrics"]
    header = next(r for r in page.rows if r and r[0] == "part" and "AUROC" in r)
    assert "reference report" not in header  # synthetic data: no comparison with MURA
    for name, group in [*metrics["by_part"].items(), ("TOTAL", metrics["overall"])]:
        row = dict(
            zip(
                header,
                next(r for r in page.rows if r[0] == name and len(r) == len(header)),
                strict=True,
            )
        )
        assert row["studies"] == fmt_int(group["n_studies"])
        assert row["study accuracy"] == fmt_pct(group["study_accuracy"])
        assert row["κ [95% CI]"] == fmt_kappa(group)
        ci = group["auroc_ci"]
        ci_text = f" [{fmt_num(ci[0])}, {fmt_num(ci[1])}]" if ci else ""
        assert row["AUROC"] == fmt_num(group["auroc"]) + ci_text
        assert row["sensitivity"] == fmt_pct(group["sensitivity"])
        assert row["specificity"] == fmt_pct(group["specificity"])
        assert row["images"] == fmt_int(group["n_images"])


def test_dataset_table_counts(full_ensemble):
    from murakit.data.index import load_index
    from murakit.data.stats import dataset_stats, percent

    stats = dataset_stats(load_index(full_ensemble["data"]).images)
    page = parse(full_ensemble["text"])
    for part in (*PARTS, "TOTAL"):
        row = row_for(page, part)  # the dataset table comes first
        train, valid = stats["train"][part], stats["valid"][part]
        assert row[1] == f"{train['normal_images']:,} / {train['abnormal_images']:,}"
        assert row[3] == f"{train['normal_studies']:,} / {train['abnormal_studies']:,}"
        assert row[5] == f"{valid['normal_images']:,} / {valid['abnormal_images']:,}"
        assert row[6] == percent(
            valid["abnormal_images"], valid["normal_images"] + valid["abnormal_images"]
        )
        assert row[8] == f"{valid['patients']:,}"


def test_roc_auc_equals_sklearn(full_ensemble):
    studies = read_study_predictions(full_ensemble["dir"] / "eval-valid" / "study_predictions.csv")
    curves = {c.name: c for c in roc_curves(studies.labels, studies.probs, studies.parts)}
    assert curves["all studies"].auc == roc_auc_score(studies.labels, studies.probs)
    parts = np.array(studies.parts)
    for part in PARTS:
        mask = parts == part
        assert curves[part].auc == pytest.approx(
            roc_auc_score(studies.labels[mask], studies.probs[mask]), abs=1e-12
        )
    # The legend shows the same AUCs, and they agree with metrics.json.
    fig = roc_figure(list(curves.values()))
    legend = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert f"all studies: AUC {curves['all studies'].auc:.3f}" in legend[0]
    assert curves["all studies"].auc == pytest.approx(full_ensemble["metrics"]["overall"]["auroc"])
    assert len(legend) == 1 + len(PARTS)


def test_confusion_counts_match_predictions(full_ensemble):
    from sklearn.metrics import confusion_matrix

    studies = read_study_predictions(full_ensemble["dir"] / "eval-valid" / "study_predictions.csv")
    counts = confusion_counts(studies.labels, studies.predictions)
    assert (counts == confusion_matrix(studies.labels, studies.predictions)).all()


def test_cam_gallery_split_by_label(full_ensemble):
    text = full_ensemble["text"]
    cams = text[text.index('id="cams"') : text.index('id="augmentation"')]
    abnormal = cams[cams.index("Abnormal studies") : cams.index("Normal studies")]
    normal = cams[cams.index("Normal studies") :]
    assert 0 < abnormal.count("<figure") <= 12 and 0 < normal.count("<figure") <= 12
    for section, label in ((abnormal, 1), (normal, 0)):
        figures = re.findall(r'<figure( class="error")?>.*?p = ([0-9.]+)', section)
        for error, p in figures:  # red-bordered exactly when the call is wrong
            assert bool(error) == ((float(p) >= 0.5) != bool(label))
        right = [float(p) for error, p in figures if not error]
        assert right == sorted(right, reverse=bool(label))  # most confident first
    assert "missed" in abnormal and "false alarm" not in abnormal
    assert "false alarm" in normal and "missed" not in normal
    assert "1 image in cams.csv could not be read" in cams


def test_cam_labels_joined_by_study(tmp_path):
    """Labels come from the evaluation by study key (the folder suffix dropped), else from
    the MURA folder name; error rows are counted, not shown."""
    from murakit.report.html import read_cams

    rows = [
        ("a.png", "XR_HAND/patient00001/study1_positive", "0.9", "a.png", ""),
        ("b.png", "case-7", "0.2", "b.png", ""),
        ("c.png", "XR_HAND/patient00002/study1_negative", "0.4", "c.png", ""),
        ("d.png", "case-9", "0.6", "d.png", ""),
        ("e.png", "case-10", "", "", "not an image"),
    ]
    with (tmp_path / "cams.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("image", "study", "probability", "cam_png", "error")] + rows)
    labels = {"case-7": 1, "XR_HAND/patient00002/study1": 0}
    items, failed = read_cams(tmp_path, labels)
    assert [i.label for i in items] == [1, 1, 0, None] and failed == 1
    assert [i.correct(0.5) for i in items] == [True, False, True, None]


def test_single_run_missing_sections(tmp_path):
    run = tmp_path / "run"
    history = write_run(run, tmp_path / "nowhere", seed=1)
    (run / "loss_curve.png").unlink()  # regenerated from metrics.csv, not written back
    text = build_report(run).read_text(encoding="utf-8")
    page = parse(text)
    body = plain(text)
    assert "No evaluation yet: run murakit evaluate --model" in body
    assert "No CAM gallery yet: run murakit cam --model" in body
    assert "No augmentation preview" in body
    assert "is not available on this machine" in body
    assert "1 (single run)" in body
    assert [h for h in page.headings if h in SECTIONS] == list(SECTIONS)
    srcs = [v for tag, k, v in page.attrs if tag == "img" and k == "src"]
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert not (run / "loss_curve.png").exists()
    row = row_for(page, "run")
    best = min(history, key=lambda r: r["val_loss"])
    assert row[1:5] == [
        "6",
        str(best["epoch"]),
        fmt_num(best["train_loss"], 4),
        fmt_num(best["val_loss"], 4),
    ]
    assert len(row) == 7  # a single run has no "kept" column


def test_data_root_argument_and_escaping(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "MURA-v1.1"
    write_dataset(data, rng, studies_per_part=3)
    run = tmp_path / "run <b>&"
    write_run(run, tmp_path / "elsewhere", seed=2, epochs=3)
    text = build_report(run, data_root=data).read_text(encoding="utf-8")
    parse(text)
    assert "run <b>&" not in text and "run &lt;b&gt;&amp;" in text
    assert "XR_WRIST" in plain(text) and "is not available" not in text


def test_not_a_model_dir(tmp_path):
    from murakit.report.html import ReportError

    with pytest.raises(ReportError):
        build_report(tmp_path)
    with pytest.raises(ReportError):
        build_report(tmp_path / "absent")


def test_reference_column_only_on_real_mura(tmp_path):
    """Evaluated on a set shaped like MURA v1.1 valid (1,199 studies, 7 parts), the reference
    report's accuracy appears beside ours."""
    rng = np.random.default_rng(3)
    run = tmp_path / "run"
    write_run(run, tmp_path / "nowhere", seed=3, epochs=2)
    images, probs = fake_images(rng, parts=BODY_PARTS, studies_per_part=5)
    metrics = write_evaluation(run / "eval-valid", images, probs)
    assert not looks_like_mura_valid(metrics)
    assert not part_table(metrics).reference  # no reference column on other data
    metrics["overall"]["n_studies"], metrics["overall"]["n_images"] = 1199, 3197
    write_metrics_json(run / "eval-valid" / "metrics.json", metrics)
    page = parse(build_report(run).read_text(encoding="utf-8"))
    header = next(r for r in page.rows if r and r[0] == "part" and "AUROC" in r)
    assert "reference report" in header
    total = dict(zip(header, row_for(page, "TOTAL"), strict=True))
    assert total["reference report"] == "79.8%"


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    run = tmp_path / "run"
    write_run(run, tmp_path / "nowhere", seed=4, epochs=2)
    (run / "eval-valid").mkdir()
    (run / "eval-valid" / "metrics.json").write_text("{not json")
    (run / "cams").mkdir()
    (run / "cams" / "cams.csv").write_text("image,study,probability,cam_png\na,b,0.9,gone.png\n")
    (run / "augment_preview.png").write_bytes(b"not a png")
    text = build_report(run).read_text(encoding="utf-8")
    parse(text)
    assert "metrics.json: cannot be read" in text
    assert "cannot read gone.png" in text
    assert json.loads((run / "config.json").read_text())["preset"] == "demo"


def test_every_value_is_escaped(tmp_path):
    """Values from the model folder reach the page as text, never as markup: autoescaping
    covers names, metrics.json fields and cams.csv keys, in text and in attributes."""
    rng = np.random.default_rng(5)
    run = tmp_path / "run"
    write_run(run, tmp_path / "nowhere", seed=5, epochs=2)
    images, probs = fake_images(rng, studies_per_part=4)
    metrics = write_evaluation(run / "eval-valid", images, probs)
    metrics.update(data="/data/<i>x</i>", threshold_rule="<script>alert(1)</script>")
    write_metrics_json(run / "eval-valid" / "metrics.json", metrics)
    (run / "cams").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(run / "cams" / "x.png")
    with (run / "cams" / "cams.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [
                ("image", "study", "probability", "cam_png", "error"),
                ('a"><b>.png', "case <u>1</u>", "0.7", "x.png", ""),
            ]
        )
    text = build_report(run).read_text(encoding="utf-8")
    page = parse(text)
    tags = {tag for tag, _k, _v in page.attrs} | set(re.findall(r"<(\w+)", text))
    assert not tags & {"script", "i", "u"}
    assert "<b>.png" not in text
    body = html.unescape(plain(text))
    assert "of /data/<i>x</i>." in body and "(<script>alert(1)</script>)" in body
    alts = [v for tag, k, v in page.attrs if tag == "img" and k == "alt"]
    assert 'CAM of a"><b>.png' in alts  # the attribute holds the whole name, as text
    assert "Studies without a known label (1)" in page.headings
    assert "label unknown" in body and "case <u>1</u>" in body


def test_templates_are_package_data_and_share_a_base():
    from importlib.resources import files

    from murakit.report.templating import environment

    folder = files("murakit.report") / "templates"
    names = {p.name for p in folder.iterdir()}
    assert {"base.html.j2", "report.html.j2", "audit.html.j2"} <= names
    env = environment()
    assert env.autoescape is True
    for name in ("report.html.j2", "audit.html.j2"):
        assert '{% extends "base.html.j2" %}' in env.loader.get_source(env, name)[0]


def test_report_layer_imports_no_terminal_or_cli_code():
    """The report is an application layer: rich/typer and the CLI stay above it."""
    import ast

    import murakit.report

    forbidden = ("rich", "typer", "murakit.cli", "murakit.progress")
    for path in Path(murakit.report.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in forbidden[:2] or n in forbidden[2:]]
            assert not bad, f"{path.name} imports {bad}"
