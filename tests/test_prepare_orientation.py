"""Orientation of `zoo data prepare` checked against a landmark: a bright marker placed at a known
patient-space corner of a body phantom must land in the matching corner of the prepared
(1, D, H, W) IPL array (D toward inferior, H toward posterior, W toward patient left), whatever
the file's voxel axes, flips, spacing or format (NIfTI affine, DICOM position/orientation)."""

import itertools

import numpy as np
import pytest

from tests.test_data_readers import write_dicom_slice
from zoo.data.prepare import PrepSpec, load_raw, preprocess

CENTER = np.array([5.0, -20.0, 30.0])  # RAS mm: the body is not at the origin
RADII = np.array([60.0, 45.0, 70.0])
CORNERS = [np.array(c) for c in itertools.product((-1, 1), repeat=3)]


def hounsfield(ras: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """HU at RAS points (..., 3): soft-tissue ellipsoid in air, a bone-bright ball toward
    ``corner`` (signs along R, A, S)."""
    body = (((ras - CENTER) / RADII) ** 2).sum(-1) < 1
    marker = np.linalg.norm((ras - (CENTER + 0.45 * corner * RADII)) / RADII, axis=-1) < 0.15
    return np.where(marker, 1000.0, np.where(body, 40.0, -1000.0)).astype(np.float32)


def expected_position(corner: np.ndarray) -> np.ndarray:
    """Marker centre as a fraction of (D, H, W) after the foreground crop to the body's box:
    D grows toward inferior (-S), H toward posterior (-A), W toward left (-R)."""
    return 0.5 + 0.45 * 0.5 * np.array([-corner[2], -corner[1], -corner[0]])


def marker_position(volume: np.ndarray) -> np.ndarray:
    """Centroid of the marker voxels as a fraction of each (D, H, W) extent."""
    idx = np.argwhere(volume[0] > 0.9)
    assert len(idx), "the marker did not survive preparation"
    return (idx.mean(0) + 0.5) / np.array(volume.shape[1:])


def nifti_case(path, affine: np.ndarray, shape: tuple[int, int, int], corner: np.ndarray):
    import nibabel as nib

    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    nib.save(nib.Nifti1Image(hounsfield(ras, corner), affine), str(path))
    return path


def _affine(columns: list[list[float]], spacing: tuple[float, float, float],
            shape: tuple[int, int, int]) -> np.ndarray:
    """Affine whose voxel axes point along ``columns`` (unit RAS vectors) with ``spacing``, placed
    so that the volume covers the body."""
    a = np.eye(4)
    a[:3, :3] = np.array(columns, dtype=float).T * np.array(spacing)
    a[:3, 3] = CENTER - a[:3, :3] @ (np.array(shape) - 1) / 2
    return a


NIFTI_LAYOUTS = {
    "ras": ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], (2.8, 2.4, 4.0), (48, 44, 40)),
    "lps": ([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], (2.8, 2.4, 4.0), (48, 44, 40)),
    # voxel axes (S->I, A->P, R->L) = the prepared layout itself, stored x-first
    "ipl_axes": ([[0, 0, -1], [0, -1, 0], [-1, 0, 0]], (4.0, 2.4, 2.8), (40, 44, 48)),
    # oblique-free but permuted and flipped: (P->A, I->S, L->R)
    "permuted": ([[0, 1, 0], [0, 0, 1], [1, 0, 0]], (2.4, 4.0, 2.8), (44, 40, 48)),
}


@pytest.mark.parametrize("layout", sorted(NIFTI_LAYOUTS))
def test_nifti_marker_lands_in_its_corner(tmp_path, layout):
    columns, spacing, shape = NIFTI_LAYOUTS[layout]
    affine = _affine(columns, spacing, shape)
    spec = PrepSpec(size=(16, 24, 24), window="abdomen")
    for n, corner in enumerate(CORNERS):
        path = nifti_case(tmp_path / f"{n}.nii.gz", affine, shape, corner)
        volume, meta = preprocess(*load_raw(path), spec)
        assert volume.shape == (1, 16, 24, 24) and meta["orientation"] == "IPL"
        np.testing.assert_allclose(marker_position(volume), expected_position(corner), atol=0.08,
                                   err_msg=f"{layout}, marker toward RAS signs {corner}")


def dicom_case(folder, row_cos, col_cos, corner, n_slices=30, size=40, reverse_files=False):
    """A DICOM series (LPS patient coordinates) of the phantom; slices written in file order
    along the normal, or reversed (the reader must sort them)."""
    row_cos, col_cos = np.array(row_cos, float), np.array(col_cos, float)
    normal = np.cross(row_cos, col_cos)
    ps, step = 3.6, 5.0  # in-plane spacing, slice step (mm)
    center_lps = CENTER * np.array([-1, -1, 1])
    first = center_lps - (row_cos + col_cos) * ps * (size - 1) / 2 - normal * step * (n_slices - 1) / 2
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    folder.mkdir(parents=True)
    order = range(n_slices)[::-1] if reverse_files else range(n_slices)
    for f, k in enumerate(order):
        ipp = first + normal * step * k
        lps = ipp + c[..., None] * ps * row_cos + r[..., None] * ps * col_cos
        write_dicom_slice(folder / f"{f:03d}.dcm", hounsfield(lps * np.array([-1, -1, 1]), corner),
                          position=ipp, orientation=[*row_cos, *col_cos], pixel_spacing=(ps, ps))
    return folder


DICOM_ORIENTATIONS = {
    "axial": ([1, 0, 0], [0, 1, 0], False),             # rows toward left, columns posterior
    "axial_files_reversed": ([1, 0, 0], [0, 1, 0], True),
    "coronal": ([1, 0, 0], [0, 0, -1], False),          # columns toward inferior
    "sagittal": ([0, 1, 0], [0, 0, -1], False),
}


@pytest.mark.parametrize("name", sorted(DICOM_ORIENTATIONS))
def test_dicom_marker_lands_in_its_corner(tmp_path, name):
    row_cos, col_cos, reverse = DICOM_ORIENTATIONS[name]
    spec = PrepSpec(size=(16, 24, 24), window="abdomen")
    for n, corner in enumerate(CORNERS[::3]):  # (-1,-1,-1), (-1,1,1), (1,1,-1): each sign per axis
        folder = dicom_case(tmp_path / f"s{n}", row_cos, col_cos, corner, reverse_files=reverse)
        volume, _ = preprocess(*load_raw(folder), spec)
        np.testing.assert_allclose(marker_position(volume), expected_position(corner), atol=0.08,
                                   err_msg=f"{name}, marker toward RAS signs {corner}")
