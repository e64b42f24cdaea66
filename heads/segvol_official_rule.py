"""SegVol's own zoom-out-zoom-in procedure, as its inference code does it (Du et al. 2023):
``heads.segvol_inference.zoom_out_zoom_in(..., rule="segvol")``; docs/segvol.md
"Zoom-out-zoom-in" lists how it differs from the zoo's rule.

Per image and per prompt (SegVol runs each category on its own):

1. Zoom out: the volume is resized to the model input with ``nearest-exact``; points and boxes
   are mapped onto that grid and rounded to voxel indices (SegVol draws them there); the logits
   are upsampled to the native size with (legacy) ``nearest``.
2. Prompt reflection: a binary map on the zoom-out grid holding the box's voxels (corners
   truncated to integers, both ends included) or the positive points' voxels, upsampled to the
   native size with ``nearest``.
3. Region: the bounding box of ``sigmoid > 0.5``, each axis shorter than the window grown by
   ``(window - extent) // 2`` voxels per side and clipped to the volume (no margin, not slid back
   inside). No foreground: the zoom-out logits are the result. Otherwise it always zooms in,
   also when the volume fits in one window.
4. Zoom in: MONAI's sliding window over the region (overlap 0.5, constant blending, the region
   zero-padded symmetrically up to the window). Each window's prompts: text unchanged; a box
   prompt becomes, with one window, the bounding box of the reflected box inside the window,
   with several, the bounding box of the zoomed-out prediction inside the window (``-1`` six
   times when empty); a point prompt becomes 1 + up to 4 positive points drawn at random among
   the reflected positive points inside the window (padded to 5 with label ``-1``; a single
   ``-1`` point when there are none) plus the box of the zoomed-out prediction inside the window.
   The reflected map is not padded, so on an axis where the region is padded its coordinates
   are those of the unpadded region (SegVol's code does this).
5. The window logits replace the zoom-out logits inside the region.

Boxes and points together are refused (SegVol's inference takes one kind). Points are drawn
with ``generator`` (None: torch's global generator, as SegVol), in SegVol's order of calls.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

POSITIVE_THRESHOLD = 0.9  # SegVol's select_points: a voxel of the map above it is a candidate
EXTRA_POINTS = 4  # positive points drawn per window beside the first


def mask_box(mask: Tensor) -> Tensor:
    """``(6,)`` long ``[d1, h1, w1, d2, h2, w2]``, first and last index of ``mask > 0`` per axis
    (both included), or ``-1`` six times for an empty ``(D, H, W)`` mask."""
    index = torch.nonzero(mask > 0)
    if index.numel() == 0:
        return torch.full((6,), -1, dtype=torch.long)
    return torch.cat([index.min(0).values, index.max(0).values]).long().cpu()


def draw_points(mask: Tensor, generator: torch.Generator | None = None,
                extra: int = EXTRA_POINTS) -> tuple[Tensor, Tensor]:
    """Points ``(P, 3)`` float and labels ``(P,)`` long from a ``(D, H, W)`` map: one random voxel
    above :data:`POSITIVE_THRESHOLD`, then up to ``extra`` more (a random permutation's first,
    repeats of the first allowed), padded to ``1 + extra`` with ``(-1, -1, -1)`` / label -1; a
    single padding point when no voxel qualifies."""
    candidates = torch.nonzero(mask > POSITIVE_THRESHOLD).cpu()
    if len(candidates) == 0:
        return torch.full((1, 3), -1.0), torch.full((1,), -1, dtype=torch.long)
    first = torch.randint(len(candidates), (1,), generator=generator)
    more = torch.randperm(len(candidates), generator=generator)[:extra]
    points = torch.cat([candidates[first], candidates[more]]).float()
    padding = 1 + extra - len(points)
    points = torch.cat([points, torch.full((padding, 3), -1.0)])
    labels = torch.cat([torch.ones(1 + len(more), dtype=torch.long),
                        torch.full((padding,), -1, dtype=torch.long)])
    return points, labels


def region_of_interest(logits: Tensor, window: Sequence[int]) -> tuple[slice, slice, slice] | None:
    """Bounding box of ``sigmoid(logits) > 0.5`` over ``(D, H, W)``, each axis shorter than
    ``window`` grown by ``(window - extent) // 2`` per side, clipped to the volume; None when
    empty."""
    index = torch.nonzero(torch.sigmoid(logits) > 0.5)
    if index.numel() == 0:
        return None
    out = []
    for axis, size in enumerate(logits.shape):
        lo, hi = int(index[:, axis].min()), int(index[:, axis].max())
        grow = max(0, window[axis] - (hi - lo + 1)) // 2
        out.append(slice(max(0, lo - grow), min(size, hi + grow) + 1))
    return tuple(out)  # type: ignore[return-value]


def to_model_grid(coords: Tensor, scale: Tensor, size: Sequence[int]) -> Tensor:
    """Native voxel coordinates ``(..., 3)`` -> voxel indices on the resized grid (rounded,
    clipped): the inverse of a native point ``(k + 0.5) / scale - 0.5`` is exactly ``k``."""
    mapped = torch.round((coords.float() + 0.5) * scale - 0.5)
    top = torch.tensor(size, dtype=mapped.dtype, device=mapped.device) - 1
    return torch.minimum(mapped.clamp(min=0), top)


def reflect(model_map: Tensor, native: Sequence[int]) -> Tensor:
    """A ``(d, h, w)`` map on the zoom-out grid upsampled to ``native`` with ``nearest``."""
    return F.interpolate(model_map[None, None].float(), size=tuple(native), mode="nearest")[0, 0]


def box_map(box: Tensor, size: Sequence[int]) -> Tensor:
    """Binary ``size`` map holding the voxels of ``box`` (6,), corners truncated, ends included."""
    lo, hi = box[:3].int().tolist(), box[3:].int().tolist()
    out = torch.zeros(tuple(size))
    out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = 1
    return out


def point_map(points: Tensor, labels: Tensor, size: Sequence[int]) -> Tensor:
    """Binary ``size`` map with a 1 at each positive (label 1) point."""
    out = torch.zeros(tuple(size))
    positive = points[labels == 1].long()
    out[positive[:, 0], positive[:, 1], positive[:, 2]] = 1
    return out


def window_count(size: Sequence[int], window: Sequence[int], overlap: float) -> int:
    """Number of windows MONAI's sliding window places over a region of ``size`` (padded up to
    ``window``) at ``overlap``."""
    from monai.data.utils import dense_patch_slices

    padded = [max(s, w) for s, w in zip(size, window)]
    step = [w if w == p else max(int(w * (1 - overlap)), 1) for w, p in zip(window, padded)]
    return len(dense_patch_slices(padded, window, step))


@torch.no_grad()
def official_zoom_out_zoom_in(head: Any, volume: Tensor, *, text: Sequence[str] | None = None,
                              text_embedding: Tensor | None = None, points: Tensor | None = None,
                              point_labels: Tensor | None = None, box: Tensor | None = None,
                              overlap: float = 0.5, sw_batch_size: int = 1,
                              generator: torch.Generator | None = None) -> Tensor:
    """Logits ``(1, 1, D, H, W)`` of one prompt on one volume ``(1, 1, D, H, W)`` by SegVol's
    procedure (module docstring). ``text`` ``[name]`` or ``text_embedding`` ``(1, E)``;
    ``points`` ``(P, 3)`` with ``point_labels`` ``(P,)``, or ``box`` ``(6,)``, in native voxel
    coordinates."""
    from monai.inferers import sliding_window_inference

    if box is not None and points is not None:
        from zoo.errors import ConfigError

        raise ConfigError("rule='segvol' takes boxes or points, not both (SegVol's inference "
                          "uses one kind of spatial prompt)")
    window = tuple(head.image_size)
    native = tuple(volume.shape[2:])
    scale = torch.tensor([w / n for w, n in zip(window, native)], dtype=torch.float32)
    small = F.interpolate(volume, size=window, mode="nearest-exact")
    position_free = {"text": [text] if text is not None else None,
                     "text_embedding": text_embedding}
    reflected = None
    if box is not None:
        box = to_model_grid(box.cpu().view(2, 3), scale, window).flatten()
        reflected = reflect(box_map(box, window), native)
        coarse = head(small, boxes=box[None].to(volume), **position_free).logits
    elif points is not None:
        points = to_model_grid(points.cpu(), scale, window)
        labels = point_labels.cpu().long()
        reflected = reflect(point_map(points, labels, window), native)
        coarse = head(small, points=points[None].to(volume), point_labels=labels[None].to(
            volume.device), **position_free).logits
    else:
        coarse = head(small, **position_free).logits
    logits = F.interpolate(coarse, size=native, mode="nearest")
    region = region_of_interest(logits[0, 0], window)
    if region is None:
        return logits
    crop = volume[(slice(None), slice(None)) + region]
    size = tuple(crop.shape[2:])
    pad = [max(w - s, 0) for w, s in zip(window, size)]
    predicted = (torch.sigmoid(logits[0, 0][region]) > 0.5).float()
    predicted = F.pad(predicted, [p for d in reversed(pad) for p in (d // 2, d - d // 2)])
    if reflected is not None:
        reflected = reflected[region]  # not padded (module docstring, step 4)
    single = window_count(size, window, overlap) == 1

    def prompts_for(location: Sequence[slice]) -> dict[str, Tensor]:
        """Spatial prompts of the window at ``location`` (slices in the padded frame)."""
        if box is not None:
            source = reflected if single else predicted
            return {"boxes": mask_box(source[tuple(location)])[None].to(volume)}
        if points is not None:
            p, lab = draw_points(reflected[tuple(location)], generator)
            return {"points": p[None].to(volume), "point_labels": lab[None].to(volume.device),
                    "boxes": mask_box(predicted[tuple(location)])[None].to(volume)}
        return {}

    def predictor(windows: Tensor, locations: Sequence[Sequence[slice]]) -> Tensor:
        return torch.cat([head(w[None], **prompts_for(loc[-3:]), **position_free).logits
                          for w, loc in zip(windows, locations)])

    fine = sliding_window_inference(crop, window, sw_batch_size, predictor, overlap=overlap,
                                    mode="constant", with_coord=True)
    logits = logits.clone()
    logits[(slice(None), slice(None)) + region] = fine
    return logits
