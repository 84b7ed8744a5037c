"""The reference augmentation: pad to square, resize, rotate +-30 degrees, flip, 3 channels.

The pipeline is split in two so a cache can store its expensive, deterministic first half:

    square_resize(gray, size)  ->  cached square (size x size uint8)
    augment(square, rng)       ->  to_tensor(...)   (every epoch, cheap)

Randomness comes only from the ``numpy.random.Generator`` the caller passes; the training
code derives it from (seed, epoch, index), so runs are reproducible and resumable and do
not depend on worker processes or global random state.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# to_tensor computes x * _SCALE - _SHIFT, i.e. (x / 255 - mean) / std, in one pass.
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).view(3, 1, 1)
_SHIFT = torch.tensor([m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]).view(
    3, 1, 1
)


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Zero-pad (black) the shorter side so the image is square, the image centred."""
    h, w = img.shape[:2]
    side = max(h, w)
    if h == w:
        return img
    out = np.zeros((side, side, *img.shape[2:]), dtype=img.dtype)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = img
    return out


def original_box_in_square(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive: where an h x w image lies in its resized square.

    CAM code crops heat maps back to this box; :func:`square_resize` places the image
    exactly here, so the two always agree.
    """
    side = max(h, w)
    new_w = max(1, round(w * size / side))
    new_h = max(1, round(h * size / side))
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    return x0, y0, x0 + new_w, y0 + new_h


def square_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Pad to square, then resize to (size, size) uint8.

    Done as resize-then-pad, which is the same picture up to sub-pixel placement but
    resizes fewer pixels and puts the image on whole-pixel bounds (see
    :func:`original_box_in_square`). PIL's bilinear filter widens its support when
    shrinking, so downscaling is antialiased.
    """
    img = np.asarray(img, dtype=np.uint8)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {img.shape}")
    h, w = img.shape
    x0, y0, x1, y1 = original_box_in_square(h, w, size)
    if (x1 - x0, y1 - y0) != (w, h):
        img = np.asarray(Image.fromarray(img).resize((x1 - x0, y1 - y0), Image.BILINEAR))
    if (x1 - x0, y1 - y0) == (size, size):  # square already: nothing to pad
        return np.ascontiguousarray(img)
    out = np.zeros((size, size), dtype=np.uint8)
    out[y0:y1, x0:x1] = img
    return out


def augment(
    square: np.ndarray,
    rng: np.random.Generator,
    rotation: float = 30.0,
    hflip: bool = True,
) -> np.ndarray:
    """Rotate uniformly within +-``rotation`` degrees about the centre, then flip with p=0.5.

    Bilinear, black fill, same size. Both random numbers are always drawn, in this order,
    so switching one augmentation off does not change what the other draws.
    """
    angle = rng.uniform(-rotation, rotation)
    flip = rng.random() < 0.5
    out = square
    if angle:
        out = np.asarray(
            Image.fromarray(square).rotate(angle, resample=Image.BILINEAR, fillcolor=0)
        )
    if hflip and flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def to_tensor(square: np.ndarray) -> torch.Tensor:
    """(S, S) uint8 -> (3, S, S) float32: gray repeated to 3 channels, ImageNet-normalised."""
    x = torch.from_numpy(np.asarray(square, dtype=np.uint8).astype(np.float32))  # own copy
    return x.unsqueeze(0) * _SCALE - _SHIFT


class TrainTransform:
    """Training pipeline: square_resize -> augment -> to_tensor."""

    def __init__(self, size: int = 224, rotation: float = 30.0, hflip: bool = True) -> None:
        self.size = size
        self.rotation = rotation
        self.hflip = hflip

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self.from_square(square_resize(img, self.size), rng)

    def from_square(self, square: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """For a cached square already ``size`` x ``size``: skips square_resize."""
        _check_square(square, self.size)
        return to_tensor(augment(square, rng, self.rotation, self.hflip))

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, rotation={self.rotation}, hflip={self.hflip})"


class EvalTransform:
    """Evaluation pipeline, deterministic: square_resize -> to_tensor."""

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return to_tensor(square_resize(img, self.size))

    def from_square(self, square: np.ndarray) -> torch.Tensor:
        """For a cached square already ``size`` x ``size``."""
        _check_square(square, self.size)
        return to_tensor(square)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"


def _check_square(square: np.ndarray, size: int) -> None:
    if square.shape != (size, size):
        raise ValueError(
            f"expected a cached {size}x{size} square, got shape {square.shape} "
            "(was the cache built for another image size?)"
        )
