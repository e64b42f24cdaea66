"""Bring your own data: a folder of volumes plus one table (docs/data.md, "Bring your own data").

The table is a ``.csv`` (UTF-8, header row) or ``.jsonl`` (one json object per line) with one row
per item; paths are relative to the folder and must stay inside it. Columns (json keys):

- ``image`` (required): a NIfTI file, a DICOM series folder, or a prepared ``.npy``;
- ``series``: the series to use where a DICOM folder holds several (UID or SeriesNumber);
- ``patient_id``: rows of one patient share a split (default: the image's own id);
- ``report``: the image's report -> a ``caption`` item;
- ``question`` + ``answer``: an open question -> ``vqa_open``; with ``choices`` a closed question
  -> ``vqa_closed`` with 2 to 26 choices, lettered A, B, ... (not padded); ``answer`` is one
  choice's text (or its letter); ``choices`` is ``yes|no`` or a json list in a csv cell, a list
  in jsonl;
- ``question_type``: a name for per-type accuracy (e.g. ``abnormality``);
- ``mask`` + ``labels``: a label map on the image's grid and its label names (``1:liver|2:tumour``
  or a json object in a csv cell, an object in jsonl) -> ``seg``, ``rec`` and ``reg`` items per
  label (``reg`` only where the label is present).

Captions and VQA come from the same rows and the same split. ``zoo data prepare --in FOLDER
--table FILE --out OUT`` prepares every image (and its masks, nearest neighbour) with one spec
and writes ``OUT/table.jsonl`` (paths to the prepared arrays, patient ids filled in) and
``OUT/prepared.json`` (the spec and the size); the ``table`` dataset reads either folder.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.data import templates as T
from zoo.data.phrasing import CHOICE_LETTERS, closed_answer, closed_question, pick
from zoo.data.io import load_nifti, read_csv, read_json, read_jsonl, resolve
from zoo.data.m3d import case_of, image_meta
from zoo.data.source import DataSource
from zoo.errors import ConfigError, DataError, MissingFileError
from zoo.registry import DATASETS

COLUMNS = ("image", "series", "patient_id", "report", "question", "answer", "choices",
           "question_type", "mask", "labels")
TABLE_FILES = ("table.jsonl", "table.csv")
RECORD = "prepared.json"
DEFAULT_SIZE = (32, 256, 256)
MAX_CHOICES = len(CHOICE_LETTERS)


def find_table(root: Path, name: str | None = None) -> Path:
    """``root/name`` (or an absolute ``name``), else the first of ``table.jsonl``, ``table.csv``."""
    if name:
        path = Path(name) if Path(name).is_absolute() else root / name
        if not path.is_file():
            raise MissingFileError(f"{path}: table file does not exist")
        return path
    found = [root / n for n in TABLE_FILES if (root / n).is_file()]
    if not found:
        raise MissingFileError(f"{root}: no table.jsonl or table.csv (name one with table=FILE)")
    return found[0]


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(row number, raw values)`` of a csv (row 2 = first data row) or jsonl (row = line)."""
    if path.suffix.lower() == ".csv":
        rows = list(read_csv(path, ("image",)))
    elif path.suffix.lower() == ".jsonl":
        rows = list(read_jsonl(path))
    else:
        raise DataError(path, "a table is a .csv or .jsonl file")
    if not rows:
        raise DataError(path, "the table has no rows")
    for n, row in rows:
        unknown = [k for k in row if k not in COLUMNS]
        if unknown:
            from zoo.registry import suggest

            raise DataError(path, f"unknown column(s) {unknown}.{suggest(unknown[0], COLUMNS)} "
                                  f"Columns: {', '.join(COLUMNS)}", n)
    return rows


def _text(row: dict[str, Any], key: str, path: Path, n: int) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(path, f"{key} must be text, got {type(value).__name__} {value!r:.60}", n)
    return str(value).strip() or None


