"""A trained model as everything downstream sees it: :class:`Model`.

``Model.load(path)`` takes a run folder (its best.pt) or an ensemble folder (its kept
members) and owns the networks, their training config, the operating threshold stored beside
them and the one :class:`~murakit.infer.preprocess.Preprocessor` they share. Prediction,
evaluation, the web app, CAMs, localization and ONNX export all go through it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from murakit.config import TrainConfig
from murakit.data.imageio import MAX_PIXELS, BadImageError
from murakit.data.index import DatasetInfo, ImageRecord
from murakit.evaluate.aggregate import AGGREGATIONS, study_probabilities
from murakit.evaluate.threshold import DEFAULT_THRESHOLD, read_threshold
from murakit.infer.cam import CAM_SIZE, ImageCam, check_cam_size, compute_cam
from murakit.infer.ensemble_spec import ENSEMBLE_FILE, member_run_dir, read_ensemble_spec
from murakit.infer.preprocess import Preprocessor
from murakit.infer.results import (
    ImagePrediction,
    PredictError,
    PredictionResult,
    StudyPrediction,
    label_of,
)
from murakit.infer.runtime import Runtime, make_runtime
from murakit.infer.studies import StudyInput, collect_studies
from murakit.model.densenet import build_model

BACKENDS = ("torch", "onnx")  # and "auto": choose_backend() picks one
ImageInput = str | Path | np.ndarray


class ModelDirError(RuntimeError):
    """A model folder that is neither a finished run nor an ensemble, or whose members
    cannot be used together."""


@dataclass
class Model:
    """The networks of a run or of an ensemble's kept members, ready for inference.

    A prediction is the mean over members of each member's sigmoid output; a study's is the
    mean over its images; the class called is the positive one at or above ``threshold``.
    """

    models: list[torch.nn.Module]
    names: list[str]
    config: TrainConfig  # the first member's; size, fixes and normalisation are shared by all
    source: Path
    threshold: float = DEFAULT_THRESHOLD  # the operating threshold stored with the model
    threshold_rule: str = ""  # how it was chosen ("" = the default 0.5 or a fixed value)
    runtime: Runtime = field(default_factory=make_runtime)
    preprocessor: Preprocessor = field(init=False)

    def __post_init__(self) -> None:
        self.preprocessor = Preprocessor.from_config(self.config)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        mixed_precision: bool = True,
        channels_last: bool = True,
    ) -> Model:
        """Load a run folder (best.pt) or an ensemble folder (ensemble.json's kept members).

        The threshold is ensemble.json's, else the run's threshold.json (chosen on its held-out
        training slice), else the config's ``extra.threshold``, else 0.5. Checkpoints are read
        with ``weights_only=True``: a file that needs code to load is refused, never run.
        Members that disagree on input size, quality fixes or normalisation are refused."""
        path = Path(path)
        threshold, rule = None, ""
        if (path / ENSEMBLE_FILE).exists():
            try:
                spec = read_ensemble_spec(path)
            except (OSError, ValueError) as err:
                raise ModelDirError(f"{path / ENSEMBLE_FILE}: cannot read ({err})") from err
            threshold = spec.get("threshold")
            rule = spec.get("threshold_rule", {}).get("rule", "")
            run_dirs = [member_run_dir(path, m) for m in spec["members"] if m.get("kept")]
        elif (path / "best.pt").exists():
            run_dirs = [path]
            stored = read_threshold(path) or {}
            threshold, rule = stored.get("threshold"), stored.get("rule", "")
        else:
            raise ModelDirError(
                f"{path}: neither an ensemble ({ENSEMBLE_FILE}) nor a run (best.pt)"
            )
        runtime = make_runtime(device, mixed_precision, channels_last)
        networks, configs = [], []
        for run_dir in run_dirs:
            network, config = _load_checkpoint(run_dir / "best.pt")
            networks.append(network.to(runtime.device).eval())
            configs.append(config)
        _check_members(path, [d.name for d in run_dirs], configs)
        if threshold is None:
            threshold = (configs[0].extra or {}).get("threshold", DEFAULT_THRESHOLD)
        names = [d.name for d in run_dirs]
        return cls(networks, names, configs[0], path, float(threshold), rule, runtime)

    # ------------------------------------------------------------------ what it was trained on

    @property
    def dataset(self) -> dict:
        """What the training data declared (murakit.data.index.DatasetInfo.to_json)."""
        return (self.config.extra or {}).get("dataset", {})

    @property
    def classes(self) -> tuple[str, str]:
        """Names of label 0 and label 1, as the training data named them."""
        return tuple(self.dataset.get("classes", DatasetInfo.classes))

    @property
    def parts(self) -> tuple[str, ...]:
        """The body parts of the training data."""
        return tuple(self.dataset.get("parts", DatasetInfo.parts))

    # ------------------------------------------------------------------ probabilities

    def probabilities(
        self,
        records: Sequence[ImageRecord],
        *,
        batch_size: int = 32,
        workers: int = 0,
        tta_flip: bool = False,
        load: Callable[[ImageRecord], np.ndarray] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """P(positive) per dataset record, read and fixed by the model's Preprocessor (or by
        ``load``, which must return fixed images)."""
        from murakit.infer.batched import ensemble_probabilities

        return ensemble_probabilities(
            self.models,
            self.preprocessor,
            records,
            self.runtime,
            batch_size=batch_size,
            workers=workers,
            tta_flip=tta_flip,
            load=load,
            on_batch=on_batch,
        )

    def image_probabilities(
        self,
        images: Sequence[np.ndarray],
        *,
        backend: str = "auto",
        onnx_path: Path | None = None,
        batch_size: int = 16,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """P(positive) per image already fixed by :meth:`Preprocessor.read`/``fix``: the torch
        path runs :meth:`probabilities`, so a prediction is what evaluation gives; the onnx
        path runs the exported graph (``model.onnx`` in the model folder by default); "auto"
        the onnx path where that graph and onnxruntime are present, else torch."""
        from murakit.infer.runtime import choose_backend

        backend = choose_backend(backend, self.source, onnx_path)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        if not len(images):
            return np.empty(0, dtype=np.float64)
        if backend == "onnx":
            from murakit.infer.onnx import onnx_file, onnx_probabilities

            return onnx_probabilities(onnx_file(self, onnx_path), images, batch_size=batch_size)
        records = [_memory_record(i) for i in range(len(images))]
        return self.probabilities(
            records,
            batch_size=batch_size,
            load=lambda record: images[int(record.rel)],
            on_batch=on_batch,
        )

    # ------------------------------------------------------------------ predict

    def predict(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        *,
        aggregation: str = "mean",
        threshold: float | None = None,
        backend: str = "auto",
        onnx_path: Path | None = None,
        batch_size: int = 16,
        max_pixels: int = MAX_PIXELS,
        on_image: Callable[[int], None] | None = None,
    ) -> PredictionResult:
        """Probabilities and the class called, per image and per study.

        ``inputs``: image files, study folders or folders of studies (grouped into studies
        as `murakit predict` groups them), or arrays: one 2-D grayscale array (uint8, or
        uint16 as read from a 16-bit file, before any fix) or a list of them, which is one
        study. Unreadable files land in ``errors``; the others are still predicted.
        ``threshold`` None means the model's stored one.
        """
        items = [inputs] if isinstance(inputs, (str, Path, np.ndarray)) else list(inputs)
        arrays = [x for x in items if isinstance(x, np.ndarray)]
        if arrays and len(arrays) != len(items):
            raise ValueError("give either arrays (one study) or paths, not both")
        read = None
        if arrays:
            names = [Path(f"array {i}") for i in range(len(arrays))]
            studies = [StudyInput("array", None, names)]
            by_name = dict(zip(names, arrays, strict=True))
            read = lambda path: self.preprocessor.fix(by_name[path])  # noqa: E731
        else:
            studies = collect_studies(items)
        return self.predict_studies(
            studies,
            aggregation=aggregation,
            threshold=threshold,
            backend=backend,
            onnx_path=onnx_path,
            batch_size=batch_size,
            max_pixels=max_pixels,
            on_image=on_image,
            read=read,
        )

    def predict_studies(
        self,
        studies: Sequence[StudyInput],
        *,
        aggregation: str = "mean",
        threshold: float | None = None,
        backend: str = "auto",
        onnx_path: Path | None = None,
        batch_size: int = 16,
        max_pixels: int = MAX_PIXELS,
        on_image: Callable[[int], None] | None = None,
        read: Callable[[Path], np.ndarray] | None = None,
    ) -> PredictionResult:
        """:meth:`predict` for studies already collected (``read`` overrides file reading)."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")
        threshold = self.threshold if threshold is None else threshold
        from murakit.infer.runtime import choose_backend

        backend = choose_backend(backend, self.source, onnx_path)
        if backend == "onnx":
            from murakit.infer.onnx import onnx_file

            onnx_file(self, onnx_path)  # fail before reading anything
        read = read or (lambda path: self.preprocessor.read(path, max_pixels=max_pixels))
        images: list[np.ndarray] = []
        owners: list[tuple[StudyInput, Path]] = []
        errors: list[PredictError] = []
        for study in studies:
            for path in study.paths:
                try:
                    images.append(read(path))
                    owners.append((study, path))
                except BadImageError as err:
                    errors.append(PredictError(str(path), err.problem))
                if on_image:
                    on_image(1)
        probs = self.image_probabilities(
            images, backend=backend, onnx_path=onnx_path, batch_size=batch_size
        )
        keys, pooled = study_probabilities([s.study for s, _ in owners], probs, aggregation)
        parts = {study.study: study.part for study in studies}
        by_key = {
            key: StudyPrediction(
                key, parts[key], 0, float(p), label_of(float(p), threshold, self.classes)
            )
            for key, p in zip(keys, pooled, strict=True)
        }
        for (study, path), p in zip(owners, probs, strict=True):
            target = by_key[study.study]
            target.images.append(
                ImagePrediction(
                    str(path), study.study, float(p), label_of(float(p), threshold, self.classes)
                )
            )
            target.n_images += 1
        return PredictionResult(
            studies=[by_key[k] for k in keys],
            errors=errors,
            threshold=float(threshold),
            aggregation=aggregation,
            backend=backend,
            model=str(self.source),
            members=list(self.names),
        )

    # ------------------------------------------------------------------ explain, export

    def cam(
        self,
        image: ImageInput,
        *,
        size: int = CAM_SIZE,
        predict_size: int | None = None,
        max_pixels: int = MAX_PIXELS,
        fixed: bool = False,
        backend: str = "auto",
        onnx_path: Path | None = None,
    ) -> ImageCam:
        """The class activation map of one image (a file, or a 2-D array before any fix, or
        after them with ``fixed=True``), computed at ``size`` px (512, as in the reference) and
        laid over the image the model saw. Its ``probability`` is the model's at its training
        size (what predict reports) unless ``predict_size`` says otherwise; ``.overlay()``
        draws it. ``backend`` as for :meth:`image_probabilities`; an ONNX graph exported
        before graphs carried CAMs falls back to torch."""
        if isinstance(image, np.ndarray):
            seen = image if fixed else self.preprocessor.fix(image)
        else:
            seen = self.preprocessor.read(image, max_pixels=max_pixels)
        check_cam_size(size)
        predict_size = predict_size or self.preprocessor.size
        graph = self._cam_graph(backend, onnx_path)
        if graph is not None:
            from murakit.infer.onnx import onnx_cam

            result = onnx_cam(graph, self.preprocessor, seen, size, predict_size)
        else:
            result = compute_cam(self.models, self.preprocessor, seen, size, predict_size)
        return ImageCam(seen, result, self.classes[1])

    def _cam_graph(self, backend: str, onnx_path: Path | None) -> Path | None:
        """The ONNX graph that computes CAMs for ``backend``, or None for torch."""
        from murakit.infer.runtime import choose_backend

        if choose_backend(backend, self.source, onnx_path) != "onnx":
            return None
        from murakit.infer.onnx import graph_has_cam, onnx_file

        graph = onnx_file(self, onnx_path)
        return graph if graph_has_cam(graph) else None

    def export_onnx(
        self, path: str | Path, *, opset: int | None = None, verify: bool = True
    ) -> Path:
        """Write the members as one ONNX graph (mean of sigmoids) and its preprocessing
        contract beside it (``path + ".json"``); see :mod:`murakit.infer.onnx`."""
        from murakit.infer.onnx import DEFAULT_OPSET, export_onnx

        return export_onnx(self, Path(path), opset or DEFAULT_OPSET, verify=verify)


