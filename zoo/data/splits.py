"""Shared splits by a stable hash of the case (patient) id, never by shuffling (docs/design.md 6).

``assign_split`` maps ``sha256(salt + "/" + id)`` to [0, 1) and cuts it at the cumulative
fractions, so a case keeps its split when cases are added or removed. The manifest lists the ids
per split; ``split_hash`` (sha256 of the manifest file's bytes) is logged with every run and
compared before runs are compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from zoo.errors import ConfigError, DataError

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"fractions must be three non-negative numbers summing to 1 "
                         f"(train, validation, test), got {tuple(fractions)}")


def assign_split(case_id: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "zoo",
                 patient_id: str | None = None) -> str:
    """'train', 'validation' or 'test' for a case; the patient id, when given, decides."""
    _check_fractions(fractions)
    key = patient_id if patient_id else case_id
    if not key:
        raise DataError("assign_split needs a non-empty case_id or patient_id")
    digest = hashlib.sha256(f"{salt}/{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def make_manifest(ids: Iterable[str] | Mapping[str, str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  salt: str = "zoo") -> dict[str, object]:
    """Manifest dict for case ids (or a mapping case id -> patient id)."""
    mapping = dict(ids) if isinstance(ids, Mapping) else {i: i for i in ids}
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for case_id, patient in sorted(mapping.items()):
        splits[assign_split(case_id, fractions, salt, patient_id=patient)].append(case_id)
    return {"salt": salt, "fractions": list(fractions), "splits": splits}


def write_manifest(path: str | Path, ids: Iterable[str] | Mapping[str, str] | None = None, *,
                   fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "zoo",
                   splits: Mapping[str, Sequence[str]] | None = None) -> str:
    """Write a manifest (from ids by hash, or from given ``splits``); returns its split hash.

    The bytes are canonical (sorted ids, sorted keys), so the same split gives the same hash.
    """
    if splits is not None:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ConfigError(f"unknown split name(s) {sorted(unknown)}; use {SPLITS}")
        manifest = {"salt": salt, "fractions": None,
                    "splits": {s: sorted(splits.get(s, ())) for s in SPLITS}}
    elif ids is not None:
        manifest = make_manifest(ids, fractions, salt)
    else:
        raise ValueError("write_manifest needs ids or splits")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return split_hash(path)


def read_manifest(path: str | Path) -> dict[str, list[str]]:
    """``{split: [ids]}`` from a manifest file; raises naming the file when malformed."""
    from zoo.data.io import read_json

    data = read_json(path)
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise DataError(path, f"a split manifest needs 'splits' with keys {SPLITS}")
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(path, f"splits.{name} must be a list of case ids (strings), got "
                                  f"{ids!r:.60}")
        for i in ids:
            if i in seen:
                raise DataError(path, f"id {i!r} is in both {seen[i]!r} and {name!r}")
            seen[i] = name
    return {s: list(splits[s]) for s in SPLITS}


def read_patients(path: str | Path, cases: set[str]) -> dict[str, str]:
    """``{case: patient id}`` from a csv ``case, patient_id``; every case must be in ``cases``."""
    from zoo.data.io import read_csv

    out = {}
    for row_no, row in read_csv(path, ("case", "patient_id")):
        if row["case"] not in cases:
            raise DataError(path, f"case {row['case']!r} is not in the data set", row_no)
        if not row["patient_id"]:
            raise DataError(path, "empty patient_id", row_no)
        out[row["case"]] = row["patient_id"]
    return out


def split_hash(path: str | Path) -> str:
    """sha256 hex digest of the manifest file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
