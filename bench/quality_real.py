"""The quality detectors against hand labels on real radiographs (FracAtlas, CC BY 4.0).

Used by ``bench/quality_detectors.py --real`` and by ``bench/train_quality_inversion.py``.
The labels are ``bench/real_labels/fracatlas_labels.csv`` (see its README for how they
were made). Markers are scored per marker: a labelled marker is found when a predicted
box overlaps it with IoU >= 0.3, and every predicted box that matches no labelled marker
is a false positive. Inversion is scored on real images set on canvases real exports have
(white, grey or black padding, rotated fields, round fluoroscopy-like fields), a minority
of them inverted, made deterministically here from the labelled images.

FracAtlas: Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al. Scientific Data 10, 521
(2023), doi:10.1038/s41597-023-02432-4, CC BY 4.0.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from murakit.data.imageio import read_grayscale
from murakit.data.quality import box_iou, check_image, detect_inverted

LABELS = Path(__file__).resolve().parent / "real_labels" / "fracatlas_labels.csv"
FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "FracAtlas"
MARKER_IOU = 0.3
INVERTED_SHARE = 0.25
CANVASES = ("plain", "white", "grey", "black", "rotated", "round")

Box = tuple[int, int, int, int]


@dataclass
class Labelled:
    image_id: str
    path: Path
    split: str
    hardware: bool
    multiscan: bool
    markers: list[Box] | None  # None: not reviewed for markers
    composite: bool | None  # None: undecided


def parse_boxes(text: str) -> list[Box]:
    boxes = []
    for part in text.split(";"):
        numbers = [int(float(v)) for v in part.split()]
        if len(numbers) == 4:
            boxes.append(tuple(numbers))
    return boxes


def load_labels(root: Path = FRACATLAS, labels: Path = LABELS) -> list[Labelled]:
    out = []
    with open(labels, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            out.append(
                Labelled(
                    row["image_id"],
                    root / "images" / row["folder"] / row["image_id"],
                    row["split"],
                    row["hardware"] == "1",
                    row["multiscan"] == "1",
                    parse_boxes(row["marker_boxes"]) if row["markers_reviewed"] == "1" else None,
                    None if row["composite"] == "" else row["composite"] == "1",
                )
            )
    return out


def cpu_description() -> str:
    """The CPU model and the widest vector instruction sets it offers (speed figures
    depend on them; numpy and scipy pick their kernels by them)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = [n for n in ("avx512_bf16", "avx512f", "avx2", "sse4_2", "neon", "asimd") if n in flags]
    return f"{model}; ISA: {', '.join(isa) or 'unknown'}"


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def match_boxes(truth: list[Box], predicted: list[Box], threshold: float = MARKER_IOU):
    """Greedy one-to-one matching by IoU: (matched truth count, unmatched predictions)."""
    pairs = sorted(
        ((box_iou(t, p), i, j) for i, t in enumerate(truth) for j, p in enumerate(predicted)),
        reverse=True,
    )
    used_t, used_p = set(), set()
    for value, i, j in pairs:
        if value < threshold:
            break
        if i in used_t or j in used_p:
            continue
        used_t.add(i)
        used_p.add(j)
    return len(used_t), [p for j, p in enumerate(predicted) if j not in used_p]


# ------------------------------------------------------------------- inverted cases


