"""murakit.predict: inputs as people have them (a file, a study folder, a tree; PNG, JPEG,
DICOM; a stray bad file) give exactly the probabilities evaluation gives."""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_files import write_dicom
from murakit.data.index import load_index
from murakit.infer.model import Model
from murakit.infer.results import UNCERTAIN_MARGIN, decision_of, uncertain_band
from murakit.infer.studies import PredictInputError, collect_studies
from murakit.predict import format_predictions, predict_studies, write_predictions

TOL = 1e-6  # same images through the same loop; only batch composition differs


@pytest.fixture(scope="module")
def loaded(trained_run):
    return Model.load(trained_run, device="cpu", mixed_precision=False, channels_last=False)


@pytest.fixture(scope="module")
def valid_records(synth_root):
    return load_index(synth_root, ["valid"]).split("valid")


@pytest.fixture(scope="module")
def reference(loaded, valid_records):
    """Model.probabilities over all valid images (what evaluate computes), by resolved path."""
    probs = loaded.probabilities(valid_records)
    return {r.path.resolve(): float(p) for r, p in zip(valid_records, probs, strict=True)}


def _multi_image_study(valid_records) -> Path:
    counts: dict[Path, int] = {}
    for r in valid_records:
        counts[r.path.parent] = counts.get(r.path.parent, 0) + 1
    return max(counts, key=counts.get)


def test_single_image(loaded, valid_records, reference):
    path = valid_records[0].path
    studies = collect_studies([path])
    assert len(studies) == 1 and studies[0].paths == [path]
    assert studies[0].part == valid_records[0].part  # from the XR_* folder
    result = predict_studies(loaded, studies)
    (study,) = result.studies
    assert study.n_images == 1 and not result.errors
    assert study.probability == pytest.approx(reference[path.resolve()], abs=TOL)
    assert study.label == ("abnormal" if study.probability >= 0.5 else "normal")
    assert result.threshold == 0.5


