"""Data-loader throughput: decoding PNGs every epoch vs augmenting cached squares.

Generates a synthetic MURA set (or uses --data), then measures, for DataLoader workers
0, 1 and 2, the images per second of the training pipeline two ways:

  png    read_grayscale + TrainTransform (decode, pad, resize, draw the augmentation)
  cache  rows of the decoded-image cache (murakit.data.cache) + TrainTransform.from_square
         (draw the augmentation)

Both ship uint8 squares; rotation, flip and normalisation run batched on the training
device (augment_batch), whose CPU cost per image is printed too, with the cost of the PIL
rotation the loader did before (for comparison).

and the per-image cost of each stage in one process, which says where the time goes. The
issue's target: cache >= 5x png per worker.

    python bench/loader_throughput.py [--studies 300] [--data ROOT] [--size 224]
                                      [--workers 0 1 2] [--batch 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from murakit.data.cache import build_cache, open_cache
from murakit.data.dataset import EpochSampler, RadiographDataset, read_record
from murakit.data.imageio import read_grayscale
from murakit.data.index import load_index
from murakit.data.transforms import TrainTransform, augment, augment_batch, square_resize

TARGET_RATIO = 5.0


def loader_rate(dataset: RadiographDataset, workers: int, batch: int, epochs: int) -> float:
    """Steady-state images/s of a training DataLoader, the best of `epochs` passes (steadier
    on a shared machine). Each pass is timed over the second half of its batches, after the
    workers' start-up and prefetched batches are used up (a rounding error in a real epoch
    of 36k images)."""
    sampler = EpochSampler(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    best = 0.0
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        arrivals = [(time.perf_counter(), len(labels)) for _, labels, _ in loader]
        half = len(arrivals) // 2
        if half < 2 * workers + 1:
            raise SystemExit(
                f"too few batches ({len(arrivals)}) to see past {workers} workers' prefetch: "
                "use more images (--studies) or a smaller --batch"
            )
        images = sum(n for _, n in arrivals[half + 1 :])
        best = max(best, images / max(arrivals[-1][0] - arrivals[half][0], 1e-9))
    return best


def stage_costs(records, cached, size: int, n: int, passes: int = 3) -> dict[str, float]:
    """Milliseconds per image of each stage in this process (best of `passes`)."""
    picks = records[:n]
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}

    def timed(name, fn, items):
        best = float("inf")
        for _ in range(passes):
            tick = time.perf_counter()
            results = [fn(x) for x in items]
            best = min(best, time.perf_counter() - tick)
        out[name] = best * 1000 / len(items)
        return results

    grays = timed("decode PNG (read_grayscale)", lambda r: read_grayscale(r.path), picks)
    squares = timed("pad + resize (square_resize)", lambda g: square_resize(g, size), grays)
    timed("cache row read + crc32", cached, picks)
    timed("crc32 of a row alone", zlib.crc32, squares)
    transform = TrainTransform(size)
    timed("draw augmentation (from_square)", lambda s: transform.from_square(s, rng), squares)
    png = sum(v for k, v in out.items() if k.split()[0] in ("decode", "pad", "draw"))
    cache = sum(v for k, v in out.items() if k.split()[0] in ("cache", "draw"))
    out["= png path"], out["= cache path"] = png, cache
    # Not in the loader: the training process rotates, flips and normalises whole batches.
    batch = torch.from_numpy(np.stack(squares[:32]))
    params = torch.tensor([[rng.uniform(-30, 30), float(rng.random() < 0.5)] for _ in batch])
    timed("device augmentation on CPU", lambda _: augment_batch(batch, params), [None])
    out["device augmentation on CPU"] /= len(batch)
    timed("PIL rotate + flip (old loader)", lambda s: augment(s, rng), squares)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--data", type=Path, help="an existing MURA-layout folder to use")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="passes per measurement (best)")
    parser.add_argument("--cache-only", action="store_true", help="skip the PNG path")
    parser.add_argument(
        "--quick", action="store_true", help="100 studies, batch 16, workers 0 and 2"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.studies, args.batch, args.workers = min(args.studies, 100), 16, [0, 2]

    with tempfile.TemporaryDirectory(prefix="murakit-bench-") as tmp:
        root = args.data
        if root is None:
            from murakit.synth.generator import generate

            tick = time.perf_counter()
            generate(Path(tmp), studies=args.studies, seed=0, workers=os.cpu_count() or 1)
            root = Path(tmp) / "MURA-v1.1"
            print(
                f"generated {args.studies} synthetic studies in {time.perf_counter() - tick:.0f} s"
            )
        records = load_index(root).images
        print(
            f"{len(records)} images at {args.size} px, batch {args.batch}; {os.cpu_count()} "
            f"CPUs, torch threads {torch.get_num_threads()}, "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        cache_dir = Path(tmp) / "cache"
        info = build_cache(records, cache_dir, args.size, workers=os.cpu_count() or 1)
        print(
            f"cache build: {info.count / info.seconds:.0f} img/s with {os.cpu_count()} "
            f"processes ({info.nbytes / 1e6:.0f} MB)"
        )
        cached = open_cache(cache_dir, records, args.size)
        transform = TrainTransform(args.size)
        png_set = RadiographDataset(records, transform, train=True, load=read_record)
        cache_set = RadiographDataset(records, transform.from_square, train=True, load=cached)

        torch.set_num_threads(1)  # as in a worker; the main process would be training
        costs = stage_costs(records, cached, args.size, min(len(records), 100))
        print("per image, one process:")
        for name, ms in costs.items():
            print(f"  {name:32s} {ms:6.2f} ms")
        print(f"  {'ratio png / cache':32s} {costs['= png path'] / costs['= cache path']:6.2f}")

        print(
            f"{'workers':>8} {'png img/s':>10} {'cache img/s':>12} {'per worker':>18} {'ratio':>6}"
        )
        rows = []
        for workers in args.workers:
            cache_rate = loader_rate(cache_set, workers, args.batch, args.epochs)
            png_rate = (
                float("nan")
                if args.cache_only
                else loader_rate(png_set, workers, args.batch, args.epochs)
            )
            per = max(workers, 1)
            rows.append({"workers": workers, "png": png_rate, "cache": cache_rate})
            print(
                f"{workers:>8} {png_rate:>10.0f} {cache_rate:>12.0f} "
                f"{png_rate / per:>8.0f} / {cache_rate / per:<7.0f} "
                f"{cache_rate / png_rate:>6.2f}",
                flush=True,
            )
        if not args.cache_only:
            worst = min(r["cache"] / r["png"] for r in rows)
            verdict = "meets" if worst >= TARGET_RATIO else "below"
            print(f"cache / png: {worst:.2f}x at worst ({verdict} the {TARGET_RATIO}x target)")
        if args.json:
            print(json.dumps({"stage_ms": costs, "rates": rows, "images": len(records)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
