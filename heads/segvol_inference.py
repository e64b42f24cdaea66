"""SegVol's zoom-out-zoom-in inference for volumes larger than the model input (Du et al., 2023).

1. Zoom out: resize the whole volume to the model input size (trilinear), predict, resize the
   logits back to the native size.
2. Take the region where the probability exceeds 0.5 (union over the K prompts), grow it by
   ``margin`` voxels per side and to at least the model input size (clipped to the volume).
3. Zoom in: MONAI ``sliding_window_inference`` (overlap 0.5) at native resolution inside that
   region; each window gets the prompts mapped into its own frame: points are shifted (points
   outside the window become padding, label -1); boxes are shifted and clipped, and a prompt whose
   box misses the window is given background logits there (a box says the object lies inside it).
4. The zoomed-in logits replace the zoomed-out ones inside the region.

Shapes: volume ``(B, 1, D, H, W)``; prompts as :meth:`heads.segvol.SegVolHead.forward` in native
voxel coordinates; returns logits ``(B, K, D, H, W)``. Text prompts (names or embeddings) are
position-free and go to every window unchanged.

``rule="segvol"`` runs SegVol's own procedure instead (:mod:`heads.segvol_official_rule`; the
differences are listed in docs/segvol.md "Zoom-out-zoom-in").
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.errors import ConfigError
from zoo.types import check_volume

BACKGROUND_LOGIT = -20.0
RULES = ("zoo", "segvol")


def _scale_prompts(points: Tensor | None, boxes: Tensor | None, scale: Tensor
                   ) -> tuple[Tensor | None, Tensor | None]:
    """Voxel coordinates under a resize by ``scale`` (per axis, (3,))."""
    if points is not None:
        points = (points.float() + 0.5) * scale - 0.5
    if boxes is not None:
        boxes = (boxes.float() + 0.5) * scale.repeat(2) - 0.5
    return points, boxes


def _region(prob: Tensor, roi: Sequence[int], margin: int) -> tuple[slice, slice, slice] | None:
    """Bounding box of ``prob > 0.5`` over ``(K, D, H, W)``, grown by ``margin`` and to at least
    ``roi`` per axis, clipped to the volume; ``None`` when nothing exceeds 0.5."""
    index = torch.nonzero((prob > 0.5).any(0))
    if index.numel() == 0:
        return None
    out = []
    for axis, size in enumerate(prob.shape[1:]):
        lo = int(index[:, axis].min()) - margin
        hi = int(index[:, axis].max()) + 1 + margin
        short = roi[axis] - (hi - lo)
        if short > 0:
            lo, hi = lo - short // 2, hi + short - short // 2
        lo, hi = max(0, lo), min(size, hi)
        if hi - lo < roi[axis]:  # pushed against a border: slide the region back inside
            lo, hi = (0, min(size, roi[axis])) if lo == 0 else (max(0, size - roi[axis]), size)
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def _window_prompts(points: Tensor | None, labels: Tensor | None, boxes: Tensor | None,
                    start: Tensor, size: Tensor) -> tuple[Tensor | None, Tensor | None,
                                                          Tensor | None, Tensor | None]:
    """Shift prompts ``(K, ...)`` into a window at ``start`` of ``size``; returns points, labels,
    boxes and a ``(K,)`` mask of prompts whose box misses the window (None without boxes)."""
    miss = None
    if points is not None:
        points = points - start
        inside = ((points >= 0) & (points < size)).all(-1)
        labels = torch.where(inside, labels, torch.full_like(labels, -1))
    if boxes is not None:
        low, high = boxes[:, :3] - start, boxes[:, 3:] - start
        miss = ((high < 0) | (low > size - 1)).any(-1)
        zero = torch.zeros_like(size)
        boxes = torch.cat([torch.minimum(torch.maximum(low, zero), size - 1),
                           torch.minimum(torch.maximum(high, zero), size - 1)], dim=-1)
    return points, labels, boxes, miss


@torch.no_grad()
def zoom_out_zoom_in(head: Any, volume: Tensor, *, text: Sequence[Any] | None = None,
                     text_embedding: Tensor | None = None, points: Tensor | None = None,
                     point_labels: Tensor | None = None, boxes: Tensor | None = None,
                     overlap: float = 0.5, margin: int = 4, sw_batch_size: int = 1,
                     mode: str = "constant", rule: str = "zoo",
                     generator: torch.Generator | None = None) -> Tensor:
    """Zoom-out-zoom-in logits ``(B, K, D, H, W)`` of a SegVol head (see module docstring).

    ``head`` is a :class:`heads.segvol.SegVolHead` with its own image encoder; its
    ``image_size`` is the model input. A volume no larger than that on every axis is
    segmented in one pass at its own size (resized to the input and back).

    ``rule``: ``zoo`` (the steps above) or ``segvol`` (SegVol's procedure, one prompt at a time;
    ``margin`` and ``mode`` do not apply; ``generator`` draws its per-window points, None:
    torch's global generator as SegVol).
    """
    from monai.inferers import sliding_window_inference

    check_volume(volume)
    if rule not in RULES:
        from zoo.registry import suggest

        raise ConfigError(f"rule={rule!r}: expected one of {RULES}.{suggest(rule, list(RULES))}")
    if head.share_encoder:
        raise ConfigError("zoom_out_zoom_in needs a SegVol head with its own image encoder "
                          "(share_encoder=False): every window is re-encoded")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    if rule == "segvol":
        return torch.cat([_segvol_rule(head, volume[i:i + 1], i, text, text_embedding, points,
                                       point_labels, boxes, overlap, sw_batch_size, generator)
                          for i in range(volume.shape[0])])
    roi = tuple(head.image_size)
    native = tuple(volume.shape[2:])
    results = []
    for i in range(volume.shape[0]):
        one = {k: (v[i:i + 1] if isinstance(v, Tensor) else v) for k, v in
               (("text_embedding", text_embedding), ("points", points),
                ("point_labels", point_labels), ("boxes", boxes))}
        if text is not None:
            one["text"] = [text[i]]
        results.append(_one(head, volume[i:i + 1], one, roi, native, overlap, margin,
                             sw_batch_size, mode, sliding_window_inference))
    return torch.cat(results)


def _segvol_rule(head: Any, volume: Tensor, i: int, text: Sequence[Any] | None,
                 text_embedding: Tensor | None, points: Tensor | None,
                 point_labels: Tensor | None, boxes: Tensor | None, overlap: float,
                 sw_batch_size: int, generator: torch.Generator | None) -> Tensor:
    """Image ``i`` by SegVol's procedure, each of its K prompts on its own: ``(1, K, D, H, W)``."""
    from heads.segvol_official_rule import official_zoom_out_zoom_in

    names = None
    if text is not None:
        names = [text[i]] if isinstance(text[i], str) else list(text[i])
    ranks = {"text_embedding": (text_embedding, 2), "points": (points, 3),
             "point_labels": (point_labels, 2), "boxes": (boxes, 2)}
    per_image = {key: (x[i] if x is not None else None, rank) for key, (x, rank) in ranks.items()}
    counts = [x.shape[0] for x, rank in per_image.values() if x is not None and x.dim() == rank]
    k_all = max(counts + [len(names) if names is not None else 1])

    def pick(key: str, k: int) -> Tensor | None:
        """Prompt ``k`` of a kind given per prompt (a K axis) or once for all."""
        x, rank = per_image[key]
        if x is None:
            return None
        return (x[k] if x.shape[0] > 1 else x[0]) if x.dim() == rank else x

    masks = []
    for k in range(k_all):
        embedding = pick("text_embedding", k)
        masks.append(official_zoom_out_zoom_in(
            head, volume, text=names[k if len(names) > 1 else 0] if names is not None else None,
            text_embedding=embedding[None] if embedding is not None else None,
            points=pick("points", k), point_labels=pick("point_labels", k), box=pick("boxes", k),
            overlap=overlap, sw_batch_size=sw_batch_size, generator=generator))
    return torch.cat(masks, dim=1)


def _one(head: Any, volume: Tensor, prompts: dict[str, Any], roi: tuple[int, ...],
         native: tuple[int, ...], overlap: float, margin: int, sw_batch_size: int, mode: str,
         sliding_window_inference: Any) -> Tensor:
    scale = torch.tensor([r / n for r, n in zip(roi, native)], dtype=torch.float32,
                         device=volume.device)
    small = F.interpolate(volume, size=roi, mode="trilinear", align_corners=False)
    pts, bxs = _scale_prompts(prompts["points"], prompts["boxes"], scale)
    coarse = head(small, **{**prompts, "points": pts, "boxes": bxs}).logits
    logits = F.interpolate(coarse, size=native, mode="trilinear", align_corners=False)
    if all(n <= r for n, r in zip(native, roi)):
        return logits
    region = _region(torch.sigmoid(logits[0]), roi, margin)
    if region is None:
        return logits
    start = torch.tensor([s.start for s in region], dtype=torch.float32, device=volume.device)
    crop = volume[(slice(None), slice(None)) + region]
    k = logits.shape[1]

    def per_prompt(x: Tensor | None, rank: int) -> Tensor | None:
        """``(1, ...)`` (rank ``rank``) or ``(1, K, ...)`` -> ``(K, ...)``."""
        if x is None:
            return None
        x = x[0] if x.dim() == rank + 1 else x
        return x.expand(k, *x.shape[1:])

    base_points = per_prompt(prompts["points"], 3)
    base_labels = per_prompt(prompts["point_labels"], 2)
    base_boxes = per_prompt(prompts["boxes"], 2)
    base_points = base_points.float() - start if base_points is not None else None
    base_boxes = base_boxes.float() - start.repeat(2) if base_boxes is not None else None
    # MONAI pads the crop symmetrically when it is smaller than the window on some axis
    pad = torch.tensor([max(r - c, 0) // 2 for r, c in zip(roi, crop.shape[2:])],
                       dtype=torch.float32, device=volume.device)
    size = torch.tensor(roi, dtype=torch.float32, device=volume.device)

    def predictor(window: Tensor, location: Sequence[Sequence[slice]]) -> Tensor:
        outs = []
        for w, loc in zip(window, location):
            w_start = torch.tensor([s.start for s in loc[-3:]], dtype=torch.float32,
                                   device=volume.device) - pad
            p, lab, b, miss = _window_prompts(base_points, base_labels, base_boxes, w_start, size)
            extra = {key: prompts.get(key) for key in ("text", "text_embedding")}
            out = head(w[None], points=p[None] if p is not None else None,
                       point_labels=lab[None] if lab is not None else None,
                       boxes=b[None] if b is not None else None, **extra).logits
            if out.shape[1] != k:
                out = out.expand(1, k, *out.shape[2:])
            if miss is not None:
                out = torch.where(miss.view(1, k, 1, 1, 1), torch.full_like(out, BACKGROUND_LOGIT),
                                  out)
            outs.append(out)
        return torch.cat(outs)

    fine = sliding_window_inference(crop, roi, sw_batch_size, predictor, overlap=overlap,
                                    mode=mode, with_coord=True)
    logits = logits.clone()
    logits[(slice(None), slice(None)) + region] = fine
    return logits
