"""Geometry of the synthetic radiographs: MURA's seven body parts as bones, and the findings
(fracture, hardware, lytic lesion, cast, degenerative joint) drawn onto them.

Coordinates are "anatomy units": a part spans about 1.0 along y (y points down) and is centred
on the origin. The renderer maps them to pixels with one affine per view, so every shape is
built as a polygon here (PIL cannot draw rotated ellipses). A builder must return the same
bones in the same order for every view of a study, because findings refer to bones by index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

Poly = np.ndarray  # (N, 2) float array of anatomy-unit points

# Constants of the polygon builders, computed once (they run ~50 times per image).
_TS = np.linspace(0.0, 1.0, 14)
_E0 = np.clip(1.0 - _TS / 0.22, 0.0, 1.0) ** 2  # flare weight near p0
_E1 = _E0[::-1].copy()  # ... and near p1
_CAP = np.linspace(0.0, np.pi, 9)[1:-1]
_CAP_COS, _CAP_SIN = np.cos(_CAP)[:, None], np.sin(_CAP)[:, None]
_CANAL0 = np.clip((_TS - 0.12) / 0.18, 0.0, 1.0)  # canal closing towards an articular p0
_CANAL1 = _CANAL0[::-1].copy()


@dataclass
class Bone:
    """A capsule along p0 -> p1 whose ends may flare (epiphyses); `outline` makes a flat plate."""

    p0: np.ndarray
    p1: np.ndarray
    width: float
    flare0: float = 1.0
    flare1: float = 1.0
    density: float = 1.0
    canal: bool = True  # long bones show a darker medullary canal
    open0: bool = False  # a fracture fragment's broken end: square, canal runs out to it
    open1: bool = False
    site: bool = False  # findings may be placed on this bone
    t_range: tuple[float, float] = (0.2, 0.8)  # where along the axis a finding may sit
    cap: float = 0.6  # depth of the rounded ends relative to their half-width (1 = round)
    outline: Poly | None = None
    group: str = ""  # bones of one group merge into one silhouette (humeral head + shaft)

    @property
    def length(self) -> float:
        return math.hypot(*(self.p1 - self.p0))

    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit axis and unit normal; a zero-length bone (a round bone) points down."""
        d = self.p1 - self.p0
        n = math.hypot(d[0], d[1])
        u = d / n if n > 1e-9 else np.array([0.0, 1.0])
        return u, np.array([-u[1], u[0]])

    def at(self, t: float) -> np.ndarray:
        return self.p0 + t * (self.p1 - self.p0)

    def half_width(self, t: np.ndarray | float) -> np.ndarray:
        """Width profile: shaft width, widening smoothly over the last 22% towards each end."""
        t = np.asarray(t, dtype=float)
        e0 = np.clip(1.0 - t / 0.22, 0.0, 1.0) ** 2
        e1 = np.clip(1.0 - (1.0 - t) / 0.22, 0.0, 1.0) ** 2
        return 0.5 * self.width * (1.0 + (self.flare0 - 1.0) * e0 + (self.flare1 - 1.0) * e1)


@dataclass
class Anatomy:
    """What a builder returns: bones, soft-tissue polygons and joints (for degenerative change)."""

    bones: list[Bone]
    tissue: list[Poly]
    joints: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)


def _v(x: float, y: float) -> np.ndarray:
    return np.array([x, y], dtype=float)


def direction(deg: float) -> np.ndarray:
    """Unit vector `deg` degrees clockwise from straight up (fingers point up at 0)."""
    r = np.radians(deg)
    return np.array([np.sin(r), -np.cos(r)])


def rotate(p: np.ndarray, centre: np.ndarray, deg: float) -> np.ndarray:
    r = np.radians(deg)
    c, s = np.cos(r), np.sin(r)
    d = np.asarray(p, dtype=float) - centre
    return centre + np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])