def _cell_json(value: Any, key: str, path: Path, n: int) -> Any:
    if isinstance(value, str) and value.strip()[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise DataError(path, f"{key} {value!r:.60} is not valid json", n) from None
    return value


def parse_choices(value: Any, path: Path, n: int) -> list[str]:
    value = _cell_json(value, "choices", path, n)
    items = value.split("|") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(c, (str, int, float)) and
                                              not isinstance(c, bool) for c in items):
        raise DataError(path, f"choices must be 'a|b|...' or a list of texts, got {value!r:.60}", n)
    choices = [str(c).strip() for c in items]
    if not 2 <= len(choices) <= MAX_CHOICES or "" in choices or len(set(choices)) != len(choices):
        raise DataError(path, f"choices must be 2 to {MAX_CHOICES} distinct non-empty texts, got "
                              f"{choices}", n)
    return choices


def parse_labels(value: Any, path: Path, n: int) -> dict[int, str]:
    value = _cell_json(value, "labels", path, n)
    if isinstance(value, str):
        pairs = [p.split(":", 1) for p in value.split("|")]
        if any(len(p) != 2 for p in pairs):
            raise DataError(path, f"labels must be '1:name|2:name' or a json object, got "
                                  f"{value!r:.60}", n)
        value = dict(pairs)
    if not isinstance(value, dict) or not value:
        raise DataError(path, f"labels must map label numbers to names, got {value!r:.60}", n)
    try:
        labels = {int(k): str(v).strip() for k, v in value.items()}
    except ValueError:
        raise DataError(path, f"label numbers must be integers, got {list(value)}", n) from None
    if min(labels) < 1 or "" in labels.values() or len(set(labels.values())) != len(labels):
        raise DataError(path, f"labels must map integers >= 1 (0 is background) to distinct "
                              f"names, got {value!r:.80}", n)
    return dict(sorted(labels.items()))


def parse_row(row: dict[str, Any], path: Path, n: int) -> dict[str, Any]:
    """A validated row: texts stripped, ``choices`` a list, ``labels`` ``{int: name}``, the
    closed answer given as its choice's text."""
    out: dict[str, Any] = {k: _text(row, k, path, n) for k in COLUMNS
                           if k not in ("choices", "labels")}
    out = {k: v for k, v in out.items() if v is not None}
    if "image" not in out:
        raise DataError(path, "image is empty", n)
    if ("question" in out) != ("answer" in out):
        raise DataError(path, "question and answer go together (one is empty)", n)
    if row.get("choices") not in (None, ""):
        if "question" not in out:
            raise DataError(path, "choices need a question and an answer", n)
        choices = parse_choices(row["choices"], path, n)
        answer = out["answer"]
        letter = re.fullmatch(r"([A-Z])\.?(?:\s+(.*))?", answer)
        if answer not in choices and letter and CHOICE_LETTERS.index(letter[1]) < len(choices):
            named = choices[CHOICE_LETTERS.index(letter[1])]
            answer = named if letter[2] in (None, named) else answer
        if answer not in choices:
            raise DataError(path, f"answer {out['answer']!r} is not one of the choices {choices}", n)
        out["choices"], out["answer"] = choices, answer
    if ("mask" in out) != (row.get("labels") not in (None, "")):
        raise DataError(path, "mask and labels go together (name each label of the mask)", n)
    if "mask" in out:
        out["labels"] = parse_labels(row["labels"], path, n)
    if not {"report", "question", "mask"} & set(out):
        raise DataError(path, "the row gives no report, question or mask", n)
    return out


