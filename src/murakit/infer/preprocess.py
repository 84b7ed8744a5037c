"""How a model sees a radiograph: read -> data-quality fixes -> square -> normalise.

One :class:`Preprocessor` per model, built from its training config, is the only place this
chain is assembled: training-time validation, ``evaluate``, ``predict``, the web app, CAMs,
localization and the ONNX sidecar all take it from the model, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from murakit.data.imageio import MAX_PIXELS, as_gray_uint8, read_grayscale, read_grayscale_bytes
from murakit.data.index import ImageRecord
from murakit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, square_resize

PANELS = ("keep", "largest")


@dataclass(frozen=True)
class Preprocessor:
    """The input pipeline of one model (picklable, so DataLoader workers can run it)."""

    size: int
    fix_inverted: bool = False
    mask_markers: bool = False
    panels: str = "keep"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.panels not in PANELS:
            raise ValueError(f"panels must be one of {PANELS}, got {self.panels!r}")

    @classmethod
    def from_config(cls, config: Any) -> Preprocessor:
        """The pipeline a run was trained with (a TrainConfig or anything with its fields)."""
        return cls(
            int(config.size), bool(config.fix_inverted), bool(config.mask_markers), config.panels
        )

    @property
    def has_fixes(self) -> bool:
        return self.fix_inverted or self.mask_markers or self.panels != "keep"

    # -------------------------------------------------------------- steps, each on its own

    def fix(self, image: np.ndarray) -> np.ndarray:
        """The data-quality fixes the model was trained with, on a 2-D grayscale array (uint8,
        or wider integers/floats as read from a file: narrowed to 8 bits first)."""
        image = as_gray_uint8(image)
        if not self.has_fixes:
            return image
        from murakit.data.quality import apply_fixes

        return apply_fixes(
            image, invert=self.fix_inverted, mask_markers=self.mask_markers, panels=self.panels
        )

    def square(self, image: np.ndarray, size: int | None = None) -> np.ndarray:
        """Pad to a square and resize to ``size`` (default: the model's) px, uint8."""
        return square_resize(image, size or self.size)

    def tensor(self, image: np.ndarray, size: int | None = None) -> torch.Tensor:
        """A fixed image as the network input: (3, S, S) float32, ImageNet-normalised."""
        return EvalTransform(size or self.size)(image)

    # -------------------------------------------------------------- whole chains

    def read(self, path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """A file as the model sees it before squaring: gray uint8 with the fixes applied."""
        return self.fix(read_grayscale(path, max_pixels=max_pixels))

    def decode(self, data: bytes, name: str, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """Same as :meth:`read` for file bytes in memory (an upload)."""
        return self.fix(read_grayscale_bytes(data, name, max_pixels=max_pixels))

    def load(self, record: ImageRecord) -> np.ndarray:
        """:meth:`read` for a dataset record (the loader datasets call in their workers)."""
        return self.read(record.path)

    @property
    def transform(self) -> EvalTransform:
        """square -> normalise at the model's size, for datasets."""
        return EvalTransform(self.size)

    # -------------------------------------------------------------- describing

    def fixes(self) -> dict[str, Any]:
        return {
            "fix_inverted": self.fix_inverted,
            "mask_markers": self.mask_markers,
            "panels": self.panels,
        }

    def differences(self, other: Preprocessor) -> list[str]:
        """Human-readable differences ("size 224 vs 320"), empty when they agree."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{k} {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]

    def spec(self) -> dict[str, Any]:
        """The input contract in words and numbers (written beside an exported ONNX graph)."""
        size = self.size
        steps = [
            "decode to 8-bit grayscale (H, W) uint8: RGB by ITU-R 601 luma; 16-bit gray narrowed "
            "to 8 bits by its min-max range (or exactly, if it is widened 8-bit); DICOM through "
            "the modality LUT, then its VOI LUT/window (else min-max), MONOCHROME1 inverted",
        ]
        if self.has_fixes:
            steps.append(
                f"apply murakit's data-quality fixes {self.fixes()} "
                "(murakit.data.quality.apply_fixes)"
            )
        steps += [
            f"scale the longer side to {size} px with bilinear filtering (PIL Image.BILINEAR, "
            "antialiased when shrinking), the shorter side to round(side * scale), at least 1",
            f"zero-pad (black) to {size} x {size}, the image centred: offset "
            f"(({size} - new_w) // 2, ({size} - new_h) // 2)",
            "repeat the gray channel to 3 channels (R = G = B)",
            "divide by 255",
            f"subtract mean {list(self.mean)} and divide by std {list(self.std)}, "
            "per channel (ImageNet)",
            f"stack as float32 NCHW: (N, 3, {size}, {size})",
        ]
        return {
            "size": size,
            "steps": steps,
            "mean": list(self.mean),
            "std": list(self.std),
            "fixes": self.fixes(),
        }
