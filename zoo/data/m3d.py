"""Readers of the M3D on-disk formats (docs/reference.md section B) and their registered datasets.

- M3D-Cap: json ``{"train": [{"image", "text"}], "validation": [...], "test": [...]}``;
- M3D-VQA: csv ``Image Path, Text, Question Type, Question, Choice A..D, Answer, Answer Choice``;
  each row gives one closed item (4 choices, ``"{letter}. {answer}"``) and one open item;
- M3D-Seg: per data set ``<code>``, a Decathlon-style json (``labels`` map 0 = background, 1..C
  names; ``train`` and ``test`` lists of ``{"image", "label"}`` with paths relative to the
  M3D-Seg root), found as ``<root>/<code>/<code>.json`` (the published layout, which M3D reads
  with MONAI's ``load_decathlon_datalist(base_dir=<root>)``) or ``<root>/<code>.json``; one-hot
  sparse CSR ``mask_(C, ...).npz``, channel ``k - 1`` holding label ``k``. Arrays are stored in
  M3D's ``(C, W, H, D)`` order, which M3D and SegVol turn into ``(C, D, H, W)`` by swapping the
  first and last spatial axes; a json key ``"axes"`` (e.g. ``"CDHW"``, written by the synthetic
  benchmark) names another order. REC/REG ("positioning") items are derived from the masks;
- M3D-RefSeg: csv ``Image, Mask, Mask_ID, Question_Type, Question, Answer``; target
  ``mask == Mask_ID`` in an integer label-map ``.npy``;
- slice texts (zoo extension for Med3DInsight): csv ``Image, Plane, Index, Text``.

The case id of an item is the image's parent folder relative to the root (M3D keeps one folder
per case); it is also the patient id used for splits unless a table gives one.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Sequence

from zoo.data import templates as T
from zoo.data.phrasing import closed_question, pick
from zoo.data.io import (check_box, data_root, json_list, read_csv, read_json, read_text,
                         resolve, sparse_mask_presence)
from zoo.data.source import DataSource
from zoo.errors import ConfigError, DataError, MissingFileError
from zoo.registry import DATASETS
from zoo.types import PLANES

VQA_COLUMNS = ("Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B",
               "Choice C", "Choice D", "Answer", "Answer Choice")
QUESTION_TYPE_NAMES = {"1": "plane", "2": "phase", "3": "organ", "4": "abnormality",
                       "5": "location"}
REFSEG_COLUMNS = ("Image", "Mask", "Mask_ID", "Question_Type", "Question", "Answer")
SLICE_COLUMNS = ("Image", "Plane", "Index", "Text")


def case_of(root: Path, image: Path) -> str:
    return _case_of(str(root), os.path.dirname(str(image)))


@functools.lru_cache(maxsize=65536)
def _case_of(root: str, parent: str) -> str:
    return Path(os.path.relpath(parent, root)).as_posix()  # resolve() keeps images inside root


def image_meta(image: Path) -> dict[str, Any]:
    return dict(_image_meta(str(image)))


def side_meta(path: Path) -> dict[str, Any]:
    """Spacing, orientation and plane from a ``meta.json``/``spec.json``, validated: spacing three
    positive numbers (or null), orientation three distinct axis letters (one of L/R, A/P, S/I
    each, e.g. ``IPL``), plane one of the planes."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, f"must be a json object, got {type(data).__name__}")
    out = {k: data[k] for k in ("spacing", "orientation", "plane") if k in data}
    spacing = out.get("spacing")
    if spacing is not None:
        try:
            ok = len(spacing) == 3 and all(float(v) > 0 for v in spacing) \
                and not any(isinstance(v, bool) for v in spacing)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(path, f"'spacing' must be three positive numbers (d, h, w) mm or null, "
                                  f"got {spacing!r:.60}")
        out["spacing"] = tuple(float(v) for v in spacing)
    if "orientation" in out:
        code = out["orientation"]
        axes = ["LR", "AP", "SI"]
        if not isinstance(code, str) or len(code) != 3 or sorted(
                next((i for i, a in enumerate(axes) if c in a), 3) for c in code.upper()) != [0, 1, 2]:
            raise DataError(path, f"'orientation' must be three axis letters, one of L/R, A/P "
                                  f"and S/I each (e.g. 'IPL'), got {code!r:.60}")
        out["orientation"] = code.upper()
    if "plane" in out and out["plane"] not in PLANES:
        raise DataError(path, f"'plane' must be one of {PLANES}, got {out['plane']!r:.60}")
    return out


