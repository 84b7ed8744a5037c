"""How well the quality detectors find what the synthetic generator planted.

Generates a synthetic MURA set (its synth_truth.csv says which images are inverted, carry a
letter marker or hold two radiographs), runs murakit.data.quality over it and prints each
detector's precision and recall, the marker boxes' IoU hit rate, how close the panel cut
lands, and how often `marker` fires on images whose only bright objects are orthopaedic
hardware. Exits 1 if inversion misses its target (precision and recall >= 0.95).

    python bench/quality_detectors.py [--studies 400] [--quick] [--seed 0] [--keep DIR]

With ``--real`` it scores the detectors on hand-labelled real radiographs instead
(bench/real_labels, FracAtlas CC BY 4.0) and prints precision and recall with 95% Wilson
intervals and each set's prevalence; ``--split`` picks the test half (default), the tuning
half or all:

    python bench/quality_detectors.py --real [--split test] [--fracatlas ../shared/FracAtlas]

``--drawn-markers`` adds a figure on lead markers drawn onto those real images (bold L / R
letters, words, framed or cut-off markers, some on inverted images; see
``quality_real.draw_markers``): the closest stand-in for other hospitals' lead letters.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

from murakit.data.index import load_index
from murakit.data.quality import ImageCheck, Split, box_iou, run_checks
from murakit.synth.generator import generate

TARGETS = {"inverted": 0.95, "marker": 0.9, "multi_panel": 0.9}
IOU_HIT = 0.5


def read_truth(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def parse_boxes(text: str) -> list[tuple[int, ...]]:
    """'x0 y0 x1 y1' boxes, several separated by ';' (empty text: none)."""
    boxes = []
    for part in text.replace(",", " ").split(";"):
        numbers = [int(float(v)) for v in part.split()]
        if len(numbers) == 4:
            boxes.append(tuple(numbers))
    return boxes


def parse_split(text: str) -> Split | None:
    """The truth's panel split: 'x=N' / 'y=N', or a bare column number."""
    text = text.strip()
    if not text:
        return None
    if "=" in text:
        return Split.parse(text)
    return Split("x", int(float(text)))


def precision_recall(pairs: list[tuple[bool, bool]]) -> tuple[float, float, int, int, int]:
    """(precision, recall, true positives, false positives, false negatives)."""
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    fn = sum(t and not p for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, tp, fp, fn


def is_true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes")


def evaluate(checks: list[ImageCheck], truth: dict[str, dict[str, str]]) -> dict:
    """Every figure the benchmark prints, from the checks and the truth sidecar."""
    rows = [(c, truth[c.rel]) for c in checks if c.rel in truth]
    results: dict = {"images": len(rows)}
    for name in TARGETS:
        results[name] = precision_recall([(c.flagged(name), is_true(t[name])) for c, t in rows])

    hits = total = 0
    for c, t in rows:
        for box in parse_boxes(t.get("marker_box", "")):
            total += 1
            hits += any(box_iou(box, b) >= IOU_HIT for b in c.markers.boxes)
    results["marker_iou_hits"] = (hits, total)

    close = found = 0
    for c, t in rows:
        want = parse_split(t.get("panel_split", ""))
        if want is None or c.panels.split is None:
            continue
        found += 1
        side = c.width if want.axis == "x" else c.height
        close += (
            c.panels.split.axis == want.axis and abs(c.panels.split.at - want.at) <= 0.05 * side
        )
    results["split_close"] = (close, found)

    hardware = [
        (c, t)
        for c, t in rows
        if t.get("finding") == "hardware" and t.get("finding_box", "").strip()
    ]
    for name in TARGETS:
        clean = [c for c, t in hardware if not is_true(t[name])]
        results[f"hardware_fp_{name}"] = (sum(c.flagged(name) for c in clean), len(clean))
    return results


def cpu_seconds() -> float:
    """CPU time of this process and its finished workers (wall time lies on a busy box)."""
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def report(results: dict, seconds: float, cpu: float) -> bool:
    """Print the table; True when every target is met."""
    n = results["images"]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality_real import cpu_description

    print(
        f"{n} images checked in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} images/s; "
        f"{1000 * cpu / max(n, 1):.1f} ms CPU per image, decoding included: "
        f"{n / max(cpu, 1e-9):.0f} images/s per core)"
    )
    print(f"CPU: {cpu_description()}\n")
    print(f"{'detector':<12} {'precision':>9} {'recall':>7} {'TP':>5} {'FP':>4} {'FN':>4} target")
    ok = True
    for name, target in TARGETS.items():
        precision, recall, tp, fp, fn = results[name]
        met = precision >= target and recall >= target
        ok &= met or name != "inverted"
        print(
            f"{name:<12} {precision:>9.3f} {recall:>7.3f} {tp:>5} {fp:>4} {fn:>4} "
            f">= {target:.2f} {'ok' if met else 'MISSED'}"
        )
    hits, total = results["marker_iou_hits"]
    print(
        f"\nmarker boxes found with IoU >= {IOU_HIT}: {hits}/{total} ({hits / max(total, 1):.3f})"
    )
    close, found = results["split_close"]
    print(f"panel splits within 5% of the true cut: {close}/{found} ({close / max(found, 1):.3f})")
    for name in TARGETS:
        fp, n = results[f"hardware_fp_{name}"]
        print(f"false '{name}' on images showing hardware: {fp}/{n} ({fp / max(n, 1):.3f})")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="120 studies (for make bench)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--keep",
        type=Path,
        help="generate into DIR and keep it (reused if it already holds a synthetic set)",
    )
    parser.add_argument("--real", action="store_true", help="score on real labelled images")
    parser.add_argument("--split", choices=("test", "tune", "all"), default="test")
    parser.add_argument("--fracatlas", type=Path, help="FracAtlas root (../shared/FracAtlas)")
    parser.add_argument(
        "--variants", type=int, default=2, help="canvas cases per image for inversion"
    )
    parser.add_argument(
        "--drawn-markers",
        action="store_true",
        help="with --real: also score lead markers drawn onto the images",
    )
    args = parser.parse_args(argv)
    if args.real:
        return main_real(args)
    if args.quick:
        args.studies = min(args.studies, 120)

    with tempfile.TemporaryDirectory(prefix="murakit-quality-") as tmp:
        out = args.keep or Path(tmp)
        if not (out / "synth_truth.csv").exists():
            generate(
                out,
                studies=args.studies,
                seed=args.seed,
                difficulty=args.difficulty,
                workers=args.workers,
            )
        images = load_index(out / "MURA-v1.1").images
        start, cpu = time.perf_counter(), cpu_seconds()
        checks = run_checks(images, args.workers)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        results = evaluate(checks, read_truth(out / "synth_truth.csv"))
    return 0 if report(results, seconds, cpu) else 1


def main_real(args: argparse.Namespace) -> int:
    """Score on the hand-labelled real images (bench/real_labels)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import quality_real

    root = args.fracatlas or quality_real.FRACATLAS
    if not (root / "images").is_dir():
        print(f"no FracAtlas images under {root} (pass --fracatlas)", file=sys.stderr)
        return 2
    items = [
        it for it in quality_real.load_labels(root) if args.split == "all" or it.split == args.split
    ]
    res = quality_real.evaluate_real(items, args.variants)
    quality_real.report_real(res, args.split)
    if args.drawn_markers:
        quality_real.report_drawn(quality_real.evaluate_drawn(items), args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
