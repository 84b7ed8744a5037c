"""CAMs: exact (their mean is the logit), averaged over members, cropped back onto the original
image the right way round; overlays, the `cam` folder workflow and the augmentation figure."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from murakit.data.transforms import EvalTransform, original_box_in_square
from murakit.explain.cam import cam_paths
from murakit.infer.cam import (
    ALPHA,
    COLORMAP,
    cam_on_original,
    cam_peak,
    class_activation_map,
    compute_cam,
    heat_rgba,
    overlay,
    overlay_name,
    save_overlay,
)
from murakit.infer.preprocess import Preprocessor
from murakit.model.densenet import build_model


@pytest.fixture(scope="module")
def minis() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    models = [build_model("densenet-mini").eval() for _ in range(2)]
    for model, bias in zip(models, (0.8, -0.5), strict=True):
        with torch.no_grad():  # a fresh classifier's bias is 0; a trained one's is not
            model.class_layers.out.bias.fill_(bias)
    return models


PLAIN = Preprocessor(512)  # no fixes: the CAM sees the image as given


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


# ------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("size", [64, 96, 160])
def test_cam_mean_is_the_logit(minis, size):
    x = torch.randn(2, 3, size, size)
    cams, logits = class_activation_map(minis[0], x)
    with torch.inference_mode():
        expected = minis[0](x)[:, 0]
    assert cams.shape == (2, size // 32, size // 32)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cams.mean(dim=(1, 2)), expected, atol=1e-5, rtol=1e-5)


def test_cam_at_512_is_16x16_and_exact(minis):
    image = _image(300, 200)
    result = compute_cam(minis[:1], PLAIN, image, size=512)
    assert result.cam.shape == (16, 16) and result.cam.dtype == np.float32
    with torch.inference_mode():
        logit = float(minis[0](EvalTransform(512)(image)[None])[0, 0])
    assert result.logit == pytest.approx(logit, abs=1e-5)
    assert float(result.cam.mean()) == pytest.approx(logit, abs=1e-5)
    assert result.probability == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)


def test_ensemble_cam_is_the_mean_of_members(minis):
    image = _image(120, 180, seed=1)
    both = compute_cam(minis, PLAIN, image, size=128)
    one = [compute_cam([m], PLAIN, image, size=128) for m in minis]
    np.testing.assert_allclose(both.cam, (one[0].cam + one[1].cam) / 2, atol=1e-6)
    assert both.logit == pytest.approx((one[0].logit + one[1].logit) / 2, abs=1e-6)
    assert both.probability == pytest.approx((one[0].probability + one[1].probability) / 2)
    assert float(both.cam.mean()) == pytest.approx(both.logit, abs=1e-5)


def test_probability_is_taken_at_the_training_size(trained_run, synth_root):
    from murakit.data.imageio import read_grayscale
    from murakit.infer.model import Model

    loaded = Model.load(trained_run)
    path = next((synth_root / "valid").rglob("image1.png"))
    image = read_grayscale(path)
    cam = loaded.cam(path)  # map at 512, probability at config.size (96)
    result = cam.result
    np.testing.assert_array_equal(cam.image, image)  # the demo model has no fixes
    assert result.size == 512 and result.predict_size == loaded.config.size == 96
    with torch.inference_mode():
        logit = float(loaded.models[0](EvalTransform(96)(image)[None])[0, 0])
    assert result.probability == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)
    assert float(result.cam.mean()) == pytest.approx(result.logit, abs=1e-5)


# ------------------------------------------------------------------------------ geometry


def _hot_cell(row: int, col: int, n: int = 16) -> np.ndarray:
    cam = np.zeros((n, n), np.float32)
    cam[row, col] = 1.0
    return cam


@pytest.mark.parametrize("shape", [(300, 150), (150, 300), (333, 97), (200, 200)])
def test_cam_on_original_has_the_image_shape(shape):
    assert cam_on_original(np.ones((16, 16), np.float32), shape, 512).shape == shape


@pytest.mark.parametrize(
    "shape, cell",
    [
        ((300, 150), (4, 10)),  # portrait: padding left and right
        ((150, 300), (10, 4)),  # landscape: padding above and below
        ((150, 300), (5, 13)),
    ],
)
def test_hot_cell_lands_where_it_is_in_the_original(shape, cell):
    h, w = shape
    row, col = cell
    x0, y0, x1, y1 = original_box_in_square(h, w, 512)
    # the cell's centre in the 512 square, mapped into the original image
    cx, cy = (col + 0.5) * 32, (row + 0.5) * 32
    expect_x = (cx - x0) * w / (x1 - x0)
    expect_y = (cy - y0) * h / (y1 - y0)
    x, y = cam_peak(cam_on_original(_hot_cell(row, col), shape, 512))
    assert abs(x - expect_x) <= 2 and abs(y - expect_y) <= 2


def test_padding_is_cropped_away():
    # portrait 300x150 at 512: the image spans x 128..384, so columns 0-1 lie in the padding
    cam = _hot_cell(8, 1) * 10
    assert np.abs(cam_on_original(cam, (300, 150), 512)).max() == 0.0
    # and an image-wide gradient keeps its direction (no flip, no transpose)
    ramp = np.tile(np.arange(16, dtype=np.float32), (16, 1))
    out = cam_on_original(ramp, (150, 300), 512)
    assert (np.diff(out.mean(axis=0)) >= 0).all() and np.ptp(out.mean(axis=1)) < 1e-4


@pytest.mark.parametrize(
    "shape, corner",
    [((300, 150), (20, 230)), ((150, 300), (240, 20)), ((300, 150), (100, 30))],
)
def test_compute_cam_points_where_the_image_changed(minis, shape, corner):
    """Whole pipeline, no training: a bright patch on a black image changes the CAM around the
    patch (conv features are local), so |CAM(image) - CAM(blank)| must peak near it, in the
    original image's coordinates; a flipped, transposed or badly cropped map would not."""
    x0, y0 = corner
    image = np.zeros(shape, np.uint8)
    image[y0 : y0 + 24, x0 : x0 + 24] = 250
    change = (
        compute_cam(minis, PLAIN, image).cam - compute_cam(minis, PLAIN, np.zeros_like(image)).cam
    )
    x, y = cam_peak(cam_on_original(np.abs(change), shape, 512))
    cell = 32 * max(shape) / 512  # one CAM cell, in original pixels
    assert np.hypot(x - (x0 + 12), y - (y0 + 12)) <= 2 * cell


