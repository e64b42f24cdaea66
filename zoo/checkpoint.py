"""Atomic, verified training checkpoints (docs/design.md section 7; docs/guarantees.md).

A checkpoint is a folder ``<run folder>/checkpoints/<stage>-<step N | final>`` written by
Accelerate's ``save_state`` (model weights as safetensors, optimiser and scheduler states, one
random-state file per process) plus ``trainer_state.json``, which records the stage, the step, the
checkpoint's position in the run and the sha256 of every file. It is written under a temporary
name and renamed into place, so a run killed at any moment leaves complete checkpoints only.

:func:`latest` returns the newest checkpoint whose files match their recorded hashes; a corrupt or
truncated newer one is skipped with a one-line warning naming the bad file. A corrupt random-state
file is an error instead: resuming without it would silently change the run's random stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from zoo.errors import CheckpointError, MissingFileError

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
RNG_PREFIX = "random_states_"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def save(root: Path, name: str, write_state: Callable[[Path], None], trainer_state: dict,
         is_main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """Write checkpoint ``root/name`` via ``write_state(tmp_dir)``; returns the final folder.

    ``write_state`` runs on every process (Accelerate writes the shared files on the main one and
    a random-state file per process); only the main process hashes the files, writes
    ``trainer_state.json`` (the given state plus ``sha256: {file: digest}``) and renames the
    folder into place. ``barrier`` synchronises the processes around the write.
    """
    final, tmp = root / name, root / f".{name}.tmp"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    barrier()
    write_state(tmp)
    barrier()
    if is_main:
        # every file, also those of sharded states in subfolders (FSDP, DeepSpeed)
        hashes = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*"))
                  if p.is_file()}
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "sha256": hashes}, indent=2))
        if final.exists():
            old = root / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    barrier()
    return final


def read_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``; CheckpointError naming the file when unreadable."""
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("sha256"), dict) \
                or len(state.get("position", ())) != 3:
            raise ValueError("no position or sha256 entries")
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint state "
                              f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    return state


def corrupt_file(folder: Path, state: dict[str, Any]) -> str | None:
    """The name of the first file of ``folder`` that is missing or differs from its recorded
    sha256, or None when every file matches."""
    for name, digest in state["sha256"].items():
        path = folder / name
        if not path.is_file() or file_sha256(path) != digest:
            return name
    return None


def latest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """(folder, trainer state) of the newest intact checkpoint under ``root``, or None when there
    is none. Newer checkpoints with an unreadable state or a file that differs from its recorded
    hash are skipped with a one-line warning; a corrupt random-state file raises CheckpointError."""
    if not root.is_dir():
        return None
    found: list[tuple[tuple, Path, dict | None, str]] = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue  # temporary folders of an interrupted write
        try:
            state = read_state(folder)
        except CheckpointError as err:
            found.append(((float("inf"),), folder, None, str(err)))  # position unknown: check first
            continue
        found.append((tuple(state["position"]), folder, state, ""))
    skipped = []
    for _, folder, state, problem in sorted(found, key=lambda f: f[0], reverse=True):
        if state is not None:
            bad = corrupt_file(folder, state)
            if bad is None:
                for message in skipped:
                    warn(f"{message}; resuming from the previous checkpoint {folder}")
                return folder, state
            if bad.startswith(RNG_PREFIX):
                raise CheckpointError(
                    f"{folder / bad}: corrupt or truncated random-state file (sha256 differs from "
                    f"{STATE_FILE}); resuming without it would change the run's random stream. "
                    f"Remove {folder} to resume from the previous checkpoint")
            problem = f"{folder / bad} is missing, truncated or corrupt (sha256 differs from " \
                      f"{STATE_FILE})"
        skipped.append(f"skipping checkpoint {folder}: {problem}")
    if skipped:
        raise CheckpointError(f"no intact checkpoint under {root}: {skipped[-1]}")
    return None


