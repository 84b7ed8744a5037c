"""`murakit import`: FracAtlas (real radiographs, CC BY 4.0) and a user's CSV into datasets every
command accepts; their own body parts and class names through stats, evaluate and report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from murakit.cli import app
from murakit.data.imageio import read_grayscale
from murakit.data.importers import assign_splits, fracatlas_part, import_csv, import_fracatlas
from murakit.data.index import DatasetError, load_index


def _truth(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "truth.csv", newline="") as handle:
        return {row["source"]: row for row in csv.DictReader(handle)}


def test_fracatlas_import_follows_its_stated_rules(fracatlas_data, fracatlas_release):
    index = load_index(fracatlas_data)
    truth = _truth(fracatlas_data)
    log = (fracatlas_data / "import_log.txt").read_text()
    release = {p.name for p in fracatlas_release.rglob("*.jpg")}

    # every image but the pixel-identical pair with opposite labels, each its own study
    assert "IMG0002886.jpg" not in truth and "IMG0004243.jpg" not in truth
    assert "IMG0002886.jpg, IMG0004243.jpg; all left out" in log
    assert len(index.images) == len(release) - 2 == len(truth)
    assert len(index.studies()) == len(index.images)
    # the folder and dataset.csv disagree: the COCO box decides, and the log says so
    assert truth["IMG0003298.jpg"]["label"] == "1" and "IMG0003298.jpg: folder says 1" in log
    # identical pixels, same label: one split
    assert truth["IMG0002626.jpg"]["split"] == truth["IMG0004081.jpg"]["split"]
    # the JPEG cut short is stored as a PNG that decodes without error
    salvaged = fracatlas_data / truth["IMG0004142.jpg"]["image"]
    assert salvaged.suffix == ".png" and read_grayscale(salvaged).ndim == 2
    assert "IMG0004142.jpg: file ends early" in log
    # several fracture boxes survive, with the flags beside them
    several = [r for r in truth.values() if r["finding_box"].count(";") >= 2]
    assert several and all(r["finding"] == "fracture" for r in several)
    assert {"hardware", "multiscan", "frontal", "lateral", "oblique"} <= set(several[0])
    # parts and class names declared; the credit travels with the data
    info = index.info
    assert info.classes == ("no fracture", "fracture") and not info.is_mura
    assert {"XR_HAND", "XR_LEG", "XR_HIP", "XR_SHOULDER", "XR_MIXED"} == set(info.parts)
    assert "CC BY 4.0" in (fracatlas_data / "ATTRIBUTION.md").read_text()
    assert "Abedeen" in (fracatlas_data / "ATTRIBUTION.md").read_text()


def test_fracatlas_split_is_deterministic_and_stratified(fracatlas_release, tmp_path):
    first = import_fracatlas(fracatlas_release, tmp_path / "a", seed=5, valid_fraction=0.5)
    again = import_fracatlas(fracatlas_release, tmp_path / "b", seed=5, valid_fraction=0.5)
    other = import_fracatlas(fracatlas_release, tmp_path / "c", seed=6, valid_fraction=0.5)
    splits = [{k: r["split"] for k, r in _truth(r.out).items()} for r in (first, again, other)]
    assert splits[0] == splits[1] and splits[0] != splits[2]
    for part_label, n_train in first.counts["train"].items():
        n_valid = first.counts["valid"][part_label]
        assert abs(n_train - n_valid) <= 2, part_label  # each stratum halved (pairs move whole)


def test_fracatlas_part_rule():
    row = {"hand": "0", "leg": "1", "hip": "0", "shoulder": "0", "mixed": "0"}
    assert fracatlas_part(row) == "XR_LEG"
    assert fracatlas_part({**row, "hip": "1"}) == "XR_MIXED"  # two regions
    assert fracatlas_part({**row, "mixed": "1"}) == "XR_MIXED"


def test_assign_splits_keeps_groups_together():
    strata = [(0, "A")] * 6 + [(1, "A")] * 4
    groups = [0, 0, 1, 2, 3, 4, 5, 5, 6, 7]
    splits = assign_splits(strata, groups, 0.5, seed=1)
    assert splits[0] == splits[1] and splits[6] == splits[7]
    assert splits.count("valid") in (4, 5, 6)


def test_import_refuses_to_overwrite(fracatlas_release, fracatlas_data):
    with pytest.raises(DatasetError, match="exists and is not empty"):
        import_fracatlas(fracatlas_release, fracatlas_data)


def _hospital_export(tmp_path: Path, rows: list[dict]) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(exist_ok=True)
    for row in rows:
        target = tmp_path / row["file"]
        if not target.exists() and not row.get("missing"):
            Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(target)
    table = tmp_path / "export.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "finding", "region", "mrn", "accession"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in writer.fieldnames})
    return table


def _rows(n_patients: int = 10) -> list[dict]:
    rows = []
    for p in range(n_patients):
        for s in range(2):
            for v in range(2):
                rows.append(
                    {
                        "file": f"img/p{p}_s{s}_v{v}.png",
                        "finding": "positive" if (p + s) % 2 else "negative",
                        "region": ["Knee", "ankle"][p % 2],
                        "mrn": f"MRN {p:03d}",
                        "accession": f"A{s}",
                    }
                )
    return rows


CSV_ARGS = dict(
    image_col="file",
    label_col="finding",
    part_col="region",
    patient_col="mrn",
    study_col="accession",
)


def test_csv_import_groups_studies_and_never_splits_a_patient(tmp_path):
    table = _hospital_export(tmp_path, _rows())
    result = import_csv(table, tmp_path / "ds", classes=("clear", "lesion"), **CSV_ARGS)
    index = load_index(result.out)
    assert set(index.info.parts) == {"XR_KNEE", "XR_ANKLE"}
    assert index.info.classes == ("clear", "lesion")
    studies = index.studies()
    assert len(studies) == 20 and all(len(s.images) == 2 for s in studies)
    split_of: dict[str, set[str]] = {}
    for study in studies:
        split_of.setdefault(study.patient, set()).add(study.split)
    assert all(len(s) == 1 for s in split_of.values())
    assert {s.split for s in studies} == {"train", "valid"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"missing": True, "file": "img/gone.png"},
            r"export.csv, row 4: image file 'img/gone.png'",
        ),
        ({"finding": "maybe"}, r"export.csv, row 4: label 'maybe' in column 'finding'"),
        ({"region": "Spleen"}, r"export.csv, row 4: unknown body part 'Spleen'"),
    ],
)
def test_csv_import_names_the_bad_row(tmp_path, change, message):
    rows = _rows(3)
    _hospital_export(tmp_path, rows)  # the good images exist
    rows[2] = {**rows[2], **change}
    table = _hospital_export(tmp_path, rows)
    with pytest.raises(DatasetError, match=message):
        import_csv(table, tmp_path / "ds", parts=["knee", "ankle"], **CSV_ARGS)
    assert not (tmp_path / "ds").exists()


def test_csv_import_refuses_a_study_with_two_labels(tmp_path):
    rows = _rows(2)
    rows[1] = {**rows[1], "finding": "positive"}  # same patient, study and part as rows[0]
    table = _hospital_export(tmp_path, rows)
    with pytest.raises(
        DatasetError, match="row 3: label 1, but .*row 2 gives study 'A0' of patientMRN-000"
    ):
        import_csv(table, tmp_path / "ds", **CSV_ARGS)


def test_cli_import_csv_and_a_mura_tree_with_an_unknown_part(tmp_path, synth_root):
    table = _hospital_export(tmp_path, _rows())
    args = ["import", "csv", str(table), str(tmp_path / "ds"), "--image-col", "file"]
    args += ["--label-col", "finding", "--part-col", "region", "--patient-col", "mrn"]
    result = CliRunner().invoke(app, [*args, "--study-col", "accession"])
    assert result.exit_code == 0, result.output
    assert "XR_KNEE" in result.output
    stats = CliRunner().invoke(app, ["stats", str(tmp_path / "ds"), "--json"])
    assert stats.exit_code == 0, stats.output
    counts = json.loads(stats.output)
    assert set(counts["train"]) == set(counts["valid"]) == {"XR_ANKLE", "XR_KNEE", "TOTAL"}

    # a MURA tree (no dataset.json) with a part folder outside MURA's seven is still an error
    mura = tmp_path / "mura"
    shutil.copytree(synth_root, mura)
    study = next((mura / "train").glob("XR_*/patient*/study*"))
    odd = mura / "train" / "XR_KNEE" / study.parent.name / study.name
    odd.parent.mkdir(parents=True)
    shutil.copytree(study, odd)
    for name in ("train_image_paths.csv", "train_labeled_studies.csv"):
        (mura / name).unlink()
    result = CliRunner().invoke(app, ["stats", str(mura)])
    assert result.exit_code == 1 and "unknown body part folder 'XR_KNEE'" in result.output


def test_fracatlas_parts_through_train_evaluate_and_report(fracatlas_data, tmp_path):
    """Parts outside MURA's seven and FracAtlas's class names reach every output; MURA's
    reference accuracies never appear, although XR_HAND and XR_SHOULDER are MURA names."""
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(fracatlas_data), "--out", str(run), "--preset", "demo"]
        + ["--epochs", "1", "--size", "64", "--workers", "0", "--threshold-slice", "0.3"]
        + ["--box-loss", "0.5"],
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((run / "threshold.json").read_text())
    assert 0 <= stored["threshold"] <= 1 and stored["slice_sensitivity"] >= 0.9

    evaluated = CliRunner().invoke(app, ["evaluate", "--model", str(run), "--workers", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "FracAtlas valid" in evaluated.output and "positive = fracture" in evaluated.output
    assert "reference (report)" not in evaluated.output
    metrics = json.loads((run / "eval-valid" / "metrics.json").read_text())
    assert metrics["threshold"] == stored["threshold"]
    assert {"XR_LEG", "XR_MIXED", "XR_HIP"} <= set(metrics["by_part"])

    report = CliRunner().invoke(app, ["report", str(run)])
    assert report.exit_code == 0, report.output
    page = (run / "report.html").read_text()
    assert "XR_LEG" in page and "fracture" in page and "reference report" not in page
    assert "Abedeen" in page and "CC BY 4.0" in page  # the images' credit travels to figures

    predicted = CliRunner().invoke(
        app, ["predict", "--model", str(run), str(next(fracatlas_data.rglob("*.jpg")))]
    )
    assert predicted.exit_code == 0, predicted.output
    assert "fracture" in predicted.output
