"""Train the small learned models of murakit.data.quality and write quality_weights.json.

The models are logistic regressions over a handful of image statistics (the weights are a
few dozen numbers). They learn from:

- the *tuning* half of the hand-labelled FracAtlas images (bench/real_labels; the test
  half is never read here), set on export canvases (white, grey, black padding, rotated
  and round fields) with a quarter of them inverted, using canvas draws of their own
  (variants 10-13; the benchmark scores variants 0-1 of the test half);
- a synthetic MURA set (seed 7, which the README's synthetic table does not use), its
  images as generated and on the same canvases.

Deterministic: same inputs, same weights.

    python bench/train_quality_models.py [--fracatlas ../shared/FracAtlas] [--studies 150]

FracAtlas: Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al. Scientific Data 10, 521
(2023), doi:10.1038/s41597-023-02432-4, CC BY 4.0; the weights are derived from its images
and carry that attribution.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_real  # noqa: E402
from murakit.data import quality as q  # noqa: E402
from murakit.data.imageio import read_grayscale  # noqa: E402
from murakit.data.synth import generate  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "src" / "murakit" / "data" / q.WEIGHTS_FILE
ATTRIBUTION = (
    "Learned from FracAtlas (Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al., Scientific "
    "Data 10, 521 (2023), doi:10.1038/s41597-023-02432-4; CC BY 4.0, "
    "https://creativecommons.org/licenses/by/4.0/) and synthetic images, by "
    "bench/train_quality_models.py."
)
TRAIN_VARIANTS = (10, 11, 12, 13)


def fit_logistic(x: np.ndarray, y: np.ndarray, names, l2: float = 1e-2, steps: int = 4000):
    """Standardised L2 logistic regression by full-batch gradient descent."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        g = p - y
        w -= 0.5 * (z.T @ g / len(y) + l2 * w)
        b -= 0.5 * float(g.mean())
    return {
        "features": list(names),
        "mean": [round(float(v), 6) for v in mean],
        "scale": [round(float(v), 6) for v in scale],
        "coef": [round(float(v), 6) for v in w],
        "bias": round(b, 6),
    }


def synthetic_images(out: Path, studies: int) -> list[tuple[str, np.ndarray, bool]]:
    generate(out, studies=studies, seed=7, difficulty=0.75, workers=1)
    with open(out / "synth_truth.csv", newline="", encoding="utf-8") as handle:
        truth = {row["image"]: row for row in csv.DictReader(handle)}
    found = []
    for rel, row in sorted(truth.items()):
        found.append((rel, read_grayscale(out / rel), row["inverted"] == "1"))
    return found


def inversion_rows(images: list[tuple[str, np.ndarray, bool]], plain: bool):
    """Feature rows and labels: each image on its training canvases (and as is)."""
    rows, labels = [], []
    for name, img, inverted in images:
        if plain:
            rows.append(list(q.inversion_features(img).values()))
            labels.append(inverted)
        for variant in TRAIN_VARIANTS:
            pixels, flipped, _ = quality_real.canvas_case(img, name, variant)
            rows.append(list(q.inversion_features(pixels).values()))
            labels.append(inverted != flipped)
    return rows, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fracatlas", type=Path, default=quality_real.FRACATLAS)
    parser.add_argument("--studies", type=int, default=150)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    tune = [it for it in quality_real.load_labels(args.fracatlas) if it.split == "tune"]
    real = [(it.image_id, read_grayscale(it.path), False) for it in tune]
    with tempfile.TemporaryDirectory(prefix="murakit-train-quality-") as tmp:
        synth = synthetic_images(Path(tmp), args.studies)
    rows, labels = inversion_rows(real, plain=False)
    more_rows, more_labels = inversion_rows(synth, plain=True)
    x = np.array(rows + more_rows, np.float64)
    y = np.array(labels + more_labels, np.float64)
    model = fit_logistic(x, y, q.INVERSION_FEATURES)
    z = (x - model["mean"]) / model["scale"]
    p = 1.0 / (1.0 + np.exp(-(z @ model["coef"] + model["bias"])))
    print(
        f"inversion: {len(y)} training cases ({int(y.sum())} inverted), "
        f"training accuracy {np.mean((p >= 0.5) == (y == 1)):.3f}"
    )
    weights = {"attribution": ATTRIBUTION, "inversion": model}
    args.out.write_text(json.dumps(weights, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