def load_weights(model: torch.nn.Module, weights: str | Path | dict[str, Tensor],
                 source: str | None = None) -> None:
    """Load a zoo checkpoint's ``model.safetensors`` (or a state dict read from ``source``) into
    ``model`` (strict): a missing, truncated or mismatching file raises one line naming it
    (missing / unexpected keys, wrong shapes); a tied weight stored once loads through its other
    name (:func:`tied_aliases`)."""
    state = weights if isinstance(weights, dict) else read_state_dict(weights)
    source = source or str(weights if not isinstance(weights, dict) else "state dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - tied_aliases(own, state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(state)
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} wrong shapes (e.g. {wrong[0]}, file vs model)" if wrong else ""]
        raise CheckpointError(f"{source} does not fit the model: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False)  # every key checked above; tied names load once


def tied_aliases(own: dict[str, Tensor], present: Iterable[str]) -> set[str]:
    """Names in ``own`` that share their tensor with a name in ``present``: a tied weight (the
    input embedding and LM head of SmolLM2) is written once to safetensors and loads through its
    other name."""
    present = set(present)
    groups: dict[tuple, list[str]] = {}
    for name, tensor in own.items():
        if tensor.device.type != "meta":
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            groups.setdefault(key, []).append(name)
    return {name for names in groups.values() if len(names) > 1 and present & set(names)
            for name in names if name not in present}


@contextlib.contextmanager
def reading_hf_folder(folder: str | Path, what: str = "model folder") -> Iterator[None]:
    """Errors while Hugging Face reads a local folder (config, tokenizer, weights) become one
    CheckpointError line naming the folder; a weights file holding pickled objects beyond tensors
    is refused (transformers reads ``.bin`` files with ``weights_only=True``: nothing in it runs)."""
    import pickle

    from zoo.errors import ZooError

    try:
        yield
    except ZooError:
        raise
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{folder}: a weights file holds pickled objects beyond tensors; "
                              "refused (read with weights_only=True, nothing in it was run); "
                              "save the weights as safetensors") from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = " ".join(str(err).strip().splitlines()[0].split()) if str(err).strip() else ""
        raise CheckpointError(f"{folder}: cannot be read as a Hugging Face {what} "
                              f"({type(err).__name__}: {first[:300]})") from err


def restore_rng(folder: Path, process_index: int) -> None:
    """Set the Python, NumPy and torch (CPU and CUDA) random states from the checkpoint's
    random-state file of this process (Accelerate's layout; read with ``weights_only=True``)."""
    import random

    import numpy as np
    from accelerate.utils import load

    path = folder / f"{RNG_PREFIX}{process_index}.pkl"
    try:
        states = load(path)
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except Exception as err:  # missing, unpicklable or not Accelerate's layout
        raise CheckpointError(f"{path}: unreadable random-state file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from err


# Keys under which training scripts wrap a state dict (``{"state_dict": ...}``, ``{"model": ...}``).
STATE_DICT_WRAPPERS = ("state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict ``{name: Tensor}`` from ``.safetensors`` or a ``torch.save`` file.

    ``torch.save`` files are read with ``weights_only=True`` on the CPU; a dict wrapping the weights
    under ``state_dict`` or ``model`` (possibly nested) is unwrapped. Errors name the file: a
    missing file raises ``MissingFileError``, an unreadable one or one without a dict of tensors
    ``CheckpointError`` (both one line). One reader for every component that loads external weights.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # truncated or not a safetensors file
            raise CheckpointError(f"checkpoint {path} could not be read as safetensors "
                                  f"(truncated or another format): {err}") from err
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled objects beyond weights
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} could not be read by torch.load "
                              f"(weights_only=True; pickled objects are never run): {first}") from err
    unwrapped = True
    while unwrapped and isinstance(obj, dict):
        unwrapped = False
        for key in STATE_DICT_WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj, unwrapped = obj[key], True
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors "
                         f"(got {type(obj).__name__})")
    return obj
