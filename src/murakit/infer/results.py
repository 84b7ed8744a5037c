"""Typed prediction results: per image and per study, with the decision at the model's
threshold. What :meth:`murakit.Model.predict` returns and `murakit predict` prints.

**The uncertain band.** A probability within ``UNCERTAIN_MARGIN`` (0.1) of the operating
threshold is called ``"uncertain"`` rather than positive or negative: with the threshold at
0.5, a study is uncertain when 0.4 < p < 0.6, positive when p >= 0.6 and negative when
p <= 0.4 (|p - threshold| < 0.1). ``label`` keeps the hard call at the threshold (the class
name), ``decision`` adds the band. The margin is a fixed convention, the same for every
model, not a calibrated interval: it marks the calls that a small change in the image or in
the members would flip. The band is clipped to [0, 1]. The web app, `murakit predict` (json
and csv) and the Python API all take it from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from murakit.data.index import DatasetInfo

CLASSES = DatasetInfo.classes
UNCERTAIN_MARGIN = 0.1  # half-width of the uncertain band around the threshold, in probability
DECISIONS = ("negative", "uncertain", "positive")
Decision = Literal["negative", "uncertain", "positive"]


@dataclass
class ImagePrediction:
    """One image: P(positive class), mean over the model's members."""

    path: str
    study: str
    probability: float
    label: str  # the class name: "abnormal" | "normal" for MURA, as the dataset names them
    cam_png: str | None = None
    decision: str = ""  # positive | negative | uncertain (set by PredictionResult)


@dataclass
class StudyPrediction:
    """One study: its images' probabilities pooled (mean by default); ``label`` is the class
    called at the model's threshold, ``decision`` the same with the uncertain band."""

    study: str
    part: str | None
    n_images: int
    probability: float
    label: str
    images: list[ImagePrediction] = field(default_factory=list)
    decision: str = ""  # positive | negative | uncertain (set by PredictionResult)


@dataclass
class PredictError:
    """A file that could not be read, with the reader's reason."""

    path: str
    error: str


@dataclass
class PredictionResult:
    """Every study predicted, the files that failed, and how the numbers were made.

    ``uncertain_band`` is (threshold - margin, threshold + margin) clipped to [0, 1]; every
    study's and image's ``decision`` is set from it when the result is made."""

    studies: list[StudyPrediction]
    errors: list[PredictError]
    threshold: float
    aggregation: str
    backend: str
    model: str
    members: list[str]
    uncertain_margin: float = UNCERTAIN_MARGIN
    uncertain_band: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        self.uncertain_band = uncertain_band(self.threshold, self.uncertain_margin)
        for study in self.studies:
            study.decision = decision_of(study.probability, self.threshold, self.uncertain_margin)
            for image in study.images:
                image.decision = decision_of(
                    image.probability, self.threshold, self.uncertain_margin
                )

    @property
    def images(self) -> list[ImagePrediction]:
        return [image for study in self.studies for image in study.images]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["uncertain_band"] = list(self.uncertain_band)
        return data


def label_of(probability: float, threshold: float, classes: Sequence[str] = CLASSES) -> str:
    """The name of the class called: ``classes[1]`` (positive) at or above the threshold."""
    return classes[1] if probability >= threshold else classes[0]


def uncertain_band(threshold: float, margin: float = UNCERTAIN_MARGIN) -> tuple[float, float]:
    """(low, high): probabilities strictly between them are "uncertain"."""
    if margin < 0:
        raise ValueError(f"the uncertain margin must be >= 0, got {margin}")
    return (max(0.0, round(threshold - margin, 12)), min(1.0, round(threshold + margin, 12)))


def decision_of(probability: float, threshold: float, margin: float = UNCERTAIN_MARGIN) -> Decision:
    """ "uncertain" strictly inside :func:`uncertain_band`, else the side of the threshold
    ("positive" at or above it, as :func:`label_of` calls it)."""
    low, high = uncertain_band(threshold, margin)
    if low < probability < high:
        return "uncertain"
    return "positive" if probability >= threshold else "negative"
