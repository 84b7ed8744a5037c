"""Synthetic MURA: radiograph-like PNGs in MURA v1.1's exact layout, with ground truth.

Why: the real dataset needs a licence and days to train on; tests, demos and quality checks need
data that has MURA's files, body parts, label balance and nuisances (letter markers, inverted
polarity, two radiographs in one image) and whose abnormality is known pixel by pixel.

Every image is drawn from an RNG seeded by (seed, study, view), so a seed gives byte-identical
files whatever the number of worker processes. A study's finding and its position are drawn for
normal studies too and simply not drawn, so normal and abnormal images differ only by the
finding: size, exposure, markers and framing carry no label information.
"""

from __future__ import annotations

import csv
import functools
import io
import multiprocessing
import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from murakit.fsutil import atomic_write_text
from murakit.synth import anatomy as anat

PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")
CSV_ORDER = (
    "XR_SHOULDER",
    "XR_HUMERUS",
    "XR_FINGER",
    "XR_ELBOW",
    "XR_WRIST",
    "XR_FOREARM",
    "XR_HAND",
)  # the order of MURA's own CSVs
# MURA v1.1 image counts (train + valid) per part, (normal, abnormal), from DESIGN.md's table.
MURA_IMAGES = {
    "XR_SHOULDER": (4211 + 285, 4168 + 278),
    "XR_HUMERUS": (673 + 148, 599 + 140),
    "XR_FINGER": (3138 + 214, 1968 + 247),
    "XR_ELBOW": (2925 + 235, 2006 + 230),
    "XR_WRIST": (5765 + 364, 3987 + 295),
    "XR_FOREARM": (1164 + 150, 661 + 151),
    "XR_HAND": (4059 + 271, 1484 + 189),
}
FINDINGS = anat.FINDINGS
TRUTH_COLUMNS = (
    "image",
    "finding",
    "finding_box",
    "inverted",
    "marker",
    "multi_panel",
    "marker_box",
    "panel_split",
    "marker_text",
    "rgb",
    "part",
    "split",
    "label",
)
VIEW_ODDS = (0.12, 0.30, 0.38, 0.20)  # 1-4 views per study, mean ~2.7 like MURA
P_SHOW = 0.9  # each view of an abnormal study shows its finding with this probability
P_MARKER, P_INVERTED, P_MULTI, P_RGB = 0.35, 0.04, 0.06, 0.15
VALID_FRACTION = 0.12  # of studies, split by patient
P_JOIN = 0.22  # a study belongs to an already-seen patient
_TAG = {"plan": 19, "study": 11, "view": 13}  # anat.FINDING_TAG = 17 is taken


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote; `root` holds MURA-v1.1/ and synth_truth.csv."""

    root: Path
    truth: Path
    images: int
    studies: int
    patients: int
    train_images: int
    valid_images: int
    seconds: float


@dataclass(frozen=True)
class StudyPlan:
    """One study to draw: its place in MURA's tree and how many views it has."""

    index: int
    split: str
    part: str
    patient: int
    study: int
    abnormal: bool
    views: int

    @property
    def directory(self) -> str:
        kind = "positive" if self.abnormal else "negative"
        patient = f"patient{self.patient:05d}"
        return f"MURA-v1.1/{self.split}/{self.part}/{patient}/study{self.study}_{kind}/"

    def image(self, view: int) -> str:
        return f"{self.directory}image{view + 1}.png"


def _rng(seed: int, a: int, b: int, tag: str) -> np.random.Generator:
    """Independent streams per (seed, study, view, purpose); same-length keys never collide."""
    return np.random.default_rng([seed, a, b, _TAG[tag]])


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


# ---------------------------------------------------------------- planning (who, what, where)


def _study_specs(n: int, rng: np.random.Generator) -> list[tuple[str | None, str, bool]]:
    """(forced split, part, abnormal) per study: first every part and label once for train and
    once for valid, so that even a small set has them in both; the rest follow MURA's mix."""
    forced = [(s, p, a) for s in ("train", "valid") for p in CSV_ORDER for a in (False, True)]
    forced = forced[:n]
    counts = np.array([sum(MURA_IMAGES[p]) for p in PARTS], dtype=float)
    rates = np.array([MURA_IMAGES[p][1] / sum(MURA_IMAGES[p]) for p in PARTS])
    parts = rng.choice(len(PARTS), size=n - len(forced), p=counts / counts.sum())
    labels = rng.random(len(parts)) < rates[parts]
    specs = forced + [(None, PARTS[i], bool(a)) for i, a in zip(parts, labels, strict=True)]
    return [specs[i] for i in rng.permutation(len(specs))]


