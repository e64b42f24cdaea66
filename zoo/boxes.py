"""3D box tokens and box metrics for referring expression comprehension (M3D-Bench REC / REG).

Convention (M3D, docs/reference.md section B): a box is ``[x1, y1, z1, x2, y2, z2]`` over the volume
axes ``(D, H, W)``, each coordinate divided by that axis length, written with 3 decimals as
``<bx_start>[x1, y1, z1, x2, y2, z2]<bx_end>``.

:func:`box_from_mask` follows M3D's code by default (``mask2box``: first and last foreground index
divided by the axis length, rounded to 3 decimals, so the upper corner sits at the start of the
last voxel); ``convention="extent"`` puts it one voxel further (``(last + 1) / size``), so that the
IoU of normalised boxes equals the IoU of the voxel blocks (a choice, not M3D's).

Two parsers and two IoUs (docs/evaluation.md, "REC"):

- corrected: :func:`parse_box` (tagged box preferred, 6 finite numbers in [0, 1], lower corner
  first; anything else is ``None``, a miss scored 0) and :func:`box_iou` (true 3D IoU).
- M3D's Bench code as coded: :func:`parse_box_m3d` (the first ``[a, b, c, d, e, f]`` whose
  numbers are separated by a comma and exactly one space, any sign and range, no check of the
  corner order) and :func:`box_iou_m3d` (intersection over the volume of the box enclosing both,
  plus 1e-6, which understates the overlap; -1 when either box is missing, as M3D scores an
  output without a box).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch
from torch import Tensor
from zoo.errors import DataError

BOX_START = "<bx_start>"
BOX_END = "<bx_end>"
_TAGGED = re.compile(re.escape(BOX_START) + r"\s*\[([^\[\]]*)\]\s*" + re.escape(BOX_END))
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
# M3D's number: optional sign, then digits with a fraction (".5", "0.25") or an integer ("1");
# "1." is neither, so a box containing it does not parse
_M3D_NUMBER = r"([-+]?\d*\.\d+|[-+]?\d+)"
_M3D_BOX = re.compile(r"\[" + ", ".join([_M3D_NUMBER] * 6) + r"\]")

Box = Sequence[float]


def _check_box(box: Box, name: str = "box") -> list[float]:
    values = [float(v) for v in box]
    if len(values) != 6:
        raise DataError(f"{name} must have 6 values [x1, y1, z1, x2, y2, z2], got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{name} has non-finite values: {values}")
    if any(values[i + 3] < values[i] for i in range(3)):
        raise DataError(f"{name} has an upper corner below its lower corner: {values}")
    return values


def format_box(box: Box) -> str:
    """``[x1, y1, z1, x2, y2, z2]`` (normalised) -> ``'<bx_start>[0.125, ...]<bx_end>'``."""
    values = _check_box(box)
    if any(v < 0.0 or v > 1.0 for v in values):
        raise DataError(f"box coordinates must be normalised to [0, 1], got {values}")
    return BOX_START + "[" + ", ".join(f"{v:.3f}" for v in values) + "]" + BOX_END


def parse_box(text: str) -> list[float] | None:
    """The first box in ``text`` (tagged ``<bx_start>[..]<bx_end>`` preferred, else the first
    ``[..]`` list), or ``None`` when it is missing, has not exactly 6 numbers, holds NaN/inf,
    leaves [0, 1], or has an upper corner below the lower one."""
    if not isinstance(text, str):
        return None
    match = _TAGGED.search(text) or _BRACKETED.search(text)
    if match is None:
        return None
    parts = [p.strip() for p in match.group(1).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        return None
    if any(v < 0.0 or v > 1.0 for v in values):
        return None
    if any(values[i + 3] < values[i] for i in range(3)):
        return None
    return values


def parse_box_m3d(text: str) -> list[float] | None:
    """M3D's ``extract_box_from_text``: the first ``[a, b, c, d, e, f]`` in ``text`` with six
    numbers separated by ``", "`` (comma and one space), as floats, unchecked; else ``None``."""
    match = _M3D_BOX.search(text) if isinstance(text, str) else None
    return [float(v) for v in match.groups()] if match else None


def box_from_mask(mask: Tensor | Any, convention: str = "m3d") -> list[float] | None:
    """Normalised box of the nonzero voxels of a ``(D, H, W)`` mask (tensor or array; a leading
    singleton channel is accepted); ``None`` for an empty mask. ``convention``: ``"m3d"`` (last
    index / size, 3 decimals, as M3D) or ``"extent"`` ((last index + 1) / size, unrounded)."""
    if convention not in ("m3d", "extent"):
        raise ValueError(f"convention must be 'm3d' or 'extent', got {convention!r}")
    mask = torch.as_tensor(mask)
    if mask.dim() == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 3:
        raise ValueError(f"mask must have shape (D, H, W), got {tuple(mask.shape)}")
    index = torch.nonzero(mask)
    if index.numel() == 0:
        return None
    size = torch.tensor(mask.shape, dtype=torch.float64)
    low = index.min(0).values.double() / size
    high = (index.max(0).values.double() + (convention == "extent")) / size
    digits = 3 if convention == "m3d" else 12
    return [round(float(v), digits) for v in torch.cat([low, high])]


def _volume(low: Sequence[float], high: Sequence[float]) -> float:
    return math.prod(max(0.0, h - lo) for lo, h in zip(low, high))


def box_iou(pred: Box | None, target: Box) -> float:
    """True 3D IoU: intersection / (volume(pred) + volume(target) - intersection); 0 for None."""
    if pred is None:
        return 0.0
    p, t = _check_box(pred, "pred"), _check_box(target, "target")
    inter = _volume([max(p[i], t[i]) for i in range(3)], [min(p[i + 3], t[i + 3]) for i in range(3)])
    union = _volume(p[:3], p[3:]) + _volume(t[:3], t[3:]) - inter
    return inter / union if union > 0 else 0.0


def box_iou_m3d(pred: Box | None, target: Box | None) -> float:
    """M3D's REC score as coded (``calculate_iou``): per axis the overlap ``max(0, min(hi) -
    max(lo))`` and the enclosing extent ``max(hi) - min(lo)``, then intersection / (enclosing
    volume + 1e-6), on the raw values (no range or corner-order check); -1 when either box is
    ``None`` (M3D's score for an output or answer without a parsable box)."""
    if pred is None or target is None:
        return -1.0
    p, t = [float(v) for v in pred], [float(v) for v in target]
    if len(p) != 6 or len(t) != 6:
        raise ValueError(f"boxes must have 6 values, got {len(p)} and {len(t)}")
    inter = enclosing = 1.0
    for i in range(3):
        inter *= max(0.0, min(p[i + 3], t[i + 3]) - max(p[i], t[i]))
        enclosing *= max(p[i + 3], t[i + 3]) - min(p[i], t[i])
    return inter / (enclosing + 1e-6)


def precision_at_iou(preds: Sequence[Box | None], targets: Sequence[Box], threshold: float = 0.5,
                     as_coded: bool = False) -> float:
    """Fraction of predictions whose IoU with their target is >= ``threshold`` (None = miss;
    ``as_coded``: :func:`box_iou_m3d`)."""
    if len(preds) != len(targets):
        raise ValueError(f"preds ({len(preds)}) and targets ({len(targets)}) differ in length")
    if not preds:
        raise ValueError("precision_at_iou needs at least one prediction")
    iou = box_iou_m3d if as_coded else box_iou
    return sum(iou(p, t) >= threshold for p, t in zip(preds, targets)) / len(preds)
