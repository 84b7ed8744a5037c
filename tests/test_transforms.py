"""The reference augmentation: geometry, determinism under a given rng, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from murakit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    augment,
    augment_batch,
    original_box_in_square,
    pad_to_square,
    square_resize,
    to_tensor,
)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (h, w), dtype=np.uint8)


def test_pad_to_square_centres_the_image_on_black():
    img = noise(3, 6)
    out = pad_to_square(img)
    assert out.shape == (6, 6) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1:4], img)
    assert not out[0].any() and not out[4:].any()

    tall = noise(8, 4).astype(np.uint16)
    out = pad_to_square(tall)
    assert out.shape == (8, 8) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[:, 2:6], tall)
    assert not out[:, :2].any() and not out[:, 6:].any()

    square = noise(5, 5)
    np.testing.assert_array_equal(pad_to_square(square), square)


@pytest.mark.parametrize(
    ("h", "w", "box"),
    [
        (512, 256, (56, 0, 168, 224)),  # portrait: bars left and right
        (300, 600, (0, 56, 224, 168)),  # landscape: bars above and below
        (400, 512, (0, 24, 224, 199)),  # MURA-like, odd margin
        (512, 512, (0, 0, 224, 224)),
    ],
)
def test_original_box_matches_where_square_resize_puts_the_image(h, w, box):
    assert original_box_in_square(h, w, 224) == box
    out = square_resize(np.full((h, w), 255, np.uint8), 224)
    x0, y0, x1, y1 = box
    assert out.shape == (224, 224) and out.dtype == np.uint8
    assert np.all(out[y0:y1, x0:x1] == 255)
    outside = out.copy()
    outside[y0:y1, x0:x1] = 0
    assert not outside.any()


def test_square_resize_shapes():
    assert square_resize(noise(512, 400), 224).shape == (224, 224)
    assert square_resize(noise(100, 37), 320).shape == (320, 320)  # upscaling too
    assert square_resize(noise(1, 300), 224).shape == (224, 224)  # degenerate strip
    same = noise(224, 224)
    np.testing.assert_array_equal(square_resize(same, 224), same)
    with pytest.raises(ValueError, match="2-D"):
        square_resize(np.zeros((10, 10, 3), np.uint8), 224)


def test_augment_is_determined_by_the_rng_seed():
    square = square_resize(noise(512, 400), 224)
    a = augment(square, np.random.default_rng(7))
    b = augment(square, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    others = [augment(square, np.random.default_rng(seed)) for seed in range(8, 12)]
    assert all(not np.array_equal(a, other) for other in others)


def test_hflip_mirrors_and_happens_about_half_the_time():
    square = noise(32, 32)
    flipped = 0
    for seed in range(200):
        out = augment(square, np.random.default_rng(seed), rotation=0)
        if np.array_equal(out, square[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, square)
    assert 70 < flipped < 130
    for seed in range(20):
        out = augment(square, np.random.default_rng(seed), rotation=0, hflip=False)
        np.testing.assert_array_equal(out, square)


def test_rotation_keeps_size_turns_about_the_centre_and_fills_black():
    square = np.full((64, 64), 200, np.uint8)
    square[30:34, 30:34] = 255  # a bright dot at the centre
    for seed in range(10):
        out = augment(square, np.random.default_rng(seed), rotation=30, hflip=False)
        assert out.shape == (64, 64) and out.dtype == np.uint8
        assert out[31, 31] == 255 and out[32, 32] == 255  # the centre does not move
    angles = [np.random.default_rng(seed).uniform(-30, 30) for seed in range(10)]
    tilted = next(seed for seed, angle in enumerate(angles) if abs(angle) > 10)
    out = augment(square, np.random.default_rng(tilted), rotation=30, hflip=False)
    assert out[0, 0] == 0 and out[-1, -1] == 0  # corners rotated in from outside: black


def test_switching_flip_off_does_not_change_the_rotation():
    square = noise(48, 48)
    with_flip = augment(square, np.random.default_rng(3), rotation=30, hflip=True)
    without = augment(square, np.random.default_rng(3), rotation=30, hflip=False)
    assert np.array_equal(with_flip, without) or np.array_equal(with_flip, without[:, ::-1])


def test_to_tensor_shape_channels_and_normalisation():
    square = np.zeros((8, 8), np.uint8)
    square[0, 0] = 255
    square[0, 1] = 128
    x = to_tensor(square)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    gray = x * std + mean  # undo the normalisation: the same gray in every channel
    torch.testing.assert_close(gray[0], gray[1])
    torch.testing.assert_close(gray[1], gray[2])
    torch.testing.assert_close(gray[0], torch.from_numpy(square).float() / 255)
    torch.testing.assert_close(x[:, 1, 1], -mean.flatten() / std.flatten())
    torch.testing.assert_close(x[:, 0, 0], (1 - mean.flatten()) / std.flatten())


def test_train_transform_reproducible_and_from_square_agrees():
    img = noise(512, 400)
    t = TrainTransform(size=224)
    square, params = t(img, np.random.default_rng(1))
    assert square.shape == (224, 224) and square.dtype == torch.uint8
    assert params.shape == (2,) and -30 <= float(params[0]) <= 30 and float(params[1]) in (0, 1)
    again = t(img, np.random.default_rng(1))
    assert torch.equal(square, again[0]) and torch.equal(params, again[1])
    assert not torch.equal(params, t(img, np.random.default_rng(2))[1])
    cached = t.from_square(square_resize(img, 224), np.random.default_rng(1))
    assert torch.equal(square, cached[0]) and torch.equal(params, cached[1])
    with pytest.raises(ValueError, match="224x224"):
        t.from_square(square_resize(img, 320), np.random.default_rng(1))


def test_batched_device_augmentation_matches_pil_rotate_and_flip():
    """The reference rotates each image with PIL (bilinear, black fill); augment_batch does
    the whole batch with grid_sample and must give the same picture."""
    square = np.asarray(Image.fromarray(noise(96, 96)).filter(ImageFilter.GaussianBlur(2)))
    cases = [(0.0, 0.0), (0.0, 1.0), (20.0, 0.0), (-25.0, 1.0), (30.0, 1.0)]
    squares = torch.from_numpy(np.stack([square] * len(cases)))
    cases_t = torch.tensor(cases)
    x = augment_batch(squares, cases_t)
    assert x.shape == (len(cases), 3, 96, 96) and x.dtype == torch.float32
    gray = (
        x * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
        + torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    )
    white = Image.new("L", (96, 96), 255)
    for k, (angle, flip) in enumerate(cases):

        def pil(im, angle=angle, flip=flip):
            out = np.asarray(im.rotate(angle, Image.BILINEAR, fillcolor=0)).astype(np.float32)
            return out[:, ::-1] if flip else out

        ref, coverage = pil(Image.fromarray(square)), pil(white)
        ours = augment_batch(torch.full((1, 96, 96), 255, dtype=torch.uint8), cases_t[k : k + 1])
        ours = (ours[0, 0] * IMAGENET_STD[0] * 255 + IMAGENET_MEAN[0] * 255).numpy()
        # The 1-2 px rim along the rotated edge blends with the fill differently (PIL clamps
        # to the edge pixel, grid_sample blends with zeros); everywhere else must agree.
        inside = (coverage == 255) & (ours > 254.5)
        outside = (coverage == 0) & (ours < 0.5)
        for c in range(3):
            error = np.abs(gray[k, c].numpy() - ref)
            assert np.max(error[inside], initial=0) <= 1.01, (angle, flip)  # PIL rounds to uint8
            assert np.max(error[outside], initial=0) <= 0.01, (angle, flip)  # black fill
        assert inside.mean() > 0.6


def test_eval_transform_is_deterministic():
    img = noise(300, 512)
    t = EvalTransform(size=224)
    a = t(img)
    assert a.shape == (3, 224, 224)
    torch.testing.assert_close(a, t(img))
    torch.testing.assert_close(a, t.from_square(square_resize(img, 224)))
    torch.testing.assert_close(a, to_tensor(square_resize(img, 224)))


def test_box_masks_follow_the_image_through_rotation_and_flip():
    """Box guidance ships a mask channel beside the image: both get the same geometry."""
    from murakit.data.transforms import augment_batch_with_masks

    rng = np.random.default_rng(0)
    image = np.zeros((64, 64), dtype=np.uint8)
    image[10:20, 40:60] = 255  # a bright box: its mask is the same picture
    squares = torch.from_numpy(np.stack([image, image]))[None].repeat(4, 1, 1, 1)
    params = torch.tensor([[rng.uniform(-30, 30), float(i % 2)] for i in range(4)])
    images, masks = augment_batch_with_masks(squares, params)
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 1, 64, 64)
    expected = augment_batch(squares[:, 0], params)
    assert torch.allclose(images, expected)
    gray = (images[:, :1] - images[:, :1].amin((2, 3), keepdim=True)) / (
        images[:, :1].amax((2, 3), keepdim=True) - images[:, :1].amin((2, 3), keepdim=True)
    )
    assert torch.allclose(gray, masks, atol=1e-5)
