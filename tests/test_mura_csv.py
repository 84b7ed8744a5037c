"""MURA's submission convention: `murakit predict --model M --mura-csv image_paths.csv --out
predictions.csv` reads a header-less list of image paths (relative to the current directory)
and writes one header-less `study_path,label` line per study, in input order."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from murakit.cli import app
from murakit.infer.model import Model
from murakit.infer.studies import PredictInputError
from murakit.predict import read_mura_csv

# Study folders as MURA lays them out; the hidden test split's may lack _positive/_negative.
STUDIES = [
    "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/",
    "MURA-v1.1/test/XR_ELBOW/patient99001/study2/",  # no _positive / _negative
    "MURA-v1.1/valid/XR_HAND/patient11190/study1_negative/",
]
# Lines of the image list: studies interleaved, so first appearance is neither sorted nor
# contiguous (study 0 has an image after study 1's).
LINES = [
    STUDIES[0] + "image1.png",
    STUDIES[1] + "image1.png",
    STUDIES[0] + "image2.png",
    STUDIES[1] + "image2.png",
    STUDIES[2] + "image1.png",
]


@pytest.fixture()
def mura_folder(synth_root, tmp_path, monkeypatch) -> Path:
    """A folder holding MURA-v1.1/ with LINES' images (synthetic radiographs) and
    image_paths.csv in MURA's format (as valid_image_paths.csv: no header, "\\n" endings);
    the current directory, as MURA's evaluation runs."""
    sources = sorted((synth_root / "valid").rglob("*.png"))
    for line, source in zip(LINES, sources, strict=False):
        target = tmp_path / line
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (tmp_path / "image_paths.csv").write_text("".join(f"{line}\n" for line in LINES))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_csv_is_read_as_studies_in_input_order(mura_folder):
    studies = read_mura_csv("image_paths.csv")
    assert [s.study for s in studies] == STUDIES
    assert [len(s.paths) for s in studies] == [2, 2, 1]
    assert [s.part for s in studies] == ["XR_WRIST", "XR_ELBOW", "XR_HAND"]
    assert studies[0].paths[1] == mura_folder / LINES[2]


def test_predictions_file_is_mura_format(trained_run, mura_folder):
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(trained_run),
            "--mura-csv",
            "image_paths.csv",
            "--out",
            "predictions.csv",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    text = (mura_folder / "predictions.csv").read_bytes().decode()
    model = Model.load(trained_run, device="cpu")
    predicted = model.predict_studies(read_mura_csv("image_paths.csv"))
    labels = {s.study: int(s.probability >= model.threshold) for s in predicted.studies}
    # header-less, "study_path,label" with the study's trailing slash, in input order
    assert text == "".join(f"{study},{labels[study]}\n" for study in STUDIES)
    assert not text.startswith(("study", "path"))


def test_threshold_sets_the_labels(trained_run, mura_folder):
    for threshold, label in (("0", "1"), ("1.0", "0")):
        result = CliRunner().invoke(
            app,
            [
                "predict",
                "-m",
                str(trained_run),
                "--mura-csv",
                "image_paths.csv",
                "--threshold",
                threshold,
                "--device",
                "cpu",
            ],
        )
        assert result.exit_code == 0, result.output
        lines = [line for line in result.stdout.splitlines() if line.startswith("MURA-v1.1/")]
        assert lines == [f"{study},{label}" for study in STUDIES]


def test_the_shared_list_format(shared_mura, synth_root, tmp_path, monkeypatch):
    """The first lines of MURA's own valid_image_paths.csv, verbatim, over synthetic images at
    those paths."""
    lines = (shared_mura / "valid_image_paths.csv").read_text().splitlines(keepends=True)[:6]
    source = next((synth_root / "valid").rglob("*.png"))
    for line in lines:
        target = tmp_path / line.strip()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (tmp_path / "list.csv").write_text("".join(lines))
    monkeypatch.chdir(tmp_path)
    studies = read_mura_csv("list.csv")
    expected = list(dict.fromkeys(line.strip().rsplit("/", 1)[0] + "/" for line in lines))
    assert [s.study for s in studies] == expected
    assert all(s.study.startswith("MURA-v1.1/valid/XR_") for s in studies)


def test_a_missing_image_names_its_line(mura_folder):
    (mura_folder / LINES[3]).unlink()
    with pytest.raises(PredictInputError, match="line 4"):
        read_mura_csv("image_paths.csv")


def test_paths_and_mura_csv_exclude_each_other(trained_run, mura_folder):
    result = CliRunner().invoke(
        app, ["predict", "-m", str(trained_run), "--mura-csv", "image_paths.csv", "MURA-v1.1"]
    )
    assert result.exit_code == 2
    assert not (mura_folder / "predictions.csv").exists()
