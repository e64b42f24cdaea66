"""Raw NIfTI / DICOM data sets with a label table, CQ500 and PhysioNet CT-ICH.

Raw volumes are preprocessed when loaded (the same MONAI pipeline and spec as ``zoo data
prepare``); for training speed, prepare them once and read the ``.npy`` output instead.

- ``nifti_folder``: csv ``image, label`` (+ optional ``patient_id``, ``text``, ``series``);
  ``image`` is a NIfTI file, a DICOM series folder (``series`` picks one series where the folder
  holds several) or a prepared ``.npy``; gives ``cls`` items (and ``caption``
  items where ``text`` is set).
- ``cq500``: ``reads.csv`` (``name``, ``R1:ICH`` ... ``R3:MidlineShift``) + one DICOM series per
  case folder ``CQ500CT<n> ...``; ``ct_ich``: ``hemorrhage_diagnosis_raw_ct.csv`` (per slice)
  + ``ct_scans/<nnn>.nii[.gz]``. Both give the docs/reference.md section D question-answer pairs and a
  ``cls`` item (label 1 = haemorrhage).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.data import brainct
from zoo.data.io import data_root, read_csv, resolve
from zoo.data.prepare import NIFTI_SUFFIXES, PrepSpec
from zoo.data.source import DataSource
from zoo.errors import DataError
from zoo.registry import DATASETS


def image_format(path: Path) -> str:
    if path.is_dir():
        return "dicom"
    if path.name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix == ".npy":
        return "npy"
    raise DataError(path, "image must be a NIfTI file, a DICOM series folder or an .npy")


def raw_item(path: Path, spec: PrepSpec, **fields: Any) -> dict[str, Any]:
    """An item whose image is preprocessed on load with ``spec`` (npy images are read as is)."""
    fmt = image_format(path)
    item = {"image": path, "format": fmt, "orientation": "IPL", "plane": "axial",
            "spacing": None, **fields}
    if fmt != "npy":
        item["spec"] = asdict(spec)
        item["spec_key"] = json.dumps(item["spec"], sort_keys=True)
    return item


def spec_of(modality: str, size: Sequence[int], window: str | Sequence[float],
          spacing: Sequence[float] | None) -> PrepSpec:
    return PrepSpec(modality=modality, size=tuple(size),
                    window=window if isinstance(window, str) else tuple(window),
                    spacing=tuple(spacing) if spacing else None)


def _qa_items(pairs: list[dict], source: str, case: str, path: Path, spec: PrepSpec) -> list[dict]:
    return [raw_item(path, spec, id=f"{case}/qa{i}", case=case, patient_id=case, source=source,
                     **pair) for i, pair in enumerate(pairs)]



@DATASETS.register
def nifti_folder(root: str | None = None, labels: str = "labels.csv", modality: str = "ct",
                 size: Sequence[int] = (32, 256, 256), window: str | Sequence[float] = "abdomen",
                 spacing: Sequence[float] | None = None, patients: str | None = None,
                 manifest: str | None = None) -> DataSource:
    """Raw NIfTI / DICOM volumes (or prepared npy) with a label table ``image, label``."""
    r = data_root(root, "nifti_folder")
    spec = spec_of(modality, size, window, spacing)
    table = r / labels
    items = []
    for row_no, row in read_csv(table, ("image", "label")):
        path = resolve(r, row["image"], table, row_no)
        try:
            label = int(row["label"])
        except ValueError:
            raise DataError(table, f"label {row['label']!r} is not an integer", row_no) from None
        case = row.get("patient_id") or path.name.split(".")[0]
        base = {"case": case, "patient_id": row.get("patient_id") or case, "source": "nifti_folder"}
        if row.get("series"):
            base["series"] = row["series"]
        items.append(raw_item(path, spec, id=f"{case}/cls{row_no}", task="cls",
                              prompt="Classify this scan.", answer=str(label), label=label, **base))
        if row.get("text"):
            items.append(raw_item(path, spec, id=f"{case}/caption{row_no}", task="caption",
                                  prompt="Please write a radiology report for this scan.",
                                  answer=row["text"], **base))
    return DataSource("nifti_folder", items, root=r, manifest=manifest,
                      patients=r / patients if patients else None)


def cq500_labels(row: dict[str, str], path: Path, row_no: int) -> dict[str, int]:
    """Majority vote over the readers' columns ``R<k>:<label>`` (ties count as positive)."""
    out = {}
    for col in brainct.CQ500_COLUMNS:
        votes = [row[k] for k in row if re.fullmatch(rf"R\d+:{re.escape(col)}", k)]
        if not votes:
            raise DataError(path, f"missing reader column(s) 'R1:{col}' ...", row_no)
        try:
            values = [int(float(v)) for v in votes]
        except ValueError:
            raise DataError(path, f"non-numeric {col} votes {votes}", row_no) from None
        out[col] = int(2 * sum(values) >= len(values))
    return out