def read_table(root: Path, path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Validated rows whose paths stay inside ``root`` and exist (:func:`zoo.data.io.resolve`)."""
    rows = []
    for n, raw in read_rows(path):
        row = parse_row(raw, path, n)
        row["image"] = resolve(root, row["image"], path, n)
        if "mask" in row:
            row["mask"] = resolve(root, row["mask"], path, n)
        rows.append((n, row))
    return rows


def raw_case(root: Path, image: Path, series: str | None) -> str:
    """Case id of a raw image: its path inside the folder without the suffix, plus the series."""
    name = image.relative_to(root).as_posix() if image != root else image.name
    for suffix in (".nii.gz", ".nii", ".npy"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}#{series}" if series else name


def labels_present(mask: Path) -> set[int]:
    from zoo.data.io import load_npy

    array = load_npy(mask, rank=None, channels=None, unit_range=False, constant_ok=True)
    return {int(v) for v in np.unique(array)}


def row_items(root: Path, path: Path, n: int, row: dict[str, Any], spec: Any) -> list[dict]:
    """The items of one row (caption, open or closed VQA, seg / rec / reg per mask label)."""
    from zoo.data.medical import image_format, raw_item

    image, series = row["image"], row.get("series")
    fmt = image_format(image)
    case = case_of(root, image) if fmt == "npy" else raw_case(root, image, series)
    common = {"case": case, "patient_id": row.get("patient_id") or case, "source": "table"}
    if series:
        common["series"] = series
    if "question_type" in row:
        common["question_type"] = row["question_type"]

    def item(kind: str, task: str, **fields: Any) -> dict[str, Any]:
        fields = {"id": f"{case}/row{n}/{kind}", "task": task, **common, **fields}
        if fmt == "npy":
            return {"image": image, **image_meta(image), **fields}
        return raw_item(image, spec, **fields)

    items = []
    if "report" in row:
        items.append(item("caption", "caption", prompt=pick(T.CAPTION_PROMPTS, f"{case}/{n}"),
                          answer=row["report"]))
    if "choices" in row:
        items.append(item("closed", "vqa_closed", choices=row["choices"],
                          prompt=closed_question(row["question"], row["choices"]),
                          answer=closed_answer(row["choices"], row["answer"])))
    elif "question" in row:
        items.append(item("open", "vqa_open", prompt=row["question"], answer=row["answer"]))
    if "mask" in row:
        mask = row["mask"]
        if fmt != "npy" or mask.suffix != ".npy":
            raise DataError(path, "a mask is read beside a prepared .npy image as a .npy label "
                                  "map; prepare NIfTI/DICOM images with their masks first "
                                  "(zoo data prepare --in FOLDER --table FILE)", n)
        present = labels_present(mask)
        for k, name in row["labels"].items():
            spec_ = {"kind": "labelmap", "path": mask, "ids": [k]}
            for task in ("seg", "rec", "reg") if k in present else ("seg", "rec"):
                items.append(item(f"{task}/{k}", task, mask=spec_, target=name, make_text=task))
    return items


def prepared_size(root: str | Path) -> list[int]:
    """(D, H, W) of a prepared table folder (``prepared.json``), else :data:`DEFAULT_SIZE`: the
    ``table`` data config's ``size``, which the recipes' ``image_size`` follows."""
    record = Path(str(root)).expanduser() / RECORD
    if not record.is_file():
        return list(DEFAULT_SIZE)
    data = read_json(record)
    size = data.get("size") if isinstance(data, dict) else None
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and s > 0
                                                              for s in size)):
        raise DataError(record, f"'size' must be three positive integers, got {size!r:.40}")
    return size


@DATASETS.register
def table(root: str | None = None, table: str | None = None, size: Sequence[int] | None = None,
          modality: str = "ct", window: str | Sequence[float] = "abdomen",
          spacing: Sequence[float] | None = None,
          fractions: Sequence[float] = (0.8, 0.1, 0.1), patients: str | None = None,
          manifest: str | None = None) -> DataSource:
    """Your own data: a folder and one table (module docstring; docs/data.md "Bring your own
    data"). Prepared ``.npy`` images are read as they are; NIfTI / DICOM images are prepared on
    load with ``modality``, ``window``, ``spacing`` and ``size`` (slow: prepare once). ``size``
    defaults to the prepared folder's (``prepared.json``); the split is by hash of the patient id
    with ``fractions`` (train, validation, test)."""
    from zoo.data.io import data_root
    from zoo.data.medical import spec_of

    r = data_root(root, "table")
    recorded = prepared_size(r) if (r / RECORD).is_file() else None
    size = [int(s) for s in size] if size is not None else (recorded or list(DEFAULT_SIZE))
    if recorded is not None and size != recorded:
        raise ConfigError(f"data.size={size} but {r / RECORD} records the prepared size "
                          f"{recorded}; drop the data.size override (the recipe's image size "
                          f"follows the data)")
    spec = spec_of(modality, size, window, spacing)
    path = find_table(r, table)
    items = []
    for n, row in read_table(r, path):
        if row["image"].suffix == ".npy":
            shape = tuple(np.load(row["image"], mmap_mode="r").shape[1:])
            if list(shape) != size:
                raise DataError(path, f"image {row['image'].name} has size {shape}, the data set "
                                      f"{tuple(size)}", n)
        items += row_items(r, path, n, row, spec)
    return DataSource("table", items, root=r, manifest=manifest, fractions=fractions,
                      patients=r / patients if patients else None, image_size=size)


def _prepare_case(job: dict[str, Any]) -> None:
    """Prepare one image (with its masks) of a table into ``job['out']`` (a process-pool job)."""
    from zoo.data.prepare import load_raw, preprocess_pair

    array, affine = load_raw(job["image"], job["series"])
    out: Path = job["out"]
    out.mkdir(parents=True, exist_ok=True)
    data = meta = None
    for mask, name in job["masks"]:
        label, label_affine = load_nifti(mask, constant_ok=True)
        data, labels, meta = preprocess_pair(array, affine, job["spec"], str(mask), label,
                                             label_affine)
        np.save(out / name, labels)
    if data is None:
        data, _, meta = preprocess_pair(array, affine, job["spec"], str(job["image"]))
    np.save(out / "image.npy", data)
    meta["source_file"] = str(job["image"])
    (out / "spec.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def prepare_table(folder: str | Path, table_file: str | Path, out: str | Path, spec: Any,
                  workers: int = 1, progress: bool = True) -> DataSource:
    """Prepare a folder and its table into ``out`` (module docstring); returns the prepared
    data set (split by patient as training will split it)."""
    from tqdm.auto import tqdm

    from zoo.data.medical import image_format
    from zoo.data.prepare import case_name

    if getattr(spec, "preset", "zoo") != "zoo":
        raise ConfigError(f"--table prepares every volume to one size with the zoo's preset; "
                          f"preset {spec.preset!r} keeps each volume's own size")
    folder, out = Path(folder), Path(out)
    table_path = Path(table_file)
    if not table_path.is_file() and (folder / table_path).is_file():
        table_path = folder / table_path
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: input folder does not exist")
    if not table_path.is_file():
        raise MissingFileError(f"{table_file}: table file does not exist")
    rows = read_table(folder, table_path)
    jobs: dict[tuple[Path, str | None], dict[str, Any]] = {}
    written = []
    for n, row in rows:
        image, series = row["image"], row.get("series")
        if image_format(image) == "npy":
            raise DataError(table_path, f"image {image.name} is already prepared; read the folder "
                                        f"with data=table instead", n)
        key = (image, series)
        if key not in jobs:
            name = case_name(image, folder) + (f"__series-{series}" if series else "")
            jobs[key] = {"image": image, "series": series, "spec": spec, "out": out / name,
                         "masks": [], "case": raw_case(folder, image, series)}
        job = jobs[key]
        entry = {k: v for k, v in row.items() if k not in ("image", "mask", "series")}
        entry["image"] = f"{job['out'].name}/image.npy"
        entry["patient_id"] = row.get("patient_id") or job["case"]
        if "mask" in row:
            if not row["mask"].name.endswith((".nii", ".nii.gz")):
                raise DataError(table_path, f"mask {row['mask'].name} must be a NIfTI label map "
                                            f"on the image's grid", n)
            names = dict(job["masks"])
            if row["mask"] not in names:
                names[row["mask"]] = f"mask{len(names)}.npy"
                job["masks"].append((row["mask"], names[row["mask"]]))
            entry["mask"] = f"{job['out'].name}/{names[row['mask']]}"
            entry["labels"] = {str(k): v for k, v in row["labels"].items()}
        written.append(entry)
    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=not progress)
    if workers <= 1:
        for job in jobs.values():
            _prepare_case(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(_prepare_case, job) for job in jobs.values()]:
                fut.result()
                bar.update()
    bar.close()
    (out / "table.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in written))
    record = {"size": list(spec.size), "spec": asdict(spec), "source": str(folder.resolve()),
              "table": str(table_path.resolve()), "rows": len(written), "images": len(jobs)}
    (out / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return table(root=str(out))
