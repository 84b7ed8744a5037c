"""Image probabilities from a run or an ensemble: each member's sigmoid output, averaged
over members (the reference averages predictions over models, then over a study's images)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from murakit.data.dataset import RadiographDataset, RecordLoader
from murakit.data.index import ImageRecord
from murakit.data.transforms import EvalTransform
from murakit.evaluate.ensemble import LoadedModels
from murakit.evaluate.inference import infer_logits, make_eval_loader, sigmoid
from murakit.train.device import Runtime


def ensemble_probabilities(
    loaded: LoadedModels,
    records: Sequence[ImageRecord],
    runtime: Runtime,
    *,
    batch_size: int = 32,
    workers: int = 0,
    tta_flip: bool = False,
    load: Callable[[ImageRecord], np.ndarray] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """P(abnormal) per record: the mean over members of each member's probability. Images
    get the quality fixes the model was trained with."""
    load = load or RecordLoader(loaded.config)
    dataset = RadiographDataset(records, EvalTransform(loaded.config.size), load=load)
    total = np.zeros(len(records), dtype=np.float64)
    for model in loaded.models:
        model = runtime.prepare_model(model)
        loader = make_eval_loader(dataset, batch_size, workers, runtime)
        logits, index = infer_logits(model, loader, runtime, tta_flip=tta_flip, on_batch=on_batch)
        total[index] += sigmoid(logits)
    return total / len(loaded.models)
