"""Readers of every supported format, on small files written here; splits; preparation."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from zoo.data import splits
from zoo.data.io import save_sparse_mask
from zoo.errors import DataError

SIZE = (8, 16, 16)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, *SIZE), dtype=np.float32)


@pytest.fixture
def m3d_root(tmp_path):
    """Three cases in M3D layout: npy + txt + json, VQA csv, seg npz + json, refseg csv."""
    entries, vqa, refseg, dec = [], [], [], []
    for i in range(3):
        case = tmp_path / "ct_case" / f"{i:06d}"
        case.mkdir(parents=True)
        np.save(case / "Axial_non_contrast.npy", volume(i))
        (case / "text.txt").write_text(f"Report {i}: liver lesion.")
        entries.append({"image": f"ct_case/{i:06d}/Axial_non_contrast.npy",
                        "text": f"ct_case/{i:06d}/text.txt"})
        vqa.append({"Image Path": entries[-1]["image"], "Text": "", "Question Type": "1",
                    "Question": "Which plane?", "Choice A": "axial", "Choice B": "coronal",
                    "Choice C": "sagittal", "Choice D": "NA", "Answer": "axial",
                    "Answer Choice": "A"})
        labels = np.zeros(SIZE, np.uint8)
        labels[2:5, 4:9, 3:7] = 1
        np.save(case / "mask.npy", labels[None])
        refseg.append({"Image": entries[-1]["image"], "Mask": f"ct_case/{i:06d}/mask.npy",
                       "Mask_ID": 1, "Question_Type": 0, "Question": "Segment the lesion.",
                       "Answer": "It is [SEG]."})
        seg_case = tmp_path / "0001" / f"case{i}"
        seg_case.mkdir(parents=True)
        np.save(seg_case / "image.npy", volume(10 + i).transpose(0, 3, 2, 1))  # (1, W, H, D)
        onehot = np.stack([labels, np.zeros_like(labels)]).transpose(0, 3, 2, 1)  # (C, W, H, D)
        mask = save_sparse_mask(seg_case, onehot)
        dec.append({"image": f"0001/case{i}/image.npy", "label": f"0001/case{i}/{mask.name}"})
    (tmp_path / "M3D_Cap.json").write_text(json.dumps({"train": entries[:2], "validation": [],
                                                        "test": entries[2:]}))
    write_csv(tmp_path / "M3D_VQA_train.csv", vqa)
    write_csv(tmp_path / "M3D_RefSeg.csv", refseg)
    (tmp_path / "0001.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver",
                                                               "2": "spleen"},
                                                    "train": dec[:2], "test": dec[2:]}))
    return tmp_path


def all_samples(source):
    return [s for split in splits.SPLITS for s in source.dataset(split)]


def test_m3d_cap_keeps_the_file_splits(m3d_root, tmp_path):
    from zoo.data.m3d import m3d_cap

    src = m3d_cap(root=str(m3d_root), size=SIZE, manifest=str(tmp_path / "cap.json"))
    assert src.describe()["samples"]["test"] == {"caption": 1}
    s = src.dataset("test")[0]
    assert s["answer"] == "Report 2: liver lesion." and s["image"].shape == (1, *SIZE)
    assert s["meta"]["plane"] == "axial" and s["meta"]["patient_id"] == "ct_case/000002"


def test_m3d_vqa_gives_closed_and_open_from_one_row(m3d_root, tmp_path):
    from zoo.data.m3d import m3d_vqa

    samples = all_samples(m3d_vqa(root=str(m3d_root), size=SIZE, manifest=str(tmp_path / "v.json")))
    closed = [s for s in samples if s["task"] == "vqa_closed"]
    opened = [s for s in samples if s["task"] == "vqa_open"]
    assert len(closed) == len(opened) == 3
    assert closed[0]["prompt"] == ("Which plane? Choices: A. axial B. coronal C. sagittal D. NA")
    assert closed[0]["answer"] == "A. axial" and opened[0]["answer"] == "axial"
    assert opened[0]["meta"]["question_type"] == "plane"


def test_m3d_seg_masks_and_positioning(m3d_root, tmp_path):
    from zoo.data.m3d import m3d_seg

    samples = all_samples(m3d_seg(root=str(m3d_root), manifest=str(tmp_path / "s.json")))
    by_task = {t: [s for s in samples if s["task"] == t] for t in ("seg", "rec", "reg")}
    assert len(by_task["seg"]) == 6 and len(by_task["rec"]) == 6 and len(by_task["reg"]) == 3
    liver = next(s for s in by_task["seg"] if "liver" in s["prompt"])
    assert liver["mask"].shape == (1, *SIZE) and int(liver["mask"].sum()) == 3 * 5 * 4
    assert "[SEG]" in liver["answer"]
    spleen = next(s for s in by_task["seg"] if "spleen" in s["prompt"])
    assert "[SEG]" not in spleen["answer"] and spleen["mask"].sum() == 0
    rec = next(s for s in by_task["rec"] if "liver" in s["prompt"])
    # D: 2..4 of 8, H: 4..8 of 16, W: 3..6 of 16 (M3D: first and last index / length)
    assert rec["box"] == [0.25, 0.25, 0.188, 0.5, 0.5, 0.375]
    assert "<bx_start>[0.250, 0.250, 0.188, 0.500, 0.500, 0.375]<bx_end>" in rec["answer"]
    reg = by_task["reg"][0]
    assert "<bx_start>" in reg["prompt"] and reg["answer"] == "The target is liver."


def test_m3d_seg_reads_the_published_layout(tmp_path):
    """M3D-Seg as published: ``<root>/<code>/<code>.json`` whose paths are relative to ``<root>``
    (M3D reads it with MONAI's ``load_decathlon_datalist(base_dir=<root>)``), arrays stored as
    ``(C, W, H, D)``, turned into ``(C, D, H, W)`` by swapping axes 1 and 3 (M3D's and SegVol's
    ``np.swapaxes(array, -1, -3)``)."""
    from zoo.data.m3d import m3d_seg

    root = tmp_path / "M3D_Seg"
    stored = {}
    for code, names in (("0000", ["liver"]), ("0003", ["liver", "kidney"])):
        entries = []
        for i in range(2):
            case = root / code / f"{names[0]}_{i}"
            case.mkdir(parents=True)
            image = np.random.default_rng(i).random((1, 12, 10, 6), dtype=np.float32)  # (1, W, H, D)
            mask = np.zeros((len(names), 12, 10, 6), np.uint8)
            mask[0, 2:5, 1:3, 4] = 1
            np.save(case / "image.npy", image)
            saved = save_sparse_mask(case, mask)
            entries.append({"image": f"{code}/{case.name}/image.npy",
                            "label": f"{code}/{case.name}/{saved.name}"})
            stored[f"{code}/{case.name}"] = (image, mask)
        labels = {"0": "background", **{str(k + 1): n for k, n in enumerate(names)}}
        (root / code / f"{code}.json").write_text(json.dumps(
            {"name": f"{code} Dataset", "labels": labels, "train": entries[:1],
             "test": entries[1:]}))
    source = m3d_seg(root=str(root), manifest=str(tmp_path / "all.json"), positioning=False)
    seg = all_samples(source)
    assert len(seg) == 2 * 1 + 2 * 2
    for s in seg:
        case = s["meta"]["id"].rsplit("/seg/", 1)[0]
        image, mask = stored[case]
        k = int(s["meta"]["id"].rsplit("/", 1)[1])
        assert s["image"].shape == (1, 6, 10, 12)
        assert np.array_equal(s["image"].numpy(), np.swapaxes(image, -1, -3))
        assert np.array_equal(s["mask"].numpy()[0], np.swapaxes(mask, -1, -3)[k - 1])
    one = m3d_seg(root=str(root / "0003"), manifest=str(tmp_path / "one.json"))
    assert {i["case"] for s in ("train", "validation", "test") for i in one.items(s)} == \
        {"0003/liver_0", "0003/liver_1"}
    picked = m3d_seg(root=str(root), datasets=["0000"], manifest=str(tmp_path / "0.json"))
    assert {i["target"] for s in ("train", "validation", "test") for i in picked.items(s)} == {"liver"}


def test_m3d_refseg(m3d_root, tmp_path):
    from zoo.data.m3d import m3d_refseg

    samples = all_samples(m3d_refseg(root=str(m3d_root), size=SIZE,
                                     manifest=str(tmp_path / "r.json")))
    assert len(samples) == 3 and all(s["mask"].sum() == 60 for s in samples)


def test_splits_are_stable_hashes(tmp_path):
    ids = [f"case{i}" for i in range(400)]
    m = splits.make_manifest(ids)
    sizes = {k: len(v) for k, v in m["splits"].items()}
    assert 280 < sizes["train"] < 360 and sizes["validation"] > 20 and sizes["test"] > 20
    assert splits.assign_split("case7") == splits.assign_split("case7")
    # patient grouping: two scans of one patient share a split
    assert splits.assign_split("scanA", patient_id="p1") == splits.assign_split("scanB", patient_id="p1")
    h1 = splits.write_manifest(tmp_path / "a.json", ids)
    h2 = splits.write_manifest(tmp_path / "b.json", list(reversed(ids)))
    assert h1 == h2 == splits.split_hash(tmp_path / "a.json")
    assert splits.read_manifest(tmp_path / "a.json")["test"] == m["splits"]["test"]
    with pytest.raises(ValueError, match="fractions"):
        splits.assign_split("x", fractions=(0.5, 0.2, 0.2))


def nifti(path: Path, seed: int = 0, shape=(20, 24, 12)) -> Path:
    import nibabel as nib

    data = np.random.default_rng(seed).normal(40, 30, shape).astype(np.float32)
    data[5:10, 5:10, 3:6] = 300
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 5.0, 1.0])), str(path))
    return path


def write_dicom_slice(path: Path, hu: np.ndarray, position, orientation=(1, 0, 0, 0, 1, 0),
                      pixel_spacing=(0.7, 0.7), series_uid: str | None = None,
                      series_number: int | None = None) -> None:
    """One CT slice file: ``hu`` (rows, cols) stored as uint16 with rescale intercept -1024."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (np.asarray(hu) + 1024).astype(np.uint16).tobytes()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if series_uid is not None:
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
    ds.save_as(str(path), enforce_file_format=True)


def dicom_series(folder: Path, n: int = 6, rows: int = 16, cols: int = 16, skip: int | None = None,
                 odd_size_at: int | None = None, series_uid: str | None = None,
                 series_number: int | None = None, prefix: str = "s") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        if k == skip:
            continue
        r = rows + 2 if k == odd_size_at else rows
        hu = (rng.random((r, cols)) * 200 + 1000).astype(np.uint16).astype(np.float64) - 1024
        write_dicom_slice(folder / f"{prefix}{k:03d}.dcm", hu, position=(0, 0, 2.5 * k),
                          series_uid=series_uid, series_number=series_number)
    return folder


def test_nifti_folder_with_nifti_and_dicom(tmp_path):
    from zoo.data.medical import nifti_folder

    nifti(tmp_path / "a.nii.gz")
    dicom_series(tmp_path / "b_series")
    write_csv(tmp_path / "labels.csv", [{"image": "a.nii.gz", "label": 1, "text": "Bright focus."},
                                        {"image": "b_series", "label": 0, "text": ""}])
    src = nifti_folder(root=str(tmp_path), size=(8, 16, 16), manifest=str(tmp_path / "m.json"))
    samples = all_samples(src)
    assert sorted(s["task"] for s in samples) == ["caption", "cls", "cls"]
    for s in samples:
        assert s["image"].shape == (1, 8, 16, 16) and 0 <= float(s["image"].min())
        assert float(s["image"].max()) <= 1 and s["meta"]["orientation"] == "IPL"
        assert len(s["meta"]["spacing"]) == 3


def test_cq500_and_ct_ich_question_answer_pairs(tmp_path):
    from zoo.data.medical import cq500, ct_ich

    q = tmp_path / "cq"
    dicom_series(q / "CQ500CT0 CQ500CT0" / "Unknown Study" / "CT PLAIN THIN")
    row = {"name": "CQ500-CT-0", "Category": "B1"}
    for col in ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left",
                "BleedLocation-Right", "ChronicBleed", "Fracture", "CalvarialFracture",
                "OtherFracture", "MassEffect", "MidlineShift"):
        for r in (1, 2, 3):
            row[f"R{r}:{col}"] = int(col in ("ICH", "SDH", "BleedLocation-Left") or
                                     (col == "MassEffect" and r == 1))
    write_csv(q / "reads.csv", [row])
    samples = all_samples(cq500(root=str(q), size=(8, 16, 16), manifest=str(q / "m.json")))
    opened = [s for s in samples if s["task"] == "vqa_open"]
    closed = [s for s in samples if s["task"] == "vqa_closed"]
    assert len(opened) == 1 and len(closed) == 5
    assert opened[0]["answer"] == "Yes, there is subdural haemorrhage on the left side."
    mass = next(s for s in closed if "mass effect" in s["prompt"].lower())
    assert mass["answer"] == "B. No"                         # 1 of 3 readers
    c = tmp_path / "ich"
    (c / "ct_scans").mkdir(parents=True)
    nifti(c / "ct_scans" / "049.nii")
    write_csv(c / "hemorrhage_diagnosis_raw_ct.csv", [
        {"PatientNumber": 49, "SliceNumber": s, "Intraventricular": 0, "Intraparenchymal": int(s == 2),
         "Subarachnoid": 0, "Epidural": 0, "Subdural": 0, "No_Hemorrhage": int(s != 2),
         "Fracture_Yes_No": 0} for s in range(1, 4)])
    samples = all_samples(ct_ich(root=str(c), size=(8, 16, 16), manifest=str(c / "m.json")))
    texts = {s["task"]: s["answer"] for s in samples}
    assert texts["vqa_open"] == "Yes, there is intraparenchymal haemorrhage."
    assert texts["vqa_closed"] == "B. No" and texts["cls"] == "1"


