"""Volumes whose content is in more than one split: exact copies and near-duplicates.

A data set's split is by case (patient) id, so the same scan filed under two case ids (a copy
in another folder, a re-export with another name) can sit in train and test at once; M3D-Cap's
own file split does this (docs/data.md, "Leaks across splits"). ``zoo data check`` feeds every
distinct volume it loads to a :class:`LeakFinder`:

- exact: sha256 of the loaded (C, D, H, W) float32 array and its shape;
- near: a fingerprint, the volume (channel mean) averaged down to an 8 x 16 x 16 grid and
  standardised (zero mean, unit standard deviation); two volumes are near-duplicates when every
  cell of their fingerprints differs by at most ``NEAR`` (0.2 standard deviations). That finds
  copies rescaled in intensity, re-windowed linearly, noised or resampled; a shifted or
  re-cropped copy is not found. Calibration on the synthetic benchmark (160 cases, whose
  phantoms share one anatomy template and so are the hardest case for false matches): distinct
  cases differ by at least 0.26; copies with Gaussian noise of 5 % of the range by at most 0.10,
  resampled to 94 % and back by at most 0.18, linearly rescaled by 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

GRID = (8, 16, 16)
NEAR = 0.2


def content_hash(image: torch.Tensor) -> str:
    """sha256 of a volume's float32 values and shape."""
    array = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint(image: torch.Tensor) -> np.ndarray:
    """(C, D, H, W) -> standardised 8 x 16 x 16 block means, flattened, float16."""
    pooled = torch.nn.functional.adaptive_avg_pool3d(image.float().mean(0)[None, None], GRID)
    values = pooled.flatten().double()
    values = (values - values.mean()) / values.std().clamp_min(1e-12)
    return values.numpy().astype(np.float16)


@dataclass
class Volume:
    image: str
    split: str
    case: str
    digest: str
    fingerprint: np.ndarray


def near_pairs(prints: np.ndarray, tolerance: float = NEAR) -> list[tuple[int, int, float]]:
    """Index pairs ``(i, j, distance)`` whose fingerprints differ by at most ``tolerance`` in
    every cell. Block means over 2 x 2 x 2 parts of the grid bound that distance from below (a
    mean differs by no more than its largest term), so a sort on one block mean and a check of
    all eight prune pairs without missing any."""
    n = len(prints)
    if n < 2:
        return []
    d, h, w = GRID
    blocks = prints.astype(np.float32).reshape(n, 2, d // 2, 2, h // 2, 2, w // 2).mean((2, 4, 6))
    blocks = blocks.reshape(n, 8)
    order = np.argsort(blocks[:, 0], kind="stable")
    key = blocks[order, 0]
    found = []
    for a, i in enumerate(order):
        end = int(np.searchsorted(key, key[a] + tolerance, side="right"))
        others = order[a + 1:end]
        others = others[np.abs(blocks[others] - blocks[i]).max(1) <= tolerance]
        if not len(others):
            continue
        gaps = np.abs(prints[others].astype(np.float32) - prints[i].astype(np.float32)).max(1)
        for j, gap in zip(others[gaps <= tolerance], gaps[gaps <= tolerance]):
            found.append((int(min(i, j)), int(max(i, j)), round(float(gap), 3)))
    return sorted(found)


class LeakFinder:
    """Collects the distinct volumes of a data set and reports those shared across splits."""

    def __init__(self, tolerance: float = NEAR) -> None:
        self.tolerance, self.volumes = tolerance, []

    def add(self, image: str, split: str, case: str, volume: torch.Tensor) -> None:
        self.volumes.append(Volume(str(image), split, case, content_hash(volume),
                                   fingerprint(volume)))

    def report(self) -> dict[str, Any]:
        """``exact``: groups of identical volumes spanning splits; ``near``: cross-split pairs of
        near-duplicates that are not identical; ``groups``: every case tied to another by an
        exact or near match (any split), as ``{case: representative case}``."""
        vols = self.volumes
        by_digest: dict[str, list[int]] = {}
        for i, v in enumerate(vols):
            by_digest.setdefault(v.digest, []).append(i)
        near = near_pairs(np.stack([v.fingerprint for v in vols]), self.tolerance) if vols else []
        parent = list(range(len(vols)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for members in by_digest.values():
            for j in members[1:]:
                parent[root(j)] = root(members[0])
        for i, j, _ in near:
            parent[root(j)] = root(i)
        describe = lambda i: {"image": vols[i].image, "split": vols[i].split,  # noqa: E731
                              "case": vols[i].case}
        exact = [[describe(i) for i in members] for members in by_digest.values()
                 if len({vols[i].split for i in members}) > 1]
        cross = [{"a": describe(i), "b": describe(j), "distance": gap} for i, j, gap in near
                 if vols[i].split != vols[j].split and vols[i].digest != vols[j].digest]
        cases: dict[int, set[str]] = {}
        for i, v in enumerate(vols):
            cases.setdefault(root(i), set()).add(v.case)
        groups = {case: min(members) for members in cases.values() if len(members) > 1
                  for case in sorted(members)}
        return {"volumes": len(vols), "tolerance": self.tolerance, "exact": exact,
                "near": cross, "groups": groups}
