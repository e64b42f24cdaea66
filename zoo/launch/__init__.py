"""Launching the zoo on more than one process: the Accelerate config files it ships (DDP, FSDP2,
DeepSpeed ZeRO-2) and the multi-node rendezvous on Slurm (:mod:`zoo.launch.slurm`). DeepSpeed
ZeRO-3 is refused by the trainer (:func:`zoo.training.check_strategy`), so no file is shipped.

The config files live in ``zoo/launch/configs/`` inside the installed package, so an installed
zoo finds them by name: ``python -m zoo.launch config fsdp`` prints the path for
``accelerate launch --config_file``. docs/scale.md has a command line per file.
"""

from __future__ import annotations

from pathlib import Path

from zoo.errors import ConfigError, MissingFileError

CONFIG_DIR = Path(__file__).with_name("configs")
ACCELERATE_CONFIGS = ("ddp", "fsdp", "deepspeed_zero2")


def accelerate_config(name: str | Path) -> Path:
    """The path of a shipped Accelerate config (one of :data:`ACCELERATE_CONFIGS`) or of the
    user's own config file (a ``.yaml``/``.yml``/``.json`` path, which must exist)."""
    text = str(name)
    if text in ACCELERATE_CONFIGS:
        return CONFIG_DIR / f"{text}.yaml"
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise MissingFileError(f"accelerate config {path}: no such file")
        return path
    from zoo.registry import suggest

    raise ConfigError(f"accelerate config {text!r}: neither a shipped config "
                      f"({', '.join(ACCELERATE_CONFIGS)}) nor a .yaml/.json file."
                      f"{suggest(text, ACCELERATE_CONFIGS)}")