def ellipse(centre: np.ndarray, rx: float, ry: float, deg: float = 0.0, n: int = 28) -> Poly:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(a), ry * np.sin(a)], axis=1)
    r = np.radians(deg)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    return pts @ rot.T + centre


def capsule(p0: np.ndarray, p1: np.ndarray, width: float) -> Poly:
    """A soft-tissue sausage (plain capsule) from p0 to p1."""
    return bone_outline(Bone(p0, p1, width, canal=False, cap=1.0))


def _cap(centre: np.ndarray, u: np.ndarray, n: np.ndarray, r: float, depth: float) -> Poly:
    """Half-ellipse end cap; flattened (depth < 1) so long bones end like epiphyses."""
    return centre + (_CAP_COS * r) * n + (_CAP_SIN * (r * depth)) * u


def bone_outline(b: Bone, inset: float = 0.0) -> Poly:
    """Outer contour (inset=0) or a contour shrunk by `inset` (the cancellous interior)."""
    if b.outline is not None:
        if inset <= 0:
            return b.outline
        c = b.outline.mean(axis=0)
        span = float(np.ptp(b.outline, axis=0).max())
        return c + (b.outline - c) * max(0.0, 1.0 - 2.0 * inset / span)
    u, n = b.frame()
    hw = 0.5 * b.width * (1.0 + (b.flare0 - 1.0) * _E0 + (b.flare1 - 1.0) * _E1) - inset
    hw = np.maximum(hw, 1e-4)
    axis = b.p0 + (_TS * b.length)[:, None] * u
    across = hw[:, None] * n
    left, right = axis + across, axis - across
    parts = [left]
    if not b.open1:
        parts.append(_cap(b.p1, u, n, hw[-1], b.cap))
    parts.append(right[::-1])
    if not b.open0:
        parts.append(_cap(b.p0, -u, -n, hw[0], b.cap))
    return np.concatenate(parts)


def canal_outline(b: Bone) -> Poly | None:
    """Medullary canal: half the shaft width, tapering shut towards closed (articular) ends;
    a fracture fragment's canal runs out to the break."""
    if not b.canal or b.outline is not None or b.length < 1e-6:
        return None
    u, n = b.frame()
    m = (1.0 if b.open0 else _CANAL0) * (1.0 if b.open1 else _CANAL1)
    across = (0.25 * b.width * np.sqrt(m))[:, None] * n
    axis = b.p0 + (_TS * b.length)[:, None] * u
    return np.concatenate([axis + across, (axis - across)[::-1]])


def chain(
    start: np.ndarray,
    deg: float,
    segments: list[tuple[float, float]],
    bends: list[float],
    gap: float,
    site: bool = True,
) -> tuple[list[Bone], list[tuple[np.ndarray, np.ndarray, float]]]:
    """A ray of bones (metacarpal + phalanges): (length, width) segments, bending at each joint."""
    bones, joints = [], []
    p = np.asarray(start, dtype=float)
    for i, (length, width) in enumerate(segments):
        deg += bends[i] if i < len(bends) else 0.0
        d = direction(deg)
        q = p + d * length
        bones.append(Bone(p, q, width, 1.35, 1.3, site=site))
        if i + 1 < len(segments):
            joints.append((q + d * gap / 2, d, width * 1.3))
        p = q + d * gap
    return bones, joints


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def humerus(shape: np.ndarray, proj: float) -> Anatomy:
    """Long single shaft: humeral head at the top, broad condyles and forearm stubs below."""
    w = _lerp(0.075, 0.095, shape[0])
    flex = _lerp(0.0, 75.0, proj)
    elbow = _v(0.0, 0.5)
    head_x = _lerp(0.03, 0.07, proj)
    bones = [
        Bone(_v(0.0, -0.46), _v(0.01, 0.47), w, 1.7, _lerp(2.7, 1.7, proj), site=True, group="h"),
        Bone(
            _v(head_x, -0.52),
            _v(head_x, -0.52),
            2.3 * w,
            canal=False,
            density=0.9,
            cap=1.0,
            group="h",
        ),
        Bone(_v(-0.12, -0.64), _v(-0.12, -0.44), 0.35 * w, canal=False, density=0.8),
        Bone(elbow + _v(-0.04, 0.04), rotate(_v(-0.05, 0.85), elbow, flex), 0.6 * w, 1.5),
        Bone(elbow + _v(0.04, 0.02), rotate(_v(0.05, 0.85), elbow, flex), 0.55 * w, 1.9),
    ]
    scapula = np.array([[-0.14, -0.68], [-0.14, -0.42], [-0.6, -0.25], [-0.6, -0.7]])
    bones.insert(2, Bone(_v(0, 0), _v(0, 0), 0.0, density=0.35, canal=False, outline=scapula))
    tissue = [
        capsule(_v(0.0, -0.6), elbow, _lerp(0.3, 0.36, shape[1])),
        ellipse(_v(-0.05, -0.62), 0.32, 0.2),
        capsule(elbow, rotate(_v(0.0, 0.95), elbow, flex), 0.28),
    ]
    return Anatomy(bones, tissue, [(elbow, _v(0, 1), 2.0 * w)])


