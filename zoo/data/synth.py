"""The built-in synthetic phantom benchmark: generation in the M3D on-disk formats, and datasets.

``write_benchmark(out, cases, size, seed, family)`` writes, per case ``<out>/<id>/``:
``image.npy`` (1, D, H, W) float32 in [0, 1], ``meta.json`` (spacing, orientation, plane, phase,
HU window), ``text.txt`` (report), ``labels.npy`` (1, D, H, W) uint8 label map and
``mask_(C, D, H, W).npz`` (one-hot sparse CSR); and at the top: ``cap.json`` (M3D-Cap),
``vqa.csv`` (M3D-VQA), ``abdomen.json`` / ``head.json`` (M3D-Seg Decathlon json, ``axes``
``CDHW``), ``refseg.csv`` (M3D-RefSeg), ``slices.csv`` (slice texts), ``labels.csv`` (cls:
1 = abnormal), ``cq500_labels.csv`` (CQ500 label table of head cases, reads format with one
reader), ``manifest.json`` (split manifest) and ``synth.json`` (parameters; written last, marks
a complete benchmark). Everything is byte-for-byte reproducible from the parameters.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.data import phantom as P
from zoo.data import templates as T
from zoo.data.io import save_sparse_mask
from zoo.data.source import DataSource
from zoo.data.splits import write_manifest
from zoo.errors import ConfigError, DataError
from zoo.registry import DATASETS

GENERATOR_VERSION = 1
SLICE_FRACTIONS = (0.25, 0.5, 0.75)
LESION_CLASS = {"abdomen": "lesion", "head": "haemorrhage"}


def case_plan(cases: int, family: str) -> list[tuple[str, int]]:
    """(family, index within family) for each case; 'both' alternates abdomen and head."""
    if cases < 1:
        raise ConfigError(f"cases must be >= 1, got {cases}")
    if family == "both":
        return [(P.FAMILIES[i % 2], i // 2) for i in range(cases)]
    if family not in P.FAMILIES:
        raise ConfigError(f"family must be one of {P.FAMILIES + ('both',)}, got {family!r}")
    return [(family, i) for i in range(cases)]


def _csv_text(header: Sequence[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _slices(case: P.Case) -> list[dict[str, Any]]:
    """Slice texts: for each plane, slices at 1/4, 1/2, 3/4 of that plane's stored axis."""
    from zoo.data.source import slice_axis

    rows = []
    for plane in P.PLANE_AXES_KEYS:
        axis = slice_axis(case.orientation, plane)
        count = case.labels.shape[axis]
        for frac in SLICE_FRACTIONS:
            index = min(count - 1, int(frac * count))
            present = np.unique(np.take(case.labels, index, axis=axis))
            names = [case.classes[i - 1] for i in present if i > 0]
            finding = case.findings[0] if case.findings else None
            text = T.slice_text(plane, index, count, T.slice_structures(names, finding, case.family))
            rows.append({"Image": f"{case.case_id}/image.npy", "Plane": plane, "Index": index,
                         "Text": text})
    return rows


def write_case(case: P.Case, out: Path) -> dict[str, Any]:
    """Write one case's files; returns its table rows."""
    folder = out / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "image.npy", case.image)
    np.save(folder / "labels.npy", case.labels[None])
    meta = {"spacing": list(case.spacing), "orientation": case.orientation, "plane": case.plane,
            "phase": case.phase, "family": case.family, "hu_window": list(case.window)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    (folder / "text.txt").write_text(T.report(case) + "\n")
    onehot = np.stack([case.labels == k for k in range(1, len(case.classes) + 1)])
    mask = save_sparse_mask(folder, onehot)
    image = f"{case.case_id}/image.npy"
    vqa = [{"Image Path": image, "Text": "", "Question Type": q["question_type"],
            "Question": q["question"], **{f"Choice {c}": v for c, v in zip(T.LETTERS, q["choices"])},
            "Answer": q["answer"], "Answer Choice": q["answer_choice"]} for q in T.vqa_items(case)]
    lesion_id = case.classes.index(LESION_CLASS[case.family]) + 1
    refseg = [{"Image": image, "Mask": f"{case.case_id}/labels.npy", **row}
              for row in T.refseg_items(case, lesion_id)]
    rows = {"cap": {"image": image, "text": f"{case.case_id}/text.txt"}, "vqa": vqa,
            "refseg": refseg, "slices": _slices(case),
            "seg": {"image": image, "label": f"{case.case_id}/{mask.name}"},
            "labels": {"image": image, "label": int(bool(case.findings)),
                       "patient_id": case.case_id}}
    if case.family == "head":
        rows["cq500"] = {"name": case.case_id, "Category": "synthetic",
                         **{f"R1:{k}": v for k, v in case.flags["cq500"].items()}}
    return rows


def write_benchmark(out: str | Path, cases: int = 200, size: Sequence[int] = (32, 64, 64),
                    seed: int = 0, family: str = "both", progress: bool = False,
                    lesion_scale: float = 1.0) -> Path:
    """Generate the benchmark into ``out`` (created; must not hold another benchmark)."""
    from zoo.data.splits import assign_split

    out = Path(out)
    size = tuple(int(s) for s in size)
    plan = case_plan(cases, family)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list] = {k: [] for k in ("cap", "vqa", "refseg", "slices", "labels", "cq500")}
    seg: dict[str, list] = {f: [] for f in P.FAMILIES}
    from tqdm.auto import tqdm

    for fam, index in tqdm(plan, desc="synth", unit="case", disable=not progress):
        case = P.generate_case(index, seed, size, fam, lesion_scale)
        rows = write_case(case, out)
        tables["cap"].append(rows["cap"])
        tables["vqa"] += rows["vqa"]
        tables["refseg"] += rows["refseg"]
        tables["slices"] += rows["slices"]
        tables["labels"].append(rows["labels"])
        if "cq500" in rows:
            tables["cq500"].append(rows["cq500"])
        seg[fam].append((case.case_id, rows["seg"]))
    ids = [f"{fam}_{i:05d}" for fam, i in plan]
    write_manifest(out / "manifest.json", ids)
    split_of = {i: assign_split(i) for i in ids}
    cap = {s: [r for r, i in zip(tables["cap"], ids) if split_of[i] == s]
           for s in ("train", "validation", "test")}
    (out / "cap.json").write_text(json.dumps(cap, indent=1) + "\n")
    for fam, entries in seg.items():
        if not entries:
            continue
        labels = {"0": "background", **{str(k + 1): n for k, n in enumerate(P.CLASSES[fam])}}
        dec = {"name": f"synthetic {fam}", "axes": "CDHW", "labels": labels,
               "train": [e for i, e in entries if split_of[i] != "test"],
               "test": [e for i, e in entries if split_of[i] == "test"]}
        (out / f"{fam}.json").write_text(json.dumps(dec, indent=1, sort_keys=True) + "\n")
    from zoo.data.m3d import REFSEG_COLUMNS, SLICE_COLUMNS, VQA_COLUMNS

    (out / "vqa.csv").write_text(_csv_text(VQA_COLUMNS, tables["vqa"]))
    (out / "refseg.csv").write_text(_csv_text(REFSEG_COLUMNS, tables["refseg"]))
    (out / "slices.csv").write_text(_csv_text(SLICE_COLUMNS, tables["slices"]))
    (out / "labels.csv").write_text(_csv_text(("image", "label", "patient_id"), tables["labels"]))
    if tables["cq500"]:
        (out / "cq500_labels.csv").write_text(_csv_text(list(tables["cq500"][0]), tables["cq500"]))
    params = generator_params(cases, size, seed, family, lesion_scale)
    (out / "synth.json").write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
    return out


