"""Effect of each data-quality fix on validation study accuracy and kappa (issue 7).

Generates one synthetic set (or takes a real one, e.g. FracAtlas imported by `murakit import
fracatlas`), then trains a preset with the same seed without fixes and with each fix (invert
detected inversions, mask detected markers, keep the largest panel of multi-radiograph
images), and prints the best-epoch validation figures side by side, with the study AUROC of
the best epoch's model.

    python bench/fix_effect.py [--studies 600] [--epochs 6] [--quick]
    python bench/fix_effect.py --data data/fa --preset fracture-cpu --epochs 4 --size 192
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from murakit.config import make_config
from murakit.evaluation import evaluate_model
from murakit.synth.generator import generate
from murakit.train.loop import train_run

VARIANTS = {
    "no fix": {},
    "fix inverted": {"fix_inverted": True},
    "mask markers": {"mask_markers": True},
    "largest panel": {"panels": "largest"},
    "all three": {"fix_inverted": True, "mask_markers": True, "panels": "largest"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="200 studies, 2 epochs")
    parser.add_argument("--data", type=Path, help="a dataset to use instead of a synthetic one")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--size", type=int, help="input size (default: the preset's)")
    args = parser.parse_args()
    if args.quick:
        args.studies, args.epochs = 200, 2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.data:
            root = args.data.resolve()
        else:
            generate(out / "data", studies=args.studies, seed=args.seed, workers=args.workers)
            root = out / "data" / "MURA-v1.1"
        rows = []
        for name, fixes in VARIANTS.items():
            config = make_config(
                args.preset,
                data=str(root),
                epochs=args.epochs,
                size=args.size,
                seed=args.seed,
                workers=args.workers,
                **fixes,
            )
            tick = time.perf_counter()
            run = out / name.replace(" ", "-")
            result = train_run(config, run)
            best = min(result.history, key=lambda row: row["val_loss"])
            metrics = evaluate_model(run, workers=args.workers).metrics["overall"]
            rows.append((name, best, metrics["auroc"], time.perf_counter() - tick))
            print(f"{name}: done in {rows[-1][3]:.0f} s", flush=True)

    data = str(args.data) if args.data else f"{args.studies} synthetic studies"
    print(
        f"\n{args.preset} preset, {data}, {args.epochs} epochs, seed {args.seed}; "
        "figures at the epoch of lowest validation loss"
    )
    print(
        f"{'variant':<15}{'val loss':>10}{'study acc':>11}{'kappa':>8}{'image acc':>11}{'AUROC':>8}"
    )
    for name, best, auc, _seconds in rows:
        print(
            f"{name:<15}{best['val_loss']:>10.4f}{best['val_study_accuracy']:>11.3f}"
            f"{best['val_study_kappa']:>8.3f}{best['val_image_accuracy']:>11.3f}{auc:>8.3f}"
        )


if __name__ == "__main__":
    main()
