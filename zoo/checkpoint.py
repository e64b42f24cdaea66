"""Atomic training checkpoints (docs/design.md section 7).

A checkpoint is a folder written by Accelerate's ``save_state`` (model weights as safetensors,
optimiser, scheduler and RNG states) plus ``trainer_state.json``. It is written under a temporary
name and renamed into place, and the ``latest`` pointer file is replaced atomically, so a run
killed at any moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

STATE_FILE = "trainer_state.json"
LATEST = "latest"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(root: Path, name: str, write_state: Callable[[Path], None], trainer_state: dict,
         is_main: bool = True) -> Path:
    """Write checkpoint ``root/name`` via ``write_state(tmp_dir)`` and point ``latest`` at it.

    ``write_state`` runs on every process (Accelerate writes on the main one); only the main
    process renames and updates the pointer.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp"
    if is_main and tmp.exists():
        shutil.rmtree(tmp)
    write_state(tmp)
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        if final.exists():
            old = root / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        atomic_write_text(root / LATEST, name)
    return final


def latest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint folder, trainer state) of the newest complete checkpoint, or None."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    folder = root / pointer.read_text().strip()
    state_file = folder / STATE_FILE
    if not state_file.exists():
        raise FileNotFoundError(f"checkpoint pointer {pointer} names {folder}, which has no "
                                f"{STATE_FILE}: the checkpoint folder is incomplete or was removed")
    return folder, json.loads(state_file.read_text())


# Keys under which training scripts wrap a state dict (``{"state_dict": ...}``, ``{"model": ...}``).
STATE_DICT_WRAPPERS = ("state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict ``{name: Tensor}`` from ``.safetensors`` or a ``torch.save`` file.

    ``torch.save`` files are read with ``weights_only=True`` on the CPU; a dict wrapping the weights
    under ``state_dict`` or ``model`` (possibly nested) is unwrapped. Errors name the file: a
    missing file raises ``FileNotFoundError``, an unreadable one or one without a dict of tensors
    ``ValueError``. One reader for every component that loads external weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # truncated or not a safetensors file
            raise ValueError(f"checkpoint {path} could not be read as safetensors: {err}") from err
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled objects beyond weights
        raise ValueError(f"checkpoint {path} could not be read by torch.load "
                         f"(weights_only=True): {err}") from err
    unwrapped = True
    while unwrapped and isinstance(obj, dict):
        unwrapped = False
        for key in STATE_DICT_WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj, unwrapped = obj[key], True
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors "
                         f"(got {type(obj).__name__})")
    return obj
