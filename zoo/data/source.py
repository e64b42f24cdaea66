"""Samples, datasets and the ``DataSource`` every registered dataset builder returns.

A reader turns a data set on disk into *items*: small dicts saying where the image is, the task,
the texts and how to get the target (mask file and channel, box, slice). ``SampleDataset`` turns
an item into a sample (docs/design.md section 6) when indexed:

- ``image`` float32 tensor (C, D, H, W) in [0, 1]; ``meta`` dict (id, source, spacing (d, h, w)
  mm or None when the format does not record it, orientation, plane, patient_id, question_type);
- ``task``, ``prompt`` (no ``<image>``), ``answer``; optional ``mask`` (K, D, H, W), ``box``,
  ``label``, ``choices``, ``slice`` (plane, index, image (1, h, w), text).

Images are ``.npy`` files read whole (one read beats a memory map when the whole volume is used:
docs/performance.md, "Data pipeline"), validated on every first read in a worker (a small
per-process cache keeps the last few), so bad files fail with their name instead of training on
something else.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.boxes import box_from_mask
from zoo.data import templates as T
from zoo.data.io import load_npy, load_sparse_mask
from zoo.data.prepare import load_raw_item
from zoo.data.splits import SPLITS, read_manifest, read_patients, split_hash, write_manifest
from zoo.errors import ConfigError, DataError
from zoo.types import PLANES, TASK_NAMES

AXIS_OF_PLANE = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}


class _LRU:
    """A tiny per-process cache of loaded arrays (items of one case are usually adjacent)."""

    def __init__(self, size: int = 4) -> None:
        self.size, self.data = size, OrderedDict()

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = load()
        self.data[key] = value
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


_IMAGES, _MASKS = _LRU(4), _LRU(4)


def _file_key(path: Any) -> tuple:
    """Cache key of a file: path, size and mtime (a rewritten file is never served stale; a
    stale memory map of a truncated file would crash with SIGBUS)."""
    try:
        st = Path(path).stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path), None, None)
# loaders of the raw image formats, prepared on load (npy images are read as they are)
IMAGE_LOADERS: dict[str, Callable[[dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]] = {
    "nifti": load_raw_item, "dicom": load_raw_item}


def load_image(item: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """(array (C, D, H, W) float32 in [0, 1], extra meta) of an item's image."""
    fmt = item.get("format", "npy")
    if fmt == "npy":
        return _IMAGES.get(("npy", *_file_key(item["image"])),
                           lambda: (np.asarray(load_npy(item["image"], mmap=False),
                                               dtype=np.float32), {}))
    if fmt not in IMAGE_LOADERS:
        raise DataError(f"{item['image']}: unknown image format {fmt!r} (npy, nifti or dicom)")
    return _IMAGES.get((fmt, *_file_key(item["image"]), item.get("spec_key"), item.get("series")),
                       lambda: IMAGE_LOADERS[fmt](item))


def slice_axis(orientation: str, plane: str) -> int:
    """Stored axis (0, 1, 2) that is fixed by a slice of ``plane`` (axial = S/I axis, ...)."""
    letters = AXIS_OF_PLANE[plane]
    for i, code in enumerate(orientation.upper()):
        if code in letters:
            return i
    raise DataError(f"orientation {orientation!r} has no axis for the {plane} plane")


def to_cdhw(array: np.ndarray, axes: str) -> np.ndarray:
    """A (C, ...) array whose axes are named by ``axes`` (a permutation of ``CDHW``; raw M3D-Seg
    is ``CWHD``, docs/data.md "Real formats") as (C, D, H, W); a view, no copy."""
    return array if axes == "CDHW" else array.transpose([axes.index(a) for a in "CDHW"])


def _mask_channel(item: dict[str, Any], spatial: tuple[int, ...]) -> np.ndarray:
    spec = item["mask"]
    path = spec["path"]
    if spec["kind"] == "sparse":
        full = to_cdhw(_MASKS.get(_file_key(path), lambda: load_sparse_mask(path)),
                       spec.get("axes", "CDHW"))
        if spec["channel"] >= full.shape[0]:
            raise DataError(path, f"mask has {full.shape[0]} channels, class index "
                                  f"{spec['channel']} requested")
        channel = full[spec["channel"]]
    else:  # label map: target = (map == id)
        full = _MASKS.get(_file_key(path), lambda: np.asarray(load_npy(
            path, channels=None, rank=None, unit_range=False, constant_ok=True)))
        full = full[0] if full.ndim == 4 else full
        channel = np.isin(full, spec["ids"])
    if tuple(channel.shape) != tuple(spatial):
        raise DataError(path, f"mask shape {tuple(channel.shape)} does not match image "
                              f"{item['image']} shape {tuple(spatial)}")
    return channel


