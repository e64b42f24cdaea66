"""``zoo data check``: build a data set in any supported format and load every sample.

Any problem raises :class:`zoo.errors.DataError` naming the file (and csv row) and the reason;
on success the counts per split and task are returned, with the volumes whose content is in
more than one split (:mod:`zoo.data.leaks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.data.io import load_npy
from zoo.data.leaks import LeakFinder
from zoo.data.source import build_sample
from zoo.data.splits import SPLITS
from zoo.errors import ConfigError, DataError, MissingFileError

FORMATS = ("synth", "m3d_cap", "m3d_vqa", "m3d_seg", "m3d_refseg", "nifti_folder", "table", "cq500",
           "ct_ich", "prepared")


def check_prepared(path: Path) -> dict[str, Any]:
    """A ``zoo data prepare`` output folder: every ``<case>/image.npy`` with its ``spec.json``."""
    images = sorted(path.rglob("image.npy"))
    if not images:
        raise DataError(path, "no <case>/image.npy found")
    for image in images:
        load_npy(image)
        if not (image.parent / "spec.json").is_file():
            raise DataError(image.parent / "spec.json", "file does not exist")
    return {"name": "prepared", "root": str(path), "cases": len(images)}


def check(fmt: str, path: str | Path, **options: Any) -> dict[str, Any]:
    """Validate the data set at ``path`` in format ``fmt``; returns ``describe()`` counts plus
    ``leaks`` (:meth:`zoo.data.leaks.LeakFinder.report`)."""
    path = Path(path)
    if fmt not in FORMATS:
        from zoo.registry import suggest

        raise ConfigError(f"unknown format {fmt!r}.{suggest(fmt, FORMATS)} Formats: {', '.join(FORMATS)}")
    if fmt == "prepared":
        return check_prepared(path)
    if not path.exists():
        raise MissingFileError(f"{path}: path does not exist")
    import inspect

    from zoo.registry import DATASETS

    builder = DATASETS.get(fmt)
    known = [k for k in inspect.signature(builder).parameters if k != "root"]
    unknown = [k for k in options if k not in known]
    if unknown:
        from zoo.registry import suggest

        raise ConfigError(f"unknown option(s) {unknown} for format {fmt}."
                          f"{suggest(unknown[0], known)} Options: {', '.join(known)}")
    source = builder(root=str(path), **options)
    done: set[tuple] = set()
    leaks, volumes = LeakFinder(), set()
    for split in SPLITS:
        for item in sorted(source.items(split), key=lambda i: str(i["image"])):
            # texts were validated when the tables were read: load each distinct target once
            mask = item.get("mask") or {}
            key = (str(item["image"]), item.get("spec_key"), str(mask.get("path")),
                   mask.get("channel"), tuple(mask.get("ids", ())),
                   tuple(sorted((item.get("slice") or {}).items())), item["task"] == "reg",
                   item.get("series"), item["case"])
            if key in done:
                continue
            done.add(key)
            sample = build_sample(item)
            image = sample["image"]
            if image.dim() != 4:
                raise DataError(item["image"], f"image must be (C, D, H, W), got {tuple(image.shape)}")
            volume = (str(item["image"]), item.get("spec_key"), item.get("series"), item["case"])
            if volume not in volumes:
                volumes.add(volume)
                leaks.add(volume[0], split, item["case"], image)
    return {**source.describe(), "format": fmt, "leaks": leaks.report()}