def _group_patients(specs, rng: np.random.Generator) -> list[dict]:
    """Gather studies into patients: some return with a second study of the same part, some
    with another part, as in MURA (so a study's key must include the part)."""
    patients: list[dict] = []
    for split, part, abnormal in specs:
        home = None
        if patients and rng.random() < P_JOIN:
            same = rng.random() < 0.5
            for i in rng.integers(0, len(patients), size=6):
                p = patients[i]
                fits = split is None or p["split"] in (None, split)
                if fits and len(p["studies"]) < 4 and (part in p["parts"]) == same:
                    home = p
                    break
        if home is None:
            home = {"split": None, "studies": [], "parts": set()}
            patients.append(home)
        home["split"] = home["split"] or split
        home["studies"].append((part, abnormal))
        home["parts"].add(part)
    return patients


def _assign_splits(patients: list[dict], n: int, rng: np.random.Generator) -> None:
    """Send untagged patients to valid with the probability that brings valid to ~12%."""
    fixed = sum(len(p["studies"]) for p in patients if p["split"] == "valid")
    free = sum(len(p["studies"]) for p in patients if p["split"] is None)
    q = min(1.0, max(0.0, (round(VALID_FRACTION * n) - fixed) / max(free, 1)))
    for p in patients:
        if p["split"] is None:
            p["split"] = "valid" if rng.random() < q else "train"


def plan_studies(studies: int, seed: int) -> list[StudyPlan]:
    """The whole set's structure, in MURA's CSV order; train patients are numbered first."""
    rng = _rng(seed, 0, 0, "plan")
    patients = _group_patients(_study_specs(studies, rng), rng)
    _assign_splits(patients, studies, rng)
    ordered = [p for p in patients if p["split"] == "train"]
    ordered += [p for p in patients if p["split"] == "valid"]
    rows = []
    for number, p in enumerate(ordered, start=1):
        seen: dict[str, int] = {}
        for part, abnormal in p["studies"]:
            seen[part] = seen.get(part, 0) + 1
            views = int(rng.choice(len(VIEW_ODDS), p=VIEW_ODDS)) + 1
            rows.append((p["split"], part, number, seen[part], abnormal, views))
    rows.sort(key=lambda r: (r[0] == "valid", CSV_ORDER.index(r[1]), r[2], r[3]))
    return [StudyPlan(i, *r) for i, r in enumerate(rows)]


# ---------------------------------------------------------------- rendering (pixels)


@dataclass(frozen=True)
class Field:
    """The exposed (collimated) rectangle of one radiograph, in panel pixels."""

    poly: np.ndarray
    centre: np.ndarray
    size: np.ndarray
    angle: float


