"""Bad input gets a clear error naming the file (and csv row), never a different sample."""

import json

import numpy as np
import pytest

from tests.test_data_readers import SIZE, dicom_series, nifti, volume, write_csv
from zoo.data.io import DataError, check_box, load_dicom_series, load_nifti, load_npy, \
    load_sparse_mask, save_sparse_mask
from zoo.data.source import build_sample


def item(image, **extra):
    return {"id": "x", "case": "x", "source": "t", "task": "caption", "image": image, **extra}


def test_truncated_and_corrupt_npy(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, volume())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"v\.npy: unreadable or truncated"):
        build_sample(item(path))
    path.write_bytes(b"not an npy at all")
    with pytest.raises(DataError, match=r"v\.npy: unreadable or truncated"):
        load_npy(path)


def test_wrong_rank_channels_nan_inf_empty_range(tmp_path):
    cases = {"rank": (np.zeros(SIZE, np.float32) + np.arange(SIZE[-1]) / 16, "expected rank 4"),
             "chan": (np.random.default_rng(0).random((2, *SIZE), dtype=np.float32), "1 channel"),
             "nan": (np.where(volume() > 0.5, np.nan, 0.2).astype(np.float32), "NaN voxel"),
             "inf": (np.where(volume() > 0.99, np.inf, 0.2).astype(np.float32), "infinite voxel"),
             "empty": (np.zeros((1, *SIZE), np.float32), "empty volume"),
             "size0": (np.zeros((1, 0, 4, 4), np.float32), "empty volume"),
             "range": (volume() * 1000, r"scaled to \[0, 1\]")}
    for name, (array, reason) in cases.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        with pytest.raises(DataError, match=rf"{name}\.npy: .*{reason}"):
            build_sample(item(path))


def test_truncated_nifti_and_npz(tmp_path):
    path = nifti(tmp_path / "a.nii.gz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"a\.nii\.gz: unreadable or truncated NIfTI"):
        load_nifti(path)
    mask = save_sparse_mask(tmp_path, np.ones((1, 4, 4, 4), np.uint8))
    mask.write_bytes(mask.read_bytes()[:50])
    with pytest.raises(DataError, match=r"mask_\(1, 4, 4, 4\)\.npz: unreadable or truncated"):
        load_sparse_mask(mask)


def test_mask_shape_must_match_image(tmp_path):
    np.save(tmp_path / "v.npy", volume())
    labels = np.zeros((1, 4, 4, 4), np.uint8)
    labels[0, 1, 1, 1] = 1
    np.save(tmp_path / "m.npy", labels)
    bad = item(tmp_path / "v.npy", task="refseg", mask={"kind": "labelmap",
                                                         "path": tmp_path / "m.npy", "ids": [1]})
    with pytest.raises(DataError, match=r"m\.npy: mask shape \(4, 4, 4\) does not match image"):
        build_sample(bad)


def test_csv_missing_column_and_missing_path(tmp_path):
    from zoo.data.m3d import m3d_refseg, m3d_vqa

    np.save(tmp_path / "v.npy", volume())
    write_csv(tmp_path / "M3D_VQA_train.csv", [{"Image Path": "v.npy", "Question": "q"}])
    with pytest.raises(DataError, match=r"M3D_VQA_train\.csv: missing column\(s\) \['Text'"):
        m3d_vqa(root=str(tmp_path), manifest=str(tmp_path / "m.json"))
    write_csv(tmp_path / "M3D_RefSeg.csv", [
        {"Image": "v.npy", "Mask": "v.npy", "Mask_ID": 1, "Question_Type": 0, "Question": "q",
         "Answer": "[SEG]"},
        {"Image": "gone.npy", "Mask": "v.npy", "Mask_ID": 1, "Question_Type": 0, "Question": "q",
         "Answer": "[SEG]"}])
    with pytest.raises(DataError, match=r"M3D_RefSeg\.csv row 3: path 'gone\.npy' does not exist"):
        m3d_refseg(root=str(tmp_path), manifest=str(tmp_path / "m.json"))


def test_box_outside_unit_range(tmp_path):
    from zoo.data.m3d import read_boxes

    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        check_box([0.1, 0.2, 0.3, 1.2, 0.5, 0.6], "boxes.csv", 4)
    np.save(tmp_path / "v.npy", volume())
    write_csv(tmp_path / "boxes.csv", [{"Image": "v.npy", "Target": "liver",
                                        "Box": json.dumps([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])},
                                       {"Image": "v.npy", "Target": "liver",
                                        "Box": json.dumps([-0.1, 0.2, 0.3, 0.4, 0.5, 0.6])}])
    with pytest.raises(DataError, match=r"boxes\.csv row 3: box .* outside \[0, 1\]"):
        read_boxes(tmp_path, tmp_path / "boxes.csv")


def test_dicom_mixed_sizes_and_missing_slices(tmp_path):
    assert load_dicom_series(dicom_series(tmp_path / "ok"))[0].shape == (16, 16, 6)
    with pytest.raises(DataError, match=r"mixed slice sizes"):
        load_dicom_series(dicom_series(tmp_path / "mixed", odd_size_at=3))
    with pytest.raises(DataError, match=r"missing\.*.*missing slice\(s\): gap of 5\.00 mm"):
        load_dicom_series(dicom_series(tmp_path / "missing", skip=3))


def test_check_cli_names_file_and_row(tmp_path, capsys):
    from zoo.data.cli import main

    np.save(tmp_path / "v.npy", volume())
    write_csv(tmp_path / "M3D_VQA_train.csv", [{
        "Image Path": "nope.npy", "Text": "", "Question Type": "1", "Question": "q",
        "Choice A": "a", "Choice B": "b", "Choice C": "c", "Choice D": "d", "Answer": "a",
        "Answer Choice": "A"}])
    assert main(["check", "--format", "m3d_vqa", str(tmp_path),
                 "--option", f"manifest={tmp_path / 'm.json'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "M3D_VQA_train.csv row 2: path 'nope.npy' does not exist" in err
