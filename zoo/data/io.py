"""Validated readers for the files data sets are made of (npy, npz, csv, json, NIfTI, DICOM).

Every problem raises :class:`DataError` naming the file (and csv row) and the reason; nothing
falls back to another sample. NumPy arrays are memory-mapped where the format allows it.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np


class DataError(ValueError):
    """A data problem: ``str(err)`` is one line ``<file>[ row N]: <reason>``."""

    def __init__(self, path: str | Path, reason: str, row: int | None = None) -> None:
        self.path, self.reason, self.row = str(path), reason, row
        where = f"{path} row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {reason}")


def check_array(array: np.ndarray, path: str | Path, *, rank: int | None = None,
                channels: int | None = None, unit_range: bool = False) -> np.ndarray:
    """Validate rank, channel count, finiteness, non-emptiness and (optionally) [0, 1] range."""
    if rank is not None and array.ndim != rank:
        raise DataError(path, f"expected rank {rank} array, got rank {array.ndim} shape "
                              f"{tuple(array.shape)}")
    if array.size == 0:
        raise DataError(path, f"empty volume (shape {tuple(array.shape)})")
    if channels is not None and array.shape[0] != channels:
        raise DataError(path, f"expected {channels} channel(s), got {array.shape[0]} "
                              f"(shape {tuple(array.shape)})")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise DataError(path, f"non-numeric dtype {array.dtype}")
    lo, hi = float(array.min()), float(array.max())  # NaN and inf propagate into these
    if not (np.isfinite(lo) and np.isfinite(hi)):
        finite = np.isfinite(array)
        bad = "NaN" if np.isnan(array).any() else "infinite"
        raise DataError(path, f"{bad} voxel values ({int((~finite).sum())} voxels)")
    if lo == hi:
        raise DataError(path, f"empty volume (every voxel is {lo})")
    if unit_range and (lo < -1e-4 or hi > 1 + 1e-4):
        raise DataError(path, f"values must be scaled to [0, 1], found [{lo:.4g}, {hi:.4g}]")
    return array


def load_npy(path: str | Path, *, mmap: bool = True, rank: int | None = 4,
             channels: int | None = 1, unit_range: bool = True) -> np.ndarray:
    """Load (memory-mapped) and validate an M3D ``.npy`` volume, by default (1, D, H, W) in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:  # truncated header, bad magic, short data
        raise DataError(path, f"unreadable or truncated .npy ({type(err).__name__}: {err})") from None
    if not isinstance(array, np.ndarray):
        raise DataError(path, f"expected one array, got {type(array).__name__}")
    return check_array(array, path, rank=rank, channels=channels, unit_range=unit_range)


SHAPE_IN_NAME = re.compile(r"_\(([\d,\s]+)\)\.npz$")


def load_sparse_mask(path: str | Path) -> np.ndarray:
    """An M3D-Seg one-hot mask: scipy sparse CSR in ``mask_(C, H, W, D).npz`` -> dense uint8."""
    path = Path(path)
    match = SHAPE_IN_NAME.search(path.name)
    if match is None:
        raise DataError(path, "mask file name must carry its shape, e.g. mask_(2, 64, 64, 32).npz")
    shape = tuple(int(v) for v in match.group(1).split(","))
    if not path.is_file():
        raise DataError(path, "file does not exist")
    from scipy import sparse

    try:
        matrix = sparse.load_npz(path)
    except Exception as err:
        raise DataError(path, f"unreadable or truncated .npz ({type(err).__name__}: {err})") from None
    if int(np.prod(matrix.shape)) != int(np.prod(shape)):
        raise DataError(path, f"sparse matrix of shape {matrix.shape} does not hold the shape "
                              f"{shape} in its name")
    return matrix.toarray().reshape(shape).astype(np.uint8)


def sparse_mask_presence(path: str | Path) -> list[bool]:
    """Per channel: does the one-hot sparse mask have any voxel (reads only the CSR index)?"""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            indptr = npz["indptr"]
    except Exception as err:
        raise DataError(path, f"unreadable or truncated .npz ({type(err).__name__}: {err})") from None
    return [bool(n) for n in np.diff(indptr) > 0]


