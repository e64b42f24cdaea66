"""Preparation of the user's own CT/MRI volumes into the M3D ``.npy`` format, with MONAI.

Steps (docs/design.md section 6; M3D itself ignored spacing and HU, docs/reference.md section B):
orientation to ``IPL`` storage (axis 0 superior -> inferior, axis 1 anterior -> posterior,
axis 2 patient right -> left; radiological axial display), optional spacing-aware resampling,
HU windowing for CT (named presets) or percentile scaling for MRI, foreground crop, resize to the
recipe's input size. Output per case: ``<out>/<case>/image.npy`` (1, D, H, W) float32 in [0, 1]
plus ``spec.json`` (the spec, source file, original and final spacing).

``PrepSpec.preset`` names another model's own preprocessing instead (:data:`PRESETS`; ``segvol``:
:mod:`zoo.data.prepare_segvol`).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.data.io import check_array, load_dicom_series, load_nifti
from zoo.errors import ConfigError, DataError, MissingFileError

# HU windows (low, high) = level -/+ width / 2; common radiology presets.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (0.0, 80.0), "subdural": (-20.0, 180.0), "stroke": (8.0, 48.0),
    "abdomen": (-160.0, 240.0), "liver": (-45.0, 105.0), "mediastinum": (-125.0, 225.0),
    "lung": (-1350.0, 150.0), "bone": (-500.0, 1300.0), "wide": (-1000.0, 1000.0),
}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# preparation presets: ``zoo`` is :func:`preprocess` below; the others reproduce a model's own steps
PRESETS = ("zoo", "segvol")


@dataclass
class PrepSpec:
    """Preprocessing spec, recorded with every prepared case.

    ``size`` (D, H, W) output; ``spacing`` target (d, h, w) mm before the resize (None: keep);
    ``window`` preset name or (low, high) HU for CT; ``percentiles`` for MRI. ``preset``
    (:data:`PRESETS`) ``segvol`` runs SegVol's steps instead, using ``size`` (the minimum size it
    pads to) and ``orientation`` (None: the file's stored axes, as SegVol's code; e.g. ``RAS``).
    """

    modality: str = "ct"
    size: tuple[int, int, int] = (32, 256, 256)
    window: str | tuple[float, float] = "abdomen"
    percentiles: tuple[float, float] = (0.5, 99.5)
    spacing: tuple[float, float, float] | None = None
    crop_foreground: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    preset: str = "zoo"
    orientation: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            from zoo.registry import suggest

            raise ConfigError(f"unknown preparation preset {self.preset!r}."
                              f"{suggest(self.preset, list(PRESETS))} "
                              f"Presets: {', '.join(PRESETS)}")
        if self.orientation is not None:
            if self.preset == "zoo":
                raise ConfigError(f"orientation={self.orientation!r} applies to preset 'segvol'; "
                                  "the zoo's preparation always stores IPL")
            self.orientation = str(self.orientation).upper()
            axes = sorted(next((i for i, pair in enumerate(("LR", "PA", "IS")) if c in pair), -1)
                          for c in self.orientation)
            if axes != [0, 1, 2]:
                raise ConfigError(f"orientation={self.orientation!r}: expected three axis codes, "
                                  "one of L/R, P/A and I/S each (e.g. RAS)")
        if self.modality not in ("ct", "mri"):
            raise ConfigError(f"modality must be 'ct' or 'mri', got {self.modality!r}")
        try:
            size = tuple(int(s) for s in self.size)
        except (TypeError, ValueError):
            size = ()
        if len(size) != 3 or min(size) < 1:
            raise ConfigError(f"size must be three positive ints (D, H, W), got {self.size}")
        self.size = size
        if isinstance(self.window, str) and self.window not in WINDOWS:
            from zoo.registry import suggest

            raise ConfigError(f"unknown window {self.window!r}.{suggest(self.window, list(WINDOWS))}"
                             f" Presets: {', '.join(WINDOWS)}")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)

    def hu_window(self) -> tuple[float, float]:
        return WINDOWS[self.window] if isinstance(self.window, str) else tuple(self.window)


def preprocess(array: np.ndarray, affine: np.ndarray, spec: PrepSpec, name: str = "volume"
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """(X, Y, Z) volume + RAS affine -> ((1, D, H, W) float32 in [0, 1], meta)."""
    if spec.preset == "segvol":
        from zoo.data.prepare_segvol import segvol_preprocess

        data, meta = segvol_preprocess(array, affine, spec.size, spec.orientation, name)
        return data, {**meta, "spec": asdict(spec)}

    data, _, meta = preprocess_pair(array, affine, spec, name)
    return data, meta


def check_label(label: np.ndarray, label_affine: np.ndarray, shape: tuple[int, ...],
                affine: np.ndarray, name: str) -> np.ndarray:
    """A label map on the image's voxel grid (same shape, affine within 1e-3 mm) holding
    integers >= 0, as int64."""
    if label.shape != shape:
        raise DataError(name, f"mask shape {label.shape} differs from its image's {shape}")
    if not np.allclose(label_affine, affine, atol=1e-3):
        raise DataError(name, "mask affine differs from its image's (not on the same voxel grid)")
    if not np.isfinite(label).all() or (label < 0).any() or (label != np.round(label)).any():
        raise DataError(name, "a mask must hold label numbers (integers >= 0)")
    return label.astype(np.int64)


def zoo_steps(spec: PrepSpec, keys: Sequence[str]) -> list[Any]:
    """The MONAI dictionary transforms of the zoo's preset on ``keys`` (``image`` first, then an
    optional ``label`` resampled nearest neighbour), on (C, X, Y, Z) MetaTensors with their
    affines; the result is (C, X, Y, Z) in LPI order. Spatial steps are MONAI's invertible ones."""
    from monai import transforms as mt

    keys = list(keys)
    modes = lambda image, mask: (image, mask)[:len(keys)]  # noqa: E731
    steps: list[Any] = [mt.Orientationd(keys, axcodes="LPI",
                                        labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if spec.spacing is not None:
        d, h, w = spec.spacing
        steps.append(mt.Spacingd(keys, pixdim=(w, h, d), mode=modes("bilinear", "nearest")))
    if spec.modality == "ct":
        lo, hi = spec.hu_window()
        # crop before windowing: the windowed voxel is > 0 exactly where HU > lo, so the box is
        # the same and the pointwise window runs on the cropped voxels only
        if spec.crop_foreground:
            steps.append(mt.CropForegroundd(keys, source_key="image", select_fn=lambda x: x > lo,
                                            allow_smaller=True))
        steps.append(mt.ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0,
                                             clip=True))
    else:
        lo, hi = spec.percentiles
        steps.append(mt.ScaleIntensityRangePercentilesd("image", lower=lo, upper=hi, b_min=0.0,
                                                        b_max=1.0, clip=True))
        if spec.crop_foreground:
            steps.append(mt.CropForegroundd(keys, source_key="image", select_fn=lambda x: x > 0,
                                            allow_smaller=True))
    d, h, w = spec.size
    steps.append(mt.Resized(keys, spatial_size=(w, h, d), mode=modes("trilinear", "nearest")))
    return steps


def preprocess_pair(array: np.ndarray, affine: np.ndarray, spec: PrepSpec, name: str = "volume",
                    label: np.ndarray | None = None, label_affine: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """:func:`preprocess`, with an optional label map (X, Y, Z) on the image's grid carried
    through the same spatial steps (nearest neighbour) -> (1, D, H, W) integers; the zoo's
    preset only (other presets keep each volume's own size and have no label path)."""
    if spec.preset != "zoo":
        raise ConfigError(f"preset {spec.preset!r} prepares images alone; a mask needs the zoo's "
                          f"preset")
    import torch
    from monai.data import MetaTensor
    from monai import transforms as mt

    check_array(array, name, rank=3)
    as_meta = lambda a, aff, dtype: MetaTensor(  # noqa: E731
        torch.as_tensor(a, dtype=dtype)[None], affine=torch.as_tensor(aff, dtype=torch.float64))
    inputs = {"image": as_meta(array, affine, torch.float32)}
    if label is not None:
        inputs["label"] = as_meta(check_label(label, label_affine, array.shape, affine, name),
                                  label_affine, torch.float32)
    original = [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]
    out = mt.Compose(zoo_steps(spec, list(inputs)))(inputs)
    image = out["image"]
    final_affine = np.asarray(image.affine, dtype=np.float64)
    # (C, X, Y, Z) LPI -> (C, D, H, W) IPL; clamp in place (resampling may overshoot by rounding),
    # then one contiguous copy (numpy's strided copy: 30 % faster than torch's here)
    data = image.as_tensor().to(torch.float32).clamp_(0.0, 1.0).numpy()
    data = np.ascontiguousarray(data.transpose(0, 3, 2, 1))
    check_array(data, name, rank=4, channels=1, unit_range=True)
    labels = None
    if label is not None:
        labels = out["label"].as_tensor().round().numpy().transpose(0, 3, 2, 1)
        labels = np.ascontiguousarray(labels.astype(np.uint8 if labels.max() < 256 else np.int32))
    x, y, z = (float(v) for v in np.linalg.norm(final_affine[:3, :3], axis=0))
    meta = {"spacing": [round(z, 4), round(y, 4), round(x, 4)], "orientation": "IPL",
            "plane": "axial", "original_spacing_xyz": [round(v, 4) for v in original],
            "spec": asdict(spec), "affine": final_affine.round(6).tolist()}
    return data, labels, meta


def load_raw(path: str | Path, series: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file or a DICOM series folder as (array (X, Y, Z), RAS affine); ``series`` picks
    one series of a DICOM folder that holds several (its SeriesInstanceUID or SeriesNumber)."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path, series)
    if path.name.endswith(NIFTI_SUFFIXES):
        return load_nifti(path)
    raise DataError(path, "not a NIfTI file (.nii/.nii.gz) or a DICOM series folder")


def find_inputs(path: str | Path) -> list[Path]:
    """Inputs under ``path``: NIfTI files, and folders that directly hold DICOM files."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: input path does not exist")
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    for folder in sorted({p.parent for p in path.rglob("*") if p.is_file()
                          and (p.suffix.lower() == ".dcm")}):
        found.append(folder)
    if not found:
        raise DataError(path, "no NIfTI files or DICOM series found")
    return found


def case_name(path: Path, base: Path) -> str:
    rel = path.relative_to(base) if path != base and base in path.parents else Path(path.name)
    name = rel.as_posix()
    for suffix in NIFTI_SUFFIXES:
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name.replace("/", "__") or path.stem


def prepare_one(path: Path, out_dir: Path, spec: PrepSpec, series: str | None = None
                ) -> dict[str, Any]:
    array, affine = load_raw(path, series)
    data, meta = preprocess(array, affine, spec, name=str(path))
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "image.npy", data)
    meta["source_file"] = str(path)
    (out_dir / "spec.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def prepare(inputs: str | Path, out: str | Path, spec: PrepSpec, workers: int = 1,
            progress: bool = True, series: str | None = None) -> list[Path]:
    """Prepare every input under ``inputs`` into ``out/<case>/``; returns the image paths.
    ``series`` picks one series in DICOM folders that hold several (:func:`load_raw`)."""
    base = Path(inputs)
    paths = find_inputs(base)
    out = Path(out)
    jobs = [(p, out / case_name(p, base if base.is_dir() else base.parent)) for p in paths]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=not progress)
    if workers <= 1:
        for p, o in jobs:
            prepare_one(p, o, spec, series)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(prepare_one, p, o, spec, series) for p, o in jobs]:
                fut.result()
                bar.update()
    bar.close()
    return [o / "image.npy" for _, o in jobs]


def parse_window(value: str) -> str | tuple[float, float]:
    if value in WINDOWS:
        return value
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"window must be a preset ({', '.join(WINDOWS)}) or 'low,high' HU, "
                         f"got {value!r}") from None
    return lo, hi


def spec_from(modality: str, size: Sequence[int], window: str, spacing: Sequence[float] | None,
              crop: bool = True, preset: str = "zoo", orientation: str | None = None) -> PrepSpec:
    return PrepSpec(modality=modality, size=tuple(size), window=parse_window(window),
                    spacing=tuple(spacing) if spacing else None, crop_foreground=crop,
                    preset=preset, orientation=orientation)


def load_raw_item(item: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """(prepared array (C, D, H, W), meta) of a data-set item whose image is a raw NIfTI file or
    DICOM series (``item["image"]``, ``item["series"]``), prepared on load with ``item["spec"]``
    (a :class:`PrepSpec` as a dict). ``meta["affine"]``: voxel (X, Y, Z) of the prepared array
    (its (D, H, W) transposed) -> world (RAS) of the source scan, for writing model-space masks
    back as NIfTI (recipes.lamed_seg)."""
    array, affine = load_raw(item["image"], item.get("series"))
    data, meta = preprocess(array, affine, PrepSpec(**item["spec"]), name=str(item["image"]))
    return data, {"spacing": tuple(meta["spacing"]), "orientation": meta["orientation"],
                  "affine": meta["affine"], "source_affine": np.asarray(affine).tolist()}