@functools.lru_cache(maxsize=65536)
def _image_meta(image_path: str) -> dict[str, Any]:
    """Spacing, orientation and plane from ``meta.json``/``spec.json`` beside the image, else
    the plane from the M3D file name (``Axial_...``) and unknown spacing."""
    image = Path(image_path)
    for name in ("meta.json", "spec.json"):
        side = image.parent / name
        if side.is_file():
            return side_meta(side)
    stem = image.stem.lower()
    plane = next((p for p in PLANES if stem.startswith(p)), "axial")
    return {"spacing": None, "orientation": "IPL", "plane": plane}


def _base(root: Path, image: Path, source: str, sample_id: str, task: str, **extra: Any) -> dict:
    case = case_of(root, image)
    item = {"id": sample_id, "case": case, "patient_id": case, "source": source, "task": task,
            "image": image, **image_meta(image)}
    item.update(extra)
    return item


def read_cap(root: Path, json_path: Path, source: str = "m3d_cap"
             ) -> tuple[list[dict], dict[str, list[str]]]:
    """Caption items and the json's own split lists (train / validation / test)."""
    data = read_json(json_path)
    if not isinstance(data, dict):
        raise DataError(json_path, "M3D-Cap json must be an object with train/validation/test lists")
    items, given = [], {"train": [], "validation": [], "test": []}
    for split in given:
        for n, entry in enumerate(json_list(data, split, json_path)):
            if not isinstance(entry, dict) or "image" not in entry or "text" not in entry:
                raise DataError(json_path, f"{split}[{n}] needs 'image' and 'text' keys")
            image = resolve(root, entry["image"], json_path, key=f"{split}[{n}].image")
            text_path = resolve(root, entry["text"], json_path, key=f"{split}[{n}].text")
            text = read_text(text_path).strip()
            if not text:
                raise DataError(text_path, "empty report text")
            sid = f"{case_of(root, image)}/{image.stem}/caption"
            items.append(_base(root, image, source, sid, "caption",
                               prompt=pick(T.CAPTION_PROMPTS, sid), answer=text))
            given[split].append(items[-1]["case"])
    return items, {k: sorted(set(v)) for k, v in given.items()}


def read_vqa(root: Path, csv_path: Path, source: str = "m3d_vqa") -> list[dict]:
    """Closed and open VQA items from the same rows of an M3D-VQA csv."""
    items = []
    for row_no, row in read_csv(csv_path, VQA_COLUMNS):
        image = resolve(root, row["Image Path"], csv_path, row_no)
        qtype = QUESTION_TYPE_NAMES.get(row["Question Type"], row["Question Type"].lower())
        if qtype not in T.QUESTION_TYPES:
            raise DataError(csv_path, f"unknown Question Type {row['Question Type']!r}", row_no)
        choices = [row[f"Choice {c}"] or "NA" for c in T.LETTERS]
        letter = row["Answer Choice"].strip().rstrip(".")
        if letter not in T.LETTERS or choices[T.LETTERS.index(letter)] == "NA":
            raise DataError(csv_path, f"Answer Choice {row['Answer Choice']!r} names no choice",
                            row_no)
        answer = row["Answer"]
        if choices[T.LETTERS.index(letter)] != answer:
            raise DataError(csv_path, f"Answer {answer!r} differs from choice {letter} "
                                      f"{choices[T.LETTERS.index(letter)]!r}", row_no)
        sid = f"{case_of(root, image)}/{image.stem}/vqa{row_no}"
        common = {"question_type": qtype, "text": row["Text"]}
        items.append(_base(root, image, source, sid + "/closed", "vqa_closed",
                           prompt=closed_question(row["Question"], choices),
                           answer=f"{letter}. {answer}", choices=choices, **common))
        items.append(_base(root, image, source, sid + "/open", "vqa_open",
                           prompt=row["Question"], answer=answer, **common))
    return items