def forearm(shape: np.ndarray, proj: float) -> Anatomy:
    """Two parallel long bones (radius, ulna) that overlap in the lateral view."""
    sq = 1.0 - 0.75 * proj
    w = _lerp(0.048, 0.06, shape[0])
    bones = [
        Bone(_v(-0.05 * sq, -0.43), _v(-0.08 * sq, 0.43), w, 1.4, 2.1, site=True),
        Bone(_v(0.05 * sq, -0.47), _v(0.06 * sq, 0.45), 0.9 * w, 2.1, 1.3, site=True),
        Bone(_v(0.0, -0.9), _v(0.0, -0.56), 1.7 * w, 1.0, 2.4),
    ]
    for i, x in enumerate((-0.1, -0.035, 0.03, 0.095)):
        c = _v(x * sq, 0.56 + 0.01 * (i % 2))
        bones.append(Bone(c, c + _v(0.0, 0.01), 1.1 * w, canal=False, density=0.8, cap=0.9))
    width_top, width_bottom = _lerp(0.3, 0.38, shape[1]), _lerp(0.22, 0.27, shape[1])
    tissue = [
        np.array(
            [
                [-width_top / 2, -0.7],
                [width_top / 2, -0.7],
                [width_bottom / 2, 0.6],
                [-width_bottom / 2, 0.6],
            ]
        ),
        ellipse(_v(0.0, 0.68), 0.16, 0.16),
        ellipse(_v(0.0, -0.72), 0.2, 0.14),
    ]
    return Anatomy(bones, tissue, [])


def elbow(shape: np.ndarray, proj: float) -> Anatomy:
    """Distal humerus meeting radius and ulna; the forearm flexes away in the lateral view."""
    w = _lerp(0.085, 0.105, shape[0])
    flex = _lerp(5.0, 90.0, proj) + _lerp(-8.0, 8.0, shape[2])
    joint = _v(0.0, 0.0)
    sq = 1.0 - 0.6 * proj

    def fore(p: np.ndarray) -> np.ndarray:
        return rotate(_v(p[0] * sq, p[1]), joint, flex)

    bones = [
        Bone(
            _v(0.0, -0.7),
            _v(0.0, -0.04),
            w,
            1.0,
            _lerp(2.7, 1.6, proj),
            site=True,
            t_range=(0.4, 0.85),
            group="h",
        ),
        Bone(_v(0.0, -0.03), _v(0.0, -0.02), 1.2 * w, canal=False, group="h"),
        Bone(
            fore(_v(0.035, 0.04)),
            fore(_v(0.05, 0.72)),
            0.7 * w,
            1.9,
            1.0,
            site=True,
            t_range=(0.1, 0.6),
        ),
        Bone(
            fore(_v(-0.05, 0.08)),
            fore(_v(-0.065, 0.72)),
            0.62 * w,
            1.6,
            1.0,
            site=True,
            t_range=(0.1, 0.6),
        ),
    ]
    tissue = [
        capsule(_v(0.0, -0.8), joint, _lerp(0.34, 0.4, shape[1])),
        capsule(joint, fore(_v(0.0, 0.85)), _lerp(0.28, 0.34, shape[1])),
    ]
    return Anatomy(bones, tissue, [(joint + _v(0, 0.02), fore(_v(0, 1)) - joint, 2.0 * w)])