def cq500_series(root: Path, name: str, series: str | None, table: Path, row_no: int) -> Path:
    number = name.rsplit("-", 1)[-1]
    folders = [p for p in root.iterdir() if p.is_dir() and
               re.match(rf"CQ500-?CT-?{number}(\D|$)", p.name)]
    if not folders:
        raise DataError(table, f"no folder CQ500CT{number} for case {name!r} under {root}", row_no)
    candidates = sorted({p.parent for p in folders[0].rglob("*.dcm")})
    if series:
        candidates = [c for c in candidates if series.lower() in c.name.lower()]
    if not candidates:
        raise DataError(folders[0], f"no DICOM series{f' matching {series!r}' if series else ''}")
    return max(candidates, key=lambda c: (len(list(c.glob('*.dcm'))), -candidates.index(c)))


@DATASETS.register
def cq500(root: str | None = None, reads: str = "reads.csv", series: str | None = None,
          size: Sequence[int] = (32, 256, 256), window: str | Sequence[float] = "subdural",
          rephraser: str | None = None, manifest: str | None = None) -> DataSource:
    """CQ500 (Chilamkurthy et al. 2018): DICOM series + reads csv -> 1 open, 5 closed QA pairs."""
    r = data_root(root, "cq500")
    spec, hook = spec_of("ct", size, window, None), brainct.resolve_rephraser(rephraser)
    table = r / reads
    items = []
    for row_no, row in read_csv(table, ("name",)):
        labels = cq500_labels(row, table, row_no)
        folder = cq500_series(r, row["name"], series, table, row_no)
        case = row["name"]
        pairs = brainct.rephrase(brainct.cq500_qa(labels, case), hook)
        items += _qa_items(pairs, "cq500", case, folder, spec)
        items.append(raw_item(folder, spec, id=f"{case}/cls", case=case, patient_id=case,
                              source="cq500", task="cls", prompt="Is there intracranial haemorrhage?",
                              answer=str(labels["ICH"]), label=labels["ICH"]))
    return DataSource("cq500", items, root=r, manifest=manifest)


@DATASETS.register
def ct_ich(root: str | None = None, diagnosis: str = "hemorrhage_diagnosis_raw_ct.csv",
           scans: str = "ct_scans", size: Sequence[int] = (32, 256, 256),
           window: str | Sequence[float] = "subdural", rephraser: str | None = None,
           manifest: str | None = None) -> DataSource:
    """PhysioNet CT-ICH (Hssayeni et al. 2020): NIfTI + per-slice diagnosis csv -> QA pairs."""
    r = data_root(root, "ct_ich")
    spec, hook = spec_of("ct", size, window, None), brainct.resolve_rephraser(rephraser)
    table = r / diagnosis
    patients: dict[int, dict[str, int]] = {}
    first_row: dict[int, int] = {}
    for row_no, row in read_csv(table, ("PatientNumber", *brainct.CTICH_TYPES, "Fracture_Yes_No")):
        try:
            pid = int(row["PatientNumber"])
            flags = {k: int(float(row[k])) for k in (*brainct.CTICH_TYPES, "Fracture_Yes_No")}
        except ValueError:
            raise DataError(table, "non-numeric PatientNumber or flag", row_no) from None
        first_row.setdefault(pid, row_no)
        agg = patients.setdefault(pid, {k: 0 for k in flags})
        for k, v in flags.items():
            agg[k] = max(agg[k], v)
    items = []
    for pid, flags in sorted(patients.items()):
        stem = r / scans / f"{pid:03d}"
        path = next((stem.with_name(stem.name + s) for s in NIFTI_SUFFIXES
                     if stem.with_name(stem.name + s).is_file()), None)
        if path is None:
            raise DataError(table, f"no scan {stem}.nii[.gz] for PatientNumber {pid}", first_row[pid])
        types = [name for col, name in brainct.CTICH_TYPES.items() if flags[col]]
        case = f"ctich-{pid:03d}"
        pairs = brainct.rephrase(brainct.ctich_qa(types, bool(flags["Fracture_Yes_No"]), case), hook)
        items += _qa_items(pairs, "ct_ich", case, path, spec)
        items.append(raw_item(path, spec, id=f"{case}/cls", case=case, patient_id=case,
                              source="ct_ich", task="cls", prompt="Is there intracranial haemorrhage?",
                              answer=str(int(bool(types))), label=int(bool(types))))
    return DataSource("ct_ich", items, root=r, manifest=manifest)