# ------------------------------------------------------------------------------ drawing


def test_overlay_colours_only_the_evidence_for_abnormal(tmp_path):
    image = np.full((120, 80), 100, np.uint8)
    heat = np.full((120, 80), -1.0, np.float32)
    heat[20:40, 50:70] = 3.0
    picture = overlay(image, heat, 0.873, "image1.png")
    assert picture.mode == "RGB" and picture.width == 80 and picture.height > 120
    rgb = np.asarray(picture)
    assert (rgb[100, 10] == 100).all()  # CAM <= 0: the radiograph untouched
    r, g, b = (int(v) for v in rgb[30, 60])
    assert r > b + 40 and g > b + 40  # the peak is yellow (viridis's top), not red
    top = np.array(colormaps[COLORMAP](1.0)[:3]) * 255
    expected = 100 * (1 - ALPHA) + top * ALPHA  # full heat: the top colour at opacity ALPHA
    assert np.abs(rgb[30, 60] - expected).max() <= 1
    layer = np.asarray(heat_rgba(heat))  # the same heat alone, for the web viewer
    assert layer.shape == (120, 80, 4) and layer[100, 10, 3] == 0 and layer[30, 60, 3] == 255
    assert np.abs(layer[30, 60, :3] - top).max() <= 1
    path = save_overlay(tmp_path / "o.png", picture)
    with Image.open(path) as im:
        assert im.size == picture.size and im.format == "PNG"


def test_heat_colour_map_is_perceptually_ordered():
    """More evidence is always lighter: the colour map's lightness rises monotonically (jet's
    falls and rises again, drawing edges the model never saw)."""
    values = colormaps[COLORMAP](np.linspace(0, 1, 64))[:, :3]
    linear = np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) > 0)
    assert COLORMAP != "jet"


# ------------------------------------------------------------------------------ folders


