"""One volume handed to a trained model (``zoo predict``, ``zoo chat``): read, prepared the way
the model's training volumes were (:mod:`zoo.data.preparation`), and the way back from the
model's grid to the source's voxels and world frame.

A NIfTI file or DICOM series folder is prepared with the model's spec (:func:`zoo.data.prepare.
preprocess`), which records the affine of the prepared grid (voxel ``(X, Y, Z)``, the model's
``(D, H, W)`` transposed, to world RAS mm). Every spatial step of the preparation (orientation,
spacing, foreground crop, padding, resize) is an affine map of the voxel grid, so a model-space
mask goes back to the source grid by resampling it from the prepared affine onto the source's
affine and shape (MONAI ``SpatialResample``); the result equals MONAI's inverse transforms of the
preparation (``tests/test_predict.py``). A box goes back by mapping its corners through the same
affines. An M3D ``.npy`` input is the model's input as it is (no preparation, no world frame).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.errors import DataError, MissingFileError


@dataclass
class InputVolume:
    """``image`` ``(1, D, H, W)`` float32 in [0, 1] (the model's input); for NIfTI / DICOM also the
    source's array shape ``(X, Y, Z)`` and affine, and the prepared grid's affine."""

    path: Path
    format: str
    image: np.ndarray
    source_shape: tuple[int, int, int] | None = None
    source_affine: np.ndarray | None = None
    grid_affine: np.ndarray | None = None

    @property
    def has_world(self) -> bool:
        return self.source_affine is not None

    def to_source(self, volume: np.ndarray, mode: str = "bilinear") -> np.ndarray:
        """A model-space ``(D, H, W)`` array on the source's voxel grid ``(X, Y, Z)`` (zero
        outside the prepared field of view); an ``.npy`` input's grid is the model's."""
        if volume.ndim != 3 or tuple(volume.shape) != tuple(self.image.shape[1:]):
            raise ValueError(f"expected a (D, H, W) array of shape {self.image.shape[1:]}, got "
                             f"{volume.shape}")
        if not self.has_world:
            return np.asarray(volume)
        import torch
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        xyz = torch.as_tensor(np.ascontiguousarray(volume.transpose(2, 1, 0)), dtype=torch.float32)
        grid = MetaTensor(xyz[None], affine=torch.as_tensor(self.grid_affine, dtype=torch.float64))
        out = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float64)(
            grid, dst_affine=torch.as_tensor(self.source_affine, dtype=torch.float64),
            spatial_size=self.source_shape)
        return out.as_tensor()[0].numpy().astype(np.float32)

    def save_mask(self, probability: np.ndarray, path: Path) -> dict[str, Any]:
        """Threshold a model-space probability ``(D, H, W)`` at 0.5 (M3D) on the source grid and
        write it: NIfTI with the source's affine and shape for NIfTI / DICOM inputs, else an
        ``.npy`` ``(1, D, H, W)`` uint8 beside the input's layout. Returns path and voxel count."""
        mask = (self.to_source(probability) >= 0.5).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.has_world:
            import nibabel as nib

            nib.save(nib.Nifti1Image(mask, self.source_affine), str(path))
        else:
            np.save(path, mask[None])
        return {"path": str(path), "voxels": int(mask.sum())}

    def box_coordinates(self, box: Sequence[float]) -> dict[str, Any]:
        """An M3D box ``[x1, y1, z1, x2, y2, z2]`` (normalised over the model's ``(D, H, W)``,
        lower and upper voxel over the axis length, docs/reference.md B) as voxel indices of
        the source array (``i, j, k`` of a NIfTI / DICOM array ``(X, Y, Z)``, or ``d, h, w`` of an
        ``.npy``) and, with a world frame, RAS millimetres; corners as ``min`` / ``max``."""
        size = np.asarray(self.image.shape[1:], dtype=np.float64)
        low, high = np.asarray(box[:3], dtype=np.float64) * size, \
            np.asarray(box[3:], dtype=np.float64) * size
        if not self.has_world:
            return {"normalized": [float(v) for v in box],
                    "voxel": {"axes": "DHW", "min": _rounded(low), "max": _rounded(high)},
                    "world": None}
        # the 8 corners (d, h, w) as prepared-grid voxels (X, Y, Z) = (w, h, d)
        corners = np.array([(w, h, d) for d, h, w in itertools.product(*zip(low, high))])
        homogeneous = np.c_[corners, np.ones(len(corners))]
        world = homogeneous @ self.grid_affine.T
        voxel = world @ np.linalg.inv(self.source_affine).T
        return {"normalized": [float(v) for v in box],
                "voxel": {"axes": "IJK", "min": _rounded(voxel[:, :3].min(0)),
                          "max": _rounded(voxel[:, :3].max(0))},
                "world": {"frame": "RAS mm", "min": _rounded(world[:, :3].min(0)),
                          "max": _rounded(world[:, :3].max(0))}}


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 2) for v in values]


def input_format(path: str | Path) -> str:
    """``npy``, ``nifti`` or ``dicom`` for an input volume that exists; one line naming the path
    otherwise (checked for every input before a model is loaded)."""
    from zoo.data.medical import image_format

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: input volume does not exist")
    return image_format(path)


def read_input(path: str | Path, spec: Any | None, image_size: Sequence[int] | None,
               series: str | None = None) -> InputVolume:
    """Read ``path`` and prepare it with ``spec`` (a :class:`zoo.data.prepare.PrepSpec`; needed
    for NIfTI / DICOM). ``image_size`` (the model's ``(D, H, W)``, None: any) must match the
    prepared volume; an ``.npy`` is read as it is ``(1, D, H, W)`` in [0, 1]."""
    from zoo.data.io import load_npy
    from zoo.data.prepare import load_raw, preprocess

    path = Path(path)
    fmt = input_format(path)
    if fmt == "npy":
        image = np.asarray(load_npy(path, mmap=False), dtype=np.float32)
        volume = InputVolume(path, fmt, image)
    else:
        if spec is None:
            raise DataError(path, "a NIfTI / DICOM input needs a preparation spec")
        array, affine = load_raw(path, series)
        image, meta = preprocess(array, affine, spec, name=str(path))
        volume = InputVolume(path, fmt, image, tuple(int(s) for s in array.shape),
                             np.asarray(affine, dtype=np.float64),
                             np.asarray(meta["affine"], dtype=np.float64))
    if image_size is not None and tuple(volume.image.shape[1:]) != tuple(image_size):
        how = "is" if fmt == "npy" else "was prepared to"
        raise DataError(path, f"the volume {how} {list(volume.image.shape[1:])} (D, H, W), the "
                              f"model reads {list(image_size)}")
    return volume