def read_seg(root: Path, json_path: Path, source: str = "m3d_seg", positioning: bool = True,
             terms: dict[str, Sequence[str]] | None = None) -> list[dict]:
    """Seg items (one per case and class) and, with ``positioning``, REC and REG items; paths in
    the json are relative to ``root``."""
    data = read_json(json_path)
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise DataError(json_path, "Decathlon json needs a 'labels' map {'0': 'background', ...}")
    try:
        numbered = {int(k): v for k, v in labels.items()}
    except ValueError:
        raise DataError(json_path, f"'labels' keys must be integers, got {list(labels)}") from None
    if any(not isinstance(v, str) or not v.strip() for v in numbered.values()) or min(numbered) < 0:
        raise DataError(json_path, f"'labels' must map integers >= 0 to names, got {labels!r:.80}")
    classes = {k: v.strip() for k, v in numbered.items() if k != 0}
    axes = data.get("axes", "CWHD")
    if not isinstance(axes, str) or sorted(axes) != sorted("CDHW") or axes[0] != "C":
        raise DataError(json_path, f"'axes' must name the stored axis order, C first then D, H, W "
                                   f"in any order (M3D-Seg: 'CWHD'), got {axes!r:.40}")
    items = []
    for split in ("train", "validation", "test"):
        for n, entry in enumerate(json_list(data, split, json_path)):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DataError(json_path, f"{split}[{n}] needs 'image' and 'label' keys")
            image = resolve(root, entry["image"], json_path, key=f"{split}[{n}].image")
            mask = resolve(root, entry["label"], json_path, key=f"{split}[{n}].label")
            if not mask.name.endswith(".npz"):
                raise DataError(json_path, f"{split}[{n}].label: {entry['label']!r} is not a "
                                           f"one-hot mask_(C, ...).npz of the published M3D-Seg "
                                           f"(per-class .npy masks of M3D's resized copy are not "
                                           f"read)")
            case = case_of(root, image)
            present = sparse_mask_presence(mask) if positioning else None
            for k, name in sorted(classes.items()):
                spec = {"kind": "sparse", "path": mask, "channel": k - 1, "axes": axes}
                view = {"image_axes": axes}
                tasks = ["seg"]
                if positioning:  # REG needs a box to ask about: only for present classes
                    tasks += ["rec", "reg"] if k - 1 < len(present) and present[k - 1] else ["rec"]
                for task in tasks:
                    items.append(_base(root, image, source, f"{case}/{task}/{k}", task,
                                       case=case, patient_id=case, mask=spec, target=name,
                                       make_text=task, **view))
                for d, definition in enumerate((terms or {}).get(name, ())):
                    sid = f"{case}/seg/{k}/term{d}"
                    items.append(_base(root, image, source, sid, "seg", case=case,
                                       patient_id=case, mask=spec,
                                       prompt=f"Please segment: {definition}",
                                       answer="It is [SEG].", **view))
    return items


def read_boxes(root: Path, csv_path: Path, source: str = "m3d_positioning") -> list[dict]:
    """Explicit positioning csv ``Image, Target, Box`` (Box a json list of 6 numbers in [0, 1])."""
    items = []
    for row_no, row in read_csv(csv_path, ("Image", "Target", "Box")):
        image = resolve(root, row["Image"], csv_path, row_no)
        try:
            raw = json.loads(row["Box"])
        except json.JSONDecodeError:
            raise DataError(csv_path, f"Box {row['Box']!r} is not a json list", row_no) from None
        box = check_box(raw, csv_path, row_no)
        sid = f"{case_of(root, image)}/box{row_no}"
        rq, ra = T.rec_qa(row["Target"], box, sid)
        gq, ga = T.reg_qa(row["Target"], box, sid)
        items.append(_base(root, image, source, sid + "/rec", "rec", prompt=rq, answer=ra, box=box))
        items.append(_base(root, image, source, sid + "/reg", "reg", prompt=gq, answer=ga, box=box))
    return items