def test_overlay_names_are_safe_and_unique():
    taken: set[str] = set()
    names = [
        overlay_name("patient 1/study:2", Path("x/image 1.png"), taken),
        overlay_name("patient 1/study:2", Path("y/image 1.png"), taken),  # same name, other folder
        overlay_name("", Path("loose.jpg"), taken),
        overlay_name("s", Path("???.png"), taken),
    ]
    assert names == [
        "patient_1_study_2__image_1.png",
        "patient_1_study_2__image_1-2.png",
        "loose.png",
        "s___.png",
    ]


def test_cam_paths_on_a_study_folder(trained_run, synth_root, tmp_path):
    source = next(d for d in sorted((synth_root / "valid").glob("*/*/*")) if d.is_dir())
    study = tmp_path / "in" / source.relative_to(synth_root / "valid")
    shutil.copytree(source, study)
    (study / "image9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (study / "._image1.png").write_bytes(b"\x00\x05\x16\x07 appledouble")
    (study / "notes.txt").write_text("not an image")
    n_good = len(list(source.glob("image*.png")))

    ticks = []
    rows = cam_paths(trained_run, [study], tmp_path / "out", size=128, progress=ticks.append)

    key = "/".join(study.parts[-3:])  # XR_PART/patientN/studyK_label
    assert [r["study"] for r in rows] == [key] * (n_good + 1) and sum(ticks) == n_good + 1
    bad = [r for r in rows if r["error"]]
    assert [r["image"] for r in bad] == [str(study / "image9.png")]
    good = [r for r in rows if not r["error"]]
    assert len(good) == n_good
    for r in good:
        assert r["cam_png"].startswith(key.replace("/", "_") + "__image")
        assert 0.0 <= r["probability"] <= 1.0
        with Image.open(tmp_path / "out" / r["cam_png"]) as im:
            assert im.mode == "RGB"
    with open(tmp_path / "out" / "cams.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["image", "study", "probability", "cam_png", "error"]
    assert [t["image"] for t in table] == [r["image"] for r in rows]


# ------------------------------------------------------------------------------ augmentation


def test_augment_preview_writes_n_plus_one_panels(synth_root, tmp_path):
    from murakit.report.augment_preview import PANEL_PX, augment_preview

    image = next((synth_root / "train").rglob("image1.png"))
    out = augment_preview(image, n=3, size=96, out=tmp_path / "aug.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width == 4 * PANEL_PX
    again = augment_preview(image, n=3, size=96, out=tmp_path / "again.png")
    assert again.read_bytes() == out.read_bytes()  # seeded: the same figure every time


# ------------------------------------------------------------------------------ orientation


def _toy(rng: np.random.Generator, abnormal: bool) -> tuple[np.ndarray, tuple]:
    """A noisy field of random aspect ratio with a disc: bright (abnormal) or dim (normal)."""
    h, w = (int(v) for v in rng.integers(48, 128, 2))
    image = rng.normal(70, 12, (h, w))
    r = rng.uniform(4, 7) * max(h, w) / 64
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    yy, xx = np.mgrid[:h, :w]
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 235 if abnormal else 110
    return image.clip(0, 255).astype(np.uint8), (cx - r, cy - r, cx + r, cy + r)


@pytest.mark.slow
def test_trained_cam_finds_a_bright_disc():
    """A mini DenseNet trained (at 64 px) to tell a bright disc from a dim one: its CAM peak,
    at 128 px and cropped onto images of every aspect ratio, lands on the disc."""
    from murakit.data.transforms import square_resize, to_tensor

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("densenet-mini", dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(60):
        labels = rng.random(16) < 0.5
        x = torch.stack([to_tensor(square_resize(_toy(rng, a)[0], 64)) for a in labels])
        target = torch.tensor(labels, dtype=torch.float32)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hits, chance = [], []
    for _ in range(40):
        image, (bx0, by0, bx1, by1) = _toy(rng, True)
        x, y = cam_peak(
            cam_on_original(compute_cam([model], PLAIN, image, 128).cam, image.shape, 128)
        )
        hits.append(bx0 - 1 <= x <= bx1 and by0 - 1 <= y <= by1)
        chance.append((bx1 - bx0) * (by1 - by0) / image.size)
    assert np.mean(hits) > 4 * np.mean(chance)
