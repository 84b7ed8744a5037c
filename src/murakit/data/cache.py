"""Decoded-image cache: every image decoded, padded and resized once, then memory-mapped.

Decoding a 512 px PNG and resizing it costs more than the random rotation and flip that
follow, and it gives the same pixels every epoch, so it is done once, into one uint8 file
of N x size x size squares (``squares-<size>.u8``, a page-sized header then the rows). The
training loop reads rows from the memory map (pages shared by every worker and rank through
the OS page cache) and only augments them: ``TrainTransform.from_square``.

A cache is never used when it may not hold what the PNGs would give. ``open_cache`` raises
:class:`StaleCacheError`, naming what changed, when:

- a record is not in the index, or a source file's size or mtime changed (checked by stat at
  open: one stat per image, no decoding);
- the cache was built for another size, another preprocessing (``tag``) or format version;
- the store's header does not carry the build token of the index (the pair was not written
  by the same build, e.g. a build interrupted between its two renames);
- a row's bytes do not match its CRC-32 (checked on every read).

Checksum choice: a per-row CRC-32, kept in the index and verified each time a row is read.
Hashing the whole store at open would read 1.8 GB (MURA at 224 px) on every run and in every
DDP rank (several seconds even from the page cache); a row's CRC costs ~30 us on one core,
a few percent of the rotation that follows, and catches corruption whenever it happens,
not only before training starts. :func:`verify_cache` checks every row at once on demand.

Atomicity: the store is written under a temporary name and renamed into place, then the index
is written atomically; the build token in both ties them together, so an interrupted build
leaves either the previous valid cache or one that is detected as stale, never a half cache
that is used. Builds of the same cache folder are serialised with a lock file (DDP ranks and
parallel ensemble members may all ask for the same cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from murakit.data.index import ImageRecord
from murakit.fsutil import atomic_write_json

FORMAT = "murakit-cache/1"
HEADER_BYTES = 4096  # keeps rows page-aligned in the memory map
_CHUNK = 64  # images per task handed to a decoding process

ImageLoader = Callable[[ImageRecord], np.ndarray]


class StaleCacheError(RuntimeError):
    """The cache does not match the images (or is damaged); the message says what differs."""


@dataclass(frozen=True)
class CacheInfo:
    """What a build produced."""

    cache_dir: Path
    store: Path
    index: Path
    size: int
    count: int
    tag: str
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + self.count * self.size * self.size


def cache_paths(cache_dir: str | os.PathLike, size: int, tag: str = "") -> tuple[Path, Path]:
    """(store, index) paths of the cache for `size` px and preprocessing `tag`."""
    stem = f"{size}" if not tag else f"{size}-{tag}"
    cache_dir = Path(cache_dir)
    return cache_dir / f"squares-{stem}.u8", cache_dir / f"index-{stem}.json"


def fixes_tag(config) -> str:
    """A name for the data-quality fixes a TrainConfig applies before resizing ("" = none),
    so a cache built with one set of fixes is never read by a run using another."""
    parts = []
    if getattr(config, "fix_inverted", False):
        parts.append("inv")
    if getattr(config, "mask_markers", False):
        parts.append("mask")
    panels = getattr(config, "panels", "keep")
    if panels != "keep":
        parts.append(f"panels_{panels}")
    return "-".join(parts)


# ------------------------------------------------------------------------------ build


def build_cache(
    records: Sequence[ImageRecord],
    cache_dir: str | os.PathLike,
    size: int,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    *,
    loader: ImageLoader | None = None,
    tag: str = "",
) -> CacheInfo:
    """Decode, square and resize every record once into the cache for `size` (replacing any
    previous one). `loader(record)` gives the grayscale image (default: read_grayscale of its
    path; pass the run's Preprocessor.load and `fixes_tag(config)` when fixes apply); it must be
    picklable when `workers` > 0. Decoding runs in `workers` processes (0 = none: in
    this process, as PyTorch's DataLoader means it)."""
    records = _unique(records)
    cache_dir = Path(cache_dir)
    with _build_lock(cache_dir, size, tag):
        return _build(records, cache_dir, size, workers, progress, loader, tag)


def _build(records, cache_dir: Path, size, workers, progress, loader, tag) -> CacheInfo:
    """build_cache's work; the caller holds the build lock."""
    if not records:
        raise ValueError("no images to cache")
    store, index = cache_paths(cache_dir, size, tag)
    start = time.perf_counter()
    _remove_leftovers(cache_dir, store.name)
    token = secrets.token_hex(8)
    fd, tmp = tempfile.mkstemp(prefix=f".{store.name}.", suffix=".tmp", dir=cache_dir)
    os.close(fd)
    try:
        with open(tmp, "r+b") as handle:
            handle.truncate(HEADER_BYTES + len(records) * size * size)
            handle.write(_header(token, size, len(records), tag))
        entries = _decode_all(records, tmp, size, workers, progress, loader)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, store)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    atomic_write_json(
        index,
        {
            "format": FORMAT,
            "build": token,
            "size": size,
            "tag": tag,
            "count": len(records),
            "store": store.name,
            "checksum": "crc32 per row",
            # rel -> [row, source bytes, source mtime_ns, crc32 of the row]
            "rows": {r.rel: e for r, e in zip(records, entries, strict=True)},
        },
    )
    elapsed = time.perf_counter() - start
    return CacheInfo(cache_dir, store, index, size, len(records), tag, elapsed)


def _unique(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    seen: dict[str, ImageRecord] = {}
    for record in records:
        seen.setdefault(record.rel, record)
    return list(seen.values())


def _header(token: str, size: int, count: int, tag: str) -> bytes:
    text = json.dumps(
        {"format": FORMAT, "build": token, "size": size, "count": count, "tag": tag}
    ).encode()
    if len(text) >= HEADER_BYTES:
        raise ValueError("cache tag too long")
    return text.ljust(HEADER_BYTES, b"\0")


def _decode_all(records, store_path, size, workers, progress, loader) -> list[list[int]]:
    """Fill the rows of `store_path`; each task writes its rows itself and returns only the
    small per-row entries, so decoded pixels never travel through a pipe."""
    tasks = [
        (store_path, size, len(records), start, records[start : start + _CHUNK], loader)
        for start in range(0, len(records), _CHUNK)
    ]
    entries: list[list[int]] = [[] for _ in records]
    done = 0

    def collect(start: int, chunk_entries: list[list[int]]) -> None:
        nonlocal done
        entries[start : start + len(chunk_entries)] = chunk_entries
        done += len(chunk_entries)
        if progress:
            progress(done, len(records))

    if workers and workers > 0 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for task, result in zip(tasks, pool.map(_decode_chunk, tasks), strict=True):
                collect(task[3], result)
    else:
        for task in tasks:
            collect(task[3], _decode_chunk(task))
    return entries


def _decode_chunk(task) -> list[list[int]]:
    store_path, size, count, start, records, loader = task
    from murakit.data.imageio import read_grayscale
    from murakit.data.transforms import square_resize

    rows = np.memmap(store_path, np.uint8, "r+", HEADER_BYTES, (count, size, size))
    out = []
    for i, record in enumerate(records):
        # stat before reading: a file changed mid-build then shows up as stale at next open
        stat = os.stat(record.path)
        image = loader(record) if loader is not None else read_grayscale(record.path)
        square = square_resize(image, size)
        rows[start + i] = square
        out.append([start + i, stat.st_size, stat.st_mtime_ns, zlib.crc32(square)])
    rows.flush()
    del rows
    return out


@contextlib.contextmanager
def _build_lock(cache_dir: Path, size: int, tag: str) -> Iterator[None]:
    """An exclusive lock file per store, so concurrent builders wait instead of racing (and
    a process that finds the cache stale rebuilds it only if nobody did meanwhile)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = cache_paths(cache_dir, size, tag)[0].name
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, builds are still atomic
        yield
        return
    with open(cache_dir / f".{name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(cache_dir: Path, name: str) -> None:
    """Temporary stores of interrupted builds (only called while holding the build lock)."""
    for path in cache_dir.glob(f".{name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ------------------------------------------------------------------------------- read


class CachedImages:
    """`(record) -> (size, size) uint8 square`, read from the cache's memory map.

    The map is opened lazily in each process (the object pickles without it), so it works
    inside DataLoader workers and DDP ranks. Every row read is checked against its CRC-32.
    """

    def __init__(
        self,
        store: Path,
        size: int,
        count: int,
        token: str,
        rows: dict[str, tuple[int, int]],
        verify: bool = True,
    ) -> None:
        self.store = Path(store)
        self.size = size
        self.count = count
        self.token = token
        self.rows = rows  # rel -> (row, crc32)
        self.verify = verify
        self._map: np.memmap | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_map"], state["_pid"] = None, -1
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def _rows(self) -> np.memmap:
        if self._map is None or self._pid != os.getpid():
            with open(self.store, "rb") as handle:
                header = handle.read(HEADER_BYTES)
            if _read_header(header).get("build") != self.token:
                raise StaleCacheError(
                    f"{self.store}: the store was replaced since the cache was opened "
                    "(rebuilt by another process?); open it again"
                )
            self._map = np.memmap(
                self.store, np.uint8, "r", HEADER_BYTES, (self.count, self.size, self.size)
            )
            self._pid = os.getpid()
        return self._map

    def __call__(self, record: ImageRecord) -> np.ndarray:
        try:
            row, crc = self.rows[record.rel]
        except KeyError:
            raise StaleCacheError(f"{record.rel}: not in the cache {self.store}") from None
        square = np.array(self._rows()[row])  # a private copy; the map stays read-only
        if self.verify and zlib.crc32(square) != crc:
            raise StaleCacheError(
                f"{self.store}: row {row} ({record.rel}) fails its checksum: the cache file "
                "is corrupt; delete it or let training rebuild it"
            )
        return square


def open_cache(
    cache_dir: str | os.PathLike,
    records: Sequence[ImageRecord],
    size: int,
    *,
    tag: str = "",
    verify: bool = True,
) -> CachedImages:
    """The cache for `records` at `size`, after checking it is current; raises
    StaleCacheError naming the first thing that differs (or FileNotFoundError if absent)."""
    store, index_path = cache_paths(cache_dir, size, tag)
    if not index_path.exists() or not store.exists():
        raise FileNotFoundError(f"no cache for size {size} in {cache_dir}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as err:
        raise StaleCacheError(f"{index_path}: unreadable cache index ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise StaleCacheError(
            f"{index_path}: cache format {index.get('format')!r}, expected {FORMAT!r}"
        )
    if index.get("size") != size:
        raise StaleCacheError(f"{index_path}: built for size {index.get('size')}, not {size}")
    if index.get("tag", "") != tag:
        raise StaleCacheError(
            f"{index_path}: built with preprocessing {index.get('tag')!r}, not {tag!r}"
        )
    count = int(index["count"])
    expected = HEADER_BYTES + count * size * size
    actual = store.stat().st_size
    if actual != expected:
        raise StaleCacheError(
            f"{store}: {actual} bytes, expected {expected} for {count} images of {size}x{size}"
        )
    with open(store, "rb") as handle:
        header = _read_header(handle.read(HEADER_BYTES))
    if header.get("build") != index.get("build") or header.get("size") != size:
        raise StaleCacheError(
            f"{store}: its header does not match {index_path.name} (an interrupted or "
            "concurrent build); rebuild the cache"
        )
    entries = index["rows"]
    rows: dict[str, tuple[int, int]] = {}
    for record in records:
        entry = entries.get(record.rel)
        if entry is None:
            raise StaleCacheError(f"{record.rel}: not in the cache (built for other images)")
        row, nbytes, mtime_ns, crc = entry
        try:
            stat = os.stat(record.path)
        except FileNotFoundError:
            raise StaleCacheError(f"{record.path}: source image is missing") from None
        if stat.st_size != nbytes or stat.st_mtime_ns != mtime_ns:
            what = "size" if stat.st_size != nbytes else "modification time"
            raise StaleCacheError(
                f"{record.path}: source image changed since the cache was built ({what} differs)"
            )
        rows[record.rel] = (int(row), int(crc))
    return CachedImages(store, size, count, index["build"], rows, verify)


def _read_header(raw: bytes) -> dict:
    try:
        value = json.loads(raw.rstrip(b"\0").decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def ensure_cache(
    records: Sequence[ImageRecord],
    cache_dir: str | os.PathLike,
    size: int,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    *,
    loader: ImageLoader | None = None,
    tag: str = "",
    log: Callable[[str], None] | None = None,
) -> CachedImages:
    """What training calls: open the cache, building it if absent and rebuilding it (saying
    why through `log`) if stale or damaged."""
    log = log or (lambda _message: None)
    records = _unique(records)
    cache_dir = Path(cache_dir)
    with _build_lock(cache_dir, size, tag):
        try:
            cached = open_cache(cache_dir, records, size, tag=tag)
            _spot_check(cached, records)
            return cached
        except FileNotFoundError:
            log(f"building the image cache in {cache_dir} ({len(records)} images, {size} px)")
        except StaleCacheError as err:
            log(f"rebuilding the image cache: {err}")
        info = _build(records, cache_dir, size, workers, progress, loader, tag)
    log(f"image cache ready: {info.store} ({info.nbytes / 1e6:.0f} MB, {info.seconds:.0f} s)")
    return open_cache(cache_dir, records, size, tag=tag)


def _spot_check(cached: CachedImages, records: Sequence[ImageRecord], n: int = 32) -> None:
    """Verify a few rows at open so gross damage is found before training starts (every row
    is verified again when read)."""
    if not records:
        return
    picks = np.linspace(0, len(records) - 1, min(n, len(records))).astype(int)
    for i in picks:
        cached(records[i])


def verify_cache(cache_dir: str | os.PathLike, size: int, tag: str = "") -> int:
    """Check every row of the cache against its CRC-32; returns the number of rows checked
    and raises StaleCacheError at the first bad one. Reads the whole store."""
    _store, index_path = cache_paths(cache_dir, size, tag)
    index = json.loads(index_path.read_text())
    cached = open_cache(cache_dir, [], size, tag=tag)
    rows = cached._rows()
    for rel, (row, *_rest, crc) in index["rows"].items():
        if zlib.crc32(np.ascontiguousarray(rows[row])) != crc:
            raise StaleCacheError(f"{cached.store}: row {row} ({rel}) fails its checksum")
    return len(index["rows"])
