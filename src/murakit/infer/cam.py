"""Class activation maps (CAM), computed exactly as the reference does, drawn on the original image.

For an input at ``size`` pixels (512 by default, as in the reference: 16 x 16 maps from
DenseNet's stride of 32, sharper than 7 x 7 at 224), with F the last feature maps after the
final norm and ReLU and (w, b) the classifier's weight and bias::

    cam[i, j] = sum_c w_c * F_c[i, j] + b

Each cell is the logit of an image whose every cell looked like it, so the CAM is in logit
units and its spatial mean is *exactly* the network's logit at that size (global average
pooling is a mean, and the classifier is linear). Positive cells are evidence for
"abnormal", negative ones for "normal". An ensemble's CAM is the mean of its members' maps,
and its mean is the mean logit. (Before 2 December 2026 the bias was divided by the cell
count, which shifted every map by nearly -b and broke that identity for trained models;
untrained ones have b = 0.)

Models trained at 224 px (or 96 px in the tests) are run at 512 for the map, as in the
reference: the network is fully convolutional up to the global pooling. Their probability at
512 is not what predictions report, though, so the probability shown is the model's at its
*training* size (``config.size``), the number ``murakit predict`` prints for the same image.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from murakit.data.transforms import original_box_in_square
from murakit.fsutil import atomic_write_bytes
from murakit.model.densenet import classifier_params, logits_and_cams

if TYPE_CHECKING:
    from murakit.infer.preprocess import Preprocessor

CAM_SIZE = 512
ALPHA = 0.4  # opacity of the heat map where the evidence for "abnormal" is strongest
# Perceptually uniform (lightness rises steadily from dark purple through teal to yellow) and
# readable with colour-vision deficiencies; unlike "jet", no false edges at its cyan and
# yellow bands, and every level is a colour, never a gray that reads as bone.
COLORMAP = "viridis"
BOX_COLOR = (255, 0, 255)  # magenta: truth boxes stay distinct from every viridis colour


@dataclass
class CamResult:
    """One image's CAM.

    ``cam``: (h, w) float32 at the CAM input size, in logit units, ensemble mean.
    ``logit``: the ensemble's mean logit at the CAM size; equals ``cam.mean()``.
    ``probability``: mean over members of sigmoid(logit) at ``predict_size`` (the models'
    training size when known), i.e. what predictions report for this image.
    """

    cam: np.ndarray
    logit: float
    probability: float
    size: int
    predict_size: int


# ------------------------------------------------------------------------------ computing


def class_activation_map(
    model: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cams (N, h, w), logits (N,)) of a one-output network on a batch, in eval mode.

    ``cams[n].mean() == logits[n]`` up to float rounding, and ``logits`` equals ``model(x)``.
    """
    model.eval()  # BatchNorm on running statistics and no dropout: the CAM identity needs both
    weight, _ = classifier_params(model)
    if weight.shape[0] != 1:
        raise ValueError(f"CAM expects a one-output classifier, got {weight.shape[0]} outputs")
    with torch.inference_mode():
        logits, cams = logits_and_cams(model, x.to(weight.device, weight.dtype))
    return cams.float().cpu(), logits.float().cpu()


def _predict_logit(model: torch.nn.Module, x: torch.Tensor) -> float:
    weight, _ = classifier_params(model)
    model.eval()
    with torch.inference_mode():
        return float(model(x.to(weight.device, weight.dtype)).float()[0, 0])


def check_cam_size(size: int) -> None:
    if size < 32:
        raise ValueError(f"CAM size must be at least 32 px (DenseNet's stride), got {size}")


def compute_cam(
    models: Sequence[torch.nn.Module],
    preprocessor: Preprocessor,
    image: np.ndarray,
    size: int = CAM_SIZE,
    predict_size: int | None = None,
) -> CamResult:
    """The ensemble CAM of a fixed grayscale uint8 (H, W) image, input squared to ``size``.

    Each member's map has the same resolution (same input size), so they are averaged cell by
    cell. The probability is the members' mean at ``predict_size`` (default: ``size``).
    """
    if not models:
        raise ValueError("compute_cam needs at least one model")
    check_cam_size(size)
    predict_size = predict_size or size
    x = preprocessor.tensor(image, size).unsqueeze(0)
    x_predict = x if predict_size == size else preprocessor.tensor(image, predict_size)[None]
    cams, logits, probs = [], [], []
    for model in models:
        cam, logit = class_activation_map(model, x)
        cams.append(cam[0])
        logits.append(float(logit[0]))
        p_logit = logits[-1] if predict_size == size else _predict_logit(model, x_predict)
        probs.append(1.0 / (1.0 + np.exp(-p_logit)))
    cam = torch.stack(cams).mean(0).numpy().astype(np.float32)
    return CamResult(cam, float(np.mean(logits)), float(np.mean(probs)), size, predict_size)


@dataclass
class ImageCam:
    """A CAM laid over the image the model saw (after its quality fixes)."""

    image: np.ndarray  # (H, W) uint8, what the model saw
    result: CamResult
    positive: str = "abnormal"  # the positive class's name, for the caption

    @property
    def probability(self) -> float:
        return self.result.probability

    @cached_property
    def heat(self) -> np.ndarray:
        """(H, W) float32 map over the image, logit units; positive = evidence for positive.
        Computed once: the overlay and the heat layer both draw it."""
        return cam_on_original(self.result.cam, self.image.shape, self.result.size)

    def peak(self) -> tuple[int, int]:
        """(x, y) of the strongest evidence for the positive class."""
        return cam_peak(self.heat)

    def heat_layer(self) -> Image.Image:
        """The heat map alone as RGBA over the image (see :func:`heat_rgba`), for viewers
        that lay it over the radiograph with an opacity of their own."""
        return heat_rgba(self.heat)

    def overlay(
        self,
        caption: str = "",
        boxes: Sequence[tuple[float, float, float, float]] = (),
        probability: float | None = None,
    ) -> Image.Image:
        """The picture: radiograph, heat map, ``boxes`` in magenta, caption with P(positive)."""
        p = self.probability if probability is None else probability
        return overlay(self.image, self.heat, p, caption, self.positive, boxes)


