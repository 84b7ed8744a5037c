"""Run networks over a dataset in evaluation mode: the one inference loop that validation,
`evaluate`, `predict`, the web app and benchmarks all share; an ensemble's probability is the
mean over members of each member's sigmoid output (the reference averages over models, then
over a study's images)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from murakit.data.dataset import RadiographDataset
from murakit.data.index import ImageRecord
from murakit.infer.runtime import Runtime

if TYPE_CHECKING:
    from murakit.infer.preprocess import Preprocessor


def make_eval_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    runtime: Runtime,
    indices: Sequence[int] | None = None,
) -> DataLoader:
    """A non-shuffling loader over `dataset` (or the given subset of its indices)."""
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=runtime.is_cuda,
        persistent_workers=False,
    )


@torch.inference_mode()
def infer_logits(
    model: torch.nn.Module,
    loader: DataLoader,
    runtime: Runtime,
    *,
    tta_flip: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, dataset indices) for every item of `loader`. With `tta_flip` the logit is the
    mean of the image's and its horizontal mirror's."""
    model.eval()
    logits, indices = [], []
    for images, _labels, index in loader:
        batch = runtime.batch(images)
        with runtime.autocast():
            out = model(batch).float()
            if tta_flip:
                out = (out + model(torch.flip(batch, dims=[3])).float()) / 2
        logits.append(out[:, 0].cpu().numpy())
        indices.append(index.numpy())
        if on_batch:
            on_batch(len(images))
    if not logits:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    return np.concatenate(logits), np.concatenate(indices)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def ensemble_probabilities(
    models: Sequence[torch.nn.Module],
    preprocessor: Preprocessor,
    records: Sequence[ImageRecord],
    runtime: Runtime,
    *,
    batch_size: int = 32,
    workers: int = 0,
    tta_flip: bool = False,
    load: Callable[[ImageRecord], np.ndarray] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """P(positive) per record: the mean over members of each member's probability. Images are
    read and fixed by ``preprocessor`` (or by ``load``), then squared and normalised by it."""
    load = load or preprocessor.load
    dataset = RadiographDataset(records, preprocessor.transform, load=load)
    total = np.zeros(len(records), dtype=np.float64)
    for model in models:
        model = runtime.prepare_model(model)
        loader = make_eval_loader(dataset, batch_size, workers, runtime)
        logits, index = infer_logits(model, loader, runtime, tta_flip=tta_flip, on_batch=on_batch)
        total[index] += sigmoid(logits)
    return total / len(models)