def build_sample(item: dict[str, Any]) -> dict[str, Any]:
    """Load and assemble one sample from an item (see the module docstring)."""
    array, extra = load_image(item)
    array = to_cdhw(array, item.get("image_axes", "CDHW"))
    if item.get("size") is not None and tuple(array.shape[1:]) != tuple(item["size"]):
        raise DataError(item["image"], f"volume size {tuple(array.shape[1:])} differs from the "
                                       f"data set's size {tuple(item['size'])} (data.size)")
    meta = {"id": item["id"], "source": item["source"], "spacing": item.get("spacing"),
            "orientation": item.get("orientation", "IPL"), "plane": item.get("plane", "axial"),
            "patient_id": item.get("patient_id")}
    meta.update(extra)
    if "question_type" in item:
        meta["question_type"] = item["question_type"]
    sample: dict[str, Any] = {"image": torch.from_numpy(np.array(array, dtype=np.float32)),
                              "meta": meta, "task": item["task"],
                              "prompt": item.get("prompt", ""), "answer": item.get("answer", "")}
    for key in ("choices", "label", "box"):
        if key in item:
            sample[key] = item[key]
    if "mask" in item:
        channel = _mask_channel(item, array.shape[1:])
        if item.get("make_text") is not None:  # rec / reg / seg texts depend on the target
            box = box_from_mask(channel)
            target, key = item["target"], item["id"]
            if item["task"] == "rec":
                sample["prompt"], sample["answer"] = T.rec_qa(target, box, key)
            elif item["task"] == "reg":
                if box is None:
                    raise DataError(item["mask"]["path"], f"REG item {item['id']!r}: the "
                                                          f"{target} is absent, no box to ask about")
                sample["prompt"], sample["answer"] = T.reg_qa(target, box, key)
            else:
                sample["prompt"], sample["answer"] = T.seg_qa(target, box is not None, key)
            if box is not None:
                sample["box"] = box
        if item["task"] in ("seg", "refseg"):
            sample["mask"] = torch.from_numpy(channel[None].astype(np.float32))
    if "slice" in item:
        spec = item["slice"]
        axis = slice_axis(meta["orientation"], spec["plane"])
        index = int(spec["index"])
        if not 0 <= index < array.shape[1 + axis]:
            raise DataError(item["image"], f"slice index {index} outside 0..{array.shape[1 + axis] - 1}")
        plane_img = np.take(array, index, axis=1 + axis)
        sample["slice"] = {"plane": spec["plane"], "index": index, "text": spec["text"],
                           "image": torch.from_numpy(np.array(plane_img, dtype=np.float32))}
    return sample


class SampleDataset(Dataset):
    """A ``torch.utils.data.Dataset`` of samples built lazily from items."""

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return build_sample(self.items[index])


def _default_manifest_path(name: str, root: Path | None, settings: str = "") -> Path:
    """``runs/data/manifests/<name>-<hash of the root and the split settings>.json``."""
    key = hashlib.sha1((str(root.resolve() if root else name) + settings).encode()).hexdigest()[:10]
    return Path("runs") / "data" / "manifests" / f"{name}-{key}.json"


