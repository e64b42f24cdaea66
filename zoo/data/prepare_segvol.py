"""SegVol's input preprocessing (Du et al. 2023), so that its weights see what they were trained
on: ``zoo data prepare --preset segvol`` (docs/data.md "SegVol preset"; docs/reference.md H).

Steps, in SegVol's order (its inference demo's image transforms, read, not run here):

1. orientation: SegVol's demo asks MONAI for ``RAS`` but hands it an array whose affine was
   dropped, so MONAI assumes identity and nothing moves; its training data were prepared with the
   orientation step commented out. Both therefore keep the file's stored voxel axes, the default
   here (``orientation=None``); ``orientation="RAS"`` reorients first (what the call asks for);
2. foreground normalisation: the voxels above the volume's mean are the foreground; clip to their
   0.05th and 99.95th percentiles, subtract their mean, divide by their standard deviation
   (population, at least 1e-8);
3. transpose the stored axes (X, Y, Z) to (Z, Y, X) = (D, H, W);
4. min-max scaling to [0, 1] (divisor at least 1e-8);
5. zero-pad symmetrically to at least ``size`` (D, H, W) (MONAI ``SpatialPad``);
6. crop to the bounding box of the voxels above 0 (MONAI ``CropForeground``, no margin).

No resize: SegVol's zoom-out-zoom-in takes the volume at this resolution
(``heads.segvol_inference.zoom_out_zoom_in(..., rule="segvol")`` resizes for the zoom-out pass).
Steps 5 and 6 run before the transpose, on the stored axes with ``size`` reversed: padding and
cropping are per axis, so the result is the same and MONAI keeps the affine up to date.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from zoo.data.io import check_array

FOREGROUND_PERCENTILES = (0.05, 99.95)
EPSILON = 1e-8


def foreground_normalise(array: np.ndarray) -> np.ndarray:
    """Step 2: clip to the foreground's percentiles, standardise by its mean and std (a volume
    that is not constant, which ``check_array`` ensures, has voxels above its mean)."""
    flat = array.ravel()
    foreground = flat[flat > flat.mean()]
    lower, upper = np.percentile(foreground, FOREGROUND_PERCENTILES)
    std = max(float(foreground.std()), EPSILON)
    return ((np.clip(array, lower, upper) - foreground.mean()) / std).astype(np.float32)


def segvol_preprocess(array: np.ndarray, affine: np.ndarray, size: Sequence[int] = (32, 256, 256),
                      orientation: str | None = None, name: str = "volume"
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """(X, Y, Z) volume + affine -> ((1, D, H, W) float32 in [0, 1], meta) by SegVol's steps
    (module docstring). ``meta["affine"]`` maps the output's voxels, transposed back to
    (X, Y, Z), to the source's world frame."""
    import nibabel as nib
    import torch
    from monai import transforms as mt
    from monai.data import MetaTensor

    check_array(array, name, rank=3)
    d, h, w = (int(s) for s in size)
    img = MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None],
                     affine=torch.as_tensor(affine, dtype=torch.float64))
    if orientation is not None:
        labels = (("L", "R"), ("P", "A"), ("I", "S"))
        img = mt.Orientation(axcodes=orientation, labels=labels)(img)
    values = foreground_normalise(img.as_tensor().numpy())
    values = values - values.min()
    values = values / max(float(values.max()), EPSILON)
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(values)), affine=img.affine)
    img = mt.SpatialPad(spatial_size=(w, h, d), mode="constant")(img)
    img = mt.CropForeground(margin=0, allow_smaller=True)(img)
    final_affine = np.asarray(img.affine, dtype=np.float64)
    data = np.ascontiguousarray(img.as_tensor().numpy().transpose(0, 3, 2, 1), dtype=np.float32)
    check_array(data, name, rank=4, channels=1, unit_range=True)
    x, y, z = (float(v) for v in np.linalg.norm(final_affine[:3, :3], axis=0))
    codes = "".join(reversed(nib.aff2axcodes(final_affine)))
    meta = {"spacing": [round(z, 4), round(y, 4), round(x, 4)], "orientation": codes,
            "preset": "segvol", "affine": final_affine.round(6).tolist(),
            "original_spacing_xyz": [round(float(v), 4)
                                     for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]}
    return data, meta
