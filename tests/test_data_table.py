"""Bring your own data: a folder of volumes plus one table, prepared, checked, trained, evaluated."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import ConfigError, DataError

SIZE = (16, 32, 32)


def prepared_folder(root: Path, rows: list[dict], cases: int = 3) -> Path:
    """A folder as ``zoo data prepare --table`` leaves it: ``<case>/image.npy``, label maps,
    ``table.jsonl`` and ``prepared.json`` (written here directly: no MONAI in the fast tests)."""
    for i in range(cases):
        (root / f"c{i}").mkdir(parents=True)
        np.save(root / f"c{i}" / "image.npy",
                np.random.default_rng(i).random((1, *SIZE), dtype=np.float32))
        labels = np.zeros((1, *SIZE), np.uint8)
        labels[0, 4:8, 8:16, 2:10] = 1 if i != 2 else 0
        np.save(root / f"c{i}" / "mask0.npy", labels)
    (root / "table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "prepared.json").write_text(json.dumps({"size": list(SIZE)}))
    return root


ROWS = [{"image": "c0/image.npy", "patient_id": "anna", "report": "A bright lesion."},
        {"image": "c0/image.npy", "patient_id": "anna", "question": "Is there a lesion?",
         "choices": ["yes", "no"], "answer": "yes", "question_type": "abnormality"},
        {"image": "c1/image.npy", "patient_id": "anna", "question": "Where?",
         "choices": ["left", "right", "both"], "answer": "C"},
        {"image": "c1/image.npy", "question": "What is seen?", "answer": "A lesion."},
        {"image": "c2/image.npy", "mask": "c2/mask0.npy", "labels": {"1": "lesion"}},
        {"image": "c0/image.npy", "mask": "c0/mask0.npy", "labels": {"1": "lesion"}}]


def every_item(source):
    return [i for s in ("train", "validation", "test") for i in source.items(s)]


def test_one_table_gives_captions_vqa_and_masks(tmp_path):
    from zoo.data.source import build_sample
    from zoo.data.table import table

    source = table(root=str(prepared_folder(tmp_path / "d", ROWS)),
                   manifest=str(tmp_path / "m.json"))
    items = every_item(source)
    tasks = sorted(i["task"] for i in items)
    assert tasks == ["caption", "rec", "rec", "reg", "seg", "seg", "vqa_closed", "vqa_closed",
                     "vqa_open"]                 # no reg for c2: its mask holds no lesion
    yes_no = next(i for i in items if i["task"] == "vqa_closed" and len(i["choices"]) == 2)
    assert yes_no["prompt"] == "Is there a lesion? Choices: A. yes B. no"   # not padded to four
    assert yes_no["answer"] == "A. yes" and yes_no["question_type"] == "abnormality"
    three = next(i for i in items if i["task"] == "vqa_closed" and len(i["choices"]) == 3)
    assert three["answer"] == "C. both"           # the answer given as its letter
    # one patient's two images share a split
    where = {i["case"]: s for s in ("train", "validation", "test") for i in source.items(s)}
    assert where["c0"] == where["c1"]
    assert source.image_size == SIZE
    seg = build_sample(next(i for i in items if i["task"] == "seg" and i["case"] == "c0"))
    assert seg["mask"].shape == (1, *SIZE) and int(seg["mask"].sum()) == 4 * 8 * 8
    rec = build_sample(next(i for i in items if i["task"] == "rec" and i["case"] == "c0"))
    assert rec["box"] == [0.25, 0.25, 0.062, 0.438, 0.469, 0.281]


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("row, reason", [
    ({"image": "c0/image.npy", "question": "Q?"}, "row 2: question and answer go together"),
    ({"image": "c0/image.npy", "question": "Q?", "answer": "maybe", "choices": "yes|no"},
     r"row 2: answer 'maybe' is not one of the choices \['yes', 'no'\]"),
    ({"image": "c0/image.npy", "question": "Q?", "answer": "B. maybe", "choices": "yes|no"},
     r"row 2: answer 'B. maybe' is not one of the choices"),
    ({"image": "c0/image.npy", "question": "Q?", "answer": "yes", "choices": "yes"},
     "row 2: choices must be 2 to 26 distinct"),
    ({"image": "c0/image.npy", "question": "Q?", "answer": "yes", "choices": "yes|yes"},
     "row 2: choices must be 2 to 26 distinct"),
    ({"image": "c0/image.npy", "mask": "c0/mask0.npy"}, "row 2: mask and labels go together"),
    ({"image": "c0/image.npy", "mask": "c0/mask0.npy", "labels": "0:background"},
     "row 2: labels must map integers >= 1"),
    ({"image": "c0/image.npy", "mask": "c0/mask0.npy", "labels": "liver"},
     "row 2: labels must be '1:name"),
    ({"image": "c0/image.npy"}, "row 2: the row gives no report, question or mask"),
    ({"image": "../c0/image.npy", "report": "r"}, "row 2: path .* is outside the data set folder"),
    ({"image": "c0/image.npy", "reprot": "r"}, r"row 2: unknown column\(s\) \['reprot'\]. "
                                               r"Did you mean: report\?"),
])
def test_bad_rows_name_the_file_and_row(tmp_path, row, reason):
    from zoo.data.table import table

    root = prepared_folder(tmp_path / "d", ROWS[:1])
    (root / "table.jsonl").unlink()
    write_csv(root / "table.csv", [row])
    with pytest.raises(DataError, match=rf"table\.csv {reason}"):
        table(root=str(root), manifest=str(tmp_path / "m.json"))


def test_a_jsonl_line_that_does_not_parse_is_named(tmp_path):
    from zoo.data.table import table

    root = prepared_folder(tmp_path / "d", ROWS[:2])
    with (root / "table.jsonl").open("a") as fh:
        fh.write('{"image": "c1/image.npy", "report": "x"\n')
    with pytest.raises(DataError, match=r"table\.jsonl row 3: invalid json"):
        table(root=str(root), manifest=str(tmp_path / "m.json"))


def test_the_recipe_image_size_follows_the_prepared_data(tmp_path):
    from zoo.build import build_model
    from zoo.config import compose
    from zoo.data.source import check_data_fit
    from zoo.data.table import table

    root = prepared_folder(tmp_path / "d", ROWS)
    cfg = compose(["data=table", f"data.root={root}", f"data.manifest={tmp_path / 'm.json'}"])
    assert list(cfg.recipe.image_size) == list(SIZE) == list(cfg.data.size)
    with pytest.raises(ConfigError, match=r"data.size=\[32, 64, 64\] but .*prepared.json records "
                                          r"the prepared size \[16, 32, 32\]"):
        table(root=str(root), size=[32, 64, 64], manifest=str(tmp_path / "m.json"))
    data = table(root=str(root), manifest=str(tmp_path / "m.json"))
    wrong = build_model(compose(["data=table", f"data.root={root}",
                                 "recipe.image_size=[32,64,64]"]))
    with pytest.raises(ConfigError, match=r"recipe.image_size=\[32, 64, 64\] but the volumes of "
                                          r"data table are \[16, 32, 32\]: drop the"):
        check_data_fit(data, wrong, None, "")


def test_closed_questions_with_two_to_n_choices_are_scored(tmp_path):
    from zoo.evaluation import vqa

    yes_no, five = ["yes", "no"], ["a", "b", "c", "d", "e"]
    assert vqa.closed_scores("B. no", "B. no", yes_no) == {"accuracy": 1.0, "accuracy_m3d": 1.0}
    assert vqa.parse_choice("C", yes_no) is None          # not a letter of this item
    assert vqa.parse_choice("E. e", five) == "E" and vqa.answer_letter("E. e", five) == "E"
    train = [{"question_type": "t", "answer": "D. d", "choices": five}] * 3 + \
            [{"question_type": "t", "answer": "A. yes", "choices": yes_no}]
    majority = vqa.majority_answers(train)
    assert vqa.majority_prediction(majority, "t", ["no", "yes"]) == "A. no"   # D is out of range


def make_byo_folder(root: Path, patients: int = 10) -> Path:
    """A hospital-style folder: one small NIfTI CT and label map per patient, one CSV."""
    import nibabel as nib

    rows = []
    for i in range(patients):
        rng = np.random.default_rng(i)
        hu = rng.normal(40, 20, (24, 20, 10)).astype(np.float32)
        labels = np.zeros(hu.shape, np.uint8)
        if i % 2 == 0:
            hu[8:14, 6:10, 3:6], labels[8:14, 6:10, 3:6] = 75, 1
        folder = root / f"p{i:02d}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(hu, np.diag([0.9, 0.9, 5.0, 1.0])), str(folder / "ct.nii.gz"))
        nib.save(nib.Nifti1Image(labels, np.diag([0.9, 0.9, 5.0, 1.0])), str(folder / "seg.nii.gz"))
        image, pid, bleed = f"p{i:02d}/ct.nii.gz", f"p{i:02d}", i % 2 == 0
        rows += [{"image": image, "patient_id": pid,
                  "report": "Hyperdense focus." if bleed else "No acute abnormality."},
                 {"image": image, "patient_id": pid, "question": "Is there a haemorrhage?",
                  "choices": "yes|no", "answer": "yes" if bleed else "no"},
                 {"image": image, "patient_id": pid, "question": "What is the finding?",
                  "answer": "A haemorrhage." if bleed else "Nothing."},
                 {"image": image, "patient_id": pid, "mask": f"p{i:02d}/seg.nii.gz",
                  "labels": "1:haemorrhage"}]
    write_csv(root / "cases.csv", rows)
    return root


def test_a_folder_of_nifti_and_one_csv_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    """The documented path end to end (docs/data.md "Bring your own data"); the slowest test of
    the data layer (MONAI preparation of ten volumes, three one-step runs, two evaluations)."""
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    folder, out = make_byo_folder(tmp_path / "hospital"), tmp_path / "prepared"
    assert main(["data", "prepare", "--in", str(folder), "--table", "cases.csv", "--out", str(out),
                 "--size", *map(str, SIZE), "--window", "brain"]) == 0
    printed = capsys.readouterr().out
    assert "data table: train 8 cases (44 items), validation 2 cases (11 items), test 0 cases" in printed
    assert "note: the test split is empty" in printed
    prepared = np.load(out / "p00__ct" / "image.npy")
    mask = np.load(out / "p00__ct" / "mask0.npy")
    assert prepared.shape == mask.shape == (1, *SIZE) and set(np.unique(mask)) == {0, 1}
    assert main(["data", "check", "--format", "table", str(out), "--strict"]) == 0
    common = ["data=table", f"data.root={out}", "trainer.max_steps=1", "trainer.batch_size=2",
              "trainer.validate=false", "tracking.root=runs", f"trainer.output_dir={tmp_path}/o",
              "eval.max_items=2", "eval.tasks=[caption,vqa_closed]", "eval.cost=false"]
    # the default 80/10/10 split leaves this small set without a test patient: refused up front
    assert main(["train", *common]) == 2
    assert "the test split of data table is empty" in capsys.readouterr().err
    assert main(["train", *common, "data.fractions=[0.6,0.2,0.2]"]) == 0
    printed = capsys.readouterr().out
    assert "data table: train 6 cases" in printed and "test 2 cases" in printed
    assert "eval vqa_closed: 2 items" in printed and "eval caption: 2 items" in printed
    run_id = printed.split("mlflow run ")[1].split()[0]
    assert main(["eval", run_id, "eval.max_items=2", "eval.tasks=[vqa_closed]"]) == 0
    assert f"a child run of {run_id}" in capsys.readouterr().out
    # a run trained without evaluation on a split without test patients: zoo eval says so
    assert main(["train", *common, "eval.enabled=false"]) == 0
    run_id = capsys.readouterr().out.split("mlflow run ")[1].split()[0]
    assert main(["eval", run_id]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("zoo eval: ") and "the test split of data table is empty" in err
