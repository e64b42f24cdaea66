"""Loading-throughput benchmark (not a timed test): samples per second through a DataLoader.

``loading_throughput`` measures (1) the synthetic benchmark at its default size and (2) prepared
M3D ``.npy`` volumes at 32 x 256 x 256 read through the M3D-Cap reader (memory-mapped), with
``workers`` DataLoader processes and pinned memory when CUDA is available. ``zoo bench`` calls it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([s["image"] for s in samples]),
            "prompt": [s["prompt"] for s in samples]}


def _rate(dataset: Dataset, num_samples: int, batch_size: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), collate_fn=_collate,
                        generator=torch.Generator().manual_seed(0),
                        persistent_workers=False)
    seen, start = 0, None
    while seen < num_samples:
        for batch in loader:
            if start is None:  # exclude worker start-up and the first batch
                start = time.perf_counter()
                continue
            seen += batch["image"].shape[0]
            if seen >= num_samples:
                break
    return seen / max(time.perf_counter() - start, 1e-9)


def write_npy_set(out: Path, cases: int, size: Sequence[int], seed: int = 0) -> Path:
    """``cases`` random (1, D, H, W) volumes in M3D-Cap layout (npy + txt + json)."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(cases):
        folder = out / f"case{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "image.npy", rng.random((1, *size), dtype=np.float32))
        (folder / "text.txt").write_text(f"Report of case {i}.\n")
        entries.append({"image": f"case{i:04d}/image.npy", "text": f"case{i:04d}/text.txt"})
    (out / "M3D_Cap.json").write_text(json.dumps({"train": entries, "validation": [], "test": []}))
    return out


def loading_throughput(num_samples: int = 64, batch_size: int = 4, workers: int = 2,
                       npy_size: Sequence[int] = (32, 256, 256), npy_cases: int = 16,
                       synth_cases: int = 20, tmp_dir: str | None = None) -> dict[str, Any]:
    """Samples per second for the synthetic set and for prepared npy at ``npy_size``."""
    from zoo.data.m3d import m3d_cap
    from zoo.data.synth import read_synth, write_benchmark

    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        root = Path(tmp)
        synth_root = write_benchmark(root / "synth", cases=synth_cases)
        synth_ds = read_synth(synth_root, manifest=root / "synth_manifest.json").dataset(
            "train", tasks=["vqa_closed"])
        npy_root = write_npy_set(root / "npy", npy_cases, tuple(npy_size))
        npy_ds = m3d_cap(root=str(npy_root), size=npy_size,
                         manifest=str(root / "npy_manifest.json")).dataset("train")
        return {"synth_samples_per_s": _rate(synth_ds, num_samples, batch_size, workers),
                "npy_samples_per_s": _rate(npy_ds, num_samples, batch_size, workers),
                "synth_size": [32, 64, 64], "npy_size": list(npy_size), "batch_size": batch_size,
                "workers": workers, "pin_memory": torch.cuda.is_available()}