def generator_params(cases: int, size: Sequence[int], seed: int, family: str,
                     lesion_scale: float = 1.0) -> dict[str, Any]:
    """The parameters recorded in ``synth.json`` (``lesion_scale`` only when not 1, so the
    default benchmark and its cache key are those of earlier versions)."""
    params = {"cases": cases, "size": [int(s) for s in size], "seed": seed, "family": family,
              "version": GENERATOR_VERSION}
    return params if lesion_scale == 1.0 else {**params, "lesion_scale": float(lesion_scale)}


def params_key(cases: int, size: Sequence[int], seed: int, family: str,
               lesion_scale: float = 1.0) -> str:
    blob = json.dumps(generator_params(cases, size, seed, family, lesion_scale), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_benchmark(cache_dir: str | Path, cases: int, size: Sequence[int], seed: int,
                     family: str, lesion_scale: float = 1.0) -> Path:
    """The cached benchmark folder ``<cache_dir>/synth-<hash>``, generated atomically if absent."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"synth-{params_key(cases, size, seed, family, lesion_scale)}"
    if (target / "synth.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=cache_dir))
    try:
        write_benchmark(tmp, cases, size, seed, family, lesion_scale=lesion_scale)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / "synth.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_synth(root: Path, manifest: str | Path | None = None) -> DataSource:
    """Read a written benchmark through the M3D readers (same code path as real data)."""
    from zoo.data import m3d
    from zoo.data.io import read_csv, resolve

    if not (root / "synth.json").is_file():
        raise DataError(root / "synth.json", "not a synthetic benchmark folder (run `zoo data synth`)")
    items, _ = m3d.read_cap(root, root / "cap.json", source="synth")
    items += m3d.read_vqa(root, root / "vqa.csv", source="synth")
    for fam in P.FAMILIES:
        if (root / f"{fam}.json").is_file():
            items += m3d.read_seg(root, root / f"{fam}.json", source="synth")
    items += m3d.read_refseg(root, root / "refseg.csv", source="synth")
    items += m3d.read_slices(root, root / "slices.csv", source="synth")
    table = root / "labels.csv"
    for row_no, row in read_csv(table, ("image", "label", "patient_id")):
        image = resolve(root, row["image"], table, row_no)
        items.append(m3d._base(root, image, "synth", f"{row['patient_id']}/cls", "cls",
                               prompt=T.CLS_PROMPT,
                               answer=row["label"], label=int(row["label"])))
    return DataSource("synth", items, root=root, manifest=manifest or root / "manifest.json")


@DATASETS.register
def synth(root: str | None = None, cases: int = 200, size: Sequence[int] = (32, 64, 64),
          seed: int = 0, family: str = "both", cache_dir: str = "runs/data",
          lesion_scale: float = 1.0) -> DataSource:
    """Built-in synthetic CT phantom benchmark (abdomen + head), generated deterministically into
    ``<cache_dir>/synth-<hash>`` unless ``root`` names an existing benchmark folder;
    ``lesion_scale`` enlarges abdominal lesions (see :func:`zoo.data.phantom.generate_case`)."""
    if root is not None:
        return read_synth(Path(root))
    return read_synth(ensure_benchmark(cache_dir, cases, size, seed, family, lesion_scale))


@DATASETS.register
def test_synth(root: str | None = None, cases: int = 6, size: Sequence[int] = (16, 32, 32),
               seed: int = 0, family: str = "both", cache_dir: str = "runs/data") -> DataSource:
    """Tiny synthetic benchmark for tests: 6 cases at 16 x 32 x 32."""
    return synth(root=root, cases=cases, size=size, seed=seed, family=family, cache_dir=cache_dir)
