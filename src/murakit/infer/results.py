"""Typed prediction results: per image and per study, with the decision at the model's
threshold. What :meth:`murakit.Model.predict` returns and `murakit predict` prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from murakit.data.index import DatasetInfo

CLASSES = DatasetInfo.classes


@dataclass
class ImagePrediction:
    """One image: P(positive class), mean over the model's members."""

    path: str
    study: str
    probability: float
    label: str  # the class name: "abnormal" | "normal" for MURA, as the dataset names them
    cam_png: str | None = None


@dataclass
class StudyPrediction:
    """One study: its images' probabilities pooled (mean by default); ``label`` is the class
    called at the model's threshold."""

    study: str
    part: str | None
    n_images: int
    probability: float
    label: str
    images: list[ImagePrediction] = field(default_factory=list)


@dataclass
class PredictError:
    """A file that could not be read, with the reader's reason."""

    path: str
    error: str


@dataclass
class PredictionResult:
    """Every study predicted, the files that failed, and how the numbers were made."""

    studies: list[StudyPrediction]
    errors: list[PredictError]
    threshold: float
    aggregation: str
    backend: str
    model: str
    members: list[str]

    @property
    def images(self) -> list[ImagePrediction]:
        return [image for study in self.studies for image in study.images]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_of(probability: float, threshold: float, classes: Sequence[str] = CLASSES) -> str:
    """The name of the class called: ``classes[1]`` (positive) at or above the threshold."""
    return classes[1] if probability >= threshold else classes[0]
