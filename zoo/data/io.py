"""Validated readers for the files data sets are made of (npy, npz, csv, json, text, NIfTI, DICOM).

Every problem raises :class:`zoo.errors.DataError` naming the file (and csv row or json key) and
the reason, or :class:`zoo.errors.MissingFileError` for a file or folder the user named that does
not exist; nothing falls back to another sample. NumPy arrays are memory-mapped where the format
allows it. Text files are UTF-8 (a leading byte-order mark is accepted). Paths read from a table
must stay inside the data set folder (docs/data.md, "Errors and loading").
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from zoo.errors import ConfigError, DataError, MissingFileError

def check_array(array: np.ndarray, path: str | Path, *, rank: int | None = None,
                channels: int | None = None, unit_range: bool = False,
                constant_ok: bool = False) -> np.ndarray:
    """Validate rank, channel count, finiteness, non-emptiness, (optionally) [0, 1] range and,
    unless ``constant_ok`` (label maps may be all background), that not every voxel is equal."""
    if rank is not None and array.ndim != rank:
        layout = " (1, D, H, W)" if rank == 4 and channels == 1 else ""
        raise DataError(path, f"expected a rank {rank} array{layout}, got rank {array.ndim} shape "
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
    if lo == hi and not constant_ok:
        raise DataError(path, f"empty volume (every voxel is {lo})")
    if unit_range and (lo < -1e-4 or hi > 1 + 1e-4):
        raise DataError(path, f"values must be scaled to [0, 1], found [{lo:.4g}, {hi:.4g}]")
    return array


def load_npy(path: str | Path, *, mmap: bool = True, rank: int | None = 4,
             channels: int | None = 1, unit_range: bool = True,
             constant_ok: bool = False) -> np.ndarray:
    """Load (memory-mapped) and validate an M3D ``.npy`` volume, by default (1, D, H, W) in [0, 1]
    (``constant_ok`` for label maps)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:  # truncated header, bad magic, short data
        raise DataError(path, f"unreadable or truncated .npy ({type(err).__name__}: {err})") from None
    if not isinstance(array, np.ndarray):
        raise DataError(path, f"expected one array, got {type(array).__name__}")
    return check_array(array, path, rank=rank, channels=channels, unit_range=unit_range,
                       constant_ok=constant_ok)


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


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (a byte-order mark is dropped); one line naming the file and the line
    of the first byte that is not UTF-8 otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file does not exist")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(path, f"not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
                              f"save it as UTF-8") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid json ({err})") from None


def json_list(data: dict[str, Any], key: str, path: str | Path) -> list[Any]:
    """``data[key]`` as a list (absent: empty); any other type names the file and key."""
    value = data.get(key, [])
    if not isinstance(value, list):
        raise DataError(path, f"'{key}' must be a list, got {type(value).__name__} {value!r:.60}")
    return value


def read_csv(path: str | Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a csv as ``(row number, dict)`` (row 2 is the first data row, as a spreadsheet
    shows it); raises when a required column is missing, a column name repeats or a row has
    more fields than the header."""
    path = Path(path)
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise DataError(path, f"column(s) {repeated} appear more than once in the header")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; found {header}")
        reader.fieldnames = header
        for i, row in enumerate(reader, start=2):
            if None in row:
                raise DataError(path, f"{len(header) + len(row[None])} fields but the header "
                                      f"has {len(header)} columns", i)
            rows.append((i, {k: (v or "").strip() for k, v in row.items()}))
    except csv.Error as err:
        raise DataError(path, f"unreadable csv ({err})", len(rows) + 2) from None
    yield from rows


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a JSONL file as ``(line number, object)``, blank lines skipped; a line that is not
    json, or not a json object, names the file and the line."""
    path = Path(path)
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"invalid json ({err.msg} at column {err.colno})", n) from None
        if not isinstance(value, dict):
            raise DataError(path, f"a row must be a json object, got {type(value).__name__}", n)
        rows.append((n, value))
    yield from rows


