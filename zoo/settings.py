"""Checks of the trainer's and the evaluation's settings, run before any work (docs/guarantees.md).

Each check raises :class:`~zoo.errors.ConfigError` with one line naming the key, the value given
and the allowed range. Numbers given as text (``trainer.max_grad_norm=abc``) and booleans where a
count is expected are refused, never converted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zoo.errors import ConfigError

MIXED_PRECISION = ("no", "bf16", "fp16")
SPLITS = ("train", "validation", "test")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def count(key: str, value: Any, minimum: int, nullable: bool = False, meaning: str = "") -> None:
    """``value`` must be an int >= ``minimum`` (or None when ``nullable``)."""
    if value is None and nullable:
        return
    if not _is_int(value) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if nullable else "")
        raise ConfigError(f"{key}={value!r}: expected {allowed}{meaning}")


def number(key: str, value: Any, minimum: float, nullable: bool = False, meaning: str = "",
           strict: bool = False) -> None:
    """``value`` must be a number >= ``minimum`` (> with ``strict``; None when ``nullable``)."""
    if value is None and nullable:
        return
    # NaN fails both comparisons
    if not (_is_number(value) and (value > minimum if strict else value >= minimum)):
        allowed = f"a number {'>' if strict else '>='} {minimum}" + (" or null" if nullable else "")
        raise ConfigError(f"{key}={value!r}: expected {allowed}{meaning}")


def flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")


def choice(key: str, value: Any, options: Sequence[str]) -> None:
    if value not in options:
        from zoo.registry import suggest

        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(options)}."
                          f"{suggest(str(value), list(options))}")


def check_job(cfg: Any) -> None:
    """A training job's top-level keys, its ``trainer`` and (when enabled) ``eval`` groups."""
    count("seed", cfg.get("seed"), 0)
    tasks = cfg.get("train_tasks")
    if tasks is not None and (isinstance(tasks, str) or not isinstance(tasks, Sequence)
                              or not tasks or not all(isinstance(t, str) for t in tasks)):
        raise ConfigError(f"train_tasks={tasks!r}: expected null or a non-empty list of task names")
    if cfg.get("trainer") is None:
        raise ConfigError("trainer: no trainer settings (set trainer=default)")
    check_trainer(cfg.trainer)
    if cfg.get("eval") is not None and cfg.eval.get("enabled", True):
        check_eval(cfg.eval)


def check_trainer(cfg: Any) -> None:
    """The ``trainer`` group (experiments/conf/trainer/default.yaml); raises ConfigError."""
    if not isinstance(cfg.get("output_dir"), str) or not cfg.get("output_dir"):
        raise ConfigError(f"trainer.output_dir={cfg.get('output_dir')!r}: expected a folder path")
    stages = cfg.get("stages")
    if stages is not None and (isinstance(stages, str) or not isinstance(stages, Sequence)
                               or not stages or not all(isinstance(s, str) for s in stages)):
        raise ConfigError(f"trainer.stages={stages!r}: expected null or a non-empty list of "
                          "stage names")
    steps = cfg.get("max_steps")
    if isinstance(steps, Mapping):
        for stage, value in steps.items():
            count(f"trainer.max_steps.{stage}", value, 1)
    else:
        count("trainer.max_steps", steps, 1, nullable=True,
              meaning=" (optimiser steps per stage; null = the stage's epochs; to skip a stage "
                      "leave it out of trainer.stages)")
    count("trainer.batch_size", cfg.get("batch_size"), 1, nullable=True,
          meaning=" (null = the stage's default)")
    count("trainer.grad_accum", cfg.get("grad_accum"), 1)
    if cfg.get("mixed_precision") is not None:  # null: the launcher's setting (docs/scale.md)
        choice("trainer.mixed_precision", cfg.get("mixed_precision"), MIXED_PRECISION)
    count("trainer.num_workers", cfg.get("num_workers"), 0)
    count("trainer.log_every", cfg.get("log_every"), 1)
    count("trainer.save_every", cfg.get("save_every"), 0,
          meaning=" (0 = a checkpoint at the end of each stage only)")
    number("trainer.max_grad_norm", cfg.get("max_grad_norm"), 0, nullable=True,
           meaning=" (null or 0 = no clipping)")
    flag("trainer.validate", cfg.get("validate"))
    count("trainer.val_batches", cfg.get("val_batches"), 1,
          meaning=" (to skip validation set trainer.validate=false)")
    resume = cfg.get("resume")
    if not isinstance(resume, (bool, str)) or (isinstance(resume, str) and not resume.strip()):
        raise ConfigError(f"trainer.resume={resume!r}: expected false, true (the newest unfinished "
                          "run under trainer.output_dir), a run id or a run folder")


def check_eval(cfg: Any) -> None:
    """The ``eval`` group (experiments/conf/eval/default.yaml); raises ConfigError."""
    flag("eval.enabled", cfg.get("enabled", True))
    tasks = cfg.get("tasks")
    if tasks is not None and (isinstance(tasks, str) or not isinstance(tasks, Sequence)
                              or not all(isinstance(t, str) for t in tasks)):
        raise ConfigError(f"eval.tasks={tasks!r}: expected null or a list of task names "
                          "(see `zoo list task`)")
    choice("eval.split", cfg.get("split", "test"), SPLITS)
    count("eval.max_items", cfg.get("max_items"), 1, nullable=True,
          meaning=" (per task; null = every item)")
    count("eval.batch_size", cfg.get("batch_size", 8), 1)
    count("eval.baseline_items", cfg.get("baseline_items", 256), 1)
    count("eval.bertscore_layers", cfg.get("bertscore_layers"), 1, nullable=True,
          meaning=" (null = bert-score's default layer for the model)")
    tokens = cfg.get("max_new_tokens") or {}
    if not isinstance(tokens, Mapping):
        raise ConfigError(f"eval.max_new_tokens={tokens!r}: expected a mapping {{task: tokens}}")
    for task, value in tokens.items():
        count(f"eval.max_new_tokens.{task}", value, 1)
    flag("eval.cost", cfg.get("cost", True))
    judge = cfg.get("judge")
    if judge is not None:
        if not isinstance(judge, Mapping):
            raise ConfigError(f"eval.judge={judge!r}: expected null or {{url: ..., model: ..., "
                              "timeout: ..., retries: ...}")
        from zoo.evaluation.runner import make_judge

        make_judge(judge)  # checks the keys and values; contacts nobody