class DataSource:
    """What every registered dataset builder returns.

    ``split_hash`` (sha256 of the split manifest file), ``dataset(split, tasks)``, ``tasks()``,
    ``describe()``. Items are assigned to splits by the manifest: an existing manifest file is
    read (every case must be listed), otherwise one is written by hashing the patient/case ids;
    ``patients`` (a csv ``case, patient_id``, e.g. written by ``zoo data check --groups``) gives
    cases a patient id, so that cases of one patient (or copies of one scan) share a split.
    """

    def __init__(self, name: str, items: Sequence[dict[str, Any]], *, root: Path | None = None,
                 manifest: str | Path | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 salt: str = "zoo", given_splits: dict[str, Sequence[str]] | None = None,
                 patients: str | Path | None = None, image_size: Sequence[int] | None = None
                 ) -> None:
        self.name, self.root = name, root
        self.split_mode = "the files' own split" if given_splits is not None else \
            f"hash of the patient id, fractions {tuple(fractions)}"
        # (D, H, W) of every volume when the source knows it (prepared data), else None
        self.image_size = tuple(int(s) for s in image_size) if image_size is not None else None
        if not items:
            raise DataError(root or name, "the data set has no items")
        for item in items:
            if item["task"] not in TASK_NAMES:
                raise DataError(f"{name}: item {item['id']!r} has unknown task {item['task']!r}; "
                                 f"tasks: {TASK_NAMES}")
            if item.get("plane", "axial") not in PLANES:
                raise DataError(f"{name}: item {item['id']!r} has plane {item['plane']!r}, "
                                 f"not one of {PLANES}")
        cases = {item["case"]: item.get("patient_id") or item["case"] for item in items}
        if patients is not None:
            if given_splits is not None:
                raise ConfigError(f"{name}: patients= groups cases for a hash split; this data "
                                  f"set uses its files' own split (set split_by=hash)")
            cases.update(read_patients(patients, set(cases)))
        settings = json.dumps([given_splits is not None, list(fractions), salt,
                               str(Path(patients).resolve()) if patients else None])
        path = Path(manifest) if manifest else _default_manifest_path(name, root, settings)
        if manifest and path.is_file():
            splits = read_manifest(path)
        else:
            if given_splits is not None:
                write_manifest(path, splits=given_splits, salt=salt)
            else:
                write_manifest(path, cases, fractions=fractions, salt=salt)
            splits = read_manifest(path)
        where = {case: split for split, ids in splits.items() for case in ids}
        missing = sorted(set(cases) - set(where))
        if missing:
            raise DataError(path, f"{len(missing)} case(s) are not in the split manifest, "
                                  f"e.g. {missing[:3]}")
        self.manifest_path = path
        self.split_hash = split_hash(path)
        self._items = {s: [i for i in items if where[i["case"]] == s] for s in SPLITS}

    def items(self, split: str) -> list[dict[str, Any]]:
        if split not in SPLITS:
            from zoo.registry import suggest

            raise ConfigError(f"unknown split {split!r}.{suggest(split, SPLITS)} Splits: {SPLITS}")
        return self._items[split]

    def dataset(self, split: str, tasks: Sequence[str] | None = None) -> SampleDataset:
        """Samples of one split, optionally only those whose task is in ``tasks``."""
        items = self.items(split)
        if tasks is not None:
            unknown = [t for t in tasks if t not in TASK_NAMES]
            if unknown:
                raise ConfigError(f"unknown task(s) {unknown}; tasks: {TASK_NAMES}")
            items = [i for i in items if i["task"] in set(tasks)]
        return SampleDataset(items)

    def tasks(self) -> list[str]:
        present = {i["task"] for items in self._items.values() for i in items}
        return [t for t in TASK_NAMES if t in present]

    def describe(self) -> dict[str, Any]:
        """Counts per split and task, plus the manifest and its hash."""
        counts = {s: dict(sorted(Counter(i["task"] for i in items).items()))
                  for s, items in self._items.items()}
        cases = {s: len({i["case"] for i in items}) for s, items in self._items.items()}
        return {"name": self.name, "root": str(self.root) if self.root else None,
                "manifest": str(self.manifest_path), "split_hash": self.split_hash,
                "cases": cases, "samples": counts}

    def split_summary(self) -> str:
        """One line: cases and items per split and how the split was made."""
        parts = [f"{s} {len({i['case'] for i in items})} cases ({len(items)} items)"
                 for s, items in self._items.items()]
        return f"data {self.name}: {', '.join(parts)}; split by {self.split_mode}"

    def require_split(self, split: str, why: str) -> None:
        """Raise naming the split and the counts when ``split`` holds no item."""
        if not self.items(split):
            raise DataError(self.manifest_path, f"the {split} split of data {self.name} is empty "
                                                f"({self.split_summary().split(': ', 1)[1]}); "
                                                f"{why}")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(v)}" for s, v in self._items.items())
        return f"DataSource({self.name!r}, {sizes}, split_hash={self.split_hash[:12]})"


def check_data_fit(data: Any, model: Any, eval_split: str | None, why: str) -> str | None:
    """Before a run: the model's input size (``model.image_size``, the recipe's ``image_size``)
    equals the data's volume size where both are known, and ``eval_split`` (when given) holds
    items (``why`` ends that error). Returns the data's one-line split summary, if it has one."""
    want, have = getattr(model, "image_size", None), getattr(data, "image_size", None)
    if want is not None and have is not None and tuple(want) != tuple(have):
        raise ConfigError(f"recipe.image_size={list(want)} but the volumes of data "
                          f"{getattr(data, 'name', '?')} are {list(have)}: drop the "
                          f"recipe.image_size override (it follows data.size), or prepare the "
                          f"data at that size")
    if eval_split is not None and hasattr(data, "require_split"):
        data.require_split(eval_split, why)
    return data.split_summary() if hasattr(data, "split_summary") else None