def read_refseg(root: Path, csv_path: Path, source: str = "m3d_refseg") -> list[dict]:
    items = []
    for row_no, row in read_csv(csv_path, REFSEG_COLUMNS):
        image = resolve(root, row["Image"], csv_path, row_no)
        mask = resolve(root, row["Mask"], csv_path, row_no)
        try:
            mask_id = int(float(row["Mask_ID"]))
        except ValueError:
            raise DataError(csv_path, f"Mask_ID {row['Mask_ID']!r} is not an integer", row_no) from None
        sid = f"{case_of(root, image)}/refseg{row_no}"
        items.append(_base(root, image, source, sid, "refseg", prompt=row["Question"],
                           answer=row["Answer"], mask={"kind": "labelmap", "path": mask,
                                                       "ids": [mask_id]},
                           refseg_type=row["Question_Type"]))
    return items


def read_slices(root: Path, csv_path: Path, source: str = "slices") -> list[dict]:
    """Slice-text triplets (task ``slice``; prompt = the slice text)."""
    items = []
    for row_no, row in read_csv(csv_path, SLICE_COLUMNS):
        image = resolve(root, row["Image"], csv_path, row_no)
        if row["Plane"] not in PLANES:
            raise DataError(csv_path, f"Plane {row['Plane']!r} not in {PLANES}", row_no)
        try:
            index = int(row["Index"])
        except ValueError:
            raise DataError(csv_path, f"Index {row['Index']!r} is not an integer", row_no) from None
        sid = f"{case_of(root, image)}/slice/{row['Plane']}/{index}"
        items.append(_base(root, image, source, sid, "slice", prompt=row["Text"], answer="",
                           slice={"plane": row["Plane"], "index": index, "text": row["Text"]}))
    return items


M3D_SIZE = (32, 256, 256)


def sized(items: list[dict], size: Sequence[int] | None) -> list[dict]:
    """Items whose volumes must be ``size`` (D, H, W), checked when each is loaded."""
    if size is not None:
        size = tuple(int(s) for s in size)
        for item in items:
            item["size"] = size
    return items


def _paths(root: Path, names: str | Sequence[str]) -> list[Path]:
    names = [names] if isinstance(names, str) else list(names)
    return [Path(n) if Path(n).is_absolute() else root / n for n in names]


def csv_source(name: str, reader: Any, root: str | None, csv: str | Sequence[str],
               size: Sequence[int] | None, patients: str | None,
               manifest: str | None) -> DataSource:
    """The data set ``name`` made of the items ``reader(root, csv_path)`` gives for each csv."""
    r = data_root(root, name)
    items = [i for p in _paths(r, csv) for i in reader(r, p)]
    return DataSource(name, sized(items, size), root=r, manifest=manifest,
                      patients=_paths(r, patients)[0] if patients else None, image_size=size)


@DATASETS.register
def m3d_cap(root: str | None = None, json: str = "M3D_Cap.json", split_by: str = "file",
            size: Sequence[int] | None = M3D_SIZE, patients: str | None = None,
            manifest: str | None = None) -> DataSource:
    """M3D-Cap (Bai et al. 2024): json + npy + report txt. ``split_by='file'`` keeps the json's
    own train/validation/test lists (the benchmark's, which put copies of one scan in train and
    test); ``'hash'`` splits by case id, cases grouped by ``patients`` (a csv ``case,
    patient_id``, e.g. from ``zoo data check --groups``; docs/data.md "Leaks across splits")."""
    if split_by not in ("file", "hash"):
        raise ConfigError(f"data.split_by must be 'file' or 'hash', got {split_by!r}")
    r = data_root(root, "m3d_cap")
    items, given = read_cap(r, _paths(r, json)[0])
    return DataSource("m3d_cap", sized(items, size), root=r, manifest=manifest,
                      given_splits=given if split_by == "file" else None,
                      patients=_paths(r, patients)[0] if patients else None, image_size=size)