def _rng(image_id: str, salt: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{salt}:{image_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def canvas_case(img: np.ndarray, image_id: str, variant: int = 0) -> tuple[np.ndarray, bool, str]:
    """One deterministic canvas case of a real image: (pixels, inverted?, canvas kind).

    A quarter are inverted (255 - img); every case, inverted or not, is then set on one of
    the canvases real exports have. The padding level is drawn independently of the
    polarity, since exports pad inverted images with black as often as with white.
    """
    rng = _rng(image_id, f"canvas{variant}")
    inverted = bool(rng.random() < INVERTED_SHARE)
    kind = CANVASES[int(rng.integers(len(CANVASES)))]
    work = 255 - img if inverted else img.copy()
    level = int(rng.choice([0, 12, 128, 200, 255]))
    h, w = work.shape
    if kind in ("white", "grey", "black"):
        level = {"white": int(rng.integers(225, 256)), "grey": int(rng.integers(90, 170))}.get(
            kind, int(rng.integers(0, 20))
        )
        top, bottom = (int(v) for v in rng.integers(0, h // 3 + 1, 2))
        left, right = (int(v) for v in rng.integers(0, w // 3 + 1, 2))
        work = np.pad(work, ((top, bottom), (left, right)), constant_values=level)
    elif kind == "rotated":
        angle = float(rng.uniform(5, 30)) * (1 if rng.random() < 0.5 else -1)
        work = ndimage.rotate(work, angle, order=1, reshape=True, cval=level)
        work = np.clip(work, 0, 255).astype(np.uint8)
    elif kind == "round":
        side = max(h, w)
        canvas = np.full((side, side), level, np.uint8)
        canvas[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = work
        yy, xx = np.mgrid[:side, :side]
        radius = side * float(rng.uniform(0.36, 0.5))
        outside = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 > radius**2
        canvas[outside] = level
        work = canvas
    return work.astype(np.uint8), inverted, kind


def inverted_cases(
    items: list[Labelled], variants: int = 2
) -> Iterator[tuple[str, np.ndarray, bool, str]]:
    for item in items:
        img = read_grayscale(item.path)
        for v in range(variants):
            pixels, inverted, kind = canvas_case(img, item.image_id, v)
            yield item.image_id, pixels, inverted, kind


# ------------------------------------------------------------------------ evaluation


def evaluate_real(items: list[Labelled], variants: int = 2) -> dict:
    """Every figure the real-image benchmark prints."""
    res: dict = {}
    tp_m = n_truth = n_pred = hw_fp = 0
    img_pairs = []
    comp_pairs = []
    seconds = cpu = 0.0
    for item in items:
        start, start_cpu = time.perf_counter(), time.process_time()
        img = read_grayscale(item.path)
        inversion, markers, panels, _ = check_image(img)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        if item.markers is not None:
            found, unmatched = match_boxes(item.markers, list(markers.boxes))
            tp_m += found
            n_truth += len(item.markers)
            n_pred += len(markers.boxes)
            if item.hardware:
                hw_fp += len(unmatched)
            img_pairs.append((markers.flag, bool(item.markers)))
        if item.composite is not None:
            comp_pairs.append((panels.flag, item.composite))
    res["images"] = len(items)
    res["check_seconds"] = seconds
    res["check_cpu_seconds"] = cpu
    res["marker"] = (tp_m, n_pred - tp_m, n_truth - tp_m, n_truth)
    res["marker_hardware_fp"] = (hw_fp, n_pred)
    res["marker_images"] = _pr(img_pairs)
    res["multi_panel"] = _pr(comp_pairs)

    cases = [
        (iid, detect_inverted(pixels).flag, inverted, kind)
        for iid, pixels, inverted, kind in inverted_cases(items, variants)
    ]
    res["inverted"] = _pr([(f, t) for _, f, t, _ in cases])
    kinds = sorted({k for *_, k in cases})
    res["inverted_by_kind"] = {k: _pr([(f, t) for _, f, t, kk in cases if kk == k]) for k in kinds}
    # the image-level flag on images without any marker
    no_marker = {it.image_id for it in items if it.markers is not None and not it.markers}
    res["inverted_no_marker"] = _pr([(f, t) for iid, f, t, _ in cases if iid in no_marker])
    return res


def _pr(pairs: list[tuple[bool, bool]]) -> tuple[int, int, int, int]:
    """(TP, FP, FN, positives) of (predicted, true) pairs."""
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    fn = sum(t and not p for p, t in pairs)
    return tp, fp, fn, len(pairs)


def _line(name: str, tp: int, fp: int, fn: int, prevalence: str, target: str) -> str:
    p_lo, p_hi = wilson(tp, tp + fp)
    r_lo, r_hi = wilson(tp, tp + fn)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return (
        f"{name:<22} {precision:6.3f} [{p_lo:.3f}, {p_hi:.3f}]  {recall:6.3f} "
        f"[{r_lo:.3f}, {r_hi:.3f}]  {tp:>4} {fp:>4} {fn:>4}  {prevalence:<22} {target}"
    )


def report_real(res: dict, split: str) -> None:
    n = res["images"]
    cpu = res["check_cpu_seconds"]
    print(
        f"real FracAtlas images, {split} split: {n} images; decode + check_image took "
        f"{1000 * cpu / max(n, 1):.1f} ms CPU per image ({n / max(cpu, 1e-9):.0f} images/s "
        f"per core; wall {1000 * res['check_seconds'] / max(n, 1):.1f} ms, which counts "
        "waiting for a busy machine)"
    )
    print(f"CPU: {cpu_description()}\n")
    head = (
        f"{'detector':<22} {'precision [95% CI]':<23} {'recall [95% CI]':<23} "
        f"{'TP':>4} {'FP':>4} {'FN':>4}  {'prevalence':<22} target"
    )
    print(head)
    tp, fp, fn, n_pos = res["inverted"]
    cases = tp + fp + (res["inverted"][3] - tp - fp)
    positives = tp + fn
    print(_line("inverted (canvases)", tp, fp, fn, f"{positives}/{cases} inverted", "P, R >= 0.95"))
    tp2, fp2, fn2, n2 = res["inverted_no_marker"]
    print(_line("  images w/o marker", tp2, fp2, fn2, f"{tp2 + fn2}/{n2} inverted", "P, R >= 0.95"))
    tp, fp, fn, n_truth = res["marker"]
    print(_line("marker (per marker)", tp, fp, fn, f"{n_truth} markers", "R >= 0.85 @ P >= 0.90"))
    tp3, fp3, fn3, n3 = res["marker_images"]
    print(_line("  image level", tp3, fp3, fn3, f"{tp3 + fn3}/{n3} with marker", "(context)"))
    tp, fp, fn, n = res["multi_panel"]
    print(_line("multi-panel", tp, fp, fn, f"{tp + fn}/{n} composites", "P >= 0.90, R >= 0.80"))
    hw, n_pred = res["marker_hardware_fp"]
    lo, hi = wilson(hw, n_pred)
    print(
        f"\nunmatched marker boxes in `hardware` images: {hw}/{n_pred} of all predicted boxes "
        f"({hw / max(n_pred, 1):.3f} [{lo:.3f}, {hi:.3f}]; target <= 0.02; an upper bound on "
        "boxes on plates, screws, wires and clips)"
    )
    print("\ninverted by canvas:")
    for kind, (tp, fp, fn, n) in res["inverted_by_kind"].items():
        print(f"  {kind:<8} n={n:<4} TP={tp:<4} FP={fp:<4} FN={fn:<4}")


# ---------------------------------------------------------------- drawn lead markers

DRAWN_TEXTS = (
    ("L", 6),
    ("R", 6),
    ("LT", 2),
    ("RT", 2),
    ("LEFT", 1),
    ("RIGHT", 1),
    ("PORTABLE", 1),
    ("AP", 1),
    ("LAT", 1),
    ("PA", 1),
)
"""What a drawn lead marker says, with its relative frequency (plain L / R letters most)."""

DRAWN_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
)
"""Bold sans fonts tried, in order; PIL's built-in font when none is installed."""

DRAWN_INVERTED_SHARE = 0.15


def _font(size: int, choice: int):
    from PIL import ImageFont

    fonts = [f for f in DRAWN_FONTS if Path(f).exists()]
    if fonts:
        return ImageFont.truetype(fonts[choice % len(fonts)], size)
    return ImageFont.load_default(size)


def _marker_alpha(
    rng: np.random.Generator, height: float, side: int, boxed_share: float = 0.2
) -> tuple[np.ndarray, str]:
    """The coverage (0..1) of one lead marker, letters `height` px tall, and its kind
    (letter, word or boxed): bold sans text, sometimes framed, slightly rotated, blurred,
    at most 15% of the image side `side` long."""
    from PIL import Image, ImageDraw

    texts, weights = zip(*DRAWN_TEXTS, strict=True)
    text = texts[int(rng.choice(len(texts), p=np.array(weights) / sum(weights)))]
    boxed = bool(rng.random() < boxed_share)
    font_choice = int(rng.integers(len(DRAWN_FONTS)))
    size = max(8, round(height * 1.35))  # a capital is about 0.73 of the em
    while True:
        font = _font(size, font_choice)
        x0, y0, x1, y1 = font.getbbox(text)
        if max(x1 - x0, y1 - y0) <= 0.15 * side or size <= 8:
            break
        size -= 1
    pad = max(2, round(0.25 * (y1 - y0))) if boxed else 2
    scale = 4  # drawn large, shrunk: anti-aliased strokes
    font = _font(size * scale, font_choice)
    x0, y0, x1, y1 = font.getbbox(text)
    w, h = x1 - x0 + 2 * pad * scale, y1 - y0 + 2 * pad * scale
    canvas = Image.new("L", (w + 8 * scale, h + 8 * scale), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((4 * scale + pad * scale - x0, 4 * scale + pad * scale - y0), text, 255, font=font)
    if boxed:
        stroke = max(scale, round(0.12 * (y1 - y0)))
        draw.rectangle(
            (4 * scale, 4 * scale, 4 * scale + w, 4 * scale + h), outline=255, width=stroke
        )
    angle = float(np.clip(rng.normal(0, 4), -12, 12))
    canvas = canvas.rotate(angle, resample=Image.BILINEAR, expand=True)
    canvas = canvas.resize(
        (max(1, canvas.width // scale), max(1, canvas.height // scale)), Image.BOX
    )
    alpha = ndimage.gaussian_filter(
        np.asarray(canvas, np.float64) / 255, float(rng.uniform(0.3, 0.9))
    )
    ys, xs = np.nonzero(alpha > 0.02)
    alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    kind = "boxed" if boxed else ("letter" if len(text) == 1 else "word")
    return np.clip(alpha, 0, 1), kind


def draw_markers(
    img: np.ndarray,
    image_id: str,
    salt: str,
    avoid: list[Box] | None = None,
    cut_share: float = 0.15,
    boxed_share: float = 0.2,
    background_share: float = 0.7,
) -> tuple[np.ndarray, list[Box], list[str], bool]:
    """Lead markers drawn onto a real upright radiograph, deterministically per image and
    `salt`: (pixels, marker boxes, kinds, inverted?). One or two markers (bold L / R,
    LT / RT, words; a share `boxed_share` framed), letters 2-5% of the image's longer
    side tall, mostly upright; a share `background_share` kept to the image's dark
    background, the rest anywhere; a share `cut_share` cut off at the image border (kind
    ``cut``); rendered as lead shows on film: near-white, slightly blurred, with the
    image's own noise, sometimes a dark halo. A share (DRAWN_INVERTED_SHARE) is returned
    inverted, their markers dark. Boxes are the visible part, in image pixels, clear of
    the boxes in `avoid` (the labelled markers)."""
    rng = _rng(image_id, salt)
    work = img.astype(np.float64)
    h, w = work.shape
    side = max(h, w)
    fine = work - ndimage.gaussian_filter(work, 1.0)
    noise = float(np.clip(np.std(fine), 1.0, 8.0))
    background = ndimage.uniform_filter(work, size=max(3, side // 20))
    dark = background <= np.percentile(background, 35)
    taken = list(avoid or [])
    boxes, kinds = [], []
    for _ in range(1 if rng.random() < 0.7 else 2):
        height = float(rng.uniform(0.02, 0.05)) * side
        alpha, kind = _marker_alpha(rng, height, side, boxed_share)
        ah, aw = alpha.shape
        if ah >= h - 4 or aw >= w - 4:
            continue
        cut = bool(rng.random() < cut_share)
        for _ in range(40):
            if cut:  # a quarter to a half of it off one border
                off = float(rng.uniform(0.25, 0.5))
                edge = int(rng.integers(4))
                x = int(rng.integers(0, w - aw))
                y = int(rng.integers(0, h - ah))
                if edge == 0:
                    x = -int(off * aw)
                elif edge == 1:
                    x = w - aw + int(off * aw)
                elif edge == 2:
                    y = -int(off * ah)
                else:
                    y = h - ah + int(off * ah)
            else:
                x = int(rng.integers(2, w - aw - 1))
                y = int(rng.integers(2, h - ah - 1))
            ya, yb, xa, xb = max(0, y), min(h, y + ah), max(0, x), min(w, x + aw)
            on_background = dark[ya:yb, xa:xb].mean() >= 0.8
            if rng.random() < background_share and not on_background:
                continue
            grown = (xa - 4, ya - 4, xb + 4, yb + 4)
            if any(box_iou(grown, t) > 0 for t in taken):
                continue
            break
        else:
            continue
        a = alpha[ya - y : yb - y, xa - x : xb - x]
        ys, xs = np.nonzero(a > 0.25)
        if len(ys) < 6:
            continue
        patch = work[ya:yb, xa:xb]
        lead = float(rng.uniform(215, 252))
        if rng.random() < 0.25:  # edge enhancement: a dark halo around the lead
            halo = np.clip(ndimage.gaussian_filter(a, 2.0) * 1.6 - a, 0, 1)
            patch = patch - halo * float(rng.uniform(15, 40))
        patch = patch * (1 - a) + lead * a + a * rng.normal(0, noise, a.shape)
        work[ya:yb, xa:xb] = patch
        box = (
            xa + int(xs.min()),
            ya + int(ys.min()),
            xa + int(xs.max()) + 1,
            ya + int(ys.max()) + 1,
        )
        boxes.append(box)
        kinds.append("cut" if cut else kind)
        taken.append(box)
    pixels = np.clip(np.round(work), 0, 255).astype(np.uint8)
    inverted = bool(rng.random() < DRAWN_INVERTED_SHARE)
    return (255 - pixels if inverted else pixels), boxes, kinds, inverted


DRAWN_EVAL_SALT = "drawn-eval"
"""The draws of the drawn-marker benchmark (training draws use other salts)."""


def evaluate_drawn(items: list[Labelled], salt: str = DRAWN_EVAL_SALT) -> dict:
    """Lead markers drawn onto the images (:func:`draw_markers`; a share inverted), scored
    by detect_markers with the benchmark's matching rule: recall of the drawn markers
    (overall and by kind) and precision of all predicted boxes against the drawn and the
    labelled markers together."""
    from murakit.data.quality import detect_markers

    by_kind: dict[str, list[int]] = {}
    found = n_drawn = tp_all = n_pred = 0
    for item in items:
        if item.markers is None:
            continue
        img = read_grayscale(item.path)
        pixels, drawn, kinds, inverted = draw_markers(img, item.image_id, salt, item.markers)
        boxes = list(detect_markers(pixels).boxes)
        hit, _ = match_boxes(drawn, boxes)
        found, n_drawn = found + hit, n_drawn + len(drawn)
        matched, _ = match_boxes(drawn + item.markers, boxes)
        tp_all, n_pred = tp_all + matched, n_pred + len(boxes)
        for box, kind in zip(drawn, kinds, strict=True):
            box_found = match_boxes([box], boxes)[0]
            for name in (kind, "inverted") if inverted else (kind,):
                counts = by_kind.setdefault(name, [0, 0])
                counts[0] += box_found
                counts[1] += 1
    return {
        "found": found,
        "drawn": n_drawn,
        "tp_all": tp_all,
        "predicted": n_pred,
        "by_kind": by_kind,
    }


def report_drawn(res: dict, split: str) -> None:
    tp, n_pred, found, n = res["tp_all"], res["predicted"], res["found"], res["drawn"]
    print(
        f"\ndrawn lead markers on real {split}-half images ({n} drawn; precision counts every "
        "predicted box against the drawn and the labelled markers, recall the drawn ones):"
    )
    p_lo, p_hi = wilson(tp, n_pred)
    r_lo, r_hi = wilson(found, n)
    print(
        f"  precision {tp / max(n_pred, 1):.3f} [{p_lo:.3f}, {p_hi:.3f}] ({tp}/{n_pred} boxes)  "
        f"recall {found / max(n, 1):.3f} [{r_lo:.3f}, {r_hi:.3f}] ({found}/{n})"
    )
    for kind, (hit, total) in sorted(res["by_kind"].items()):
        print(f"  {kind:<9} recall {hit / max(total, 1):.3f} ({hit}/{total})")
