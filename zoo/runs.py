"""Each run's own folder, and the run that ``trainer.resume`` continues (docs/guarantees.md).

A ``zoo train`` run (or sweep job) writes under ``<trainer.output_dir>/<run id>``, where the run id
is its MLflow run id (also tagged on the run as ``zoo.run_dir``). The folder holds the resolved
configuration (``config.yaml``, absolute paths), the run's status (``run.json``) and its
checkpoints (``checkpoints/``); no two runs share a folder.

``trainer.resume`` names the run to continue: a run id (a folder under ``trainer.output_dir``), a
run folder, or ``true`` for the newest unfinished run under ``trainer.output_dir``. The resumed
run keeps its id and folder, and its stored configuration must equal the current one except in
:data:`RESUMABLE_KEYS`, which do not change the trained weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError
from zoo.tracking import flatten

CONFIG_FILE = "config.yaml"
STATUS_FILE = "run.json"
# keys that may differ between a run and its resumption (prefix match on dotted keys); any key
# ending in ".cache_dir" may differ too (caches hold results that do not depend on their place)
RESUMABLE_KEYS = ("trainer.resume", "trainer.output_dir", "trainer.num_workers",
                  "trainer.log_every", "trainer.save_every", "trainer.validate",
                  "trainer.val_batches", "eval.")


def run_folder(cfg: DictConfig, run_id: str) -> Path:
    return Path(cfg.trainer.output_dir).resolve() / run_id


def create(folder: Path, cfg: DictConfig, run_id: str) -> None:
    """Make a new run's folder with its configuration and status (main process only)."""
    folder.mkdir(parents=True, exist_ok=False)
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))
    set_status(folder, run_id, "RUNNING")


def set_status(folder: Path, run_id: str, status: str) -> None:
    (folder / STATUS_FILE).write_text(json.dumps({"run_id": run_id, "status": status,
                                                  "time": time.time()}))


def status(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def resume_folder(cfg: DictConfig) -> Path:
    """The folder of the run ``trainer.resume`` names; ConfigError when there is none."""
    value, base = cfg.trainer.resume, Path(cfg.trainer.output_dir).resolve()
    if value is True:
        unfinished = [f for f in (base.iterdir() if base.is_dir() else ())
                      if (f / CONFIG_FILE).is_file() and (f / "checkpoints").is_dir()
                      and (status(f) or {}).get("status") != "FINISHED"]
        if not unfinished:
            raise ConfigError(f"trainer.resume=true: nothing to resume, no unfinished run with a "
                              f"checkpoint under trainer.output_dir={base}")
        return max(unfinished, key=lambda f: (f / STATUS_FILE).stat().st_mtime
                   if (f / STATUS_FILE).exists() else 0.0)
    given = Path(str(value)).expanduser()
    for folder in (given, base / str(value)):
        if (folder / CONFIG_FILE).is_file():
            if (status(folder) or {}).get("status") == "FINISHED":
                raise ConfigError(f"trainer.resume={value}: nothing to resume, run {folder.name} "
                                  "finished")
            return folder.resolve()
    raise ConfigError(f"trainer.resume={value}: no run folder {base / str(value)} and no folder "
                      f"{given} with a {CONFIG_FILE} (give a run id under trainer.output_dir, a "
                      "run folder, or true)")


def resumable(key: str) -> bool:
    return key.endswith(".cache_dir") or any(key == k or (k.endswith(".") and key.startswith(k))
                                            for k in RESUMABLE_KEYS)


def config_differences(stored: DictConfig, current: DictConfig) -> list[str]:
    """``key (run V1, now V2)`` for every non-resumable key whose value differs."""
    old = flatten(OmegaConf.to_container(stored, resolve=True))  # type: ignore[arg-type]
    new = flatten(OmegaConf.to_container(current, resolve=True))  # type: ignore[arg-type]
    return [f"{k} (run {_shown(old, k)}, now {_shown(new, k)})"
            for k in sorted(set(old) | set(new)) if not resumable(k) and old.get(k) != new.get(k)]


def _shown(values: dict[str, Any], key: str) -> str:
    """A config value as an override writes it: null, true/false, numbers bare, text quoted."""
    if key not in values:
        return "<unset>"
    value = values[key]
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def check_same_config(folder: Path, cfg: DictConfig) -> None:
    """Refuse to resume a run whose stored configuration differs from ``cfg`` (one line)."""
    stored = OmegaConf.load(folder / CONFIG_FILE)
    diffs = config_differences(stored, cfg)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise ConfigError(f"trainer.resume: run {folder.name} was trained with another config: "
                          f"{shown}. Only {', '.join(RESUMABLE_KEYS)}* and *.cache_dir may change "
                          "on resume")


def final_checkpoint(folder: Path, stages: list[str]) -> Path:
    """``<run folder>/checkpoints/<last stage>-final/model.safetensors``: of the last of
    ``stages``, or (empty) of the last of the stages the run's checkpoints record (stages run in
    order; an earlier stage's final checkpoint never stands in for a missing last one)."""
    from zoo.checkpoint import WEIGHTS_FILE, read_state
    from zoo.errors import MissingFileError

    root = folder / "checkpoints"
    if stages:
        path = root / f"{stages[-1]}-final" / WEIGHTS_FILE
    else:
        finals = sorted(root.glob(f"*-final/{WEIGHTS_FILE}"),
                        key=lambda p: tuple(read_state(p.parent)["position"]))
        planned = read_state(finals[-1].parent).get("stages") if finals else None
        path = root / f"{planned[-1] if planned else '<stage>'}-final" / WEIGHTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no final checkpoint (did the run finish its training?)")
    return path
