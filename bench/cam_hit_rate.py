"""Do CAMs point at the abnormality? The orientation check for murakit.explain.cam.

On synthetic MURA the finding's box is known (synth_truth.csv); on FracAtlas imported by
`murakit import fracatlas`, the radiologists' fracture boxes (truth.csv). For every validation
image that shows a finding, the CAM (cropped back to the original image) is scored by
murakit.explain.localization: its peak inside the box, its peak within one CAM cell of the box,
and the box hotter than the rest of the image, each beside its chance level and beside the same
score of the mirrored map (what a left-right error would give).

    python bench/cam_hit_rate.py                      # generate, train (~2 CPU minutes), test
    python bench/cam_hit_rate.py --model RUN_OR_ENSEMBLE --data SYNTH_OUT [--cam-size 256]
    python bench/cam_hit_rate.py --model RUN_OR_ENSEMBLE --data data/fa   # FracAtlas boxes

The figures of the default `make demo` ensemble are in README.md ("What the synthetic demo
does and does not show"), with the command that gives them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from murakit.data.truth import TRUTH_FILES, parse_boxes
from murakit.explain.localization import localization_scores
from murakit.infer.cam import save_overlay
from murakit.infer.model import Model
from murakit.train.ensemble import run_is_finished


def train_model(data: Path, run: Path, args: argparse.Namespace) -> Path:
    from murakit.config import make_config
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


def overlay_writer(folder: Path, count: int):
    """An ``on_image`` callback that saves the first ``count`` overlays, the boxes in green."""
    seen = [0]

    def write(row, cam, scores) -> None:
        if seen[0] >= count:
            return
        seen[0] += 1
        verdict = "hit" if scores["hit"] else "miss"
        boxes = parse_boxes(row["finding_box"])
        picture = cam.overlay(f"{row['finding']} {verdict}", boxes)
        save_overlay(folder / (row["image"].split("/", 2)[-1].replace("/", "_")), picture)

    return write


LABELS = {
    "all": "all",
    "detected": "detected",
    "hardware": "with hardware",
    "no hardware": "without hardware",
    "detected, hardware": "detected, hardware",
    "detected, no hardware": "detected, no hardware",
    "mirrored": "control: mirrored map",
    "mirrored: detected, no hardware": "control: mirrored, det. no hw",
}


def print_table(result: dict) -> None:
    print(f"CAM at {result['cam_size']} px, {result['split']} images with a finding")
    print(f"detected = probability >= the model's threshold ({result['threshold']:.3g})")
    print(f"{'':<32}{'n':>5}  {'peak in box':>18}  {'peak within 1 cell':>18}  {'box hotter':>10}")
    kinds = sorted(k for k in result if k.startswith("finding:"))
    for name in [g for g in LABELS if g in result] + kinds:
        s = result[name]
        label = LABELS.get(name) or "  " + name.removeprefix("finding:")
        print(
            f"{label:<32}{s['images']:>5}  {s['hit']:>7.1%} (ch {s['hit_chance']:>5.1%})"
            f"  {s['near']:>7.1%} (ch {s['near_chance']:>5.1%})  {s['hotter']:>10.1%}"
        )
    print("ch = chance; a box hotter than the rest has chance 50%")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/cam_hit_rate"))
    p.add_argument(
        "--data",
        type=Path,
        help="an existing synth OUT folder (synth_truth.csv) or an imported dataset (truth.csv)",
    )
    p.add_argument("--model", type=Path, help="an existing run or ensemble (skips training)")
    p.add_argument("--studies", type=int, default=1000)
    p.add_argument("--difficulty", type=float, default=0.5)
    p.add_argument(
        "--findings", default="all", help="comma-separated finding kinds to generate (default all)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="default: the demo preset's")
    p.add_argument("--size", type=int, default=128, help="training input size")
    p.add_argument("--batch-size", type=int, help="default: the demo preset's")
    p.add_argument("--lr", type=float, help="default: the demo preset's")
    p.add_argument("--cam-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overlays", type=int, default=12, help="overlays to save (box in green)")
    p.add_argument("--quick", action="store_true", help="300 studies, 2 epochs (runs the path)")
    args = p.parse_args(argv)
    if args.quick:
        args.studies, args.epochs = 300, 2

    start = time.perf_counter()
    data = args.data or args.out / "synth"
    if not any((data / name).exists() for name in TRUTH_FILES):
        from murakit.synth.generator import generate, parse_findings

        print(f"generating {args.studies} studies (difficulty {args.difficulty}) in {data}")
        generate(
            data,
            studies=args.studies,
            seed=args.seed,
            difficulty=args.difficulty,
            workers=args.workers,
            findings=parse_findings(args.findings),
        )
    model = args.model or train_model(data, args.out / "run", args)
    loaded = Model.load(model)
    result = localization_scores(
        loaded,
        data,
        args.cam_size,
        on_image=overlay_writer(args.out / "overlays", args.overlays),
    )
    result.update(
        model=str(model),
        data=str(data),
        train_size=loaded.config.size,
        seconds=round(time.perf_counter() - start, 1),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cam_hit_rate.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return result


if __name__ == "__main__":
    main()
