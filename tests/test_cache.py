"""The decoded-image cache: same pixels as decoding, and never used when stale or damaged."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from murakit.data import cache as cache_mod
from murakit.data.cache import (
    StaleCacheError,
    build_cache,
    cache_paths,
    ensure_cache,
    open_cache,
    verify_cache,
)
from murakit.data.dataset import RadiographDataset
from murakit.data.imageio import read_grayscale
from murakit.data.index import load_index
from murakit.data.transforms import EvalTransform, TrainTransform, square_resize

SIZE = 64


@pytest.fixture(scope="module")
def records(synth_root):
    return load_index(synth_root).images


@pytest.fixture(scope="module")
def built(records, tmp_path_factory) -> Path:
    cache_dir = tmp_path_factory.mktemp("cache")
    info = build_cache(records, cache_dir, SIZE, workers=2)
    assert info.count == len(records) and info.store.exists() and info.index.exists()
    return cache_dir


@pytest.fixture
def private(records, tmp_path):
    """A copy of a few source images and a cache of them, free to damage."""
    root = tmp_path / "src"
    mine = []
    for record in records[:6]:
        dest = root / record.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record.path, dest)
        mine.append(dataclasses.replace(record, path=dest))
    cache_dir = tmp_path / "cache"
    build_cache(mine, cache_dir, SIZE)
    return mine, cache_dir


def test_rows_equal_decoding_and_resizing(records, built):
    cached = open_cache(built, records, SIZE)
    assert len(cached) == len(records)
    for record in records:
        expected = square_resize(read_grayscale(record.path), SIZE)
        np.testing.assert_array_equal(cached(record), expected)
    assert verify_cache(built, SIZE) == len(records)


def test_augmenting_a_cached_square_equals_the_png_pipeline(records, built):
    cached = open_cache(built, records, SIZE)
    train = TrainTransform(SIZE, rotation=30)
    for i, record in enumerate(records[:10]):
        from_png = train(read_grayscale(record.path), np.random.default_rng([1, i]))
        from_cache = train.from_square(cached(record), np.random.default_rng([1, i]))
        assert torch.equal(from_cache[0], from_png[0]) and torch.equal(from_cache[1], from_png[1])
        assert torch.equal(
            EvalTransform(SIZE)(read_grayscale(record.path)),
            EvalTransform(SIZE).from_square(cached(record)),
        )


def test_dataloader_workers_read_the_cache(records, built):
    cached = open_cache(built, records, SIZE)
    cached(records[0])  # the parent maps the store too; workers must not depend on that
    revived = pickle.loads(pickle.dumps(cached))  # what spawn-started workers receive
    assert revived._map is None
    np.testing.assert_array_equal(revived(records[5]), cached(records[5]))
    transform = EvalTransform(SIZE)
    subset = records[:24]
    dataset = RadiographDataset(subset, transform.from_square, load=cached)
    loader = DataLoader(dataset, batch_size=8, num_workers=2)
    seen = {}
    for images, _labels, index in loader:
        for image, i in zip(images, index.tolist(), strict=True):
            seen[i] = image
    assert sorted(seen) == list(range(len(subset)))
    for i, record in enumerate(subset):
        assert torch.equal(seen[i], transform(read_grayscale(record.path)))


def test_modified_source_is_stale_and_ensure_rebuilds(private):
    records, cache_dir = private
    target = records[2].path
    flipped = read_grayscale(target)[:, ::-1]
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(flipped)).save(target)
    with pytest.raises(StaleCacheError, match=str(target.name)):
        open_cache(cache_dir, records, SIZE)
    messages = []
    cached = ensure_cache(records, cache_dir, SIZE, log=messages.append)
    assert any("rebuilding" in m and "changed" in m for m in messages)
    np.testing.assert_array_equal(cached(records[2]), square_resize(flipped, SIZE))


def test_touched_source_is_stale(private):
    records, cache_dir = private
    stat = os.stat(records[0].path)
    os.utime(records[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(StaleCacheError, match="modification time"):
        open_cache(cache_dir, records, SIZE)


def test_record_missing_from_index_is_stale(records, private):
    mine, cache_dir = private
    with pytest.raises(StaleCacheError, match="not in the cache"):
        open_cache(cache_dir, [*mine, records[10]], SIZE)


def test_corrupt_byte_is_detected_on_read_and_rebuilt(private):
    records, cache_dir = private
    store, _ = cache_paths(cache_dir, SIZE)
    cached = open_cache(cache_dir, records, SIZE)
    good = cached(records[3])
    with open(store, "r+b") as handle:  # one byte in the middle of row 3
        handle.seek(cache_mod.HEADER_BYTES + 3 * SIZE * SIZE + SIZE * SIZE // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StaleCacheError, match="checksum"):
        open_cache(cache_dir, records, SIZE)(records[3])
    with pytest.raises(StaleCacheError, match="checksum"):
        verify_cache(cache_dir, SIZE)
    messages = []
    rebuilt = ensure_cache(records, cache_dir, SIZE, log=messages.append)
    assert any("checksum" in m for m in messages)
    np.testing.assert_array_equal(rebuilt(records[3]), good)


def test_wrong_size_is_detected(private):
    records, cache_dir = private
    store, index = cache_paths(cache_dir, SIZE)
    other_store, other_index = cache_paths(cache_dir, 32)
    shutil.copy(store, other_store)
    shutil.copy(index, other_index)
    with pytest.raises(StaleCacheError, match="size 64, not 32"):
        open_cache(cache_dir, records, 32)
    with pytest.raises(FileNotFoundError):
        open_cache(cache_dir, records, 48)
    with pytest.raises(ValueError, match="32x32"):  # a square of the wrong size given anyway
        TrainTransform(32).from_square(open_cache(cache_dir, records, SIZE)(records[0]), None)


def test_truncated_store_or_other_preprocessing_is_detected(private):
    records, cache_dir = private
    store, index = cache_paths(cache_dir, SIZE)
    with pytest.raises(FileNotFoundError):
        open_cache(cache_dir, records, SIZE, tag="inv")
    with open(store, "r+b") as handle:
        handle.truncate(store.stat().st_size - 1)
    with pytest.raises(StaleCacheError, match="bytes, expected"):
        open_cache(cache_dir, records, SIZE)


def test_interrupted_build_leaves_the_old_cache_or_none(private, monkeypatch):
    records, cache_dir = private
    store, index = cache_paths(cache_dir, SIZE)
    before = (store.read_bytes(), index.read_text())

    def boom(*_args):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-decode

    monkeypatch.setattr(cache_mod, "_decode_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        build_cache(records, cache_dir, SIZE)
    assert (store.read_bytes(), index.read_text()) == before  # untouched, still valid
    assert not list(cache_dir.glob("*.tmp"))
    open_cache(cache_dir, records, SIZE)(records[0])

    # Killed between renaming the new store into place and writing its index: the pair does
    # not match, which open_cache sees (the build tokens differ) and ensure_cache repairs.
    monkeypatch.undo()
    monkeypatch.setattr(cache_mod, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        build_cache(records, cache_dir, SIZE)
    assert index.read_text() == before[1]
    with pytest.raises(StaleCacheError, match="header does not match"):
        open_cache(cache_dir, records, SIZE)
    monkeypatch.undo()
    ensure_cache(records, cache_dir, SIZE)(records[0])

    # No cache at all when the first build is interrupted.
    fresh = cache_dir.parent / "fresh"
    monkeypatch.setattr(cache_mod, "_decode_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        build_cache(records, fresh, SIZE)
    with pytest.raises(FileNotFoundError):
        open_cache(fresh, records, SIZE)


def test_index_records_sources_and_format(records, built):
    index = json.loads(cache_paths(built, SIZE)[1].read_text())
    assert index["format"] == cache_mod.FORMAT and index["size"] == SIZE
    row, nbytes, mtime_ns, _crc = index["rows"][records[0].rel]
    stat = os.stat(records[0].path)
    assert (nbytes, mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert sorted(e[0] for e in index["rows"].values()) == list(range(len(records)))
