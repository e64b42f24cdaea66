"""Data-loader throughput of ``zoo bench``: prepared volumes read, turned into samples and collated
by the zoo's own path (``SampleDataset`` -> ``build_sample`` -> the recipe's collate, in a
``torch.utils.data.DataLoader``), per storage type and worker count (docs/performance.md, "Data
pipeline").

The volumes are the built-in synthetic benchmark at the size asked (M3D's 32 x 256 x 256 by
default), one caption item per case, read in a shuffled order over more cases than the
per-process cache holds, so every read is a first read (validated). Storage: the prepared float32
``.npy`` (memory-mapped) and a float16 copy of the same volumes (read by the same path, converted
to float32 on load). Throughput is counted after the first batch of a pass (worker start-up is
reported on its own), over warm files: the page cache holds them here, so disk speed is not in
the figure. ``persistent_workers`` is measured as the time to the first batch of a second pass.
Pinned memory needs CUDA and is measured only there. M3D's training augmentation (which the zoo
does not apply, docs/reference.md H) is timed per volume for comparison.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from zoo.bench import report


def loader_items(size: Sequence[int], cases: int, cache_dir: str) -> list[dict[str, Any]]:
    """One caption item per case of the synthetic benchmark at ``size`` (generated once)."""
    from zoo.data.splits import SPLITS
    from zoo.data.synth import synth

    data = synth(cases=cases, size=tuple(size), cache_dir=cache_dir)
    items = [i for split in SPLITS for i in data.items(split) if i["task"] == "caption"]
    if len(items) != cases:
        raise ValueError(f"the synthetic benchmark gave {len(items)} caption items for "
                         f"{cases} cases")
    return items


def float16_items(items: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """The same items with each volume stored as float16 in ``folder`` (written once)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for item in items:
        path = folder / f"{item['case']}.npy"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, np.load(item["image"]).astype(np.float16))
            tmp.replace(path)
        out.append({**item, "image": str(path)})
    return out


def collate_function(size: Sequence[int]) -> Any:
    """The tiny LaMed's collate (tokenisation, image-token expansion, stacking) at ``size``."""
    from zoo.build import build_model
    from zoo.config import compose

    model = build_model(compose(["recipe=lamed", "data=test_synth",
                                 f"data.size=[{','.join(str(s) for s in size)}]"]))
    return model.collate


def passes(items: list[dict[str, Any]], collate: Any, batch_size: int, workers: int,
           epochs: int = 2, persistent: bool = False, pin_memory: bool = False,
           seed: int = 0) -> list[dict[str, float]]:
    """Per pass over ``items``: seconds to the first batch and volumes per second after it."""
    from zoo.data.source import SampleDataset

    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(SampleDataset(items), batch_size=batch_size, drop_last=True,
                        sampler=RandomSampler(items, generator=generator), collate_fn=collate,
                        num_workers=workers, persistent_workers=persistent and workers > 0,
                        pin_memory=pin_memory)
    results = []
    for _ in range(epochs):
        start = time.perf_counter()
        first = None
        volumes = 0
        for batch in loader:
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                volumes += int(batch["image"].shape[0])
        end = time.perf_counter()
        results.append({"first_batch_s": first - start,
                        "volumes_per_s": volumes / max(end - first, 1e-9)})
    del loader
    return results


def augmentation_seconds(size: Sequence[int], repeats: int = 10) -> float:
    """Median seconds per volume of M3D's training augmentation (MONAI: 90-degree in-plane
    rotation p 0.5, a flip per axis p 0.1, intensity scale and shift 0.1 p 0.5)."""
    from monai import transforms as mt

    augment = mt.Compose([mt.RandRotate90(prob=0.5, spatial_axes=(1, 2)),
                          *(mt.RandFlip(prob=0.1, spatial_axis=axis) for axis in range(3)),
                          mt.RandScaleIntensity(factors=0.1, prob=0.5),
                          mt.RandShiftIntensity(offsets=0.1, prob=0.5)])
    augment.set_random_state(0)
    volume = torch.rand(1, *size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        augment(volume)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loader_section(size: Sequence[int] = (32, 256, 256), cases: int = 16, batch_size: int = 4,
                   workers: Sequence[int] = (0, 1, 2), cache_dir: str = "runs/data",
                   target_volumes_per_s: float | None = None) -> tuple[str, dict[str, float]]:
    """The loader section of ``zoo bench`` (Markdown, metrics); ``target_volumes_per_s``: the
    rate of the best recorded GPU training step (docs/BENCHMARKS_GPU.md), turned into the
    workers it needs at the best measured per-worker rate."""
    items = loader_items(size, cases, cache_dir)
    storages = {"float32": items,
                "float16": float16_items(items, Path(cache_dir) / "loader-float16" /
                                         "x".join(str(s) for s in size))}
    collate = collate_function(size)
    rows, metrics = [], {}
    for storage, chosen in storages.items():
        for count in workers:
            first, second = passes(chosen, collate, batch_size, count)
            rate = second["volumes_per_s"]
            per_worker = rate / max(count, 1)
            rows.append([storage, count, first["first_batch_s"], second["first_batch_s"], rate,
                         per_worker])
            metrics[f"loader/{storage}/w{count}/volumes_per_s"] = rate
    persistent = passes(items, collate, batch_size, max(workers), persistent=True)[1]
    metrics["loader/float32/persistent/first_batch_s"] = persistent["first_batch_s"]
    augment = augmentation_seconds(size)
    metrics["loader/augmentation_s"] = augment
    cuda = torch.cuda.is_available()
    if cuda:
        pinned = passes(items, collate, batch_size, max(workers), pin_memory=True)[1]
        metrics["loader/float32/pinned/volumes_per_s"] = pinned["volumes_per_s"]
    measured = [r for r in rows if r[0] == "float32" and r[1] > 0] or \
        [r for r in rows if r[0] == "float32"]  # the main process when no worker was timed
    best = max(r[5] for r in measured)
    body = (f"{cases} prepared volumes of 1 x {' x '.join(map(str, size))} (the synthetic "
            f"benchmark, one caption item each), shuffled, batch {batch_size}, the zoo's dataset "
            "and LaMed collate in a DataLoader; files warm in the page cache (disk speed not "
            "included). Workers 0 = the main process. Start-up: seconds to the first batch of "
            "the first and of the second pass (new worker processes each pass).\n\n"
            + report.table(["storage", "workers", "1st batch, pass 1 (s)",
                            "1st batch, pass 2 (s)", "volumes/s", "volumes/s per worker"], rows)
            + f"\n\n`persistent_workers=True` ({max(workers)} workers): first batch of the second "
            f"pass after {persistent['first_batch_s']:.3f} s. M3D's training augmentation (not "
            f"applied by the zoo): {augment * 1e3:.1f} ms per volume. Pinned memory: "
            + (f"{metrics['loader/float32/pinned/volumes_per_s']:.1f} volumes/s with "
               f"{max(workers)} workers." if cuda else "needs CUDA, not measured here."))
    if target_volumes_per_s and best:
        needed = target_volumes_per_s / best
        body += (f" The best recorded GPU training step (docs/BENCHMARKS_GPU.md) consumes "
                 f"{target_volumes_per_s:.0f} volumes/s: at the best measured per-worker rate "
                 f"({best:.1f} volumes/s) that needs about {needed:.0f} workers of this CPU.")
        metrics["loader/workers_needed"] = needed
    return body, metrics
