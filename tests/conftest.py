"""Shared fixtures: small synthetic MURA datasets written to disk once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_MURA = Path(__file__).resolve().parents[2] / "shared" / "MURA-v1.1"
SHARED_FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "FracAtlas"


@pytest.fixture(scope="session")
def shared_mura() -> Path:
    """The official MURA CSVs beside the checkout; absent on a user's fresh clone."""
    if not (SHARED_MURA / "train_image_paths.csv").exists():
        pytest.skip(f"official MURA CSVs not found at {SHARED_MURA}")
    return SHARED_MURA


@pytest.fixture(scope="session")
def shared_fracatlas() -> Path:
    """FracAtlas (Abedeen et al. 2023, CC BY 4.0) beside the checkout; .ci/run requires it."""
    if not (SHARED_FRACATLAS / "dataset.csv").exists():
        pytest.skip(f"FracAtlas not found at {SHARED_FRACATLAS}")
    return SHARED_FRACATLAS


@pytest.fixture(scope="session")
def fracatlas_release(shared_fracatlas, tmp_path_factory) -> Path:
    """A small FracAtlas release in the release's own layout: every image the import rules
    touch (the folder/CSV disagreement, a truncated JPEG, pixel-identical pairs with equal and
    opposite labels, several boxes on one image) plus a stratified handful of the rest."""
    import csv
    import json
    import shutil

    src = shared_fracatlas
    with open(src / "dataset.csv", newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    wanted = {
        "IMG0003298.jpg",  # in Fractured/, fractured=0 in dataset.csv, one fracture box
        "IMG0004142.jpg",  # ends early (no JPEG end marker)
        "IMG0002886.jpg",  # identical pixels to IMG0004243.jpg, opposite labels
        "IMG0004243.jpg",
        "IMG0002626.jpg",  # identical pixels to IMG0004081.jpg, same label
        "IMG0004081.jpg",
    }
    coco = json.loads((src / "Annotations/COCO JSON/COCO_fracture_masks.json").read_text())
    box_counts: dict[int, int] = {}
    for ann in coco["annotations"]:
        box_counts[ann["image_id"]] = box_counts.get(ann["image_id"], 0) + 1
    several = sorted(i["file_name"] for i in coco["images"] if box_counts.get(i["id"], 0) >= 3)
    wanted.update(several[:2])
    for key in ("hand", "leg", "hip", "shoulder", "mixed"):
        for fractured in ("0", "1"):
            picked = [r["image_id"] for r in rows if r[key] == "1" and r["fractured"] == fractured]
            wanted.update(picked[:6])
    out = tmp_path_factory.mktemp("fracatlas") / "FracAtlas"
    for folder in ("Fractured", "Non_fractured"):
        (out / "images" / folder).mkdir(parents=True)
        for path in (src / "images" / folder).iterdir():
            if path.name in wanted:
                shutil.copyfile(path, out / "images" / folder / path.name)
    with open(out / "dataset.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(r for r in rows if r["image_id"] in wanted)
    kept_ids = {i["id"] for i in coco["images"] if i["file_name"] in wanted}
    coco["images"] = [i for i in coco["images"] if i["id"] in kept_ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept_ids]
    (out / "Annotations/COCO JSON").mkdir(parents=True)
    (out / "Annotations/COCO JSON/COCO_fracture_masks.json").write_text(json.dumps(coco))
    return out


@pytest.fixture(scope="session")
def fracatlas_data(fracatlas_release, tmp_path_factory) -> Path:
    """The small release above imported by `murakit import fracatlas` (valid fraction 0.3)."""
    from murakit.data.importers import import_fracatlas

    out = tmp_path_factory.mktemp("fa") / "fa"
    import_fracatlas(fracatlas_release, out, valid_fraction=0.3, seed=0)
    return out


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic dataset (OUT folder holding MURA-v1.1/ and synth_truth.csv)."""
    from murakit.synth.generator import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, studies=80, seed=3, difficulty=0.3, workers=2)
    return out


@pytest.fixture(scope="session")
def synth_root(synth_data) -> Path:
    return synth_data / "MURA-v1.1"


@pytest.fixture(scope="session")
def trained_run(synth_root, tmp_path_factory) -> Path:
    """A densenet-mini run trained briefly on `synth_root` (shared by evaluation, CAM,
    prediction and serving tests, which need a real checkpoint, not a good one)."""
    from murakit.config import make_config
    from murakit.train.loop import train_run

    out = tmp_path_factory.mktemp("runs") / "mini"
    config = make_config("demo", data=str(synth_root), epochs=2, size=96, workers=0)
    train_run(config, out)
    return out
