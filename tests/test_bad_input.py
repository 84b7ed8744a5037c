"""Bad input everywhere a file enters murakit (issue 7, item 4), through the real CLI.

Every case is a real file on disk: a zero-byte PNG, a PNG cut off in its pixel data, text
named .png, a PNG whose header claims 20000x20000 pixels (a decompression bomb), macOS
"._" AppleDouble files, a CSV listing a missing file, a label other than 0/1, duplicated
rows and an unknown body part folder. Each must be reported by path (and CSV line) with its
problem, never as a bare traceback; `--skip-bad` must let long jobs finish and list what
was skipped. 16-bit, RGBA and palette PNGs and CMYK JPEGs are valid input and must be read
as the same picture.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bad_files import (
    BAD_WRITERS,
    UNUSUAL_SUFFIX,
    UNUSUAL_WRITERS,
    appledouble,
    bomb_png,
    text_as_png,
    truncated_png,
    zero_byte,
)
from murakit.cli import app
from murakit.data.imageio import read_grayscale
from murakit.data.index import load_index

# What each message must say right after "<path>: ".
PROBLEM = {
    "zero_byte": "file is empty (0 bytes)",
    "truncated": "truncated or corrupt PNG",
    "text_as_png": "not an image: content is text",
    "bomb": "image is 20000x20000 = 400 megapixels",
    "appledouble": "not an image: macOS AppleDouble metadata",
    "missing": "file not found",
}
TRAIN_ARGS = ["--preset", "demo", "--epochs", "1", "--size", "64", "--device", "cpu"]
TRAIN_ARGS += ["--max-train-images", "16", "--batch-size", "16", "--no-mixed-precision"]


# ----------------------------------------------------------------------------- helpers


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Whitespace removed: rich wraps long lines at 80 columns when not on a terminal."""
    return "".join(text.split())


def names(output: str, path: Path | str, problem: str) -> bool:
    """Whether `output` holds the message '<path>: <problem...>'."""
    return flat(f"{path}: {problem}") in flat(output)


def names_a_bad_file(output: str, root: Path, bad: dict[str, str]) -> bool:
    """Whether `output` names one of the files `bad` ({CSV path: kind}) under `root`."""
    return any(names(output, on_disk(root, rel), PROBLEM[kind]) for rel, kind in bad.items())


def clean_exit(result, code: int) -> None:
    """Exited with `code` through the CLI's own error handling, not an uncaught exception."""
    assert result.exit_code == code, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"uncaught {type(result.exception).__name__} instead of a clear message:\n"
            f"{result.exception}"
        ) from result.exception


def copy_dataset(source: Path, dest_parent: Path) -> Path:
    """A copy that keeps the folder name (the CSVs' paths begin with it)."""
    root = dest_parent / source.name
    shutil.copytree(source, root)
    return root


def csv_rows(path: Path) -> list[str]:
    return path.read_text().splitlines()


def append_rows(path: Path, *rows: str) -> None:
    with open(path, "a") as handle:
        handle.writelines(f"{row}\n" for row in rows)


def on_disk(root: Path, rel: str) -> Path:
    """The file a CSV path names in the dataset copy at `root` (CSV paths begin with the
    dataset folder's name)."""
    return root.parent / rel


def valid_records(root: Path):
    return load_index(root, ["valid"]).images


def write_unusual(root: Path, rec, kind: str) -> Path:
    """Replace `rec`'s image by the same picture in an unusual container; a CMYK JPEG gets
    its own name (image1.jpg) and the CSV row is changed to match. Returns the new path."""
    gray = read_grayscale(rec.path)
    if UNUSUAL_SUFFIX[kind] == ".png":
        UNUSUAL_WRITERS[kind](rec.path, gray)
        return rec.path
    new = rec.path.with_suffix(UNUSUAL_SUFFIX[kind])
    UNUSUAL_WRITERS[kind](new, gray)
    rec.path.unlink()
    csv_path = root / "valid_image_paths.csv"
    old_rel, new_rel = rec.rel, rec.rel.rsplit(".", 1)[0] + UNUSUAL_SUFFIX[kind]
    csv_path.write_text(csv_path.read_text().replace(old_rel + "\n", new_rel + "\n"))
    return new


