"""Analytic CT phantoms (abdomen and head) with ground truth, for the built-in benchmark.

A phantom is a set of labelled ellipsoids, cylinders and shells in normalised patient coordinates
``(s, a, l)`` in [-1, 1]: ``s`` superior -> inferior, ``a`` anterior -> posterior, ``l`` patient
right -> patient left. The stored array axes depend on the acquisition plane (orientation codes
give the direction in which each stored axis increases):

- axial ``IPL``: axis 0 = s, axis 1 = a, axis 2 = l (radiological display: patient left on the
  image right);
- coronal ``PIL``: axis 0 = a, axis 1 = s, axis 2 = l;
- sagittal ``LIP``: axis 0 = l, axis 1 = s, axis 2 = a.

Values are Hounsfield units per tissue and contrast phase, plus Gaussian noise and a Gaussian
partial-volume blur, then windowed to [0, 1] with the family's preset. The anatomy is mirror
symmetric in distribution, so left/right and upper/lower findings do not change the global
intensity histogram (location questions need spatial layout). All numbers here are design
choices of this benchmark, not values from a paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo.errors import ConfigError

FAMILIES = ("abdomen", "head")
PHASES = ("non-contrast", "arterial", "portal venous")
PLANE_AXES = {"axial": ("s", "a", "l"), "coronal": ("a", "s", "l"), "sagittal": ("l", "s", "a")}
ORIENTATION = {"axial": "IPL", "coronal": "PIL", "sagittal": "LIP"}
# Physical extent (mm) of the normalised [-1, 1] range per patient axis.
EXTENT_MM = {"abdomen": {"s": 320.0, "a": 300.0, "l": 400.0},
             "head": {"s": 180.0, "a": 220.0, "l": 180.0}}
# HU window (low, high) mapped to [0, 1]: abdomen soft tissue W400/L40, head subdural W200/L80.
WINDOWS = {"abdomen": (-160.0, 240.0), "head": (-20.0, 180.0)}

ABDOMEN_LESION_ORGANS = ("liver", "spleen", "kidney", "lung")
ABDOMEN_LESION_KINDS = ("cyst", "enhancing mass", "calcification")
BLEED_TYPES = ("intraparenchymal", "intraventricular", "subdural", "epidural", "subarachnoid")
BLEED_COMPARTMENT = {"intraparenchymal": "brain parenchyma", "intraventricular": "ventricles",
                     "subdural": "subdural space", "epidural": "epidural space",
                     "subarachnoid": "subarachnoid space"}
SIDES = ("left", "right")
PARTS = ("upper", "lower")

# Label ids of the label map; the seg classes of each family are its structures.
ABDOMEN_CLASSES = ("body", "liver", "spleen", "right kidney", "left kidney", "lungs", "spine",
                   "aorta", "lesion")
HEAD_CLASSES = ("scalp", "skull", "brain", "ventricles", "haemorrhage")
CLASSES = {"abdomen": ABDOMEN_CLASSES, "head": HEAD_CLASSES}

# HU by tissue: one number, or one per phase (non-contrast, arterial, portal venous).
HU: dict[str, tuple[float, float, float]] = {
    "air": (-1000, -1000, -1000), "fat": (-100, -100, -100), "body": (40, 45, 55),
    "lungs": (-850, -850, -850), "liver": (58, 75, 115), "spleen": (48, 125, 115),
    "kidney": (32, 170, 160), "spine": (650, 650, 650), "aorta": (42, 320, 160),
    "cyst": (8, 8, 10), "enhancing mass": (78, 190, 70), "calcification": (600, 600, 600),
    "scalp": (35, 40, 45), "skull": (1100, 1100, 1100), "brain": (34, 36, 40),
    "ventricles": (6, 6, 6), "falx": (70, 80, 85), "vessel": (42, 260, 150),
    "sinus": (45, 140, 210), "acute blood": (72, 72, 72), "chronic blood": (24, 24, 24),
}
NOISE_HU = 10.0
BLUR_SIGMA = 0.6


@dataclass
class Finding:
    """One abnormality: kind, where it is, and its size in mm (largest diameter)."""

    kind: str                 # lesion kind or haemorrhage type
    organ: str                # abdomen organ or head compartment
    side: str | None          # 'left' / 'right' (patient side) or None for unpaired organs
    part: str                 # 'upper' / 'lower' part of the organ
    size_mm: int
    chronic: bool = False


@dataclass
class Case:
    """A generated case: stored image (1, D, H, W) in [0, 1], label map (D, H, W) and findings."""

    case_id: str
    family: str
    plane: str
    phase: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    findings: list[Finding] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)   # head: CQ500 label table entries

    @property
    def orientation(self) -> str:
        return ORIENTATION[self.plane]

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES[self.family]

    @property
    def window(self) -> tuple[float, float]:
        return WINDOWS[self.family]


class _Canvas:
    """HU volume and label map on the stored grid, painted structure by structure."""

    def __init__(self, size: tuple[int, int, int], plane: str, phase: str) -> None:
        axes = [(np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1 for n in size]
        grids = np.meshgrid(*axes, indexing="ij", sparse=True)
        self.coords = dict(zip(PLANE_AXES[plane], grids))
        self.shape = tuple(size)
        self.phase_index = PHASES.index(phase)
        self.hu = np.full(self.shape, HU["air"][0], dtype=np.float32)
        self.labels = np.zeros(self.shape, dtype=np.uint8)

    def ellipsoid(self, center: dict[str, float], radii: dict[str, float]) -> np.ndarray:
        """Boolean mask of an ellipsoid; an axis missing from ``radii`` is unbounded (cylinder)."""
        total = np.zeros((1, 1, 1), dtype=np.float32)
        for ax, r in radii.items():
            total = total + ((self.coords[ax] - center.get(ax, 0.0)) / r) ** 2
        return np.broadcast_to(total <= 1.0, self.shape)

    def paint(self, mask: np.ndarray, tissue: str, label: int | None = None) -> None:
        self.hu[mask] = HU[tissue][self.phase_index]
        if label is not None:
            self.labels[mask] = label

    def side_sign(self, side: str) -> float:
        return -1.0 if side == "right" else 1.0   # patient right = negative l


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _abdomen(c: _Canvas, rng: np.random.Generator, lesion: dict | None,
             lesion_scale: float = 1.0) -> list[Finding]:
    ids = {name: i + 1 for i, name in enumerate(ABDOMEN_CLASSES)}
    j = lambda: _u(rng, -0.04, 0.04)  # noqa: E731  (small anatomical jitter)
    body_r = {"a": 0.78 + j(), "l": 0.94 + j()}
    c.paint(c.ellipsoid({}, body_r), "fat", ids["body"])
    c.paint(c.ellipsoid({}, {"a": body_r["a"] - 0.1, "l": body_r["l"] - 0.1}), "body")
    organs: dict[str, tuple[dict, dict]] = {}
    for side in SIDES:
        sl = c.side_sign(side)
        organs[f"{side} lung"] = ({"s": -0.72 + j(), "a": 0.0, "l": 0.45 * sl},
                                  {"s": 0.42, "a": 0.52, "l": 0.34})
    organs["liver"] = ({"s": -0.15 + j(), "a": -0.05 + j(), "l": -0.42}, {"s": 0.36, "a": 0.46, "l": 0.36})
    organs["spleen"] = ({"s": -0.12 + j(), "a": 0.22 + j(), "l": 0.56}, {"s": 0.26, "a": 0.24, "l": 0.2})
    kid_s = 0.32 + j()
    for side in SIDES:
        organs[f"{side} kidney"] = ({"s": kid_s, "a": 0.36, "l": 0.4 * c.side_sign(side)},
                                    {"s": 0.3, "a": 0.2, "l": 0.16})
    for name, (center, radii) in organs.items():
        tissue = name.split()[-1]
        label = ids["lungs"] if tissue == "lung" else ids[name]
        c.paint(c.ellipsoid(center, radii), "lungs" if tissue == "lung" else tissue, label)
    c.paint(c.ellipsoid({"a": 0.56, "l": 0.0}, {"a": 0.14, "l": 0.14}), "spine", ids["spine"])
    c.paint(c.ellipsoid({"a": 0.3, "l": 0.1}, {"a": 0.075, "l": 0.075}), "aorta", ids["aorta"])
    if lesion is None:
        return []
    organ, kind, side, part = lesion["organ"], lesion["kind"], lesion["side"], lesion["part"]
    key = f"{side} {organ}" if organ in ("kidney", "lung") else organ
    center, radii = organs[key]
    frac = _u(rng, 0.3, 0.45) if kind == "calcification" else _u(rng, 0.45, 0.7)
    rad = frac * min(radii.values()) * lesion_scale
    lcenter = dict(center)
    # the centre stays inside the named part however large the lesion (lesion_scale > 1)
    offset = max(radii["s"] - rad * 1.05, 0.25 * radii["s"])
    lcenter["s"] = center["s"] + (-1 if part == "upper" else 1) * min(0.5 * radii["s"], offset)
    extents = EXTENT_MM["abdomen"]
    mask = c.ellipsoid(lcenter, {"s": rad, "a": rad, "l": rad})
    while not mask.any():  # coarse grids: grow until the lesion covers a voxel
        rad *= 1.25
        mask = c.ellipsoid(lcenter, {"s": rad, "a": rad, "l": rad})
    c.paint(mask, kind, ids["lesion"])
    size = int(round(2 * rad * min(extents.values()) / 2))
    return [Finding(kind, organ, side if organ in ("kidney", "lung") else None, part, size)]


def _head(c: _Canvas, rng: np.random.Generator, bleed: dict | None, fracture: str | None,
          ) -> tuple[list[Finding], dict[str, Any]]:
    ids = {name: i + 1 for i, name in enumerate(HEAD_CLASSES)}
    j = lambda: _u(rng, -0.03, 0.03)  # noqa: E731
    outer = {"s": 0.95, "a": 0.9 + j(), "l": 0.76 + j()}
    scale = lambda f: {k: v * f for k, v in outer.items()}  # noqa: E731
    c.paint(c.ellipsoid({}, outer), "scalp", ids["scalp"])
    c.paint(c.ellipsoid({}, scale(0.94)), "skull", ids["skull"])
    brain = c.ellipsoid({}, scale(0.84))
    c.paint(brain, "brain", ids["brain"])
    flags = {"mass_effect": False, "midline_shift": False, "shift_mm": 0}
    side = bleed["side"] if bleed else None
    big = bleed is not None and bleed["type"] in ("subdural", "epidural", "intraparenchymal") \
        and bleed["large"]
    shift = 0.0
    if big:
        flags["mass_effect"] = True
        if bleed["shift"]:
            shift = -c.side_sign(side) * _u(rng, 0.08, 0.13)    # away from the bleed
            flags["midline_shift"] = True
            flags["shift_mm"] = int(round(abs(shift) * EXTENT_MM["head"]["l"] / 2))
    c.paint(brain & c.ellipsoid({"l": shift}, {"l": 0.015, "a": 0.75}) &
            (c.coords["a"] < 0.0), "falx")
    vent = {}
    for vside in SIDES:
        squeeze = 0.55 if (big and vside == side) else 1.0
        vent[vside] = c.ellipsoid({"s": -0.05, "a": -0.02, "l": 0.13 * c.side_sign(vside) + shift},
                                  {"s": 0.26, "a": 0.38, "l": 0.075 * squeeze})
        c.paint(vent[vside], "ventricles", ids["ventricles"])
    c.paint(c.ellipsoid({"a": 0.7, "l": 0.0}, {"a": 0.05, "l": 0.05}) & brain, "sinus")
    for vside in SIDES:
        c.paint(c.ellipsoid({"s": 0.35, "a": -0.15, "l": 0.16 * c.side_sign(vside)},
                            {"s": 0.06, "a": 0.06, "l": 0.06}), "vessel")
    if fracture is not None:
        fs = -0.45 if fracture == "calvarial" else 0.55
        fl = c.side_sign(bleed["side"] if bleed else str(rng.choice(SIDES)))
        gap = c.ellipsoid({"s": fs, "a": -0.1, "l": 0.7 * fl}, {"s": 0.06, "a": 0.5, "l": 0.5})
        skull = c.labels == ids["skull"]
        c.paint(gap & skull, "scalp", ids["scalp"])
    if bleed is None:
        return [], flags
    btype, part = bleed["type"], bleed["part"]
    sl = c.side_sign(side)
    s0 = -0.4 if part == "upper" else 0.35
    half = (c.coords["s"] < -0.02) if part == "upper" else (c.coords["s"] > 0.02)
    sided = (c.coords["l"] * sl) > 0.1
    if btype == "intraparenchymal":
        r = _u(rng, 0.16, 0.22) if bleed["large"] else _u(rng, 0.1, 0.14)
        mask = c.ellipsoid({"s": s0, "a": 0.1, "l": 0.42 * sl}, {"s": r * 1.2, "a": r, "l": r * 0.9})
        size = 2 * r * EXTENT_MM["head"]["a"] / 2
    elif btype == "intraventricular":
        mask = vent[side] & (c.coords["a"] > 0.0) & \
            c.ellipsoid({"s": -0.05, "a": 0.2, "l": 0.13 * sl + shift}, {"s": 0.2, "a": 0.3, "l": 0.2})
        size = 0.3 * EXTENT_MM["head"]["a"]
        half = (c.coords["s"] < -0.05) if part == "upper" else (c.coords["s"] > -0.05)
        mask = mask & half
    else:
        inner = {"subdural": 0.72, "epidural": 0.68, "subarachnoid": 0.79}[btype]
        if btype != "epidural" and not bleed["large"]:
            inner += 0.03
        mask = np.zeros(c.shape, dtype=bool)
        while not (mask & ~(c.labels == ids["skull"])).any():  # coarse grids: thicken
            shell = brain & ~c.ellipsoid({}, scale(inner))
            if btype == "epidural":
                shell &= c.ellipsoid({"s": s0, "a": 0.0, "l": 0.78 * sl}, {"s": 0.4, "a": 0.5, "l": 0.5})
            mask = shell & sided & half
            inner -= 0.03
        size = (0.84 - inner - 0.03) * EXTENT_MM["head"]["l"] / 2
    tissue = "chronic blood" if bleed["chronic"] else "acute blood"
    c.paint(mask & ~(c.labels == ids["skull"]), tissue, ids["haemorrhage"])
    finding = Finding(btype, BLEED_COMPARTMENT[btype], side, part, max(1, int(round(size))),
                      chronic=bleed["chronic"])
    return [finding], flags


def cq500_flags(findings: list[Finding], flags: dict[str, Any], fracture: str | None) -> dict[str, int]:
    """The CQ500 label table row (0/1 per column, docs/reference.md section D) of a head case."""
    kinds = {f.kind for f in findings}
    sides = {f.side for f in findings}
    return {"ICH": int(bool(findings)), "IPH": int("intraparenchymal" in kinds),
            "IVH": int("intraventricular" in kinds), "SDH": int("subdural" in kinds),
            "EDH": int("epidural" in kinds), "SAH": int("subarachnoid" in kinds),
            "BleedLocation-Left": int("left" in sides), "BleedLocation-Right": int("right" in sides),
            "ChronicBleed": int(any(f.chronic for f in findings)),
            "Fracture": int(fracture is not None), "CalvarialFracture": int(fracture == "calvarial"),
            "MassEffect": int(flags["mass_effect"]), "MidlineShift": int(flags["midline_shift"])}


def generate_case(index: int, seed: int = 0, size: tuple[int, int, int] = (32, 64, 64),
                  family: str = "abdomen", lesion_scale: float = 1.0) -> Case:
    """Generate case ``index`` of the benchmark with ``seed`` (deterministic, platform independent).

    Plane, phase, lesion organ/kind, side and part are drawn from a per-case generator seeded by
    ``(seed, index, family)``; each is uniform, so answer sets are balanced in expectation.
    ``lesion_scale`` multiplies the radius of abdominal lesions (a difficulty knob for location
    questions; head findings keep their size).
    """
    if not lesion_scale > 0:
        raise ConfigError(f"lesion_scale must be > 0, got {lesion_scale!r}")
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {FAMILIES}, got {family!r}")
    if len(size) != 3 or min(size) < 8:
        raise ConfigError(f"size must be three ints >= 8 (D, H, W), got {size}")
    rng = np.random.default_rng([seed, index, FAMILIES.index(family)])
    plane = PLANE_AXES_KEYS[int(rng.integers(3))]
    phase = PHASES[int(rng.integers(3))]
    canvas = _Canvas(tuple(int(n) for n in size), plane, phase)
    flags: dict[str, Any] = {}
    if family == "abdomen":
        lesion = None
        if rng.random() < 0.9:
            lesion = {"organ": ABDOMEN_LESION_ORGANS[int(rng.integers(4))],
                      "kind": ABDOMEN_LESION_KINDS[int(rng.integers(3))],
                      "side": SIDES[int(rng.integers(2))], "part": PARTS[int(rng.integers(2))]}
        findings = _abdomen(canvas, rng, lesion, lesion_scale)
    else:
        bleed = None
        if rng.random() < 0.85:
            btype = BLEED_TYPES[int(rng.integers(5))]
            bleed = {"type": btype, "side": SIDES[int(rng.integers(2))],
                     "part": PARTS[int(rng.integers(2))], "large": bool(rng.random() < 0.5),
                     "shift": bool(rng.random() < 0.6),
                     "chronic": btype == "subdural" and bool(rng.random() < 0.35)}
        r = rng.random()
        fracture = "calvarial" if r < 0.15 else ("skull base" if r < 0.22 else None)
        findings, head_flags = _head(canvas, rng, bleed, fracture)
        flags = {"cq500": cq500_flags(findings, head_flags, fracture), "fracture": fracture,
                 "shift_mm": head_flags["shift_mm"]}
    hu = canvas.hu
    from scipy.ndimage import gaussian_filter

    hu = gaussian_filter(hu, BLUR_SIGMA, mode="nearest")
    hu += rng.normal(0.0, NOISE_HU, size=hu.shape).astype(np.float32)
    lo, hi = WINDOWS[family]
    image = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)[None]
    extents = EXTENT_MM[family]
    spacing = tuple(round(extents[ax] / n, 4) for ax, n in zip(PLANE_AXES[plane], size))
    return Case(case_id=f"{family}_{index:05d}", family=family, plane=plane, phase=phase,
                image=image, labels=canvas.labels, spacing=spacing, findings=findings, flags=flags)


PLANE_AXES_KEYS = tuple(PLANE_AXES)
