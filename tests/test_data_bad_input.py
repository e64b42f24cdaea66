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
    cases = {"rank": (np.zeros(SIZE, np.float32) + np.arange(SIZE[-1]) / 16,
                      r"expected a rank 4 array \(1, D, H, W\), got rank 3"),
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


def bad_affine_nifti(path, affine):
    import nibabel as nib

    data = np.random.default_rng(0).normal(40, 30, (6, 6, 4)).astype(np.float32)
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_sform(affine, code=1)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(data, None, header), str(path))
    return path


def test_nifti_with_zero_or_nan_affine_names_the_file(tmp_path):
    zero = bad_affine_nifti(tmp_path / "zero.nii.gz", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"zero\.nii\.gz: the affine .* all zero or singular"):
        load_nifti(zero)
    nan = bad_affine_nifti(tmp_path / "nan.nii", np.where(np.eye(4) > 0, np.nan, 0.0))
    with pytest.raises(DataError, match=r"nan\.nii: the affine .* NaN"):
        load_nifti(nan)


def test_json_values_of_the_wrong_type_name_file_and_key(tmp_path):
    from zoo.data.m3d import m3d_cap
    from zoo.data.splits import read_manifest

    np.save(tmp_path / "v.npy", volume())
    (tmp_path / "t.txt").write_text("Report.")
    cap = tmp_path / "M3D_Cap.json"
    ok = {"image": "v.npy", "text": "t.txt"}
    cases = [({"train": [ok], "validation": 5}, r"'validation' must be a list, got int 5"),
             ({"train": [{"image": 5, "text": "t.txt"}]},
              r"train\[0\]\.image: path must be a string, got int 5"),
             ({"train": [ok, {"image": "v.npy", "text": ["t.txt"]}]},
              r"train\[1\]\.text: path must be a string, got list"),
             ([ok], r"must be an object")]
    for data, reason in cases:
        cap.write_text(json.dumps(data))
        with pytest.raises(DataError, match=rf"M3D_Cap\.json: .*{reason}"):
            m3d_cap(root=str(tmp_path), manifest=str(tmp_path / "m.json"))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"splits": {"train": ["a"], "validation": [], "test": 5}}))
    with pytest.raises(DataError, match=r"manifest\.json: splits\.test must be a list"):
        read_manifest(manifest)


VQA_ROW = {"Image Path": "v.npy", "Text": "", "Question Type": "1", "Question": "Which plane?",
           "Choice A": "axial", "Choice B": "coronal", "Choice C": "sagittal", "Choice D": "NA",
           "Answer": "axial", "Answer Choice": "A"}


def test_csv_encoding_extra_fields_and_byte_order_mark(tmp_path):
    from zoo.data.m3d import m3d_vqa

    np.save(tmp_path / "v.npy", volume())
    table = write_csv(tmp_path / "M3D_VQA_train.csv", [VQA_ROW, VQA_ROW])
    build = lambda: m3d_vqa(root=str(tmp_path), manifest=str(tmp_path / "m.json"))  # noqa: E731
    text = table.read_text()
    table.write_bytes(b"\xef\xbb\xbf" + text.encode())            # a spreadsheet's UTF-8 BOM
    assert len(build().items("train") + build().items("validation") + build().items("test")) == 4
    table.write_bytes(text.replace("Which plane?", "Quel plan \xe9?", 1).encode("latin-1"))
    with pytest.raises(DataError, match=r"M3D_VQA_train\.csv: not UTF-8 text \(byte 0xe9 on line 2\)"):
        build()
    lines = text.splitlines()
    table.write_text("\n".join([lines[0], lines[1], lines[2] + ",extra"]) + "\n")
    with pytest.raises(DataError, match=r"M3D_VQA_train\.csv row 3: 11 fields but the header "
                                        r"has 10 columns"):
        build()
    table.write_text(lines[0] + ",Text\n" + lines[1] + ",x\n")
    with pytest.raises(DataError, match=r"column\(s\) \['Text'\] appear more than once"):
        build()