# ---------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def damaged(synth_root, tmp_path_factory):
    """A copy of the synthetic dataset with one valid image of each bad kind, every second
    train image bad (so that any training subset holds some, in its first batch), one valid
    image in each unusual container, and macOS '._' files beside some images. The CSVs are
    untouched, apart from the CMYK JPEG's new name.

    Returns (root, rels, bad): rels = {kind: CSV path} for the valid images of each bad and
    unusual kind; bad = {CSV path: kind} for every bad file, train and valid. A CSV path
    names a file under any copy of the dataset (:func:`on_disk`).
    """
    root = copy_dataset(synth_root, tmp_path_factory.mktemp("damaged"))
    recs = valid_records(root)
    rels: dict[str, str] = {}
    bad: dict[str, str] = {}

    def spoil(rec, kind: str) -> None:
        if kind == "truncated":
            truncated_png(rec.path, source=rec.path)
        else:
            BAD_WRITERS[kind](rec.path)
        bad[rec.rel] = kind

    for i, kind in enumerate(BAD_WRITERS, start=1):
        spoil(recs[-i], kind)
        rels[kind] = recs[-i].rel
    train = load_index(root, ["train"]).images
    for i, rec in enumerate(train[::2]):
        spoil(rec, list(BAD_WRITERS)[i % len(BAD_WRITERS)])
    for i, kind in enumerate(UNUSUAL_WRITERS, start=len(BAD_WRITERS) + 1):
        rels[kind] = write_unusual(root, recs[-i], kind).relative_to(root.parent).as_posix()
    for rec in recs[:3] + train[1:7:2]:
        appledouble(rec.path.with_name("._" + rec.path.name))
    return root, rels, bad


@pytest.fixture(scope="module")
def damaged_rows(damaged, tmp_path_factory):
    """`damaged` plus bad CSV rows and a missing file, each of a different kind.

    Returns (root, {kind: (where, detail)}) where `where` is the file (and line) to name.
    """
    source, _, _ = damaged
    root = copy_dataset(source, tmp_path_factory.mktemp("damaged_rows"))
    image_csv, label_csv = root / "valid_image_paths.csv", root / "valid_labeled_studies.csv"
    recs = valid_records(root)
    problems: dict[str, tuple[str, str]] = {}

    # a missing file: listed, never downloaded
    missing = recs[-len(BAD_WRITERS) - len(UNUSUAL_WRITERS) - 1]
    missing.path.unlink()
    problems["missing"] = (str(missing.path), PROBLEM["missing"])

    # a duplicated row
    append_rows(image_csv, recs[5].rel)
    problems["duplicate"] = (f"{image_csv}, line {len(csv_rows(image_csv))}", "duplicate row")

    # an unknown body part folder (file, image row and label row all present)
    knee = "valid/XR_KNEE/patient09999/study1_negative"
    (root / knee).mkdir(parents=True)
    shutil.copy(recs[6].path, root / knee / "image1.png")
    append_rows(image_csv, f"{root.name}/{knee}/image1.png")
    append_rows(label_csv, f"{root.name}/{knee}/,0")
    problems["unknown_part"] = (
        f"{image_csv}, line {len(csv_rows(image_csv))}",
        "unknown body part folder 'XR_KNEE'",
    )

    # a macOS '._' file listed in the CSV as if it were an image
    ghost = recs[7].path.with_name("._" + recs[7].path.name)
    appledouble(ghost)
    append_rows(image_csv, recs[7].rel.rsplit("/", 1)[0] + "/._" + recs[7].path.name)
    problems["appledouble"] = (str(ghost), PROBLEM["appledouble"])

    # a label other than 0/1 (the first image's study, which holds none of the above)
    study_dir = recs[0].rel.rsplit("/", 1)[0] + "/"
    assert all(r.study != recs[0].study for r in (recs[5], recs[6], recs[7], missing))
    rows = csv_rows(label_csv)
    line = next(n for n, row in enumerate(rows, start=1) if row.startswith(study_dir))
    rows[line - 1] = f"{study_dir},2"
    label_csv.write_text("\n".join(rows) + "\n")
    problems["bad_label"] = (f"{label_csv}, line {line}", "label must be 0 or 1, got '2'")
    return root, problems


