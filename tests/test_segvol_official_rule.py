"""``zoom_out_zoom_in(rule="segvol")`` against a re-statement of SegVol's inference code.

:func:`segvol_reference` re-states, step by step and without the zoo's helpers or MONAI's
sliding window, what SegVol's demo inference does for one category (read from its code, not run
here; docs/segvol.md "Zoom-out-zoom-in"):

- zoom out: ``F.interpolate(volume, window, mode="nearest-exact")``, prompts drawn on that grid,
  logits back to the native size with ``mode="nearest"``;
- reflection: a zero map on the zoom-out grid with ones over the box ``[lo, hi]`` (ends included)
  or at the positive points, upsampled with ``nearest``;
- region (``logits2roi_coor``): min / max index of ``sigmoid > 0.5`` per axis, each side moved out
  by ``max(0, window - extent) // 2`` and clipped to ``[0, size]``; none: keep the zoom-out logits;
- sliding window (its copy of MONAI's): the crop and the zoom-out prediction zero-padded
  symmetrically (``diff // 2`` before), the reflected map not; step ``window`` on an axis the window
  fills, else ``int(window * (1 - overlap))``; starts ``k * step`` until a window reaches the end,
  the last moved back to ``size - window``; windows in C order; each window's prediction averaged
  where windows overlap;
- per-window prompts: box prompt, one window: ``generate_box`` of the reflected map inside the
  window; several windows: ``generate_box`` of the zoom-out prediction inside the window;
  point prompt: ``select_points`` (one random voxel of the map above 0.9, then a random
  permutation's first 4, padded to 5 with ``-1``) of the reflected map inside the window, with
  ``generate_box`` of the prediction inside the window; ``generate_box`` gives ``-1`` six times
  for an empty mask; random draws from torch's global generator.

A forward hook adds ``30 * (input - 0.5)`` to the tiny head's logits so that the foreground is the
volume's bright blocks in every frame; the prompts still change the logits' values.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from heads.segvol_inference import zoom_out_zoom_in
from heads.segvol_official_rule import window_count
from zoo.registry import HEADS
from zoo.types import MaskOutput

WINDOW = (16, 32, 32)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    model = HEADS.build("test_segvol").eval()

    def brighten(module, args, kwargs, out):
        volume = args[0] if args else kwargs["volume"]
        return MaskOutput(out.logits + 30.0 * (volume - 0.5), out.loss)

    handle = model.register_forward_hook(brighten, with_kwargs=True)
    yield model
    handle.remove()


def blocks(size, *boxes, seed=0):
    """A volume ``(1, 1, *size)`` of low noise with bright blocks ``[lo, hi)``."""
    g = torch.Generator().manual_seed(seed)
    volume = torch.rand(1, 1, *size, generator=g) * 0.2
    for lo, hi in boxes:
        volume[(0, 0) + tuple(slice(a, b) for a, b in zip(lo, hi))] += 0.8
    return volume


def native_from_grid(coords, size):
    """Native coordinates whose zoom-out grid voxels are ``coords`` (``(k + 0.5) / s - 0.5``)."""
    coords = torch.as_tensor(coords, dtype=torch.float32)
    scale = torch.tensor([w / n for w, n in zip(WINDOW, size)])
    reps = coords.shape[-1] // 3
    return (coords + 0.5) / scale.repeat(reps) - 0.5


# ----------------------------------------------------------------------- SegVol, re-stated
def generate_box(mask):
    index = torch.nonzero(mask > 0)
    if index.numel() == 0:
        return torch.tensor([-1, -1, -1, -1, -1, -1])
    return torch.cat([index.min(0).values, index.max(0).values])


def select_points(preds, num_positive_extra=4):
    positive = torch.nonzero(preds > 0.9, as_tuple=True)
    if positive[0].numel() == 0:
        return torch.tensor([[-1.0, -1.0, -1.0]]), torch.tensor([-1])
    first = torch.randint(len(positive[0]), (1,))
    points = [[float(positive[d][first]) for d in range(3)]]
    for idx in torch.randperm(len(positive[0]))[:num_positive_extra]:
        points.append([float(positive[d][idx]) for d in range(3)])
    labels = [1] * len(points) + [-1] * (num_positive_extra + 1 - len(points))
    points += [[-1.0, -1.0, -1.0]] * (num_positive_extra + 1 - len(points))
    return torch.tensor(points), torch.tensor(labels)


def segvol_reference(head, image, text=None, box=None, points=None, labels=None, overlap=0.5,
                     seed=0):
    """SegVol's procedure for one category; ``box`` / ``points`` on the zoom-out grid. Returns
    ``(logits (D, H, W), per-window boxes)``."""
    torch.manual_seed(seed)

    def model(x, boxes=None, pts=None):
        kw = {"text": [[text]]} if text is not None else {}
        if boxes is not None:
            kw["boxes"] = boxes.float()[None]
        if pts is not None:
            kw["points"], kw["point_labels"] = pts[0].float()[None], pts[1].long()[None]
        return head(x, **kw).logits

    native = tuple(image.shape[2:])
    small = F.interpolate(image, size=WINDOW, mode="nearest-exact")
    pts = (points, labels) if points is not None else None
    logits = F.interpolate(model(small, box, pts), size=native, mode="nearest")[0, 0]
    binary = torch.zeros(WINDOW)
    if box is not None:
        b = box.int().tolist()
        binary[b[0]:b[3] + 1, b[1]:b[4] + 1, b[2]:b[5] + 1] = 1
    if points is not None:
        positive = points[labels == 1].long()
        binary[positive[:, 0], positive[:, 1], positive[:, 2]] = 1
    binary = F.interpolate(binary[None, None], size=native, mode="nearest")[0, 0]

    found = torch.nonzero(torch.sigmoid(logits) > 0.5)
    if found.numel() == 0:
        return logits, []
    lo, hi = found.min(0).values.tolist(), found.max(0).values.tolist()
    for a in range(3):
        pad = max(0, WINDOW[a] - (hi[a] - lo[a] + 1))
        lo[a], hi[a] = max(0, lo[a] - pad // 2), min(native[a], hi[a] + pad // 2)
    region = tuple(slice(lo[a], hi[a] + 1) for a in range(3))
    crop, binary = image[(0, 0) + region], binary[region]
    preds = (torch.sigmoid(logits[region]) > 0.5).long()
    size = tuple(crop.shape)
    full = tuple(max(s, w) for s, w in zip(size, WINDOW))
    before = [(max(w - s, 0)) // 2 for w, s in zip(WINDOW, size)]
    pad = []
    for a in (2, 1, 0):
        diff = max(WINDOW[a] - size[a], 0)
        pad += [diff // 2, diff - diff // 2]
    crop, preds = F.pad(crop, pad), F.pad(preds, pad)
    starts = []
    for a in range(3):
        step = WINDOW[a] if WINDOW[a] == full[a] else max(int(WINDOW[a] * (1 - overlap)), 1)
        axis, k = [], 0
        while True:
            start = k * step
            if start + WINDOW[a] >= full[a]:
                axis.append(full[a] - WINDOW[a])
                break
            axis.append(start)
            k += 1
        starts.append(axis)
    windows = list(itertools.product(*starts))
    out, count, boxes = torch.zeros(full), torch.zeros(full), []
    for start in windows:
        sl = tuple(slice(s, s + w) for s, w in zip(start, WINDOW))
        w_box, w_pts = None, None
        if points is not None:
            w_pts = select_points(binary[sl])
            w_box = generate_box(preds[sl])
        if box is not None:
            w_box = generate_box(binary[sl]) if len(windows) == 1 else generate_box(preds[sl])
        boxes.append(w_box)
        out[sl] += model(crop[sl][None, None], w_box, w_pts)[0, 0]
        count[sl] += 1
    out = (out / count)[tuple(slice(b, b + s) for b, s in zip(before, size))]
    logits = logits.clone()
    logits[region] = out
    return logits, boxes


# ----------------------------------------------------------------------- tests
def test_box_prompt_with_several_windows_uses_the_prediction_box_per_window(head):
    size = (24, 48, 40)
    volume = blocks(size, ((0, 0, 0), (5, 7, 7)), ((19, 41, 33), (24, 48, 40)))
    grid_box = torch.tensor([0, 0, 0, 12, 28, 28])
    expected, boxes = segvol_reference(head, volume, text="liver", box=grid_box)
    assert len(boxes) == 8 and any(b.tolist() == [-1] * 6 for b in boxes)  # an empty window
    got = zoom_out_zoom_in(head, volume, text=[["liver"]],
                           boxes=native_from_grid(grid_box, size)[None], rule="segvol")
    torch.testing.assert_close(got[0, 0], expected, atol=1e-5, rtol=0)
    zoo = zoom_out_zoom_in(head, volume, text=[["liver"]],
                           boxes=native_from_grid(grid_box, size)[None])
    assert (zoo[0, 0] - expected).abs().max() > 1e-2  # the zoo's rule is another procedure


def test_box_prompt_in_one_padded_window_uses_the_unpadded_reflected_box(head):
    size = (20, 40, 36)
    volume = blocks(size, ((14, 30, 2), (20, 38, 12)))  # at the d border: the region is clipped
    grid_box = torch.tensor([11, 23, 1, 15, 30, 10])
    expected, boxes = segvol_reference(head, volume, text="kidney", box=grid_box)
    assert len(boxes) == 1
    got = zoom_out_zoom_in(head, volume, text=["kidney"],
                           boxes=native_from_grid(grid_box, size)[None], rule="segvol")
    torch.testing.assert_close(got[0, 0], expected, atol=1e-5, rtol=0)
    # the region is shorter than the window and padded before: the window's box is the
    # reflected box in unpadded-region coordinates, not shifted by the padding
    region_d = 20 - (14 - (16 - 6) // 2)
    assert region_d < WINDOW[0] and (WINDOW[0] - region_d) // 2 > 0
    assert window_count((region_d, 16, 16), WINDOW, 0.5) == 1


def test_point_prompt_redraws_points_per_window_with_the_same_random_draws(head):
    size = (24, 48, 40)
    volume = blocks(size, ((2, 4, 20), (20, 44, 38)))
    grid_points = torch.tensor([[5.0, 10.0, 20.0], [8.0, 14.0, 24.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    expected, boxes = segvol_reference(head, volume, points=grid_points, labels=labels, seed=3)
    assert len(boxes) > 1
    got = zoom_out_zoom_in(head, volume, points=native_from_grid(grid_points, size)[None],
                           point_labels=labels[None], rule="segvol",
                           generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got[0, 0], expected, atol=1e-5, rtol=0)
    other = zoom_out_zoom_in(head, volume, points=native_from_grid(grid_points, size)[None],
                             point_labels=labels[None], rule="segvol",
                             generator=torch.Generator().manual_seed(4))
    assert (other[0, 0] - expected).abs().max() > 1e-4  # the draws matter


def test_text_prompts_run_one_at_a_time_and_small_volumes_still_zoom_in(head):
    size = (12, 30, 28)  # smaller than the window: SegVol zooms in anyway
    volume = blocks(size, ((2, 3, 4), (9, 20, 22)))
    got = zoom_out_zoom_in(head, volume, text=[["liver", "kidney"]], rule="segvol")
    for k, name in enumerate(("liver", "kidney")):
        expected, boxes = segvol_reference(head, volume, text=name)
        assert len(boxes) == 1
        torch.testing.assert_close(got[0, k], expected, atol=1e-5, rtol=0)
    one_pass = zoom_out_zoom_in(head, volume, text=[["liver"]])
    assert (one_pass[0, 0] - got[0, 0]).abs().max() > 1e-3


def test_segvol_rule_errors_are_named(head):
    volume = blocks((24, 48, 40))
    with pytest.raises(ValueError, match="boxes or points, not both"):
        zoom_out_zoom_in(head, volume, boxes=torch.zeros(1, 6), points=torch.zeros(1, 1, 3),
                         point_labels=torch.ones(1, 1), rule="segvol")
    with pytest.raises(ValueError, match="rule='segvl'.*Did you mean: segvol"):
        zoom_out_zoom_in(head, volume, rule="segvl")
