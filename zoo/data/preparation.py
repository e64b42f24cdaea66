"""The preparation a model's training volumes went through, recorded with the model so that
``zoo predict`` prepares a new NIfTI / DICOM volume the same way (docs/usage.md "Predict").

Where the spec lives in the data (docs/data.md): a folder prepared by ``zoo data prepare
--table`` records it in ``<root>/prepared.json``; data sets whose NIfTI / DICOM items are
prepared on load (``nifti_folder``, ``cq500``, ``ct_ich``, a ``table`` naming raw volumes) carry
it in every item (``item["spec"]``, from the data config). The synthetic benchmark and M3D's
``.npy`` files come prepared by other code and have no spec: such a model reads ``.npy`` volumes
of its own size, and NIfTI / DICOM only with a window given to ``zoo predict``.

The record is ``{"spec": PrepSpec fields or None, "source": where it was read, "note": why
there is none}``; ``zoo train`` writes it as ``preparation.json`` in the run folder (and as an
artifact), ``zoo export`` into ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

from zoo.errors import ConfigError, DataError

PREPARATION_FILE = "preparation.json"
NO_SPEC_NOTE = ("the training volumes were not prepared from NIfTI / DICOM by the zoo (the "
                "synthetic benchmark, M3D's .npy files): .npy volumes of the model's size are read "
                "as they are; for NIfTI / DICOM give the window (and modality, spacing) to zoo "
                "predict")


def preparation_of(data: Any) -> dict[str, Any]:
    """The record of ``data`` (a :class:`zoo.data.source.DataSource`): its ``prepared.json`` spec,
    else the one spec its items are prepared on load with, else none (module docstring)."""
    from zoo.data.source import SPLITS
    from zoo.data.table import RECORD

    root = getattr(data, "root", None)
    if root is not None and (Path(root) / RECORD).is_file():
        path = Path(root) / RECORD
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(path, f"unreadable ({type(err).__name__})") from None
        spec = record.get("spec") if isinstance(record, dict) else None
        if isinstance(spec, dict):
            return {"spec": spec_fields(spec, str(path)), "source": str(path.resolve())}
    specs = {item["spec_key"]: item["spec"] for split in SPLITS for item in data.items(split)
             if item.get("spec") is not None}
    if len(specs) == 1:
        return {"spec": spec_fields(next(iter(specs.values())), "data config"),
                "source": f"data config of {getattr(data, 'name', 'the data')} (volumes prepared "
                          "on load)"}
    if len(specs) > 1:
        return {"spec": None, "source": None,
                "note": f"the data's volumes were prepared with {len(specs)} different specs"}
    return {"spec": None, "source": None, "note": NO_SPEC_NOTE}


def spec_fields(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """The fields of a recorded PrepSpec, checked by building it (lists for tuples, as json)."""
    from zoo.data.prepare import PrepSpec

    known = {f.name for f in fields(PrepSpec)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"{where}: preparation spec has unknown field(s) {unknown}")
    return json.loads(json.dumps(asdict(PrepSpec(**spec))))


def write(folder: Path, record: dict[str, Any]) -> Path:
    path = folder / PREPARATION_FILE
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def read(folder: Path) -> dict[str, Any] | None:
    """A run folder's record, or None when the run has none (trained before it was written)."""
    path = folder / PREPARATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, f"unreadable ({type(err).__name__})") from None
    if not isinstance(record, dict) or "spec" not in record:
        raise DataError(path, "expected an object with a 'spec' key")
    return record


def spec_for(record: dict[str, Any] | None, image_size: Sequence[int], *,
             window: str | None = None, modality: str | None = None,
             spacing: Sequence[float] | None = None, required: bool = True) -> Any:
    """The PrepSpec that prepares a NIfTI / DICOM input for a model of ``image_size``: the
    recorded one; where none is recorded, one made from ``modality`` (default CT), ``window``
    (required for CT; MRI is scaled by percentiles) and ``spacing``. Giving those for a model
    that records its spec is refused (it would prepare the volume differently from the
    training data). With ``required=False`` (every input is a prepared ``.npy``) a CT model
    without a recorded spec or a window gets None instead of an error."""
    from zoo.data.prepare import PrepSpec, parse_window

    given = {k: v for k, v in (("--window", window), ("--modality", modality),
                                ("--spacing", spacing)) if v is not None}
    spec = (record or {}).get("spec")
    if spec is not None:
        if given:
            raise ConfigError(f"{', '.join(given)}: the model records how its training volumes "
                              f"were prepared ({describe(spec)}); inputs are prepared the same way")
        prepared = PrepSpec(**spec)
        if prepared.preset == "zoo" and tuple(prepared.size) != tuple(image_size):
            raise ConfigError(f"the recorded preparation size {list(prepared.size)} differs from "
                              f"the model's image size {list(image_size)}")
        return prepared
    modality = modality or "ct"
    if window is None and modality == "ct":
        if not required:
            return None
        note = (record or {}).get("note") or NO_SPEC_NOTE
        raise ConfigError(f"the model records no preparation spec ({note}); give --window "
                          "(a preset such as abdomen, or low,high HU) or --modality mri, or pass "
                          "a prepared .npy")
    return PrepSpec(modality=modality, size=tuple(image_size),
                    window=parse_window(window) if window is not None else "abdomen",
                    spacing=tuple(spacing) if spacing else None)


def describe(spec: dict[str, Any] | None) -> str:
    """One line: preset, modality, window or percentiles, spacing, size."""
    if spec is None:
        return "none"
    if spec.get("preset", "zoo") != "zoo":
        return f"preset {spec['preset']}, size at least {spec.get('size')}"
    scale = (f"window {spec.get('window')}" if spec.get("modality") == "ct"
             else f"percentiles {spec.get('percentiles')}")
    spacing = f", spacing {spec['spacing']} mm" if spec.get("spacing") else ""
    return f"{spec.get('modality')}, {scale}{spacing}, size {spec.get('size')}"