def _apply(A: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ A[:, :2].T + A[:, 2]


def _bone_stamps(bones: list[anat.Bone]) -> list[anat.Stamp]:
    """Each bone (or group of bones, e.g. humeral head + shaft) as bright cortex, dimmer
    cancellous interior and a darker medullary canal."""
    groups: dict[str, list[anat.Bone]] = {}
    for k, b in enumerate(bones):
        groups.setdefault(b.group or f"#{k}", []).append(b)
    stamps: list[anat.Stamp] = []
    for members in groups.values():
        polys = [(anat.bone_outline(b), b.density) for b in members]
        for b in members:
            if b.outline is None:
                polys.append((anat.bone_outline(b, inset=0.2 * b.width), 0.72 * b.density))
        for b in members:
            canal = anat.canal_outline(b)
            if canal is not None:
                polys.append((canal, 0.52 * b.density))
        stamps.append((polys, "bone", "add"))
    return stamps


def _rasterise(stamps: list[anat.Stamp], A: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Draw stamps through affine A into a float layer. "add" stamps alternate between two
    canvases that are summed, so neighbouring bones that overlap (carpals, radius and ulna)
    come out brighter, as attenuation adds up; "mul" stamps then darken what lies under them."""
    h, w = shape
    canvases = [Image.new("L", (w, h)), Image.new("L", (w, h))]
    draws = [ImageDraw.Draw(c) for c in canvases]
    adds = [s for s in stamps if s[2] == "add"]
    for k, (polys, _, _) in enumerate(adds):
        for p, v in polys:
            draws[k % 2].polygon(_apply(A, p).ravel().tolist(), fill=int(255 * min(v, 1.0)))
    out = np.asarray(canvases[0], np.float32) * (1.0 / 255)
    if len(adds) > 1:
        out += np.asarray(canvases[1], np.float32) * (1.0 / 255)
    for polys, _, _ in (s for s in stamps if s[2] == "mul"):
        im = Image.new("L", (w, h))
        draw = ImageDraw.Draw(im)
        for p, v in polys:
            draw.polygon(_apply(A, p).ravel().tolist(), fill=int(255 * min(v, 1.0)))
        out *= 1.0 - np.asarray(im, np.float32) * (1.0 / 255)
    return out


def _field(w: int, h: int, rng: np.random.Generator) -> Field:
    """A lighter rectangle, often slightly rotated; one film in five is exposed edge to edge."""
    if rng.random() < 0.2:
        size, angle = np.array([w, h]) * 1.15, 0.0
    else:
        size = np.array([w, h]) * rng.uniform(0.74, 0.96, 2)
        angle = 0.0 if rng.random() < 0.35 else float(np.clip(rng.normal(0, 4), -10, 10))
    centre = np.array([w, h]) / 2 + rng.uniform(-0.4, 0.4, 2) * (np.array([w, h]) - size) / 2
    r = np.radians(angle)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * size / 2
    return Field(corners @ rot.T + centre, centre, size, angle)


def _view_affine(w: int, h: int, f: Field, site: np.ndarray, rng) -> np.ndarray:
    """Anatomy -> pixels: limb along the long side, rotated, scaled, mirrored, shifted; then
    nudged so the finding site (drawn or not) lies well inside the field and the image."""
    scale = max(w, h) * rng.uniform(0.8, 1.15)
    base = (0.0 if h >= w else 90.0) + (180.0 if rng.random() < 0.25 else 0.0)
    deg = base + f.angle + float(np.clip(rng.normal(0, 12), -30, 30))
    r = np.radians(deg)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    mirror = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0])
    lin = scale * rot @ mirror
    t = f.centre + rng.uniform(-0.08, 0.08, 2) * np.array([w, h])
    p = lin @ site + t
    fr = np.radians(f.angle)
    frot = np.array([[np.cos(fr), -np.sin(fr)], [np.sin(fr), np.cos(fr)]])
    local = np.clip(frot.T @ (p - f.centre), -0.36 * f.size, 0.36 * f.size)
    q = np.clip(frot @ local + f.centre, 0.15 * np.array([w, h]), 0.85 * np.array([w, h]))
    return np.column_stack([lin, t + q - p])


def _render_panel(
    w: int,
    h: int,
    part: str,
    shape: np.ndarray,
    finding: anat.Finding,
    show: bool,
    d: float,
    rng: np.random.Generator,
):
    """One radiograph: (grey values, finding outline in pixels or None, field)."""
    proj = float(rng.random())
    a = anat.build(part, shape, proj)
    f = _field(w, h, rng)
    A = _view_affine(w, h, f, finding.site(a), rng)
    bones, extra, box = anat.apply_finding(finding, a, d) if show else (a.bones, [], None)
    stamps = _bone_stamps(bones) + extra
    bg, soft, dense = (float(x) for x in rng.uniform((15, 30, 90), (55, 60, 120)))
    surround, heel, hw_level = (float(x) for x in rng.uniform((0, -18, 245), (8, 18, 255)))
    heel_dir = anat.direction(rng.uniform(0, 360)) * heel / max(w, h)

    small = (h // 4 + 1, w // 4 + 1)  # soft tissue is blurry anyway: draw it at 1/4 size
    tissue = _rasterise([([(p, 1.0) for p in a.tissue], "tissue", "add")], A * 0.25, small)
    tissue = Image.fromarray((tissue * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    tissue = tissue.resize((w, h), Image.BILINEAR)

    v = np.minimum(_rasterise([s for s in stamps if s[1] == "bone"], A, (h, w)), 1.6)
    v *= dense
    v += np.asarray(tissue, np.float32) * (soft / 255)
    v += (bg - surround) + (np.arange(w, dtype=np.float32) - w / 2) * float(heel_dir[0])
    v += (np.arange(h, dtype=np.float32)[:, None] - h / 2) * float(heel_dir[1])
    cast = [s for s in stamps if s[1] == "cast"]
    if cast:
        v += _rasterise(cast, A, (h, w)) * (dense * _lerp(1.0, 0.6, d))
    mask = Image.new("L", (w, h))
    ImageDraw.Draw(mask).polygon(f.poly.ravel().tolist(), fill=1)
    field = np.asarray(mask, np.float32)
    np.minimum(v, (v + 300.0) * 0.4, out=v)  # soft knee above 200: overlaps stay below metal
    v *= field
    v += surround
    metal = [s for s in stamps if s[1] == "hw"]
    if metal:
        hw = np.minimum(_rasterise(metal, A, (h, w)), 1.0) * field
        np.maximum(v, hw * hw_level, out=v)
    box_px = None if box is None else _apply(A, box)
    return v, box_px, f


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _draw_marker(im: Image.Image, f: Field, x_off: int, rng) -> tuple[str, tuple[int, ...]]:
    """A lead letter ("L", "R", sometimes "AP") in bright white just inside a field corner."""
    w, h = im.size
    text = str(rng.choice(["L", "R", "L", "R", "AP", "LT", "RT"]))
    size = max(16, int(h * rng.uniform(0.05, 0.085)))
    corner = f.poly[int(rng.integers(4))] + (x_off, 0)
    centre = f.centre + (x_off, 0)
    towards = (centre - corner) / max(np.hypot(*(centre - corner)), 1.0)
    p = corner + towards * size * rng.uniform(1.4, 2.4)
    p = np.clip(p, size * 1.2, np.array([w, h]) - size * 1.2)
    draw = ImageDraw.Draw(im)
    xy = (float(p[0]), float(p[1]))
    draw.text(xy, text, fill=int(rng.integers(235, 256)), font=_font(size), anchor="mm")
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=_font(size), anchor="mm")
    box = (
        max(int(x0), 0),
        max(int(y0), 0),
        min(int(np.ceil(x1)), w - 1),
        min(int(np.ceil(y1)), h - 1),
    )
    return text, box


def _image_size(rng, multi: bool) -> tuple[int, int]:
    """MURA-like sizes: longest side mostly 512, else 300-512; aspect 0.6-1 either way."""
    longest = 512 if rng.random() < 0.6 else int(rng.integers(300, 512))
    short = int(round(longest * rng.uniform(0.6, 1.0)))
    if multi:
        return longest, int(round(longest * rng.uniform(0.6, 0.8)))
    return (short, longest) if rng.random() < 0.7 else (longest, short)


@functools.lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    """Detector mottle, made once per process from a fixed seed: fine grain plus a coarser
    component; images take seeded crops of it (far cheaper than fresh noise per image)."""
    rng = np.random.default_rng(20171204)
    fine = rng.standard_normal((1024, 1024), dtype=np.float32)
    coarse = Image.fromarray(rng.standard_normal((256, 256), dtype=np.float32))
    coarse = np.asarray(coarse.resize((1024, 1024), Image.BILINEAR))
    return (0.6 * fine + 0.8 * coarse).astype(np.float32)


def _blur(canvas: np.ndarray, rng) -> Image.Image:
    """Focal-spot and detector unsharpness (a box blur: 3x cheaper than a Gaussian)."""
    im = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return im.filter(ImageFilter.BoxBlur(float(rng.uniform(0.5, 1.2))))


def _grain(im: Image.Image, rng, d: float) -> np.ndarray:
    """Detector mottle scaled by difficulty, then a random gamma curve (exposure/processing)."""
    w, h = im.size
    y0, x0 = rng.integers(0, 1024 - h + 1), rng.integers(0, 1024 - w + 1)
    sigma = _lerp(1.5, 7.0, d) * float(rng.uniform(0.7, 1.3))
    out = _noise_tile()[y0 : y0 + h, x0 : x0 + w] * sigma
    out += np.asarray(im, np.float32)
    gamma = float(rng.uniform(0.8, 1.25))
    lut = (255.0 * (np.arange(256) / 255.0) ** gamma).round().astype(np.uint8)
    return lut[np.clip(out, 0, 255).astype(np.uint8)]


def render_view(
    plan: StudyPlan, view: int, shape, finding: anat.Finding, show: bool, seed: int, d: float
) -> tuple[np.ndarray, dict]:
    """One image of a study (uint8, grey or RGB with equal channels) and its truth row."""
    rng = _rng(seed, plan.index, view + 1, "view")
    multi = rng.random() < P_MULTI
    w, h = _image_size(rng, multi)
    panels, split = [(0, w)], ""
    if multi:
        gap = int(rng.integers(4, 14))
        pw = (w - gap) // 2
        panels, split = [(0, pw), (pw + gap, w - pw - gap)], str(pw + gap // 2)
    which = int(rng.integers(len(panels)))
    canvas = np.zeros((h, w), np.float32)
    box, fields = None, []
    for k, (x0, pw) in enumerate(panels):
        vals, b, f = _render_panel(pw, h, plan.part, shape, finding, show and k == which, d, rng)
        canvas[:, x0 : x0 + pw] = vals
        fields.append((f, x0))
        if b is not None:
            box = b + (x0, 0)
    im = _blur(canvas, rng)
    marker, marker_text, marker_box = rng.random() < P_MARKER, "", ""
    if marker:  # drawn after the blur: lead letters are sharp and white on real films
        f, x0 = fields[int(rng.integers(len(fields)))]
        marker_text, mb = _draw_marker(im, f, x0, rng)
        marker_box = " ".join(map(str, mb))
    pixels = _grain(im, rng, d)
    inverted = rng.random() < P_INVERTED
    if inverted:
        pixels = 255 - pixels
    rgb = rng.random() < P_RGB
    if rgb:
        pixels = np.dstack((pixels, pixels, pixels))
    finding_box = ""
    if box is not None:
        x0, y0 = np.maximum(np.floor(box.min(axis=0)), 0).astype(int)
        x1, y1 = np.minimum(np.ceil(box.max(axis=0)), (w - 1, h - 1)).astype(int)
        finding_box = f"{x0} {y0} {x1} {y1}"
    row = {
        "image": plan.image(view),
        "finding": finding.kind if box is not None else "",
        "finding_box": finding_box,
        "inverted": int(inverted),
        "marker": int(marker),
        "multi_panel": int(multi),
        "marker_box": marker_box,
        "panel_split": split,
        "marker_text": marker_text,
        "rgb": int(rgb),
        "part": plan.part,
        "split": plan.split,
        "label": int(plan.abnormal),
    }
    return pixels, row


def render_study(
    plan: StudyPlan, seed: int, d: float, findings: Sequence[str] = FINDINGS
) -> list[tuple[np.ndarray, dict]]:
    """All views of a study: one patient's anatomy and one finding (of the kinds in
    `findings`), shown in some views."""
    rng = _rng(seed, plan.index, 0, "study")
    shape = rng.random(16)
    ref = anat.build(plan.part, shape, 0.0)
    finding = anat.choose_finding(plan.part, ref, rng, (seed, plan.index), findings)
    show = rng.random(plan.views) < P_SHOW
    if not show.any():
        show[int(rng.integers(plan.views))] = True
    show &= plan.abnormal
    return [render_view(plan, v, shape, finding, bool(show[v]), seed, d) for v in range(plan.views)]


# ---------------------------------------------------------------- writing


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit grey (H, W) or RGB (H, W, 3) PNG. Why not Pillow: its adaptive per-row filter
    search made saving 3x slower than all the drawing; one "up" filter with run-length
    deflate costs a third and the files are as small (noise dominates them anyway)."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    filtered = np.empty((h, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # PNG filter type "up": each byte minus the one above it
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = deflate.compress(filtered.tobytes()) + deflate.flush()
    colour = 2 if pixels.ndim == 3 else 0
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _write_study(job: tuple[StudyPlan, int, float, str, tuple[str, ...]]) -> list[dict]:
    """Worker: render one study and save its PNGs; returns the truth rows."""
    plan, seed, d, out, findings = job
    (Path(out) / plan.directory).mkdir(parents=True, exist_ok=True)
    rows = []
    for pixels, row in render_study(plan, seed, d, findings):
        (Path(out) / row["image"]).write_bytes(png_bytes(pixels))
        rows.append(row)
    return rows


def _prepare(out: Path) -> None:
    """Clear a previous synthetic set in `out`; refuse to touch a tree synth did not write."""
    root, truth = out / "MURA-v1.1", out / "synth_truth.csv"
    if root.exists() and any(root.iterdir()):
        if not truth.exists():
            raise FileExistsError(f"{root} holds data that was not written by murakit synth")
        for sub in ("train", "valid"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(truth, ",".join(TRUTH_COLUMNS) + "\n")  # claims the folder as synthetic


def _write_csvs(out: Path, plans: list[StudyPlan], rows: list[dict]) -> None:
    """MURA's four CSVs exactly (no header, LF) and the truth table (with a header)."""
    for split in ("train", "valid"):
        mine = [p for p in plans if p.split == split]
        paths = "".join(p.image(v) + "\n" for p in mine for v in range(p.views))
        labels = "".join(f"{p.directory},{int(p.abnormal)}\n" for p in mine)
        atomic_write_text(out / "MURA-v1.1" / f"{split}_image_paths.csv", paths)
        atomic_write_text(out / "MURA-v1.1" / f"{split}_labeled_studies.csv", labels)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "synth_truth.csv", buf.getvalue())