def _load_checkpoint(checkpoint: Path) -> tuple[torch.nn.Module, TrainConfig]:
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelDirError(
            f"{checkpoint}: refused: the file holds Python objects that would run code when "
            "loaded (murakit loads weights only); load it only if you trust its source and "
            "re-save its state_dict"
        ) from err
    except (OSError, EOFError, RuntimeError) as err:
        raise ModelDirError(f"{checkpoint}: cannot load model ({err})") from err
    try:
        config = TrainConfig.from_dict(saved["config"])
        network = build_model(config.arch, config.dropout)
        network.load_state_dict(saved["model"])
    except (OSError, KeyError, TypeError, RuntimeError, ValueError) as err:
        raise ModelDirError(f"{checkpoint}: cannot load model ({err})") from err
    return network, config


def _check_members(path: Path, names: Sequence[str], configs: Sequence[TrainConfig]) -> None:
    """Members must see images the same way, or averaging their outputs means nothing."""
    first = Preprocessor.from_config(configs[0])
    for name, config in zip(names[1:], configs[1:], strict=True):
        diff = first.differences(Preprocessor.from_config(config))
        if diff:
            raise ModelDirError(
                f"{path}: member {name} preprocesses differently from {names[0]} "
                f"({'; '.join(diff)}); an ensemble needs one input pipeline"
            )


def _memory_record(index: int) -> ImageRecord:
    """A stand-in record for an image already in memory; `rel` carries its index."""
    return ImageRecord(Path(f"<image {index}>"), str(index), "", "", "", 0, "predict", 0)
