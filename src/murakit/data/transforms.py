"""The reference augmentation: pad to square, resize, rotate +-30 degrees, flip, 3 channels.

The pipeline is split in two so a cache can store its expensive, deterministic first half:

    square_resize(gray, size)  ->  cached square (size x size uint8)
    draw_augmentation(rng)     ->  (angle, flip) per image, drawn in the loader
    augment_batch(squares, params) on the training device: rotate, flip, 3 channels, normalise

Rotation is the costliest per-image step once decoding is cached (PIL's bilinear rotate of
a 224 px square costs more than reading it), so the loader only draws the parameters and
ships uint8 squares (12x fewer bytes than normalised 3-channel floats); the training
device applies them to the whole batch with one ``grid_sample``.

Randomness comes only from the ``numpy.random.Generator`` the caller passes; the training
code derives it from (seed, epoch, index), so runs are reproducible and resumable and do
not depend on worker processes or global random state.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
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


def draw_augmentation(
    rng: np.random.Generator, rotation: float = 30.0, hflip: bool = True
) -> tuple[float, bool]:
    """(angle in degrees within +-``rotation``, flip with p=0.5). Both numbers are always
    drawn, in this order, so switching one augmentation off does not change the other."""
    angle = float(rng.uniform(-rotation, rotation))
    flip = bool(rng.random() < 0.5)
    return angle, flip and hflip


def augment_batch(squares: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """(N, S, S) uint8 squares and (N, 2) [angle, flip] -> (N, 3, S, S) normalised float.

    Rotates counterclockwise by angle degrees about the centre (bilinear, black fill, same
    size; PIL's ``Image.rotate`` convention), then mirrors left-right where flip is 1. Runs
    on whatever device the tensors are on.
    """
    return normalize(rotate_flip(squares.unsqueeze(1).float(), params))


def augment_batch_with_masks(
    squares: torch.Tensor, params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2, S, S) uint8 [image, box mask] -> (normalised (N, 3, S, S) images, (N, 1, S, S)
    masks in [0, 1]): the mask goes through exactly the image's rotation and flip."""
    x = rotate_flip(squares.float(), params)
    return normalize(x[:, :1]), x[:, 1:] / 255.0


def rotate_flip(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) float rotated and mirrored per image as :func:`augment_batch` says."""
    radians = torch.deg2rad(params[:, 0].to(x.dtype))
    cos, sin = torch.cos(radians), torch.sin(radians)
    mirror = 1.0 - 2.0 * (params[:, 1] > 0.5).to(x.dtype)  # -1 flips: x_out -> -x_out
    zero = torch.zeros_like(cos)
    # affine_grid maps each output pixel's normalised (x, y), y down, to where it samples
    # the input: the inverse rotation, composed with the mirror applied to the output.
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, zero], dim=1),
            torch.stack([sin * mirror, cos, zero], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(
    square: np.ndarray,
    rng: np.random.Generator,
    rotation: float = 30.0,
    hflip: bool = True,
) -> np.ndarray:
    """One square through the training augmentation, as uint8 (for previews and tests):
    exactly what :func:`augment_batch` feeds the network, before normalisation."""
    angle, flip = draw_augmentation(rng, rotation, hflip)
    params = torch.tensor([[angle, float(flip)]])
    x = augment_batch(torch.from_numpy(np.array(square, dtype=np.uint8))[None], params)
    gray = (x[0, 0] + _SHIFT[0]) / _SCALE[0]
    return gray.round().clamp(0, 255).to(torch.uint8).numpy()


def normalize(gray: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) grey values in 0..255 -> (N, 3, S, S) ImageNet-normalised."""
    scale, shift = _SCALE.to(gray.device), _SHIFT.to(gray.device)
    return gray * scale - shift


def to_tensor(square: np.ndarray) -> torch.Tensor:
    """(S, S) uint8 -> (3, S, S) float32: gray repeated to 3 channels, ImageNet-normalised."""
    x = torch.from_numpy(np.asarray(square, dtype=np.uint8).astype(np.float32))  # own copy
    return normalize(x[None, None])[0]


class TrainTransform:
    """Training pipeline in the loader: square_resize -> draw the augmentation. Returns
    (uint8 square tensor, [angle, flip] tensor); :func:`augment_batch` finishes the job on
    the training device."""

    def __init__(self, size: int = 224, rotation: float = 30.0, hflip: bool = True) -> None:
        self.size = size
        self.rotation = rotation
        self.hflip = hflip

    def __call__(
        self, img: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``img`` is (H, W), or (2, H, W) with a box mask beside the image (box guidance)."""
        if img.ndim == 3:
            square = np.stack([square_resize(channel, self.size) for channel in img])
            return self.from_square(square, rng)
        return self.from_square(square_resize(img, self.size), rng)

    def from_square(
        self, square: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For a cached square already ``size`` x ``size``: skips square_resize."""
        _check_square(square[0] if square.ndim == 3 else square, self.size)
        angle, flip = draw_augmentation(rng, self.rotation, self.hflip)
        tensor = torch.from_numpy(np.array(square, dtype=np.uint8))  # own, writable copy
        return tensor, torch.tensor([angle, float(flip)], dtype=torch.float32)

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
