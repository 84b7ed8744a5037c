"""Open every listed image once, so missing or undecodable files are found before a long job."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from murakit.data.imageio import BadImageError, read_grayscale
from murakit.data.index import ImageRecord


def _problem(path: Path) -> str | None:
    try:
        read_grayscale(path)
    except BadImageError as err:
        return str(err)
    return None


def find_bad_files(
    paths: Sequence[Path],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Decode every file fully; return one message per missing or undecodable file.

    `workers`: decoding processes; 0 = none (decode in this process, as PyTorch's DataLoader
    means it); None = one per CPU core. Under 64 files decode in this process anyway."""
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    problems: list[str] = []
    if workers == 0 or len(paths) < 64:
        results = map(_problem, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_problem, paths, chunksize=32)
    try:
        for message in results:
            if message:
                problems.append(message)
            if progress:
                progress(1)
    finally:
        if pool:
            pool.shutdown()
    return problems


def drop_unreadable(
    records: Sequence[ImageRecord], workers: int = 0
) -> tuple[list[ImageRecord], list[str]]:
    """(the records whose files decode, one message per file that does not): `--skip-bad`.
    `workers` as in :func:`find_bad_files` (0 = in this process)."""
    problems = find_bad_files([r.path for r in records], workers)
    bad = {message.split(": ", 1)[0] for message in problems}
    return [r for r in records if str(r.path) not in bad], problems
