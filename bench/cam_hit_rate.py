"""Do CAMs point at the abnormality? The orientation check for murakit.explain.cam.

On synthetic MURA the finding's box is known (synth_truth.csv). For every validation image that
shows a finding, the CAM (at 512 px, cropped back to the original image) has its peak inside the
box or not. Chance is what a peak dropped uniformly at random would score: the box's share of the
image, averaged. A CAM that is flipped, transposed, or misplaced by the padding crop scores at or
below chance; a working one scores far above. As a stricter baseline the image centre's hit rate
is printed too (findings sit on bones, which are often central).

    python bench/cam_hit_rate.py                      # generate, train (~2 CPU minutes), test
    python bench/cam_hit_rate.py --model RUN_OR_ENSEMBLE --data SYNTH_OUT

The figures of the default `make demo` ensemble are in README.md ("What the synthetic demo
does and does not show"), with the command that gives them.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from murakit.data.dataset import apply_config_fixes
from murakit.data.imageio import read_grayscale
from murakit.evaluate.ensemble import load_models, run_is_finished
from murakit.explain.cam import cam_on_original, cam_peak, compute_cam, overlay, save_overlay


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in text.split())
    return x0, y0, x1, y1


def inside(x: float, y: float, box: tuple[float, float, float, float]) -> bool:
    """Pixel (x, y) covers [x, x+1) x [y, y+1): a hit when it overlaps the box."""
    x0, y0, x1, y1 = box
    return x + 1 > x0 and x < x1 and y + 1 > y0 and y < y1


def box_fraction(box: tuple[float, float, float, float], h: int, w: int) -> float:
    x0, y0, x1, y1 = box
    bw = max(0.0, min(x1, w) - max(x0, 0.0))
    bh = max(0.0, min(y1, h) - max(y0, 0.0))
    return bw * bh / (h * w)


def finding_rows(data: Path, split: str = "valid") -> list[dict]:
    """Truth rows of `split` whose image shows a finding (abnormal studies only ever do)."""
    with open(data / "synth_truth.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split and r["finding_box"].strip()]


def hit_rate(
    loaded,
    data: Path,
    cam_size: int = 512,
    split: str = "valid",
    overlays: Path | None = None,
    n_overlays: int = 0,
    limit: int = 0,
) -> dict:
    """Peak-in-box rate of the CAMs of `loaded` over `split`'s findings, with its baselines."""
    rows = finding_rows(data, split)[: limit or None]
    if not rows:
        raise SystemExit(f"{data}: no {split} images with a finding in synth_truth.csv")
    hits, chance, centre, near, near_chance = [], [], [], [], []
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for i, row in enumerate(rows):
        image = apply_config_fixes(read_grayscale(data / row["image"]), loaded.config)
        h, w = image.shape
        box = parse_box(row["finding_box"])
        result = compute_cam(loaded, image, cam_size)
        heat = cam_on_original(result.cam, image.shape, cam_size)
        x, y = cam_peak(heat)
        hit = inside(x, y, box)
        hits.append(hit)
        by_kind[row["finding"]].append(hit)
        chance.append(box_fraction(box, h, w))
        centre.append(inside(w // 2, h // 2, box))
        # The pointing game's tolerance: one CAM cell (the map is cam_size/32 cells across
        # the padded square), with its own chance level.
        cell = max(h, w) * 32 / cam_size
        grown = (box[0] - cell, box[1] - cell, box[2] + cell, box[3] + cell)
        near.append(inside(x, y, grown))
        near_chance.append(box_fraction(grown, h, w))
        if overlays and i < n_overlays:
            name = row["image"].split("/", 2)[-1].replace("/", "_")
            picture = overlay(
                image, heat, result.probability, f"{row['finding']} {'hit' if hit else 'miss'}"
            )
            _draw_box(picture, box)
            save_overlay(overlays / name, picture)
    rate, base = float(np.mean(hits)), float(np.mean(chance))
    return {
        "images": len(rows),
        "hit_rate": rate,
        "chance": base,
        "ratio": rate / base if base else float("inf"),
        "centre_hit_rate": float(np.mean(centre)),
        "within_one_cell": float(np.mean(near)),
        "within_one_cell_chance": float(np.mean(near_chance)),
        "by_finding": {k: [float(np.mean(v)), len(v)] for k, v in sorted(by_kind.items())},
        "cam_size": cam_size,
    }


def _draw_box(picture, box) -> None:
    from PIL import ImageDraw

    ImageDraw.Draw(picture).rectangle(box, outline=(0, 255, 0), width=2)


def train_model(data: Path, run: Path, args: argparse.Namespace) -> Path:
    from murakit.train.config import make_config
    from murakit.train.loop import train_run

    if run_is_finished(run):
        print(f"using the finished run {run}")
        return run
    config = make_config(
        "demo",
        data=str(data / "MURA-v1.1"),
        epochs=args.epochs,
        size=args.size,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
        seed=args.seed,
    )
    train_run(config, run, resume=(run / "last.pt").exists())
    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/cam_hit_rate"))
    p.add_argument("--data", type=Path, help="an existing synth OUT folder (with synth_truth.csv)")
    p.add_argument("--model", type=Path, help="an existing run or ensemble (skips training)")
    p.add_argument("--studies", type=int, default=1000)
    p.add_argument("--difficulty", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="default: the demo preset's")
    p.add_argument("--size", type=int, default=128, help="training input size")
    p.add_argument("--batch-size", type=int, help="default: the demo preset's")
    p.add_argument("--lr", type=float, help="default: the demo preset's")
    p.add_argument("--cam-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overlays", type=int, default=12, help="overlays to save (box in green)")
    args = p.parse_args(argv)

    start = time.perf_counter()
    data = args.data or args.out / "synth"
    if not (data / "synth_truth.csv").exists():
        from murakit.data.synth import generate

        print(f"generating {args.studies} studies (difficulty {args.difficulty}) in {data}")
        generate(
            data,
            studies=args.studies,
            seed=args.seed,
            difficulty=args.difficulty,
            workers=args.workers,
        )
    model = args.model or train_model(data, args.out / "run", args)
    loaded = load_models(model)
    result = hit_rate(
        loaded, data, args.cam_size, overlays=args.out / "overlays", n_overlays=args.overlays
    )
    result.update(
        model=str(model),
        data=str(data),
        train_size=loaded.config.size,
        seconds=round(time.perf_counter() - start, 1),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cam_hit_rate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['images']} valid images with a finding, CAM at {args.cam_size} px")
    print(f"  CAM peak inside the finding's box: {result['hit_rate']:.1%}")
    print(f"  chance (box area / image area):    {result['chance']:.1%}")
    print(f"  ratio:                             {result['ratio']:.2f}x")
    print(f"  image centre inside the box:       {result['centre_hit_rate']:.1%}")
    print(
        f"  peak within one CAM cell of the box: {result['within_one_cell']:.1%} "
        f"(chance {result['within_one_cell_chance']:.1%})"
    )
    for kind, (rate, n) in result["by_finding"].items():
        print(f"    {kind:<14} {rate:6.1%}  (n={n})")
    return result


if __name__ == "__main__":
    main()
