"""Weights in Hugging Face's folder layouts: one file, or shards listed by an index.

A folder holds ``config.json`` and either ``model.safetensors`` / ``pytorch_model.bin`` or shards
``model-0000i-of-0000n.safetensors`` named by ``model.safetensors.index.json`` (``weight_map``:
tensor name -> shard file). Shards are read one at a time (:func:`iter_weights`), so loading a
7B release needs the model's memory plus one shard, not two copies of the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from torch import Tensor

from zoo.checkpoint import read_state_dict
from zoo.errors import CheckpointError, MissingFileError

# Single files first, then indexes, in the order transformers looks for them.
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def read_config(folder: str | Path) -> dict:
    """``folder/config.json`` as a dict (MissingFileError / CheckpointError naming the file)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{folder}: no config.json (a released model folder has one)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a model folder: the shards its index names (each must exist), or its
    single weights file."""
    folder = Path(folder)
    for name in INDEX_FILES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index}: not a weights index (needs a 'weight_map' "
                                      f"object): {err}") from err
            shards = [folder / f for f in sorted(set(weight_map.values()))]
            absent = [s.name for s in shards if not s.is_file()]
            if absent:
                raise MissingFileError(f"{index} names shards that are not there: {absent}")
            return shards
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise MissingFileError(f"{folder}: no weights ({', '.join(SINGLE_FILES + INDEX_FILES)})")


def _read(path: Path) -> dict[str, Tensor]:
    try:
        return read_state_dict(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from err


def iter_weights(path: str | Path) -> Iterator[tuple[Path, dict[str, Tensor]]]:
    """``(file, tensors)`` per weights file of a folder (shard by shard) or for one file. A shard
    holding a tensor its index puts elsewhere, or lacking one it should hold, raises."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist")
    if path.is_file():
        yield path, _read(path)
        return
    files = weight_files(path)
    index = next((path / n for n in INDEX_FILES if (path / n).is_file()), None)
    expected = json.loads(index.read_text())["weight_map"] if index is not None else None
    for file in files:
        state = _read(file)
        if expected is not None:
            want = {k for k, f in expected.items() if f == file.name}
            if set(state) != want:
                extra, lost = sorted(set(state) - want), sorted(want - set(state))
                raise CheckpointError(f"{file} does not hold what {index.name} says: missing "
                                      f"{lost[:5]}, not indexed {extra[:5]}")
        yield file, state


def write_weights(state: dict[str, Tensor], folder: str | Path,
                  max_shard_size: int | str = "5GB") -> list[Path]:
    """Write ``state`` as safetensors in Hugging Face's layout (``model.safetensors``, or shards
    plus ``model.safetensors.index.json`` when it exceeds ``max_shard_size``); returns the files."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    files = []
    for name, keys in split.filename_to_tensors.items():
        save_file({k: state[k].detach().contiguous() for k in keys}, str(folder / name),
                  metadata={"format": "pt"})
        files.append(folder / name)
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}
        (folder / INDEX_FILES[0]).write_text(json.dumps(index, indent=2, sort_keys=True))
    return files
