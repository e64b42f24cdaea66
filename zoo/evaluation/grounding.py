"""REC scoring (box from text) with :mod:`zoo.boxes` and the fixed-box baseline.

Per item (docs/evaluation.md, "REC"): ``iou`` (true 3D IoU of the box ``parse_box`` reads, 0 when
none), ``hit@0.5`` (``iou`` >= 0.5), ``parsed``, and ``iou_m3d``: M3D's Bench code as coded, the
box ``parse_box_m3d`` reads from the output against the one it reads from the reference answer,
scored by ``box_iou_m3d`` (-1 when either has no box). Only items whose target is present (the
sample has a ``box``) are scored, as in M3D-Bench.
"""

from __future__ import annotations

from typing import Sequence

from zoo.boxes import box_iou, box_iou_m3d, parse_box, parse_box_m3d
from zoo.errors import DataError


def rec_scores(prediction: str, target: Sequence[float], answer: str | None = None
               ) -> dict[str, float]:
    """Scores of one REC output against the target box; ``answer`` is the reference text M3D
    reads its box from (without it, ``target`` itself)."""
    box = parse_box(prediction)
    iou = box_iou(box, target)
    answer_box = parse_box_m3d(answer) if answer is not None else list(target)
    return {"iou": iou, "iou_m3d": box_iou_m3d(parse_box_m3d(prediction), answer_box),
            "hit@0.5": float(iou >= 0.5), "parsed": float(box is not None)}


def mean_box(boxes: Sequence[Sequence[float]]) -> list[float]:
    """Coordinate-wise mean of training boxes (the REC baseline's single guess)."""
    if not boxes:
        raise DataError("mean_box: no training boxes to average (the train split has no REC "
                        "items with a present target)")
    return [sum(b[i] for b in boxes) / len(boxes) for i in range(6)]


def format_box_text(box: Sequence[float]) -> str:
    """A baseline's REC output for ``box`` (tagged box text that :func:`parse_box` reads)."""
    from zoo.boxes import format_box

    return format_box([min(1.0, max(0.0, v)) for v in box])