def test_study_folder_skips_hidden_files(loaded, valid_records, reference, tmp_path):
    source = _multi_image_study(valid_records)
    folder = tmp_path / "XR_WRIST" / "patient1" / "study1"
    shutil.copytree(source, folder)
    (folder / "._image1.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # macOS metadata
    (folder / "notes.txt").write_text("not an image")
    studies = collect_studies([folder])
    assert len(studies) == 1
    study_in = studies[0]
    assert study_in.study == "XR_WRIST/patient1/study1" and study_in.part == "XR_WRIST"
    assert [p.name for p in study_in.paths] == sorted(p.name for p in source.glob("*.png"))
    result = predict_studies(loaded, studies)
    assert not result.errors
    (study,) = result.studies
    expected = [reference[(source / p.name).resolve()] for p in study_in.paths]
    assert [i.probability for i in study.images] == pytest.approx(expected, abs=TOL)
    assert study.probability == pytest.approx(np.mean(expected), abs=TOL)
    assert study.n_images == len(expected) >= 2
    # Loose files of one folder form the same study as the folder itself.
    loose = collect_studies(sorted(folder.glob("image*.png")))
    assert [(s.study, s.paths) for s in loose] == [(study_in.study, study_in.paths)]


def test_folder_of_studies(loaded, synth_root, valid_records, reference):
    part = valid_records[0].part
    studies = collect_studies([synth_root / "valid" / part])
    expected_studies = {r.path.parent for r in valid_records if r.part == part}
    assert {s.folder for s in studies} == expected_studies
    assert all(s.part == part for s in studies)
    result = predict_studies(loaded, studies)
    assert len(result.studies) == len(expected_studies) and not result.errors
    for study in result.studies:
        probs = [reference[Path(i.path).resolve()] for i in study.images]
        assert [i.probability for i in study.images] == pytest.approx(probs, abs=TOL)
        assert study.probability == pytest.approx(np.mean(probs), abs=TOL)
        assert study.study.startswith(f"{part}/patient")


def test_dicom_and_jpeg_inputs(loaded, valid_records, tmp_path):
    pytest.importorskip("pydicom")
    source = valid_records[0].path
    gray = np.asarray(Image.open(source).convert("L"))
    study = tmp_path / "mixed"
    study.mkdir()
    Image.fromarray(gray).save(study / "view1.jpg", quality=95)
    # 16-bit MONOCHROME2, as a modality would write it.
    write_dicom(study / "view2.dcm", gray.astype(np.uint16) * 257)

    result = predict_studies(loaded, collect_studies([study]))
    assert not result.errors
    by_name = {Path(i.path).name: i.probability for i in result.images}
    assert set(by_name) == {"view1.jpg", "view2.dcm"}
    records = [replace(valid_records[0], path=study / name) for name in sorted(by_name)]
    expected = loaded.probabilities(records)
    assert [by_name[r.path.name] for r in records] == pytest.approx(expected, abs=TOL)
    assert result.studies[0].probability == pytest.approx(np.mean(expected), abs=TOL)


def test_bad_files_are_reported_and_the_rest_predicted(loaded, valid_records, tmp_path):
    study = tmp_path / "study1"
    study.mkdir()
    shutil.copy(valid_records[0].path, study / "image1.png")
    (study / "image2.png").write_text("this is text, not a radiograph\n")
    (study / "image3.png").write_bytes(b"")
    result = predict_studies(loaded, collect_studies([study]))
    assert [Path(i.path).name for i in result.images] == ["image1.png"]
    assert result.studies[0].n_images == 1
    errors = {Path(e.path).name: e.error for e in result.errors}
    assert set(errors) == {"image2.png", "image3.png"}
    assert "not an image" in errors["image2.png"] and "text" in errors["image2.png"]
    assert "empty" in errors["image3.png"]


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(PredictInputError, match="no such file"):
        collect_studies([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictInputError, match="no image files"):
        collect_studies([tmp_path / "empty"])


def test_threshold_from_model_and_writers(loaded, valid_records, tmp_path, capsys):
    stored = replace(loaded, threshold=0.0)
    studies = collect_studies([valid_records[0].path.parent])
    result = predict_studies(stored, studies)
    assert result.threshold == 0.0 and all(s.label == "abnormal" for s in result.studies)
    assert predict_studies(stored, studies, threshold=1.0).studies[0].label == "normal"

    out = tmp_path / "out" / "predictions.json"
    write_predictions(result, out, "json")
    data = json.loads(out.read_text())
    assert data["studies"][0]["probability"] == result.studies[0].probability
    assert data["studies"][0]["images"][0]["path"] == result.images[0].path

    write_predictions(result, None, "csv")
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == result.studies[0].n_images
    assert float(rows[0]["study_probability"]) == result.studies[0].probability
    with pytest.raises(ValueError, match="unknown format"):
        format_predictions(result, "xml")


def test_uncertain_band_in_json_and_csv(loaded, valid_records, tmp_path):
    """One band, from murakit.infer.results: |p - threshold| < 0.1 is "uncertain"."""
    studies = collect_studies([valid_records[0].path.parent])
    result = predict_studies(loaded, studies)
    (study,) = result.studies
    # Thresholds that put the study above, inside and below the band.
    cases = {"positive": study.probability - 0.15, "uncertain": study.probability - 0.05}
    cases["negative"] = study.probability + 0.15
    for expected, threshold in cases.items():
        shifted = predict_studies(replace(loaded, threshold=threshold), studies)
        assert shifted.studies[0].decision == expected
        band = (max(0.0, threshold - 0.1), min(1.0, threshold + 0.1))
        assert shifted.uncertain_band == pytest.approx(band)
        data = json.loads(format_predictions(shifted, "json"))
        assert data["studies"][0]["decision"] == expected
        assert data["uncertain_margin"] == 0.1
        assert data["uncertain_band"] == pytest.approx(list(band))
        rows = list(csv.DictReader(io.StringIO(format_predictions(shifted, "csv"))))
        assert {r["study_decision"] for r in rows} == {expected}
        for row, image in zip(rows, shifted.images, strict=True):
            assert row["decision"] == image.decision == decision_of(image.probability, threshold)
            assert float(row["threshold"]) == threshold
            assert float(row["uncertain_low"]) == pytest.approx(band[0])
            assert float(row["uncertain_high"]) == pytest.approx(band[1])


def test_decision_rule_at_the_edges():
    assert uncertain_band(0.5) == (0.4, 0.6) and uncertain_band(0.05) == (0.0, 0.15)
    assert [decision_of(p, 0.5) for p in (0.4, 0.41, 0.5, 0.59, 0.6)] == [
        "negative",
        "uncertain",
        "uncertain",
        "uncertain",
        "positive",
    ]
    assert decision_of(0.5, 0.5, margin=0) == "positive"
    assert decision_of(0.49, 0.5, margin=0) == "negative"
    assert UNCERTAIN_MARGIN == 0.1


def test_cam_overlays_written(loaded, valid_records, tmp_path):
    pytest.importorskip("murakit.explain.cam")
    result = predict_studies(
        loaded, collect_studies([valid_records[0].path]), cam_dir=tmp_path / "cams"
    )
    png = Path(result.images[0].cam_png)
    assert png.parent == tmp_path / "cams" and png.exists()
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.width == Image.open(valid_records[0].path).width
