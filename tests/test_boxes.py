import math

import pytest
import torch

from zoo.boxes import (box_from_mask, box_iou, box_iou_m3d, format_box, parse_box,
                       precision_at_iou)


def test_format_then_parse_round_trips_with_three_decimals():
    text = format_box([0.1234, 0.25, 0.0, 0.5, 0.75, 1.0])
    assert text == "<bx_start>[0.123, 0.250, 0.000, 0.500, 0.750, 1.000]<bx_end>"
    assert parse_box("The liver is at " + text + ".") == [0.123, 0.25, 0.0, 0.5, 0.75, 1.0]


def test_format_rejects_bad_boxes():
    with pytest.raises(ValueError, match="6 values"):
        format_box([0.1, 0.2])
    with pytest.raises(ValueError, match="normalised"):
        format_box([0.1, 0.2, 0.3, 0.4, 0.5, 1.5])
    with pytest.raises(ValueError, match="upper corner"):
        format_box([0.5, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_parse_prefers_the_tagged_box_and_accepts_a_bare_list():
    text = "see [1, 2] then <bx_start>[0.1,0.2,0.3,0.4,0.5,0.6]<bx_end>"
    assert parse_box(text) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert parse_box("[0, 0, 0, 1, 1, 1]") == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("text", [
    "no box here",
    "<bx_start>[0.1, 0.2, 0.3, 0.4, 0.5]<bx_end>",          # 5 values
    "<bx_start>[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]<bx_end>",  # 7 values
    "<bx_start>[0.1, 0.2, nan, 0.4, 0.5, 0.6]<bx_end>",
    "<bx_start>[0.1, 0.2, 0.3, inf, 0.5, 0.6]<bx_end>",
    "<bx_start>[0.5, 0.2, 0.3, 0.4, 0.5, 0.6]<bx_end>",       # x2 < x1
    "<bx_start>[0.1, 0.2, 0.3, 0.4, 0.5, 1.2]<bx_end>",       # outside [0, 1]
    "<bx_start>[-0.1, 0.2, 0.3, 0.4, 0.5, 0.6]<bx_end>",
    "<bx_start>[0.1, liver, 0.3, 0.4, 0.5, 0.6]<bx_end>",
    "<bx_start>[0.1, 0.2, 0.3, 0.4, 0.5, 0.6",                 # truncated
    "",
])
def test_unparsable_boxes_are_none_and_count_as_misses(text):
    assert parse_box(text) is None
    assert box_iou(parse_box(text), [0, 0, 0, 1, 1, 1]) == 0.0
    assert precision_at_iou([parse_box(text)], [[0, 0, 0, 1, 1, 1]]) == 0.0


def test_parse_box_of_non_string_is_none():
    assert parse_box(None) is None  # type: ignore[arg-type]


def test_box_from_mask_hand_computed():
    mask = torch.zeros(4, 8, 10)
    mask[1:3, 2:6, 5:10] = 1  # d 1..2, h 2..5, w 5..9
    # M3D (mask2box): first and last index / size, 3 decimals
    assert box_from_mask(mask) == [0.25, 0.25, 0.5, 0.5, 0.625, 0.9]
    assert box_from_mask(mask[None].numpy()) == [0.25, 0.25, 0.5, 0.5, 0.625, 0.9]
    assert box_from_mask(mask, convention="extent") == [0.25, 0.25, 0.5, 0.75, 0.75, 1.0]
    third = torch.zeros(3, 3, 3)
    third[1, 1, 1] = 1
    assert box_from_mask(third) == [0.333, 0.333, 0.333, 0.333, 0.333, 0.333]
    assert box_from_mask(torch.zeros(2, 2, 2)) is None
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        box_from_mask(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="convention"):
        box_from_mask(mask, convention="voxel")


def test_iou_hand_computed():
    a = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]        # volume 0.125
    b = [0.25, 0.0, 0.0, 0.75, 0.5, 0.5]      # volume 0.125, overlap 0.25*0.5*0.5 = 0.0625
    assert box_iou(a, b) == pytest.approx(0.0625 / (0.125 + 0.125 - 0.0625))  # 1/3
    # enclosing box [0, 0, 0, 0.75, 0.5, 0.5] has volume 0.1875 -> 1/3 as well here
    assert box_iou_m3d(a, b) == pytest.approx(0.0625 / (0.1875 + 1e-6))
    c = [0.25, 0.25, 0.25, 0.75, 0.75, 0.75]  # overlap with a: 0.25^3 = 0.015625
    assert box_iou(a, c) == pytest.approx(0.015625 / (0.25 - 0.015625))
    assert box_iou_m3d(a, c) == pytest.approx(0.015625 / (0.75 ** 3 + 1e-6))
    assert box_iou_m3d(a, c) < box_iou(a, c)  # the as-coded metric understates
    assert box_iou(a, a) == 1.0 and box_iou_m3d(a, a) == pytest.approx(1.0, abs=1e-4)
    assert box_iou(a, [0.6, 0.6, 0.6, 1, 1, 1]) == 0.0


def test_precision_at_half_iou():
    target = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]
    good = [0.0, 0.0, 0.0, 0.5, 0.5, 0.4]     # IoU 0.8
    poor = [0.25, 0.25, 0.25, 0.75, 0.75, 0.75]
    preds = [good, poor, None, target]
    assert precision_at_iou(preds, [target] * 4) == 0.5
    assert precision_at_iou(preds, [target] * 4, threshold=0.9) == 0.25
    with pytest.raises(ValueError, match="differ in length"):
        precision_at_iou(preds, [target])
    assert not math.isnan(precision_at_iou([None], [target]))
