"""The synthetic MURA generator: official file formats, ground truth, splits, determinism."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from murakit.synth import generator as synth

STUDIES = 60
SEED = 7
IMAGE_RE = re.compile(
    r"MURA-v1\.1/(train|valid)/(XR_[A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/"
    r"image(\d+)\.png"
)
STUDY_RE = re.compile(
    r"MURA-v1\.1/(train|valid)/(XR_[A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/,([01])"
)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, synth.SynthSummary, list[tuple[int, int]]]:
    out = tmp_path_factory.mktemp("synth")
    calls: list[tuple[int, int]] = []
    summary = synth.generate(
        out, studies=STUDIES, seed=SEED, workers=2, progress=lambda d, t: calls.append((d, t))
    )
    return out, summary, calls


def _lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert b"\r" not in data and data.endswith(b"\n")
    return data.decode("ascii").splitlines()


def _truth(out: Path) -> list[dict]:
    with open(out / "synth_truth.csv", newline="") as f:
        return list(csv.DictReader(f))


def _box(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split())


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_csvs_have_the_official_format(made):
    out, summary, _ = made
    studies_seen: dict[str, int] = defaultdict(int)
    for split in ("train", "valid"):
        images = _lines(out / "MURA-v1.1" / f"{split}_image_paths.csv")
        labelled = _lines(out / "MURA-v1.1" / f"{split}_labeled_studies.csv")
        for line in images:
            m = IMAGE_RE.fullmatch(line)
            assert m, line
            assert m.group(1) == split and m.group(2) in synth.PARTS
            assert (out / line).is_file()
            studies_seen[line.rsplit("/", 1)[0] + "/"] += 1
        keys = set()
        for line in labelled:
            m = STUDY_RE.fullmatch(line)
            assert m, line
            assert m.group(1) == split
            assert (m.group(5) == "positive") == (m.group(6) == "1")
            keys.add(line.rsplit(",", 1)[0])
        assert keys == {k for k in studies_seen if k.startswith(f"MURA-v1.1/{split}/")}
        assert len(keys) == len(labelled)
    assert all(1 <= n <= 4 for n in studies_seen.values())
    assert sum(studies_seen.values()) == summary.images
    assert len(studies_seen) == summary.studies == STUDIES


def test_images_are_grey_pngs_of_mura_size(made):
    out, _, _ = made
    modes = set()
    for row in _truth(out):
        with Image.open(out / row["image"]) as im:
            assert im.format == "PNG" and im.mode in ("L", "RGB")
            assert max(im.size) <= 512 and min(im.size) >= 150
            a = np.asarray(im)
            modes.add(im.mode)
        if a.ndim == 3:
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
            assert row["rgb"] == "1"
        assert a.std() > 10  # a picture, not a blank
    assert modes == {"L", "RGB"}


def test_truth_sidecar_describes_every_image(made):
    out, _, _ = made
    header = (out / "synth_truth.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == [
        "image",
        "finding",
        "finding_box",
        "inverted",
        "marker",
        "multi_panel",
        "marker_box",
        "panel_split",
    ]
    rows = _truth(out)
    listed = _lines(out / "MURA-v1.1" / "train_image_paths.csv")
    listed += _lines(out / "MURA-v1.1" / "valid_image_paths.csv")
    assert [r["image"] for r in rows] == listed
    shown: dict[str, bool] = defaultdict(bool)
    for r in rows:
        with Image.open(out / r["image"]) as im:
            w, h = im.size
        abnormal = "_positive/" in r["image"]
        assert all(r[c] in ("0", "1") for c in ("inverted", "marker", "multi_panel"))
        assert bool(r["finding"]) == bool(r["finding_box"])
        if r["finding"]:
            assert abnormal and r["finding"] in synth.FINDINGS
            x0, y0, x1, y1 = _box(r["finding_box"])
            assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
        assert bool(r["marker_box"]) == (r["marker"] == "1")
        if r["marker_box"]:
            x0, y0, x1, y1 = _box(r["marker_box"])
            assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
        assert bool(r["panel_split"]) == (r["multi_panel"] == "1")
        if r["panel_split"]:
            assert w // 3 < int(r["panel_split"]) < 2 * w // 3
        shown[r["image"].rsplit("/", 1)[0]] |= bool(r["finding"])
    positive = [k for k in shown if k.endswith("_positive")]
    assert positive and all(shown[k] for k in positive)


def test_markers_are_bright_and_inversion_flips_polarity(made):
    out, _, _ = made
    rows = _truth(out)
    for r in rows:
        if r["marker"] == "1":
            a = np.asarray(Image.open(out / r["image"]).convert("L"))
            x0, y0, x1, y1 = _box(r["marker_box"])
            patch = a[y0 : y1 + 1, x0 : x1 + 1]
            assert (patch.min() < 60) if r["inverted"] == "1" else (patch.max() > 200)
    assert any(r["marker"] == "1" for r in rows)


def test_patients_split_disjointly_and_every_part_label_in_both(made):
    out, _, _ = made
    seen = defaultdict(set)
    patients = defaultdict(set)
    for split in ("train", "valid"):
        for line in _lines(out / "MURA-v1.1" / f"{split}_labeled_studies.csv"):
            m = STUDY_RE.fullmatch(line)
            seen[split].add((m.group(2), m.group(6)))
            patients[split].add(m.group(3))
    assert not patients["train"] & patients["valid"]
    every = {(p, lab) for p in synth.PARTS for lab in "01"}
    assert seen["train"] == every and seen["valid"] == every
    assert max(int(p) for p in patients["train"]) < min(int(p) for p in patients["valid"])


def test_plan_has_returning_patients_and_mura_like_mix():
    plans = synth.plan_studies(2000, 3)
    by_patient = defaultdict(list)
    for p in plans:
        by_patient[(p.split, p.patient)].append(p)
    assert any(len({p.part for p in v}) > 1 for v in by_patient.values())
    assert any(p.study > 1 for p in plans)
    valid = sum(p.split == "valid" for p in plans) / len(plans)
    assert 0.08 < valid < 0.18
    hand = [p.abnormal for p in plans if p.part == "XR_HAND"]
    assert 0.2 < np.mean(hand) < 0.36  # MURA: 28% of hand images are abnormal
    wrist = sum(p.part == "XR_WRIST" for p in plans) / len(plans)
    assert 0.2 < wrist < 0.32  # MURA: 26% of images


def test_progress_reports_every_image(made):
    _, summary, calls = made
    assert calls[-1] == (summary.images, summary.images)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_same_seed_gives_identical_bytes_whatever_the_workers(made, tmp_path):
    out, _, _ = made
    again = synth.generate(tmp_path / "again", studies=STUDIES, seed=SEED, workers=1)
    assert _files(again.root) == _files(out)


def test_other_seed_differs_and_rerun_replaces_the_set(tmp_path):
    a = synth.generate(tmp_path / "a", studies=20, seed=1, workers=1)
    b = synth.generate(tmp_path / "b", studies=20, seed=2, workers=1)
    assert _files(a.root) != _files(b.root)
    synth.generate(tmp_path / "a", studies=20, seed=2, workers=1)  # over an old synthetic set
    assert _files(a.root) == _files(b.root)


def test_findings_limits_the_kinds_abnormal_studies_show(tmp_path):
    synth.generate(tmp_path, studies=40, seed=3, workers=1, findings=("cast", "hardware"))
    with open(tmp_path / "synth_truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shown = {r["finding"] for r in rows if r["finding"]}
    assert shown == {"cast", "hardware"}
    assert all(r["finding_box"] for r in rows if r["finding"])


@pytest.mark.parametrize(
    "kinds, message",
    [(("fracture", "tumour"), "unknown finding kind(s) tumour"), ((), "(none given)")]
    + [(("degenerative",), "forearm and humerus have no joint")],
)
def test_findings_it_cannot_draw_are_refused(tmp_path, kinds, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        synth.generate(tmp_path, studies=5, workers=1, findings=kinds)
    assert not (tmp_path / "MURA-v1.1").exists()  # refused before writing anything


def test_cli_findings_option_is_checked_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner

    from murakit.cli import app

    assert synth.parse_findings("all") == synth.FINDINGS
    assert synth.parse_findings("cast,hardware,cast") == ("cast", "hardware")
    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--findings", "cast,tumour"])
    assert result.exit_code == 2
    assert "unknownfindingkind(s)tumour" in "".join(result.output.split())  # rich may wrap
    assert not (tmp_path / "MURA-v1.1").exists()


def test_refuses_to_overwrite_a_tree_it_did_not_write(tmp_path):
    (tmp_path / "MURA-v1.1" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        synth.generate(tmp_path, studies=5, workers=1)


def test_normal_twin_differs_only_at_the_finding():
    """No label leak: the same study rendered normal is identical except around the finding."""
    checked = 0
    for plan in synth.plan_studies(40, 5):
        if not plan.abnormal:
            continue
        sick = synth.render_study(plan, 5, 0.5)
        well = synth.render_study(replace(plan, abnormal=False), 5, 0.5)
        for (a, ra), (b, rb) in zip(sick, well, strict=True):
            assert a.shape == b.shape
            assert {
                k: v for k, v in ra.items() if "finding" not in k and k not in ("label", "image")
            } == {k: v for k, v in rb.items() if "finding" not in k and k not in ("label", "image")}
            diff = np.argwhere(
                (a.astype(int) - b.astype(int)).reshape(a.shape[0], a.shape[1], -1).any(axis=2)
            )
            if not ra["finding"]:
                assert diff.size == 0
            elif ra["finding"] in ("lytic_lesion", "hardware", "degenerative"):
                x0, y0, x1, y1 = _box(ra["finding_box"])
                assert diff.size > 0
                assert diff[:, 1].min() >= x0 - 4 and diff[:, 1].max() <= x1 + 4
                assert diff[:, 0].min() >= y0 - 4 and diff[:, 0].max() <= y1 + 4
                checked += 1
    assert checked >= 3