def check_findings(findings: Sequence[str]) -> tuple[str, ...]:
    """`findings` as a tuple of known kinds; degenerative alone is refused, because the forearm
    and humerus have no joint to show it on."""
    kinds = tuple(dict.fromkeys(findings))
    unknown = [k for k in kinds if k not in FINDINGS]
    if unknown or not kinds:
        raise ValueError(
            f"unknown finding kind(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(FINDINGS)}"
        )
    if kinds == ("degenerative",):
        raise ValueError("degenerative needs a second kind: forearm and humerus have no joint")
    return kinds


def parse_findings(text: str) -> tuple[str, ...]:
    """A `--findings` value: "all", or comma-separated kinds checked by `check_findings`."""
    return FINDINGS if text == "all" else check_findings(text.split(","))


def generate(
    out: Path,
    studies: int = 400,
    seed: int = 0,
    difficulty: float = 0.5,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    findings: Sequence[str] = FINDINGS,
) -> SynthSummary:
    """Write a synthetic MURA-v1.1 tree, its four CSVs and synth_truth.csv under `out`.

    `difficulty` in [0, 1] shrinks and fades findings and adds noise; `workers`: worker
    processes, 0 = none (everything in this process), None = one per CPU core;
    `progress(done_images, total_images)` is called as studies finish.
    `findings` limits abnormal studies to those kinds (e.g. to study one kind's CAMs); the
    default, all five, gives the same bytes as before the option existed.
    """
    if studies < 1:
        raise ValueError("studies must be at least 1")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError("difficulty must lie in [0, 1]")
    if workers is not None and workers < 0:
        raise ValueError("workers must be >= 0")
    findings = check_findings(findings)
    start = time.perf_counter()
    out = Path(out)
    _prepare(out)
    plans = plan_studies(studies, seed)
    total = sum(p.views for p in plans)
    jobs = [(p, seed, float(difficulty), str(out), findings) for p in plans]
    if workers is None:
        workers = os.cpu_count() or 1
    workers = min(workers, len(jobs))
    rows: list[dict] = []

    def collect(results) -> None:
        for study_rows in results:
            rows.extend(study_rows)
            if progress is not None:
                progress(len(rows), total)

    if workers == 0:
        collect(map(_write_study, jobs))
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            collect(pool.imap(_write_study, jobs, chunksize=2))
    _write_csvs(out, plans, rows)
    patients = {(p.split, p.patient) for p in plans}
    train = sum(p.views for p in plans if p.split == "train")
    return SynthSummary(
        out,
        out / "synth_truth.csv",
        total,
        len(plans),
        len(patients),
        train,
        total - train,
        time.perf_counter() - start,
    )