@pytest.fixture()
def small(synth_root, tmp_path):
    """A fresh copy of the synthetic dataset for one test's CSV edits."""
    return copy_dataset(synth_root, tmp_path)


# ------------------------------------------------------------------------- index / stats


def test_check_files_names_each_bad_file(damaged):
    root, rels, bad = damaged
    result = invoke("stats", root, "--check-files", "--workers", 1)
    clean_exit(result, 1)
    for rel, kind in bad.items():
        assert names(result.output, on_disk(root, rel), PROBLEM[kind]), (rel, kind)
    assert flat("decompression bomb") in flat(result.output)
    n_images = len(load_index(root).images)
    assert f"{len(bad)} of {n_images} images" in result.output
    for kind in UNUSUAL_WRITERS:  # valid input: decodes, so not reported
        assert flat(rels[kind]) not in flat(result.output), kind
    assert "._image" not in result.output  # the tree's '._' files are not listed in the CSVs


def test_check_files_messages_keep_each_path_on_one_line(damaged):
    """A long job's log is read and grepped: a path must not be broken across lines when
    stderr is a file or a pipe (rich would wrap at 80 columns)."""
    root, rels, _ = damaged
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(
        [sys.executable, "-m", "murakit", "stats", str(root), "--check-files", "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for kind in BAD_WRITERS:
        line = f"{on_disk(root, rels[kind])}: {PROBLEM[kind]}"
        assert any(line in row for row in proc.stderr.splitlines()), (line, proc.stderr)


def test_check_files_names_missing_and_appledouble_listed_in_csv(small):
    """The CSVs are the truth: a listed file that is missing, or a listed '._' file, is
    indexed and then named by --check-files with what is wrong."""
    recs = valid_records(small)
    recs[3].path.unlink()
    ghost = recs[4].path.with_name("._" + recs[4].path.name)
    appledouble(ghost)
    append_rows(small / "valid_image_paths.csv", recs[4].rel.replace("/image", "/._image"))
    plain = invoke("stats", small, "--json")
    clean_exit(plain, 0)  # counting needs no pixels
    result = invoke("stats", small, "--check-files", "--workers", 1)
    clean_exit(result, 1)
    assert names(result.output, recs[3].path, PROBLEM["missing"]), result.output
    assert names(result.output, ghost, PROBLEM["appledouble"]), result.output
    assert "2 of" in result.output


def test_tree_without_csvs_ignores_appledouble_files(small):
    """Where a split has no CSVs the tree is walked; '._' files are not images."""
    counts = json.loads(invoke("stats", small, "--json").stdout)
    for rec in load_index(small).images[::10]:
        appledouble(rec.path.with_name("._" + rec.path.name))
    (small / "valid" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for split in ("train", "valid"):
        (small / f"{split}_image_paths.csv").unlink()
    result = invoke("stats", small, "--json", "--check-files", "--workers", 1)
    clean_exit(result, 0)
    assert json.loads(result.stdout) == counts
    assert "AppleDouble" not in result.output


@pytest.mark.parametrize("label", ["2", "-1", "0.5", "abnormal", ""])
def test_label_other_than_0_or_1_names_csv_and_line(small, label):
    label_csv = small / "valid_labeled_studies.csv"
    rows = csv_rows(label_csv)
    study = rows[2].split(",")[0]
    rows[2] = f"{study},{label}"
    label_csv.write_text("\n".join(rows) + "\n")
    result = invoke("stats", small)
    clean_exit(result, 1)
    assert names(result.output, f"{label_csv}, line 3", f"label must be 0 or 1, got {label!r}")


def test_bad_label_on_first_line_is_not_taken_for_a_header(small):
    """A header row is skipped, but a first row holding a study path is data: its bad label
    must be reported as such (not as 'study ... is not listed')."""
    label_csv = small / "valid_labeled_studies.csv"
    rows = csv_rows(label_csv)
    rows[0] = rows[0].split(",")[0] + ",abnormal"
    label_csv.write_text("\n".join(rows) + "\n")
    result = invoke("stats", small)
    clean_exit(result, 1)
    assert names(result.output, f"{label_csv}, line 1", "label must be 0 or 1, got 'abnormal'")


def test_duplicated_image_row_names_csv_and_line(small):
    image_csv = small / "valid_image_paths.csv"
    rows = csv_rows(image_csv)
    append_rows(image_csv, rows[4])
    result = invoke("stats", small)
    clean_exit(result, 1)
    assert names(result.output, f"{image_csv}, line {len(rows) + 1}", "duplicate row")


def test_study_listed_twice_with_different_labels_names_line(small):
    label_csv = small / "valid_labeled_studies.csv"
    rows = csv_rows(label_csv)
    study, label = rows[1].split(",")
    append_rows(label_csv, f"{study},{1 - int(label)}")
    result = invoke("stats", small)
    clean_exit(result, 1)
    assert names(result.output, f"{label_csv}, line {len(rows) + 1}", f"study {study!r}")
    assert flat("listed twice with different labels") in flat(result.output)


def test_unknown_body_part_in_csv_names_csv_and_line(small):
    image_csv = small / "valid_image_paths.csv"
    n = len(csv_rows(image_csv))
    append_rows(image_csv, f"{small.name}/valid/XR_KNEE/patient09999/study1_positive/image1.png")
    result = invoke("stats", small)
    clean_exit(result, 1)
    assert names(result.output, f"{image_csv}, line {n + 1}", "unknown body part folder")
    assert "'XR_KNEE'" in result.output


def test_unknown_body_part_in_tree_names_the_real_folder(small):
    """Without CSVs the message names the file as it is on disk."""
    knee = small / "valid" / "XR_KNEE" / "patient09999" / "study1_negative"
    knee.mkdir(parents=True)
    shutil.copy(valid_records(small)[0].path, knee / "image1.png")
    for split in ("train", "valid"):
        (small / f"{split}_image_paths.csv").unlink()
    result = invoke("stats", small)
    clean_exit(result, 1)
    assert names(result.output, knee / "image1.png", "unknown body part folder 'XR_KNEE'"), (
        result.output
    )


# --------------------------------------------------------------------- train / evaluate


def test_train_and_evaluate_stop_on_a_bad_csv_row_naming_it(trained_run, small, tmp_path):
    """Without --skip-bad a bad row stops the job before any work, naming file and line."""
    label_csv = small / "valid_labeled_studies.csv"
    rows = csv_rows(label_csv)
    rows[3] = rows[3].split(",")[0] + ",yes"
    label_csv.write_text("\n".join(rows) + "\n")
    where, detail = f"{label_csv}, line 4", "label must be 0 or 1, got 'yes'"
    result = invoke("train", "--out", tmp_path / "run", "--data", small, *TRAIN_ARGS)
    clean_exit(result, 1)
    assert names(result.stderr, where, detail), result.output
    assert not (tmp_path / "run" / "last.pt").exists()
    result = invoke("evaluate", "--model", trained_run, "--data", small, "--out", tmp_path)
    clean_exit(result, 1)
    assert names(result.stderr, where, detail), result.output


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "loader-workers"])
def test_train_names_the_bad_file(damaged, tmp_path, workers):
    """Without --skip-bad training stops at the first bad file, in the middle of the first
    epoch, with 'error: <path>: <problem>' and a hint; also when the file is read in a
    DataLoader worker process."""
    root, _, bad = damaged
    result = invoke(
        "train", "--out", tmp_path / "run", "--data", root, "--workers", workers, *TRAIN_ARGS
    )
    clean_exit(result, 1)
    assert "error:" in result.stderr
    assert names_a_bad_file(result.stderr, root, bad), result.output
    assert "--skip-bad" in result.stderr


def test_train_skip_bad_finishes_and_lists_everything_skipped(damaged, damaged_rows, tmp_path):
    _, rels, bad = damaged
    root, problems = damaged_rows
    out = tmp_path / "run"
    result = invoke(
        "train", "--out", out, "--data", root, "--workers", 0, "--skip-bad", *TRAIN_ARGS
    )
    clean_exit(result, 0)
    assert (out / "best.pt").exists() and (out / "metrics.csv").exists()
    # the list at the end, after the result line
    tail = result.stdout[result.stdout.index("best epoch") :]
    assert "item(s) skipped" in tail
    for kind in BAD_WRITERS:  # the valid split is used whole
        assert names(tail, on_disk(root, rels[kind]), PROBLEM[kind]), (kind, tail)
    train_bad = {rel: kind for rel, kind in bad.items() if "/train/" in rel}
    assert names_a_bad_file(tail, root, train_bad), tail  # those in the training subset
    for kind, (where, detail) in problems.items():
        assert names(tail, where, detail), (kind, tail)
    for kind in UNUSUAL_WRITERS:  # valid input is trained on, not skipped
        assert flat(rels[kind]) not in flat(result.output), kind


# ---------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "loader-workers"])
def test_evaluate_names_the_bad_file(trained_run, damaged, tmp_path, workers):
    root, _, bad = damaged
    result = invoke(
        "evaluate",
        "--model",
        trained_run,
        "--data",
        root,
        "--out",
        tmp_path,
        "--device",
        "cpu",
        "--workers",
        workers,
    )
    clean_exit(result, 1)
    assert "error:" in result.stderr
    assert names_a_bad_file(result.stderr, root, bad), result.output
    assert "--skip-bad" in result.stderr


def test_evaluate_skip_bad_finishes_lists_skipped_and_reads_unusual_formats(
    trained_run, synth_root, damaged, damaged_rows, tmp_path
):
    _, rels, _ = damaged
    root, problems = damaged_rows
    common = ["--model", trained_run, "--device", "cpu", "--workers", 0]
    result = invoke("evaluate", "--data", root, "--out", tmp_path / "bad", "--skip-bad", *common)
    clean_exit(result, 0)
    assert (tmp_path / "bad" / "metrics.json").exists()
    for kind in BAD_WRITERS:  # listed after the results table (stdout)
        assert names(result.stdout, on_disk(root, rels[kind]), PROBLEM[kind]), kind
    for kind, (where, detail) in problems.items():
        assert names(result.stdout, where, detail), (kind, result.stdout)

    # 16-bit, RGBA and palette PNGs are the same picture: the same probability as the 8-bit
    # original; the (lossy) CMYK JPEG is read and scored as well
    clean = invoke("evaluate", "--data", synth_root, "--out", tmp_path / "clean", *common)
    clean_exit(clean, 0)

    def probabilities(folder: Path) -> dict[str, float]:
        with open(folder / "image_predictions.csv", newline="") as handle:
            return {row["image"]: float(row["probability"]) for row in csv.DictReader(handle)}

    bad, reference = probabilities(tmp_path / "bad"), probabilities(tmp_path / "clean")
    for kind in ("gray16", "rgba", "palette"):
        assert bad[rels[kind]] == pytest.approx(reference[rels[kind]], abs=1e-3), kind
    assert 0.0 <= bad[rels["cmyk"]] <= 1.0


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def predict_folder(synth_root, tmp_path_factory):
    """One study folder: an 8-bit original, the same picture in each unusual container, each
    kind of bad file, and the '._' file macOS leaves beside the original."""
    folder = tmp_path_factory.mktemp("predict") / "study1"
    folder.mkdir()
    source = valid_records(synth_root)[0].path
    shutil.copy(source, folder / "original.png")
    gray = read_grayscale(source)
    for kind, write in UNUSUAL_WRITERS.items():
        write(folder / f"{kind}{UNUSUAL_SUFFIX[kind]}", gray)
    for kind, write in BAD_WRITERS.items():
        if kind == "truncated":
            truncated_png(folder / f"{kind}.png", source=source)
        else:
            write(folder / f"{kind}.png")
    appledouble(folder / "._original.png")
    return folder


def test_predict_reads_good_files_and_names_each_bad_one(trained_run, predict_folder):
    ghost = predict_folder / "._original.png"
    result = invoke("predict", "--model", trained_run, predict_folder, ghost, "--device", "cpu")
    clean_exit(result, 0)
    out = json.loads(result.stdout)
    probs = {
        Path(image["path"]).name: image["probability"]
        for study in out["studies"]
        for image in study["images"]
    }
    expected = {"original.png"} | {f"{k}{UNUSUAL_SUFFIX[k]}" for k in UNUSUAL_WRITERS}
    assert set(probs) == expected
    for kind in ("gray16", "rgba", "palette"):
        assert probs[f"{kind}.png"] == pytest.approx(probs["original.png"], abs=1e-3), kind
    assert 0.0 <= probs["cmyk.jpg"] <= 1.0
    errors = {Path(e["path"]).name: e["error"] for e in out["errors"]}
    assert set(errors) == {f"{k}.png" for k in BAD_WRITERS} | {"._original.png"}
    for kind in BAD_WRITERS:
        assert errors[f"{kind}.png"].startswith(PROBLEM[kind]), errors
        assert names(result.stderr, predict_folder / f"{kind}.png", PROBLEM[kind])
    assert names(result.stderr, ghost, PROBLEM["appledouble"])
    assert "decompression bomb" in errors["bomb.png"]


def test_cmyk_jpeg_is_not_read_inverted(predict_folder):
    """Adobe CMYK JPEGs store inverted ink values; the gray read must match the original."""
    original = read_grayscale(predict_folder / "original.png").astype(int)
    cmyk = read_grayscale(predict_folder / "cmyk.jpg").astype(int)
    assert np.abs(cmyk - original).mean() < 3


def test_predict_with_only_bad_files_exits_nonzero_naming_each(trained_run, tmp_path):
    folder = tmp_path / "study1"
    folder.mkdir()
    zero_byte(folder / "a.png")
    text_as_png(folder / "b.png")
    bomb_png(folder / "c.png")
    result = invoke("predict", "--model", trained_run, folder, "--device", "cpu")
    clean_exit(result, 1)
    assert names(result.stderr, folder / "a.png", PROBLEM["zero_byte"])
    assert names(result.stderr, folder / "b.png", PROBLEM["text_as_png"])
    assert names(result.stderr, folder / "c.png", PROBLEM["bomb"])


def test_predict_missing_path_is_named(trained_run, tmp_path):
    result = invoke("predict", "--model", trained_run, tmp_path / "nowhere.png")
    clean_exit(result, 1)
    assert names(result.stderr, tmp_path / "nowhere.png", "no such file or folder")


# ------------------------------------------------------------------------------- audit


def test_audit_lists_bad_files_in_problems_and_completes(damaged, damaged_rows, tmp_path):
    _, rels, _ = damaged
    root, problems = damaged_rows
    result = invoke("audit", root, "--split", "valid", "--out", tmp_path, "--workers", 1)
    clean_exit(result, 0)
    with open(tmp_path / "audit.csv", newline="") as handle:
        rows = {row["image"]: row["problems"] for row in csv.DictReader(handle)}
    assert (tmp_path / "audit.html").exists()
    for kind in BAD_WRITERS:
        assert rows[rels[kind]].startswith(f"undecodable: {PROBLEM[kind]}"), (kind, rows)
    for kind in ("missing", "appledouble"):  # listed in the CSV, so audited
        rel = Path(problems[kind][0]).relative_to(root.parent).as_posix()
        assert rows[rel].startswith(f"undecodable: {PROBLEM[kind]}"), (kind, rows[rel])
    for kind in UNUSUAL_WRITERS:
        assert "undecodable" not in rows[rels[kind]], (kind, rows[rels[kind]])
    # bad CSV rows are listed by the command, with file and line
    for kind in ("duplicate", "unknown_part", "bad_label"):
        where, detail = problems[kind]
        assert names(result.stdout, where, detail), (kind, result.stdout)