def shoulder(shape: np.ndarray, proj: float) -> Anatomy:
    """Humeral head against the glenoid, with scapula, clavicle, acromion and faint ribs."""
    w = _lerp(0.12, 0.14, shape[0])
    head = _v(0.07, -0.07)
    abduct = _lerp(-4.0, 12.0, shape[2])
    shaft_end = rotate(_v(0.16, 0.75), head, abduct)
    scapula = np.array(
        [[-0.11, -0.2], [-0.13, 0.12], [-0.5, 0.6], [-0.68, 0.5], [-0.62, -0.1], [-0.42, -0.27]]
    )
    bones = [
        Bone(head, head + _v(0.0, 0.005), 2.3 * w, canal=False, cap=1.0, group="h"),
        Bone(
            head + _v(0.03, 0.08), shaft_end, w, 1.5, 1.0, site=True, t_range=(0.15, 0.7), group="h"
        ),
        Bone(
            _v(_lerp(0.2, 0.1, proj), -0.09),
            _v(_lerp(0.2, 0.1, proj), -0.05),
            0.8 * w,
            canal=False,
            group="h",
        ),
        Bone(_v(0, 0), _v(0, 0), 0.0, density=0.35, canal=False, outline=scapula),
        Bone(_v(-0.1, -0.19), _v(-0.1, 0.08), 0.35 * w, canal=False, density=0.9),
        Bone(_v(-0.65, -0.45), _v(0.1, -0.35), 0.55 * w, 1.0, 1.5, site=True),
        Bone(_v(-0.08, -0.34), _v(0.22, -0.3), 0.45 * w, canal=False, density=0.7),
        Bone(_v(-0.12, -0.2), _v(0.0, -0.16), 0.3 * w, canal=False, density=0.6),
    ]
    for y in (-0.1, 0.15, 0.4):  # ribs: faint curved bars behind the scapula
        ribs, _ = chain(
            _v(-0.85, y - 0.1), 100.0, [(0.25, 0.3 * w)] * 3, [0.0, 18.0, 18.0], 0.0, site=False
        )
        for r in ribs:
            r.canal, r.density, r.flare0, r.flare1, r.group = False, 0.28, 1.0, 1.0, f"rib{y}"
        bones += ribs
    body = np.array([[-0.85, -0.6], [0.2, -0.55], [0.42, -0.2], [0.4, 0.85], [-0.85, 0.85]])
    tissue = [body, ellipse(_v(0.25, 0.1), 0.2, 0.5)]
    return Anatomy(bones, tissue, [(_v(-0.05, -0.07), _v(1.0, 0.0), 2.0 * w)])


