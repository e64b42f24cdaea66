"""``zoo data prepare --preset segvol`` against a re-statement of SegVol's image preprocessing.

:func:`segvol_steps` re-states with numpy alone what SegVol's inference demo does to an image
(read from its code, not run here; docs/data.md "SegVol preset"): the loaded (X, Y, Z) array with a
channel axis; its orientation call sees no affine and changes nothing; foreground normalisation
(voxels above the mean; clip to their 0.05th / 99.95th percentiles; minus their mean, over their
std, at least 1e-8); ``swapaxes(-1, -3)``; minus the minimum, over the maximum (at least 1e-8);
zero padding to at least the spatial size, ``diff // 2`` before; crop to the bounding box of the
voxels above 0.
"""

import json

import numpy as np
import pytest

from zoo.data.cli import main as data_main
from zoo.data.io import DataError
from zoo.data.prepare import PrepSpec, preprocess
from zoo.data.prepare_segvol import segvol_preprocess

SIZE = (16, 32, 32)


def phantom(shape=(20, 26, 12), seed=0):
    """HU-like (X, Y, Z) volume: noisy air, a soft-tissue ellipsoid, a bone block at one corner."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    body = ((grid / [0.8, 0.7, 0.9]) ** 2).sum(-1) < 1
    volume = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    volume[12:15, 14:18, 3:6] = 900.0
    return volume.astype(np.float32)


def affine_of(spacing=(0.8, 0.9, 2.5), origin=(-10.0, 20.0, -40.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def segvol_steps(array, size):
    """SegVol's image steps re-stated (module docstring); returns the image and, per (D, H, W)
    axis, the source index of the output's first voxel (crop start minus padding)."""
    image = array[None]
    flat = image.flatten()
    foreground = flat[flat > np.mean(flat)]
    upper, lower = np.percentile(foreground, 99.95), np.percentile(foreground, 0.05)
    image = (np.clip(image, lower, upper) - np.mean(foreground)) / max(np.std(foreground), 1e-8)
    image = np.swapaxes(image, -1, -3)
    image = image - image.min()
    image = image / np.clip(image.max(), a_min=1e-8, a_max=None)
    pads = [(max(s - n, 0) // 2, max(s - n, 0) - max(s - n, 0) // 2)
            for s, n in zip(size, image.shape[1:])]
    image = np.pad(image, [(0, 0)] + pads)
    index = np.nonzero(image[0] > 0)
    lo = [int(i.min()) for i in index]
    hi = [int(i.max()) + 1 for i in index]
    image = image[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
    return image, [a - p[0] for a, p in zip(lo, pads)]


def test_segvol_preset_matches_segvol_steps_and_keeps_the_affine():
    array, affine = phantom(), affine_of()
    data, meta = segvol_preprocess(array, affine, SIZE)
    expected, first = segvol_steps(array, SIZE)
    assert data.shape == expected.shape and data.dtype == np.float32
    np.testing.assert_allclose(data, expected, atol=1e-5, rtol=0)
    # no resize: the transposed stored axes, padded to the size and cropped
    assert data.shape[1] < SIZE[0] or data.shape[1:] != SIZE
    # meta["affine"] maps the output, transposed back to (X, Y, Z), to the source's world frame
    out_affine = np.asarray(meta["affine"])
    for d, h, w in [(0, 0, 0), (data.shape[1] - 1, 3, data.shape[3] - 1)]:
        source = np.array([w + first[2], h + first[1], d + first[0], 1.0])
        np.testing.assert_allclose(out_affine @ [w, h, d, 1.0], affine @ source, atol=1e-5)
    assert meta["orientation"] == "SAR" and meta["spacing"] == [2.5, 0.9, 0.8]


def test_orientation_option_reorients_first_and_the_default_keeps_stored_axes():
    array, ras = phantom(), affine_of()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # the same volume stored LPS
    lps = ras @ np.array([[1, 0, 0, array.shape[0] - 1], [0, 1, 0, array.shape[1] - 1],
                          [0, 0, 1, 0], [0, 0, 0, 1.0]]) @ flip
    stored_lps = np.ascontiguousarray(array[::-1, ::-1])
    reference, _ = segvol_preprocess(array, ras, SIZE)
    reoriented, meta = segvol_preprocess(stored_lps, lps, SIZE, orientation="RAS")
    np.testing.assert_allclose(reoriented, reference, atol=1e-6)
    assert meta["orientation"] == "SAR"
    as_stored, meta = segvol_preprocess(stored_lps, lps, SIZE)
    assert meta["orientation"] == "SPL" and not np.allclose(as_stored, reference)


def test_prepare_command_with_the_segvol_preset(tmp_path):
    import nibabel as nib

    array, affine = phantom(), affine_of()
    nib.save(nib.Nifti1Image(array, affine), str(tmp_path / "case.nii.gz"))
    out = tmp_path / "out"
    assert data_main(["prepare", "--in", str(tmp_path / "case.nii.gz"), "--out", str(out),
                      "--preset", "segvol", "--size", *map(str, SIZE)]) == 0
    written = np.load(out / "case" / "image.npy")
    np.testing.assert_allclose(written, segvol_preprocess(array, affine, SIZE)[0], atol=1e-6)
    spec = json.loads((out / "case" / "spec.json").read_text())
    assert spec["preset"] == "segvol" and spec["spec"]["preset"] == "segvol"
    assert data_main(["prepare", "--in", str(tmp_path), "--out", str(out), "--preset", "segvol",
                      "--orientation", "RAX"]) == 2


def test_bad_presets_and_orientations_are_named():
    with pytest.raises(ValueError, match="preset 'segvl'.*Did you mean: segvol"):
        PrepSpec(preset="segvl")
    with pytest.raises(ValueError, match="applies to preset 'segvol'"):
        PrepSpec(orientation="RAS")
    with pytest.raises(ValueError, match="orientation='RRS': expected three axis codes"):
        PrepSpec(preset="segvol", orientation="RRS")
    with pytest.raises(DataError, match="every voxel is 0.0"):  # the input checks still apply
        preprocess(np.zeros((8, 8, 8), np.float32), np.eye(4), PrepSpec(preset="segvol"))
