"""A hospital-style folder of small NIfTI CTs with a lesion and a label map, one CSV, prepared
and trained on by the CLI: the trained tiny model that `zoo predict`, `zoo chat` and `zoo export`
are tested on (tests/conftest.py shares one per session)."""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = (16, 32, 32)
SOURCE_SHAPE = (24, 28, 10)
# voxel axes permuted and flipped against the world (i runs posterior, j toward the patient's
# right), anisotropic, off the origin: the mask and box must come back in this frame
AFFINE = np.array([[0.0, -0.8, 0.0, 30.0],
                   [-0.9, 0.0, 0.0, 12.0],
                   [0.0, 0.0, 4.0, -40.0],
                   [0.0, 0.0, 0.0, 1.0]])
LESION = (slice(6, 14), slice(9, 17), slice(3, 7))
PATIENTS = 10


def lesion_volume(seed: int, lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(HU (X, Y, Z), label map) with air slabs to crop and an optional 80 HU lesion."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(30.0, 4.0, SOURCE_SHAPE).astype(np.float32)
    hu[:2], hu[-2:] = -1000.0, -1000.0
    labels = np.zeros(SOURCE_SHAPE, np.uint8)
    if lesion:
        hu[LESION], labels[LESION] = 80.0, 1
    return hu, labels


def write_nifti(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return path


def make_folder(root: Path) -> Path:
    rows = []
    for i in range(PATIENTS):
        hu, labels = lesion_volume(i, lesion=i % 2 == 0)
        image, pid = f"p{i:02d}/ct.nii.gz", f"p{i:02d}"
        write_nifti(root / image, hu)
        write_nifti(root / pid / "seg.nii.gz", labels)
        rows += [{"image": image, "patient_id": pid,
                  "report": "Hyperdense lesion." if i % 2 == 0 else "No lesion."},
                 {"image": image, "patient_id": pid, "question": "Is there a lesion?",
                  "choices": "yes|no", "answer": "yes" if i % 2 == 0 else "no"},
                 {"image": image, "patient_id": pid, "mask": f"{pid}/seg.nii.gz",
                  "labels": "1:lesion"}]
    with (root / "cases.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    return root


@dataclass
class TrainedRun:
    home: Path
    hospital: Path
    run_id: str
    run_dir: Path
    tracking_uri: str


def train_run(home: Path) -> TrainedRun:
    """Prepare the folder and train LaMed (tiny ViT, tiny LLaMA with LoRA, tiny SegVol head) for
    two steps per stage through `zoo train`, evaluated on two test items."""
    from zoo.cli import main

    hospital = make_folder(home / "hospital")
    assert main(["-q", "data", "prepare", "--in", str(hospital), "--table", "cases.csv", "--out",
                 str(home / "prepared"), "--size", *map(str, SIZE), "--window", "brain"]) == 0
    assert main(["-q", "train", "data=table", f"data.root={home / 'prepared'}",
                 "data.fractions=[0.6,0.2,0.2]", "head=test_segvol", "trainer.max_steps=2",
                 "trainer.validate=false", f"trainer.output_dir={home / 'outputs'}",
                 f"tracking.root={home / 'runs'}", "eval.max_items=2",
                 "eval.tasks=[vqa_closed]", "eval.cost=false"]) == 0
    folder = next((home / "outputs").iterdir())
    return TrainedRun(home, hospital, folder.name, folder,
                      f"sqlite:///{home / 'runs' / 'mlflow.db'}")