def wrist(shape: np.ndarray, proj: float) -> Anatomy:
    """Distal radius and ulna, two rows of carpals, bases of the five metacarpals."""
    sq = 1.0 - 0.6 * proj
    w = _lerp(0.12, 0.145, shape[0])
    bones = [
        Bone(
            _v(-0.06 * sq, 0.8), _v(-0.05 * sq, 0.13), w, 1.0, 1.55, site=True, t_range=(0.55, 0.9)
        ),
        Bone(
            _v(0.13 * sq, 0.8),
            _v(0.11 * sq, 0.17),
            0.55 * w,
            1.0,
            1.35,
            site=True,
            t_range=(0.5, 0.88),
        ),
    ]
    rows = [(0.02, (-0.13, -0.04, 0.05, 0.13)), (-0.11, (-0.12, -0.035, 0.045, 0.12))]
    for r, (y, xs) in enumerate(rows):
        for i, x in enumerate(xs):
            c = _v(x * sq, y + 0.015 * ((i + r) % 2))
            tilt = _v(0.01 * (shape[3 + i] - 0.5), 0.02)
            bones.append(
                Bone(
                    c - tilt,
                    c + tilt,
                    _lerp(0.075, 0.09, shape[5 + i]),
                    canal=False,
                    density=0.85,
                    cap=0.9,
                )
            )
    joints = [(_v(-0.05 * sq, 0.08), _v(0, 1), 1.6 * w)]
    for x in (-0.1, -0.035, 0.03, 0.095):
        start = _v(x * sq, -0.2)
        spread = (x * 120) * (1.0 - 0.7 * proj)
        b, _ = chain(start, spread, [(0.6, 0.055)], [], 0.0)
        b[0].t_range = (0.2, 0.6)
        bones += b
    bones += chain(_v(-0.17 * sq, -0.15), -35.0 * sq, [(0.4, 0.06)], [], 0.0)[0]
    tissue = [
        np.array(
            [
                [-0.2, 0.9],
                [0.22, 0.9],
                [0.27, -0.1],
                [0.32, -0.9],
                [-0.32, -0.9],
                [-0.42, -0.45],
                [-0.25, -0.1],
            ]
        )
        * _v(sq * 0.6 + 0.4, 1.0),
    ]
    return Anatomy(bones, tissue, joints)


def hand(shape: np.ndarray, proj: float) -> Anatomy:
    """Carpals, five metacarpals fanning out and the phalanges of four fingers and a thumb."""
    sq = 1.0 - 0.65 * proj
    spread = _lerp(0.6, 1.2, shape[0]) * (1.0 - 0.6 * proj)
    curl = _lerp(0.0, 35.0, proj)
    bones = [
        Bone(_v(-0.05 * sq, 0.8), _v(-0.045 * sq, 0.42), 0.1, 1.0, 1.5),
        Bone(_v(0.08 * sq, 0.8), _v(0.07 * sq, 0.45), 0.055, 1.0, 1.3),
    ]
    for r, y in enumerate((0.35, 0.27)):
        for i, x in enumerate((-0.08, -0.025, 0.03, 0.08)):
            c = _v(x * sq, y + 0.01 * ((i + r) % 2))
            bones.append(Bone(c, c + _v(0.0, 0.012), 0.05, canal=False, density=0.85, cap=0.9))
    joints, tissue = [], []
    lengths = (0.95, 1.05, 1.0, 0.85)
    for i, x in enumerate((-0.075, -0.025, 0.025, 0.075)):
        k = lengths[i] * _lerp(0.95, 1.05, shape[1 + i])
        segs = [(0.27 * k, 0.045), (0.16 * k, 0.04), (0.1 * k, 0.034), (0.065 * k, 0.03)]
        deg = (i - 1.5) * 7.0 * spread
        b, j = chain(
            _v(x * sq, 0.21), deg, segs, [0.0, (i - 1.5) * 3.0 * spread, curl, curl], 0.014
        )
        b[0].t_range = (0.25, 0.75)
        bones += b
        joints += j
        tissue.append(capsule(b[1].p0, b[-1].p1, 0.085))
    b, j = chain(
        _v(-0.11 * sq, 0.25),
        -40.0 * sq - 5,
        [(0.17, 0.05), (0.12, 0.045), (0.08, 0.038)],
        [0.0, 12.0, 8.0],
        0.014,
    )
    bones += b
    joints += j
    tissue.append(capsule(b[0].p0, b[-1].p1, 0.1))
    tissue.append(
        np.array([[-0.17, 0.9], [0.17, 0.9], [0.15, 0.0], [-0.12 * sq - 0.02, -0.02], [-0.16, 0.3]])
        * _v(0.5 + 0.5 * sq, 1.0)
    )
    return Anatomy(bones, tissue, joints)