def test_label_and_meta_files_that_do_not_parse(tmp_path):
    from zoo.data.m3d import image_meta, read_seg
    from zoo.data.medical import nifti_folder

    mask = save_sparse_mask(tmp_path, np.ones((1, *volume().shape[1:]), np.uint8))
    np.save(tmp_path / "v.npy", volume())
    seg = tmp_path / "0000.json"
    entry = {"image": "v.npy", "label": mask.name}
    for labels, reason in [({"0": "background", "liver": "1"}, "keys must be integers"),
                           ({"0": "background", "1": 7}, "must map integers >= 0 to names")]:
        seg.write_text(json.dumps({"labels": labels, "train": [entry]}))
        with pytest.raises(DataError, match=rf"0000\.json: 'labels' {reason}"):
            read_seg(tmp_path, seg)
    case = tmp_path / "case"
    case.mkdir()
    np.save(case / "image.npy", volume())
    for meta, reason in [({"spacing": "1,1,1"}, "'spacing' must be three positive numbers"),
                         ({"spacing": [1, 0, 1]}, "'spacing' must be three positive numbers"),
                         ({"orientation": "IPX"}, "'orientation' must be three axis letters"),
                         ({"orientation": "IIL"}, "'orientation' must be three axis letters"),
                         ({"plane": "oblique"}, "'plane' must be one of"),
                         ([1, 2], "must be a json object")]:
        (case / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(DataError, match=rf"meta\.json: {reason}"):
            image_meta(case / f"image.npy{len(reason)}")  # a fresh cache key per case
    (case / "meta.json").write_text("{'spacing': [1, 1, 1]}")
    with pytest.raises(DataError, match=r"meta\.json: invalid json"):
        image_meta(case / "image.npy")
    write_csv(tmp_path / "labels.csv", [{"image": "v.npy", "label": "yes"}])
    with pytest.raises(DataError, match=r"labels\.csv row 2: label 'yes' is not an integer"):
        nifti_folder(root=str(tmp_path), manifest=str(tmp_path / "m.json"))


def test_paths_outside_the_data_folder_are_refused_in_every_format(tmp_path):
    from zoo.data.m3d import m3d_cap, m3d_refseg, m3d_vqa
    from zoo.data.medical import nifti_folder

    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    np.save(outside / "v.npy", volume())
    np.save(root / "v.npy", volume())
    (root / "t.txt").write_text("Report.")
    manifest = str(tmp_path / "m.json")
    for escaping in ("../elsewhere/v.npy", str(outside / "v.npy"), "sub/../../elsewhere/v.npy"):
        write_csv(root / "M3D_VQA_train.csv", [VQA_ROW, {**VQA_ROW, "Image Path": escaping}])
        with pytest.raises(DataError, match=r"M3D_VQA_train\.csv row 3: path .* is outside the "
                                            r"data set folder"):
            m3d_vqa(root=str(root), manifest=manifest)
        (root / "M3D_Cap.json").write_text(json.dumps({"test": [{"image": escaping, "text": "t.txt"}]}))
        with pytest.raises(DataError, match=r"M3D_Cap\.json: test\[0\]\.image: path .* outside"):
            m3d_cap(root=str(root), manifest=manifest)
        write_csv(root / "M3D_RefSeg.csv", [{"Image": "v.npy", "Mask": escaping, "Mask_ID": 1,
                                             "Question_Type": 0, "Question": "q", "Answer": "a"}])
        with pytest.raises(DataError, match=r"M3D_RefSeg\.csv row 2: path .* outside"):
            m3d_refseg(root=str(root), manifest=manifest)
        write_csv(root / "labels.csv", [{"image": escaping, "label": 1}])
        with pytest.raises(DataError, match=r"labels\.csv row 2: path .* outside"):
            nifti_folder(root=str(root), manifest=manifest)
    # an absolute path inside the folder is fine
    write_csv(root / "M3D_VQA_train.csv", [{**VQA_ROW, "Image Path": str(root / "v.npy")}])
    assert m3d_vqa(root=str(root), manifest=str(tmp_path / "m2.json")).describe()


def test_dicom_folder_with_two_series_is_split_never_merged(tmp_path):
    from zoo.data.cli import main

    folder = tmp_path / "in" / "study"
    dicom_series(folder, n=4, series_uid="1.2.3.1", series_number=1, prefix="a")
    dicom_series(folder, n=5, series_uid="1.2.3.2", series_number=2, prefix="b")
    with pytest.raises(DataError, match=r"study: 2 DICOM series in one folder: 1\.2\.3\.1 "
                                        r"\(number 1, 4 files\); 1\.2\.3\.2 \(number 2, 5 files\)"):
        load_dicom_series(folder)
    assert load_dicom_series(folder, series="1.2.3.2")[0].shape == (16, 16, 5)
    assert load_dicom_series(folder, series="1")[0].shape == (16, 16, 4)
    with pytest.raises(DataError, match=r"series '3' matches no series in the folder: 1\.2\.3\.1"):
        load_dicom_series(folder, series="3")
    out = tmp_path / "out"
    assert main(["prepare", "--in", str(tmp_path / "in"), "--out", str(out), "--size", "4", "8",
                 "8"]) == 1
    assert main(["prepare", "--in", str(tmp_path / "in"), "--out", str(out), "--size", "4", "8",
                 "8", "--series", "1.2.3.2"]) == 0
    assert np.load(out / "study" / "image.npy").shape == (1, 4, 8, 8)


def test_errors_pickle_and_stay_one_line_from_dataloader_workers(tmp_path):
    import pickle

    from torch.utils.data import DataLoader

    from zoo import errors
    from zoo.data.source import SampleDataset

    for kind in (errors.ZooError, errors.ConfigError, errors.DataError, errors.MissingFileError,
                 errors.CheckpointError, errors.RunError):
        again = pickle.loads(pickle.dumps(kind("x.csv: bad value")))
        assert type(again) is kind and str(again) == "x.csv: bad value"
    again = pickle.loads(pickle.dumps(DataError("x.csv", "bad value", 4)))
    assert (str(again), again.path, again.row) == ("x.csv row 4: bad value", "x.csv", 4)
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((1, 4, 4, 4), np.float32))
    loader = DataLoader(SampleDataset([item(path)]), num_workers=1, collate_fn=lambda b: b)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert str(caught.value) == f"{path}: empty volume (every voxel is 0.0) (in DataLoader " \
                                f"worker process 0)"


def test_data_cli_exit_codes(tmp_path, capsys):
    from zoo.data.cli import main

    assert main(["check", "--format", "m3d_vqa", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: path does not exist" in capsys.readouterr().err
    assert main(["check", "--format", "m3d_vqa", str(tmp_path), "--option", "cvs=x.csv"]) == 2
    assert "unknown option(s) ['cvs'] for format m3d_vqa. Did you mean: csv?" in \
        capsys.readouterr().err
    assert main(["check", "--format", "m3d_vqq", str(tmp_path)]) == 2