@DATASETS.register
def m3d_vqa(root: str | None = None, csv: str | Sequence[str] = ("M3D_VQA_train.csv",),
            size: Sequence[int] | None = M3D_SIZE, patients: str | None = None,
            manifest: str | None = None) -> DataSource:
    """M3D-VQA (Bai et al. 2024): closed (4 choices) and open items from the same csv rows."""
    return csv_source("m3d_vqa", read_vqa, root, csv, size, patients, manifest)


def seg_datalists(root: Path, datasets: Sequence[str] | None = None) -> tuple[Path, list[Path]]:
    """``(base, jsons)``: the folder the json paths are relative to and the data sets' jsons.

    Each data set ``<code>`` is ``<root>/<code>/<code>.json`` (published M3D-Seg) or
    ``<root>/<code>.json``; ``root`` may also be one data set's folder (``.../M3D_Seg/0000``
    holding ``0000.json``), whose paths are then relative to its parent, as in M3D.
    """
    if (root / f"{root.name}.json").is_file():
        if datasets and list(datasets) != [root.name]:
            raise DataError(root, f"is the folder of data set {root.name!r} alone; for "
                                  f"datasets={list(datasets)} point data.root at its parent")
        return root.parent, [root / f"{root.name}.json"]
    if datasets:
        jsons = []
        for code in datasets:
            found = [p for p in (root / str(code) / f"{code}.json", root / f"{code}.json")
                     if p.is_file()]
            if not found:
                raise MissingFileError(f"{root}: data set {code!r} has neither {code}/{code}.json "
                                       f"nor {code}.json")
            jsons.append(found[0])
        return root, jsons
    nested = {p.parent.name: p for p in root.glob("*/*.json") if p.stem == p.parent.name}
    flat = {p.stem: p for p in root.glob("*.json") if p.stem not in nested
            and isinstance(read_json(p), dict) and "labels" in read_json(p)}
    if not nested and not flat:
        raise DataError(root, "no M3D-Seg data set found (<code>/<code>.json or <code>.json)")
    return root, [p for _, p in sorted({**flat, **nested}.items())]


def read_terms(path: Path) -> dict[str, list[str]]:
    """A term dictionary json ``{class name: [definition, ...]}``."""
    terms = read_json(path)
    if not isinstance(terms, dict) or not all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in terms.values()):
        raise DataError(path, "a term dictionary maps each class name to a list of definitions")
    return terms


@DATASETS.register
def m3d_seg(root: str | None = None, datasets: Sequence[str] | None = None,
            positioning: bool = True, term_dictionary: str | None = None,
            boxes: str | None = None, patients: str | None = None,
            manifest: str | None = None) -> DataSource:
    """M3D-Seg (Bai et al. 2024): per data set ``<code>``, ``<code>/<code>.json`` (published
    layout) or ``<code>.json``, with ``<code>/<case>/image.npy`` and ``mask_(C, ...).npz``
    (all data sets found when ``datasets`` is None; :func:`seg_datalists`); REC/REG derived from
    the masks."""
    r = data_root(root, "m3d_seg")
    base, jsons = seg_datalists(r, [str(d) for d in datasets] if datasets else None)
    terms = read_terms(_paths(r, term_dictionary)[0]) if term_dictionary else None
    items = [i for p in jsons for i in read_seg(base, p, positioning=positioning, terms=terms)]
    if boxes:
        items += read_boxes(r, _paths(r, boxes)[0])
    return DataSource("m3d_seg", items, root=r, manifest=manifest,
                      patients=_paths(r, patients)[0] if patients else None)


@DATASETS.register
def m3d_refseg(root: str | None = None, csv: str | Sequence[str] = ("M3D_RefSeg.csv",),
               size: Sequence[int] | None = M3D_SIZE, patients: str | None = None,
               manifest: str | None = None) -> DataSource:
    """M3D-RefSeg (Bai et al. 2024): referring segmentation, target = (mask == Mask_ID)."""
    return csv_source("m3d_refseg", read_refseg, root, csv, size, patients, manifest)