def resolve(root: Path, value: Any, table: str | Path, row: int | None = None,
            key: str | None = None) -> Path:
    """A path read from a table (csv cell or json value ``key``), relative to ``root``; it must be
    a string, stay inside ``root`` (no ``..`` out of it, no absolute path elsewhere; compared
    without following links, so a link inside the folder may point anywhere) and exist."""
    where = f"{key}: " if key else ""
    if not isinstance(value, str):
        raise DataError(table, f"{where}path must be a string, got {type(value).__name__} "
                               f"{value!r:.60}", row)
    if not value:
        raise DataError(table, f"{where}empty path", row)
    path = Path(value) if Path(value).is_absolute() else root / value
    inside = os.path.abspath(root)
    if os.path.commonpath([inside, os.path.abspath(path)]) != inside:
        raise DataError(table, f"{where}path {value!r} is outside the data set folder {root}", row)
    if not path.exists():
        raise DataError(table, f"{where}path {value!r} does not exist (looked at {path})", row)
    return path


def data_root(root: str | Path | None, key: str) -> Path:
    """The ``root`` folder of a registered dataset; required and must exist."""
    if root is None:
        raise ConfigError(f"data {key}: 'root' (the data set folder) is required: data.root=DIR")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingFileError(f"data.root={path}: data set folder does not exist")
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


def load_nifti(path: str | Path, constant_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as ``(array (X, Y, Z) float32, affine 4x4)``; validated, including the
    affine (finite, invertible: an all-zero or NaN sform/qform has no world frame);
    ``constant_ok`` for label maps."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:
        raise DataError(path, f"unreadable or truncated NIfTI ({type(err).__name__}: {err})") from None
    if not np.isfinite(affine).all():
        raise DataError(path, "the affine (voxel to world, sform/qform) holds NaN or infinite "
                              "values; fix the header")
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise DataError(path, "the affine (voxel to world, sform/qform) is all zero or singular "
                              "(no voxel spacing or direction); fix the header")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    check_array(array, path, rank=3, constant_ok=constant_ok)
    return array, affine


def _series_label(uid: str, headers: list[Any]) -> str:
    first = headers[0]
    number = getattr(first, "SeriesNumber", None)
    description = str(getattr(first, "SeriesDescription", "") or "").strip()
    parts = [f"number {number}" if number not in (None, "") else "",
             repr(description) if description else "", f"{len(headers)} files"]
    return f"{uid or '(no SeriesInstanceUID)'} ({', '.join(p for p in parts if p)})"


def pick_series(folder: Path, headers: list[tuple[Path, Any]], series: str | None
                ) -> list[tuple[Path, Any]]:
    """The files of one series: the only one in the folder, or the one ``series`` names (its
    SeriesInstanceUID or SeriesNumber); several series without a name, or a name matching none,
    raise listing the series."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        groups.setdefault(str(getattr(ds, "SeriesInstanceUID", "") or ""), []).append((f, ds))
    if series is None and len(groups) == 1:
        return next(iter(groups.values()))
    listing = "; ".join(_series_label(uid, [d for _, d in g]) for uid, g in sorted(groups.items()))
    if series is None:
        raise DataError(folder, f"{len(groups)} DICOM series in one folder: {listing}; name one "
                                f"(SeriesInstanceUID or SeriesNumber) with --series (zoo data "
                                f"prepare) or a 'series' column (tables)")
    wanted = str(series).strip()
    chosen = [uid for uid, g in groups.items()
              if wanted == uid or wanted == str(getattr(g[0][1], "SeriesNumber", "")).strip()]
    if len(chosen) != 1:
        how = "matches no" if not chosen else "matches more than one"
        raise DataError(folder, f"series {wanted!r} {how} series in the folder: {listing}")
    return groups[chosen[0]]


def load_dicom_series(folder: str | Path, series: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series (one folder) as ``(array (X, Y, Z) float32 in HU, RAS affine 4x4)``.

    Files are grouped by SeriesInstanceUID: a folder holding several series needs ``series``
    (a SeriesInstanceUID or SeriesNumber, :func:`pick_series`); series are never merged. Slices
    are sorted by position along the slice normal; mixed slice sizes, duplicate positions and
    gaps (a step more than 1.5 x the median step: a missing slice) raise.
    """
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(folder, "no DICOM files in the series folder")
    headers = []
    for f in files:
        try:
            headers.append((f, pydicom.dcmread(str(f))))
        except Exception as err:
            raise DataError(f, f"unreadable DICOM file ({type(err).__name__}: {err})") from None
    slices = []
    for f, ds in pick_series(folder, headers, series):
        try:
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
