"""What a run trains and validates on: the records of its splits, the datasets, the loader."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from murakit.config import TrainConfig
from murakit.data.dataset import EpochSampler, RadiographDataset
from murakit.data.index import ImageRecord
from murakit.infer.runtime import Runtime
from murakit.train import distributed
from murakit.train.loss import sample_weights
from murakit.train.state import RunDirError

Log = Callable[..., None]  # log(message, warning=False)


@dataclass
class TrainData:
    """A run's datasets: training (augmented, ordered by `sampler`), validation, and the
    slice of training studies held out to choose the threshold (may be empty)."""

    train_set: RadiographDataset
    valid_set: RadiographDataset
    slice_set: RadiographDataset
    sampler: EpochSampler
    loader: DataLoader
    weights: torch.Tensor  # per training image, for the loss
    valid_weights: torch.Tensor


def load_records(config: TrainConfig, log: Log) -> tuple[list, list, list[str]]:
    """(train, valid, skipped) records of the dataset in config.data: the training split
    capped to max_train_images (a seeded subset), unreadable images dropped with
    skip_bad (each one logged)."""
    from murakit.data.index import load_index

    index = load_index(config.data, skip_bad=config.skip_bad)
    train, valid = index.split("train"), index.split("valid")
    skipped = list(index.skipped)
    if not train or not valid:
        raise RunDirError(
            f"{config.data}: training needs both a train and a valid split "
            f"(found {len(train)} train and {len(valid)} valid images)"
        )
    if config.max_train_images and len(train) > config.max_train_images:
        keep = np.random.default_rng(config.seed).choice(
            len(train), config.max_train_images, replace=False
        )
        train = [train[i] for i in sorted(keep)]
    if config.skip_bad:
        from murakit.data.verify import drop_unreadable

        train, bad_train = drop_unreadable(train, config.workers or 0)
        valid, bad_valid = drop_unreadable(valid, config.workers or 0)
        skipped += bad_train + bad_valid
    for message in skipped:
        log(f"skipped: {message}", warning=True)
    return train, valid, skipped


def build_data(
    config: TrainConfig,
    train: list[ImageRecord],
    valid: list[ImageRecord],
    held_out: list[ImageRecord],
    ctx: distributed.DistContext,
    runtime: Runtime,
    log: Log,
) -> TrainData:
    """Datasets and the training loader; with a cache, rank 0 builds it first if needed."""
    weights = sample_weights(train, train, config.loss)
    valid_weights = sample_weights(valid, train, config.loss)
    load, train_tf, eval_tf = _data_pipeline(config, train + valid, ctx, log)
    train_load = _box_mask_loader(load, config, ctx) if config.box_loss else load
    train_set = RadiographDataset(train, train_tf, seed=config.seed, train=True, load=train_load)
    sampler = EpochSampler(len(train_set), config.seed, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=runtime.is_cuda,
        worker_init_fn=_ignore_sigint,
        generator=torch.Generator(),
        persistent_workers=False,
    )
    return TrainData(
        train_set=train_set,
        valid_set=RadiographDataset(valid, eval_tf, load=load),
        slice_set=RadiographDataset(held_out, eval_tf, load=load),
        sampler=sampler,
        loader=loader,
        weights=weights,
        valid_weights=valid_weights,
    )


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves before stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _box_mask_loader(load, config: TrainConfig, ctx):
    """The training loader for box guidance: images with a mask of their truth boxes."""
    from murakit.data.dataset import BoxMaskLoader
    from murakit.data.truth import truth_boxes

    if config.cache or config.panels != "keep" or ctx.enabled:
        raise RunDirError(
            "--box-loss works on decoded images in one process: not with --cache, "
            "--panels largest (it moves the boxes) or several processes"
        )
    boxes = truth_boxes(Path(config.data))
    if not boxes:
        raise RunDirError(
            f"{config.data}: --box-loss needs boxes in truth.csv (as `murakit import fracatlas` "
            "writes); this dataset has none"
        )
    return BoxMaskLoader(load, boxes)


def train_transform(config: TrainConfig):
    from murakit.data.transforms import TrainTransform

    return TrainTransform(config.size, rotation=config.rotation, hflip=config.hflip)


def _data_pipeline(config: TrainConfig, records, ctx, log: Log):
    """(image loader, train transform, eval transform). With a cache, images come from the
    decoded squares (built or rebuilt by rank 0 when absent or stale) and the transforms skip
    the pad-and-resize step they already went through."""
    from murakit.infer.preprocess import Preprocessor

    preprocessor = Preprocessor.from_config(config)  # the same pipeline the model is used with
    load = preprocessor.load
    train_tf, eval_tf = train_transform(config), preprocessor.transform
    if not config.cache:
        return load, train_tf, eval_tf
    from murakit.data.cache import ensure_cache, fixes_tag, open_cache

    tag = fixes_tag(config)
    if ctx.is_main:
        ensure_cache(
            records,
            Path(config.cache),
            config.size,
            workers=config.workers,
            loader=load,
            tag=tag,
            log=log,
        )
    distributed.barrier(ctx)
    cached = open_cache(config.cache, records, config.size, tag=tag)
    return cached, train_tf.from_square, eval_tf.from_square