def finger(shape: np.ndarray, proj: float) -> Anatomy:
    """One finger filling the frame (metacarpal head to tuft), neighbours cut off at the side."""
    curl = _lerp(0.0, 25.0, proj) + _lerp(-3.0, 3.0, shape[2])
    k = _lerp(0.92, 1.05, shape[0])
    segs = [(0.42 * k, 0.11), (0.33 * k, 0.1), (0.22 * k, 0.085), (0.14 * k, 0.075)]
    bones, joints = chain(
        _v(0.0, 0.88), _lerp(-4.0, 4.0, shape[1]), segs, [0.0, 0.0, curl, curl], 0.035
    )
    bones[0].t_range = (0.45, 0.8)
    tissue = [capsule(bones[0].p0, bones[-1].p1, 0.24)]
    side = 1.0 if shape[3] < 0.5 else -1.0
    x = 0.36 * side if shape[4] < 0.6 else 3.0 * side  # neighbour in view only sometimes
    nb, _ = chain(_v(x, 0.95), 6.0 * side, segs[:3], [0.0, 0.0, curl], 0.035, site=False)
    bones += nb
    tissue.append(capsule(nb[0].p0, nb[-1].p1, 0.22))
    return Anatomy(bones, tissue, joints)


BUILDERS = {
    "XR_ELBOW": elbow,
    "XR_FINGER": finger,
    "XR_FOREARM": forearm,
    "XR_HAND": hand,
    "XR_HUMERUS": humerus,
    "XR_SHOULDER": shoulder,
    "XR_WRIST": wrist,
}


def build(part: str, shape: np.ndarray, proj: float) -> Anatomy:
    """The part's anatomy for one patient (`shape`: uniforms in [0,1)) at projection `proj`."""
    return BUILDERS[part](shape, proj)


# ---------------------------------------------------------------- findings

FINDINGS = ("fracture", "hardware", "lytic_lesion", "cast", "degenerative")
FINDING_ODDS = (0.28, 0.32, 0.08, 0.20, 0.12)
NO_JOINT_PARTS = ("XR_FOREARM", "XR_HUMERUS")  # their joints sit at the film's edge
FINDING_TAG = 17  # the finding's RNG key is (seed, study, 0, FINDING_TAG)


@dataclass(frozen=True)
class Finding:
    """A study's (possible) abnormality: its kind, where it sits and its own random stream key."""

    kind: str
    bone: int  # index into the anatomy's bones (or joints for degenerative)
    t: float
    key: tuple[int, int]  # (seed, study) for the finding's RNG, fixed across views

    def site(self, a: Anatomy) -> np.ndarray:
        if self.kind == "degenerative":
            return a.joints[self.bone][0]
        return a.bones[self.bone].at(self.t)


Stamp = tuple[list[tuple[np.ndarray, float]], str, str]  # ([(polygon, value)], layer, add|mul)