def test_rephraser_hook(tmp_path):
    from zoo.data import brainct

    pairs = brainct.rephrase(brainct.ctich_qa(["subdural"], False, "x"), lambda q, a: (q.upper(), a))
    assert pairs[0]["prompt"].isupper()


def test_prepare_writes_npy_and_spec(tmp_path):
    from zoo.data.cli import main

    src = tmp_path / "in"
    src.mkdir()
    nifti(src / "p1.nii.gz")
    dicom_series(src / "p2")
    out = tmp_path / "out"
    assert main(["prepare", "--in", str(src), "--out", str(out), "--size", "8", "16", "16",
                 "--window", "brain", "--spacing", "5", "1", "1"]) == 0
    images = sorted(out.rglob("image.npy"))
    assert len(images) == 2
    for image in images:
        arr = np.load(image)
        spec = json.loads((image.parent / "spec.json").read_text())
        assert arr.shape == (1, 8, 16, 16) and arr.dtype == np.float32
        assert spec["spec"]["window"] == "brain" and spec["orientation"] == "IPL"
    assert main(["check", "--format", "prepared", str(out)]) == 0


def test_m3d_volumes_of_another_size_than_data_size_are_named(m3d_root, tmp_path):
    from zoo.config import compose
    from zoo.data.m3d import m3d_cap

    src = m3d_cap(root=str(m3d_root), manifest=str(tmp_path / "cap.json"))  # M3D's 32 x 256 x 256
    with pytest.raises(DataError, match=r"Axial_non_contrast\.npy: volume size \(8, 16, 16\) "
                                        r"differs from the data set's size \(32, 256, 256\)"):
        src.dataset("test")[0]
    cfg = compose(["data=m3d_vqa", f"data.root={m3d_root}", "data.size=[8,16,16]"])
    assert list(cfg.recipe.image_size) == [8, 16, 16]
