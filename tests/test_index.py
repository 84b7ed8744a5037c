"""The MURA index and stats, on the official CSVs and on small trees written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from murakit.cli import app
from murakit.data.index import DatasetError, load_index
from murakit.data.stats import dataset_stats

REFERENCE_IMAGES = {  # DESIGN.md: (normal, abnormal) images per part, train and valid
    "train": {
        "XR_SHOULDER": (4211, 4168),
        "XR_HUMERUS": (673, 599),
        "XR_FINGER": (3138, 1968),
        "XR_ELBOW": (2925, 2006),
        "XR_WRIST": (5765, 3987),
        "XR_FOREARM": (1164, 661),
        "XR_HAND": (4059, 1484),
        "TOTAL": (21935, 14873),
    },
    "valid": {
        "XR_SHOULDER": (285, 278),
        "XR_HUMERUS": (148, 140),
        "XR_FINGER": (214, 247),
        "XR_ELBOW": (235, 230),
        "XR_WRIST": (364, 295),
        "XR_FOREARM": (150, 151),
        "XR_HAND": (271, 189),
        "TOTAL": (1667, 1530),
    },
}
REFERENCE_STUDIES = {"train": (8280, 5177), "valid": (661, 538)}


def test_official_csvs_give_reference_table(shared_mura):
    result = CliRunner().invoke(app, ["stats", str(shared_mura), "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)
    for split, parts in REFERENCE_IMAGES.items():
        assert set(table[split]) == set(parts)
        for part, (normal, abnormal) in parts.items():
            got = table[split][part]
            assert (got["normal_images"], got["abnormal_images"]) == (normal, abnormal), part
        total = table[split]["TOTAL"]
        assert (total["normal_studies"], total["abnormal_studies"]) == REFERENCE_STUDIES[split]
        assert set(total) == {
            "normal_images",
            "abnormal_images",
            "normal_studies",
            "abnormal_studies",
            "patients",
        }


def test_study_key_includes_body_part(shared_mura):
    index = load_index(shared_mura, ["train"])
    keys = {r.study for r in index.images}
    bare = {r.study.split("/", 1)[1] for r in index.images}
    assert len(bare) < len(keys)  # patientX/studyK repeats across parts
    assert len(keys) == 8280 + 5177
    first = index.images[0]
    assert first.rel == "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png"
    assert first.path == shared_mura / "train/XR_SHOULDER/patient00001/study1_positive/image1.png"
    assert (first.part, first.patient, first.study_number, first.label) == (
        "XR_SHOULDER",
        "patient00001",
        1,
        1,
    )


def _write_tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _csvs(
    root: Path, images: list[str], studies: list[tuple[str, int]], *, header=False, crlf=False
) -> None:
    end = "\r\n" if crlf else "\n"
    root.mkdir(parents=True, exist_ok=True)
    lines = (["path"] if header else []) + [f"{root.name}/{p}" for p in images]
    (root / "train_image_paths.csv").write_text(end.join(lines) + end, newline="")
    rows = (["study,label"] if header else []) + [f"{root.name}/{s}/,{y}" for s, y in studies]
    (root / "train_labeled_studies.csv").write_text(end.join(rows) + end, newline="")


IMAGES = [
    "train/XR_HAND/patient00001/study1_positive/image1.png",
    "train/XR_HAND/patient00001/study1_positive/image2.png",
    "train/XR_WRIST/patient00001/study1_negative/image1.png",
]
STUDIES = [
    ("train/XR_HAND/patient00001/study1_positive", 1),
    ("train/XR_WRIST/patient00001/study1_negative", 0),
]


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_csv_header_and_crlf_tolerated(tmp_path, header, crlf):
    root = tmp_path / "MURA-v1.1"
    _write_tree(root, IMAGES)
    _csvs(root, IMAGES, STUDIES, header=header, crlf=crlf)
    index = load_index(root, ["train"])
    assert [r.rel for r in index.images] == [f"MURA-v1.1/{p}" for p in IMAGES]
    assert [r.label for r in index.images] == [1, 1, 0]
    assert all(r.path.exists() for r in index.images)
    assert len(index.studies()) == 2


def test_tree_fallback_ignores_hidden_files(tmp_path):
    root = tmp_path / "MURA-v1.1"
    _write_tree(
        root,
        IMAGES + ["train/XR_HAND/patient00001/study1_positive/._image1.png", "train/.DS_Store"],
    )
    index = load_index(root, ["train"])
    assert sorted(r.rel for r in index.images) == sorted(f"MURA-v1.1/{p}" for p in IMAGES)
    stats = dataset_stats(index.images)["train"]
    assert stats["XR_HAND"] == {
        "normal_images": 0,
        "abnormal_images": 2,
        "normal_studies": 0,
        "abnormal_studies": 1,
        "patients": 1,
    }
    assert stats["TOTAL"]["patients"] == 1


def test_bad_label_names_file_and_line(tmp_path):
    root = tmp_path / "MURA-v1.1"
    _csvs(root, IMAGES, [STUDIES[0], (STUDIES[1][0], 2)])
    with pytest.raises(
        DatasetError, match=r"train_labeled_studies.csv, line 2: label must be 0 or 1"
    ):
        load_index(root, ["train"])


def test_unknown_part_and_duplicates_reported_or_skipped(tmp_path):
    root = tmp_path / "MURA-v1.1"
    images = IMAGES + [IMAGES[0], "train/XR_KNEE/patient00002/study1_negative/image1.png"]
    _csvs(root, images, STUDIES + [("train/XR_KNEE/patient00002/study1_negative", 0)])
    with pytest.raises(DatasetError, match=r"line 4: duplicate row"):
        load_index(root, ["train"])
    index = load_index(root, ["train"], skip_bad=True)
    assert len(index.images) == 3
    assert len(index.skipped) == 2
    assert "unknown body part folder 'XR_KNEE'" in index.skipped[1]


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["stats", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "dataset folder not found" in result.output


def test_pointing_at_the_folder_above_the_dataset_suggests_the_dataset(synth_data):
    result = CliRunner().invoke(app, ["stats", str(synth_data)])
    assert result.exit_code == 1
    assert "no images found" in result.output
    assert f"did you mean {synth_data.resolve() / 'MURA-v1.1'}?" in result.output.replace("\n", "")


def test_a_dataset_copied_under_another_name_still_resolves(synth_root, tmp_path):
    import shutil

    copy = tmp_path / "mura-copy"
    shutil.copytree(synth_root, copy)
    original, renamed = load_index(synth_root), load_index(copy)
    assert [r.rel for r in renamed.images] == [r.rel for r in original.images]
    assert renamed.images[0].rel.startswith("MURA-v1.1/")  # the CSV's own text is kept
    assert all(r.path.is_file() and copy in r.path.parents for r in renamed.images)