def _box_poly(c: np.ndarray, u: np.ndarray, n: np.ndarray, along: float, across: float):
    return np.array(
        [c + s * along * u + r * across * n for s, r in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    )


def _band(c: np.ndarray, d: np.ndarray, length: float, width: float, rng) -> np.ndarray:
    """A jagged dark band through c along d: a fracture line."""
    p = np.array([-d[1], d[0]])
    s = np.linspace(-0.5, 0.5, 7) * length
    wobble = rng.uniform(-0.25, 0.25, 7) * width * 2
    pts = c + np.outer(s, d) + np.outer(wobble, p)
    return np.concatenate([pts + p * width / 2, (pts - p * width / 2)[::-1]])


def _fracture(bones, i, t, rng, d, displace=True) -> tuple[list[Stamp], np.ndarray]:
    """A dark line across the shaft; often displaced (the far fragment shifted and angled)."""
    b = bones[i]
    u, n = b.frame()
    c, hw = b.at(t), float(b.half_width(t))
    across = rotate(n, np.zeros(2), rng.uniform(-35, 35))
    lw = b.width * _lerp(0.45, 0.22, d) * rng.uniform(0.8, 1.2)
    shift = np.zeros(2)
    if displace and rng.random() < _lerp(0.95, 0.55, d):
        shift = n * hw * 2 * _lerp(0.8, 0.35, d) * rng.choice([-1, 1])
        angle = _lerp(25, 10, d) * rng.choice([-1, 1])
        gap = lw * 0.4
        near = replace(b, p1=c - u * gap, flare1=1.0, open1=True)
        far = replace(
            b, p0=c + u * gap + shift, p1=rotate(b.p1, c, angle) + shift, flare0=1.0, open0=True
        )
        bones[i : i + 1] = [near, far]
    line = _band(c + shift / 2, across, 2.8 * hw, lw, rng)
    stamps = [([(line, _lerp(1.0, 0.85, d))], "bone", "mul")]
    extent = 1.5 * hw + float(np.hypot(*shift))
    return stamps, _box_poly(c, u, n, extent, extent)


def _hardware(bones, i, t, rng, d) -> tuple[list[Stamp], np.ndarray]:
    """A plate with screws (or screws alone, or a wire): the brightest thing on the film."""
    b = bones[i]
    u, n = b.frame()
    c, hw, w = b.at(t), float(b.half_width(t)), b.width
    level = _lerp(1.0, 0.85, d)
    polys = []
    kind = rng.random()
    if kind < 0.6:
        half = min(b.length * _lerp(0.35, 0.25, d) * rng.uniform(0.8, 1.2), b.length * 0.4)
        side = rng.choice([-1, 1])
        pc = c + n * side * (hw + 0.1 * w)
        polys.append(_box_poly(pc, u, n, half, 0.16 * w))
        for s in np.linspace(-0.8, 0.8, int(rng.integers(3, 7))):
            sc = c + u * s * half
            polys.append(_box_poly(sc, n, u, hw * 1.15, 0.06 * w))
            polys.append(_box_poly(sc + n * side * (hw + 0.28 * w), n, u, 0.08 * w, 0.12 * w))
    elif kind < 0.85:  # lag screws across the bone
        for s in rng.uniform(-1.2, 1.2, int(rng.integers(1, 4))) * hw:
            axis = rotate(n, np.zeros(2), rng.uniform(-25, 25))
            normal = np.array([-axis[1], axis[0]])
            polys.append(_box_poly(c + u * s, axis, normal, hw * 1.2, 0.07 * w))
    else:  # a wire / nail along the shaft
        polys.append(_box_poly(c + u * 0.15 * b.length, u, n, b.length * 0.3, 0.05 * w))
    stamps = [([(p, level) for p in polys], "hw", "add")]
    if rng.random() < 0.5:  # the fracture it fixes, faint by now
        stamps += _fracture(bones, i, t, rng, min(1.0, d + 0.3), displace=False)[0]
    return stamps, np.concatenate(polys)


def _lesion(bones, i, t, rng, d) -> tuple[list[Stamp], np.ndarray]:
    """A lytic (punched-out) lesion: a dark oval in the bone, sometimes with a sclerotic rim."""
    b = bones[i]
    u, n = b.frame()
    hw = float(b.half_width(t))
    rx = hw * _lerp(1.0, 0.75, d) * rng.uniform(0.85, 1.15)
    ry = rx * rng.uniform(1.0, 2.0)
    c = b.at(t) + n * hw * rng.uniform(-0.3, 0.3)
    deg = float(np.degrees(np.arctan2(u[1], u[0])))
    oval = ellipse(c, ry, rx, deg)
    stamps: list[Stamp] = []
    if rng.random() < 0.4:
        stamps.append(([(ellipse(c, ry * 1.25, rx * 1.25, deg), 0.25)], "bone", "add"))
    stamps.append(([(oval, _lerp(0.9, 0.7, d))], "bone", "mul"))
    return stamps, ellipse(c, ry * 1.25, rx * 1.25, deg, n=12)


def _cast(bones, i, t, rng, d) -> tuple[list[Stamp], np.ndarray]:
    """A plaster/fibreglass cast around the limb: a broad, bright-edged sleeve, often over a
    fracture."""
    b = bones[i]
    u, n = b.frame()
    c = b.at(t)
    half = max(b.length * rng.uniform(0.3, 0.45), 0.25)
    across = max(3.0 * float(b.half_width(t)), 0.15)
    outer = _box_poly(c, u, n, half, across)
    inner = _box_poly(c, u, n, half - 0.03, across - 0.04)
    stamps: list[Stamp] = [([(outer, 1.0), (inner, 0.7)], "cast", "add")]
    if rng.random() < 0.6:
        stamps += _fracture(bones, i, t, rng, min(1.0, d + 0.2))[0]
    return stamps, outer


def _degenerative(a: Anatomy, j: int, rng, d) -> tuple[list[Stamp], np.ndarray]:
    """Osteoarthritis at a joint: osteophyte spurs at its margins, a narrowed, sclerotic space."""
    p, axis, width = a.joints[j]
    u = axis / np.hypot(*axis)
    n = np.array([-u[1], u[0]])
    size = width * _lerp(0.45, 0.25, d) * rng.uniform(0.8, 1.2)
    polys = [(_box_poly(p, u, n, 0.1 * width, 0.45 * width), 0.8)]
    for side in (-1, 1):
        for along in (-1, 1):
            if rng.random() < 0.8:
                base = p + n * side * 0.45 * width + u * along * 0.12 * width
                tip = base + n * side * size * 0.7 + u * along * size * 0.7
                polys.append((np.array([base - u * size * 0.5, base + u * size * 0.5, tip]), 1.0))
    return [(polys, "bone", "add")], _box_poly(p, u, n, 0.5 * width, 0.6 * width + size)


def choose_finding(
    part: str, ref: Anatomy, rng: np.random.Generator, key, kinds: Sequence[str] = FINDINGS
) -> Finding:
    """Kind and place of a study's finding (drawn for normal studies too, never drawn there),
    among ``kinds`` at their FINDING_ODDS; degenerative needs a joint, so a part without one
    draws among the others (the generator refuses ``kinds`` that leave none)."""
    odds = np.array([p if k in kinds else 0.0 for k, p in zip(FINDINGS, FINDING_ODDS, strict=True)])
    if part in NO_JOINT_PARTS or not ref.joints:
        odds[FINDINGS.index("degenerative")] = 0.0
    kind = FINDINGS[int(rng.choice(len(FINDINGS), p=odds / odds.sum()))]
    if kind == "degenerative":
        return Finding(kind, int(rng.integers(len(ref.joints))), 0.0, key)
    sites = [i for i, b in enumerate(ref.bones) if b.site]
    weights = np.array([ref.bones[i].length for i in sites])
    i = sites[int(rng.choice(len(sites), p=weights / weights.sum()))]
    lo, hi = ref.bones[i].t_range
    return Finding(kind, i, float(rng.uniform(lo, hi)), key)


def apply_finding(f: Finding, a: Anatomy, d: float):
    """Draw the finding into this view's anatomy: (bones, extra stamps, points its box covers)."""
    rng = np.random.default_rng([*f.key, 0, FINDING_TAG])
    bones = list(a.bones)
    if f.kind == "degenerative":
        stamps, box = _degenerative(a, f.bone, rng, d)
    else:
        draw = {
            "fracture": _fracture,
            "hardware": _hardware,
            "lytic_lesion": _lesion,
            "cast": _cast,
        }[f.kind]
        stamps, box = draw(bones, f.bone, f.t, rng, d)
    drawn = [p for polys, _, _ in stamps for p, _ in polys]
    return bones, stamps, np.concatenate([box, *drawn])  # the box covers all that was drawn
