"""Torch datasets over index records, with randomness tied to (seed, epoch, image).

Augmentation draws come from a generator seeded by (seed, epoch, index), never from
worker-local state, so a run is repeatable whatever the number of DataLoader workers or
processes, and a resumed run sees exactly the images an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from murakit.data.index import ImageRecord

ImageLoader = Callable[[ImageRecord], np.ndarray]


def read_record(record: ImageRecord) -> np.ndarray:
    from murakit.data.imageio import read_grayscale

    return read_grayscale(record.path)


class BoxMaskLoader:
    """Wraps an image loader: (2, H, W) uint8, the image and a mask of its truth boxes (255
    inside), for box-guided training; images without boxes get an empty mask."""

    def __init__(self, load: ImageLoader, boxes: dict[str, list]) -> None:
        self.load = load
        self.boxes = boxes

    def __call__(self, record: ImageRecord) -> np.ndarray:
        image = self.load(record)
        mask = np.zeros_like(image)
        for x0, y0, x1, y1 in self.boxes.get(str(record.path.resolve()), ()):
            mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = 255
        return np.stack([image, mask])


class RadiographDataset(Dataset):
    """Items are (image tensor, label, index). Indexed by (index, epoch) pairs from
    `EpochSampler` for training; by plain ints for evaluation (no randomness)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable,
        *,
        seed: int = 0,
        train: bool = False,
        load: ImageLoader = read_record,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.train = train
        self.load = load

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        record = self.records[index]
        image = self.load(record)
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            tensor = self.transform(image, rng)
        else:
            tensor = self.transform(image)
        return tensor, torch.tensor(float(record.label)), index


class EpochSampler(Sampler):
    """Yields (index, epoch): a fresh permutation per epoch from (seed, epoch), optionally a
    rank's shard of it, optionally skipping the first `skip` items (mid-epoch resume)."""

    def __init__(
        self,
        size: int,
        seed: int,
        *,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def order(self) -> np.ndarray:
        """This rank's share of the epoch's global order; padded by wrapping so every rank
        gets the same number of items (as DistributedSampler does)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7919]).permutation(self.size)
        else:
            order = np.arange(self.size)
        per_rank = -(-self.size // self.world_size)
        padded = np.resize(order, per_rank * self.world_size)
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.order()[self.skip :]:
            yield int(index), self.epoch

    def __len__(self) -> int:
        return len(self.order()) - self.skip