def save_sparse_mask(folder: Path, mask: np.ndarray, stem: str = "mask") -> Path:
    """Write an integer one-hot mask (C, ...) as ``<stem>_(C, ...).npz``, scipy's sparse CSR
    layout (``scipy.sparse.load_npz`` reads it), with fixed zip timestamps so the bytes are
    reproducible (``scipy.sparse.save_npz`` stamps the current time)."""
    import io
    import zipfile

    from scipy import sparse

    path = folder / f"{stem}_({', '.join(str(s) for s in mask.shape)}).npz"
    csr = sparse.csr_matrix(mask.reshape(mask.shape[0], -1).astype(np.uint8))
    arrays = {"indices": csr.indices, "indptr": csr.indptr, "format": np.array(b"csr"),
              "shape": np.array(csr.shape), "data": csr.data}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=1)
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"invalid json ({err})") from None


def read_csv(path: str | Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a csv as ``(row number, dict)`` (row 2 is the first data row, as a spreadsheet
    shows it); raises when a required column is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; found {header}")
        reader.fieldnames = header
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        yield i, {k: (v or "").strip() for k, v in row.items() if k is not None}


def resolve(root: Path, value: str, csv_path: str | Path, row: int | None = None) -> Path:
    """A path from a table, relative to ``root``; it must exist."""
    if not value:
        raise DataError(csv_path, "empty path", row)
    path = Path(value) if Path(value).is_absolute() else root / value
    if not path.exists():
        raise DataError(csv_path, f"path {value!r} does not exist (looked at {path})", row)
    return path


def data_root(root: str | Path | None, key: str) -> Path:
    """The ``root`` folder of a registered dataset; required and must exist."""
    if root is None:
        raise ValueError(f"data {key}: 'root' (the data set folder) is required")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(path, "data set folder does not exist")
    return path


def check_box(box: Sequence[float], path: str | Path, row: int | None = None) -> list[float]:
    """A 6-number box in [0, 1] with x1 <= x2, y1 <= y2, z1 <= z2."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise DataError(path, f"box {box!r} is not 6 numbers", row) from None
    if len(values) != 6:
        raise DataError(path, f"box must have 6 numbers [x1, y1, z1, x2, y2, z2], got {values}", row)
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise DataError(path, f"box {values} has coordinates outside [0, 1]", row)
    if any(values[i] > values[i + 3] for i in range(3)):
        raise DataError(path, f"box {values} has a start after its end", row)
    return values


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as ``(array (X, Y, Z) float32, affine 4x4)``; validated."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:
        raise DataError(path, f"unreadable or truncated NIfTI ({type(err).__name__}: {err})") from None
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    check_array(array, path, rank=3)
    return array, np.asarray(img.affine, dtype=np.float64)


def load_dicom_series(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series (one folder) as ``(array (X, Y, Z) float32 in HU, RAS affine 4x4)``.

    Slices are sorted by position along the slice normal; mixed slice sizes, duplicate positions
    and gaps (a step more than 1.5 x the median step: a missing slice) raise.
    """
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(folder, "no DICOM files in the series folder")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
            pixels = ds.pixel_array.astype(np.float32)
            pos = [float(v) for v in ds.ImagePositionPatient]
            orient = [float(v) for v in ds.ImageOrientationPatient]
        except Exception as err:
            raise DataError(f, f"unreadable DICOM slice ({type(err).__name__}: {err})") from None
        pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + \
            float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append((f, ds, pixels, np.array(pos), np.array(orient)))
    shapes = {s[2].shape for s in slices}
    if len(shapes) > 1:
        odd = next(s[0] for s in slices if s[2].shape != slices[0][2].shape)
        raise DataError(odd, f"mixed slice sizes in series {folder}: {sorted(shapes)}")
    row, col = slices[0][4][:3], slices[0][4][3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(s[3] @ normal))
    pos = np.array([float(s[3] @ normal) for s in slices])
    if len(slices) > 1:
        steps = np.diff(pos)
        if (steps <= 1e-6).any():
            raise DataError(folder, "two slices share one position (duplicate slice)")
        median = float(np.median(steps))
        gaps = np.flatnonzero(steps > 1.5 * median)
        if len(gaps):
            raise DataError(folder, f"missing slice(s): gap of {steps[gaps[0]]:.2f} mm after "
                                    f"{slices[gaps[0]][0].name} (median step {median:.2f} mm)")
    else:
        median = float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    ps = [float(v) for v in slices[0][1].PixelSpacing]
    # pixel_array is (rows, cols); voxel (i=col, j=row, k=slice) in LPS, then flip to RAS
    array = np.stack([s[2].T for s in slices], axis=-1)
    affine = np.eye(4)
    affine[:3, 0] = row * ps[1]
    affine[:3, 1] = col * ps[0]
    affine[:3, 2] = normal * median
    affine[:3, 3] = slices[0][3]
    affine[:2] *= -1
    check_array(array, folder, rank=3)
    return array.astype(np.float32), affine