# ------------------------------------------------------------------------------ geometry


def _resize(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map; align_corners=False treats each cell as the centre of
    the pixels it covers, which is where a conv feature sits."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def cam_on_original(cam: np.ndarray, image_shape: tuple[int, ...], size: int) -> np.ndarray:
    """The CAM as an (H, W) map over the original image, not the padded square.

    Upsampled to the ``size`` x ``size`` square the network saw, cropped to where the image lies
    in it (:func:`original_box_in_square`, the same placement ``square_resize`` uses), then
    resized to H x W. The padding's part of the map is dropped rather than squeezed in.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    x0, y0, x1, y1 = original_box_in_square(h, w, size)
    square = _resize(cam, size, size)
    return _resize(square[y0:y1, x0:x1], h, w)


def cam_peak(cam_original: np.ndarray) -> tuple[int, int]:
    """(x, y) of the hottest pixel: where the model sees the most evidence for abnormal."""
    y, x = np.unravel_index(int(np.argmax(cam_original)), cam_original.shape)
    return int(x), int(y)


# ------------------------------------------------------------------------------ drawing


def _heat_colors(heat: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps[COLORMAP](heat)[..., :3].astype(np.float32)


def _heat_unit(cam_original: np.ndarray) -> np.ndarray:
    """The CAM divided by its maximum (when positive), clipped to [0, 1]: 1 at the strongest
    evidence for the positive class, 0 where there is none (CAM <= 0)."""
    top = float(cam_original.max())
    if top <= 0:
        return np.zeros_like(cam_original, dtype=np.float32)
    return np.clip(cam_original / top, 0.0, 1.0).astype(np.float32)


def heat_rgba(cam_original: np.ndarray) -> Image.Image:
    """The heat map as an RGBA picture: ``COLORMAP`` colours, alpha sqrt(heat) (0 where the
    CAM is <= 0). Laid over the radiograph at opacity ``ALPHA`` it is :func:`overlay`."""
    heat = _heat_unit(np.asarray(cam_original, dtype=np.float32))
    rgba = np.concatenate([_heat_colors(heat), np.sqrt(heat)[..., None]], axis=-1)
    return Image.fromarray(np.rint(rgba * 255).astype(np.uint8), "RGBA")


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def overlay(
    image: np.ndarray,
    cam_original: np.ndarray,
    probability: float,
    caption: str = "",
    positive: str = "abnormal",
    boxes: Sequence[tuple[float, float, float, float]] = (),
) -> Image.Image:
    """An RGB picture: the radiograph in gray with the CAM's positive part as a heat map, the
    ground-truth ``boxes`` (e.g. fracture boxes) in magenta (no viridis colour), and a caption bar
    "P(abnormal) = 0.87  <caption>" underneath (``positive`` names the class).

    The heat is the CAM divided by its maximum (when positive), so the strongest evidence for
    abnormal takes the top colour of ``COLORMAP`` (viridis: yellow; weaker evidence teal, then
    purple) and cells with none (CAM <= 0) leave the radiograph untouched; opacity grows with
    the heat up to ``ALPHA``, so faint evidence does not hide the bone beneath.
    """
    gray = np.asarray(image, dtype=np.float32) / 255.0
    cam_original = np.asarray(cam_original, dtype=np.float32)
    if gray.shape != cam_original.shape:
        raise ValueError(f"image {gray.shape} and CAM {cam_original.shape} differ in shape")
    heat = _heat_unit(cam_original)
    alpha = (ALPHA * np.sqrt(heat))[..., None]
    rgb = gray[..., None] * (1 - alpha) + _heat_colors(heat) * alpha
    picture = Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for box in boxes:
        draw.rectangle(box, outline=BOX_COLOR, width=max(1, round(max(gray.shape) / 250)))
    return _with_caption(picture, f"P({positive}) = {probability:.2f}", caption)


def _with_caption(picture: Image.Image, head: str, tail: str) -> Image.Image:
    w, h = picture.size
    bar = max(16, round(min(w, 1024) / 20))
    font = _font(max(9, round(bar * 0.62)))
    canvas = Image.new("RGB", (w, h + bar), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    pad = max(3, bar // 4)
    text = f"{head}   {tail}" if tail else head
    while tail and draw.textlength(text, font=font) > w - 2 * pad:
        tail = tail[1:]  # a long path loses its start: the file name matters most
        text = f"{head}   ...{tail}"
    draw.text((pad, h + bar / 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    return canvas


def overlay_name(study: str, image: Path, taken: set[str]) -> str:
    """A file name for an image's overlay, ``<study>__<image stem>.png``, safe on every file
    system and unique within ``taken`` (two studies may hold images of the same name)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem) or "image"
    base = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', study)}__{stem}" if study else stem
    name, k = f"{base}.png", 2
    while name in taken:
        name, k = f"{base}-{k}.png", k + 1
    taken.add(name)
    return name


def save_overlay(path: Path, picture: Image.Image) -> Path:
    """Write the overlay as a PNG atomically (a crash never leaves half a file)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
