"""The generic training loop over a ``ZooModel``, on Hugging Face Accelerate (docs/design.md section 7).

Stages run in order; each freezes the model to its trainable set, builds its optimiser (AdamW) and
cosine schedule with warmup, and trains for ``trainer.max_steps`` optimiser steps or the stage's
epochs. Single process, DDP (``accelerate launch``), mixed precision and gradient accumulation all
come from Accelerate. Batches are split across processes (``split_batches=True``), so a run with
two processes sees the same global batches as one process.

Resuming (docs/guarantees.md): checkpoints (see :mod:`zoo.checkpoint`) record the stage, the
optimiser step and the sha256 of their files; with ``trainer.resume`` set the loop reloads the
newest intact one and continues on the same data order (the sampler's permutation depends only on
the seed and the epoch) and the same random stream: mid-stage, Accelerate's ``load_state``
restores weights, optimiser, scheduler and random states; at a stage boundary the finished stage's
weights and random states are loaded and the next stage starts as it would have. Data loaders
draw their worker seeds from their own generator, so creating one never advances the global
stream that feeds dropout. The result equals the uninterrupted run (tests/test_resume.py).

``trainer.compile`` (see :func:`compile_options`) compiles the model's forward in place with
``nn.Module.compile`` before Accelerate wraps it, so parameter names and checkpoints are those of
the eager model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler

from zoo import checkpoint
from zoo.errors import ConfigError, DataError
from zoo.registry import suggest
from zoo.settings import check_trainer
from zoo.types import Stage, ZooModel, eval_mode
from zoo.verbosity import get_logger, show_progress

log = get_logger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class EpochPermutation(Sampler[int]):
    """Shuffled indices that depend only on ``(seed, epoch)``: resumable and identical on every
    process."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def check_strategy(acc: Any) -> None:
    """Refuse DeepSpeed ZeRO-3: its hooks re-gather a module's own parameters for backward by
    finding tensors in the module's output, and the zoo's components return ``VisualTokens`` /
    ``StepOutput`` dataclasses, which it cannot see into; on the tiny LaMed the backward then
    fails on a partitioned parameter (docs/scale.md). ZeRO-2 and FSDP (full sharding) work."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if acc.distributed_type == "DEEPSPEED" and plugin is not None and plugin.zero_stage == 3:
        raise ConfigError("DeepSpeed ZeRO-3 is not supported: its backward hooks need module "
                          "outputs made of tensors, and the zoo's components return dataclasses "
                          "(VisualTokens, StepOutput); use the fsdp config (full sharding, the "
                          "same memory per GPU) or deepspeed_zero2 (docs/scale.md)")


def sharded(acc: Any) -> bool:
    """Whether ``acc`` shards model and optimiser states over its processes (FSDP, DeepSpeed)."""
    return acc.distributed_type in ("FSDP", "DEEPSPEED")


def compile_options(value: Any) -> dict[str, str] | None:
    """``trainer.compile`` as keyword arguments of ``nn.Module.compile``; None = eager.

    ``null``/``false``: eager. ``true`` or a mode name (:data:`COMPILE_MODES`): inductor in that
    mode. A mapping ``{mode: ..., backend: ...}``, both optional: any backend of
    ``torch.compiler.list_backends(exclude_tags=())`` (``aot_eager`` needs no C compiler);
    modes belong to inductor.
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    elif isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"trainer.compile={value!r}: expected null, true, a mode "
                         f"{COMPILE_MODES} or {{mode: ..., backend: ...}}")
    unknown = sorted(set(value) - {"mode", "backend"})
    if unknown:
        raise ConfigError(f"trainer.compile: unknown key(s) {unknown}; allowed: mode, backend")
    mode, backend = value.get("mode"), value.get("backend", "inductor")
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile.mode={mode!r}: expected one of "
                         f"{', '.join(COMPILE_MODES)}.{suggest(str(mode), COMPILE_MODES)}")
    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError(f"trainer.compile.backend={backend!r}: expected one of "
                         f"{', '.join(backends)}.{suggest(str(backend), backends)}")
    if mode is not None and backend != "inductor":
        raise ConfigError(f"trainer.compile.mode={mode!r} needs backend inductor, got {backend!r}")
    return {"backend": backend} if mode is None else {"backend": backend, "mode": mode}


def as_floats(item: tuple[str, list[Any]]) -> tuple[str, list[float]]:
    """A logging window's values (floats, or 0-dim tensors kept on the device) as floats, read back
    in one transfer per key; each is the value ``float()`` gives, so means are unchanged."""
    key, values = item
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(tensors) == len(values) and len({(t.dtype, t.device) for t in tensors}) == 1:
        return key, torch.stack([t.reshape(()) for t in tensors]).tolist()
    return key, [float(v) for v in values]


@dataclass
class StageResult:
    stage: str
    steps: int
    seconds: float
    train_loss: float
    val_loss: float | None = None
    logs: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        val = f", val_loss {self.val_loss:.4f}" if self.val_loss is not None else ""
        return (f"stage {self.stage}: {self.steps} steps in {self.seconds:.1f} s, "
                f"train_loss {self.train_loss:.4f}{val}")


class Trainer:
    """Runs a model's stages on a data source; logs to an optional :class:`zoo.tracking.Run`."""

    def __init__(self, model: ZooModel, data: Any, cfg: DictConfig, seed: int = 0,
                 run: Any | None = None, on_log: Callable[[str, int, dict], None] | None = None,
                 folder: str | Path | None = None):
        """``folder``: where this run's checkpoints go (``<folder>/checkpoints``); default
        ``trainer.output_dir`` (``zoo train`` passes the run's own folder, zoo/runs.py)."""
        check_trainer(cfg)
        self.model, self.data, self.cfg, self.seed, self.run = model, data, cfg, seed, run
        self.on_log = on_log
        self.root = Path(folder if folder is not None else cfg.output_dir) / "checkpoints"
        self.compile = compile_options(cfg.get("compile"))
        self.sharded = False  # set per stage: FSDP / DeepSpeed shard the model (see sharded())

    # ---------------------------------------------------------------- stage plumbing
    def _accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

        mixed = self.cfg.get("mixed_precision")
        return Accelerator(
            gradient_accumulation_steps=int(self.cfg.grad_accum),
            # null: the launcher's setting (accelerate config / --mixed_precision), else "no"
            mixed_precision=None if mixed is None else str(mixed),
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )

    def _loader(self, stage: Stage, split: str, shuffle: bool) -> DataLoader:
        dataset = self.data.dataset(split, tasks=list(stage.tasks) or None)
        if len(dataset) == 0:
            raise DataError(f"stage {stage.name!r}: the {split} split has no samples of tasks "
                            f"{list(stage.tasks) or 'any'}")
        batch_size = int(self.cfg.batch_size or stage.batch_size)
        if shuffle and len(dataset) < batch_size:
            raise DataError(f"stage {stage.name!r}: the {split} split has {len(dataset)} samples, "
                            f"fewer than one batch of {batch_size} (set trainer.batch_size)")
        # worker seeds come from the loader's own generator, not the global stream (resume)
        return DataLoader(dataset, batch_size=batch_size, drop_last=shuffle,
                          sampler=EpochPermutation(len(dataset), self.seed) if shuffle else None,
                          collate_fn=self.model.collate, num_workers=int(self.cfg.num_workers),
                          generator=torch.Generator().manual_seed(self.seed))

    def _total_steps(self, stage: Stage, loader: DataLoader) -> tuple[int, int]:
        """(optimiser steps of ``stage``, steps per epoch). ``trainer.max_steps``: one number for
        every stage, or a mapping ``{stage name: steps}``; unset = the stage's epochs."""
        per_epoch = max(1, len(loader) // int(self.cfg.grad_accum))
        steps = self.cfg.max_steps
        if isinstance(steps, Mapping):
            if stage.name not in steps:
                raise ConfigError(f"trainer.max_steps={dict(steps)} names no step count for stage "
                                  f"{stage.name!r} (stages: {list(self.model.stages)})")
            steps = steps[stage.name]
        total = steps or math.ceil(stage.epochs * per_epoch)
        return int(total), per_epoch

    # ---------------------------------------------------------------- the loop
    def fit(self) -> list[StageResult]:
        self.stages = stages = list(self.cfg.stages or self.model.stages)
        unknown = [s for s in stages if s not in self.model.stages]
        if unknown:
            raise ConfigError(f"trainer.stages: unknown stage(s) {unknown}; the recipe has "
                              f"{list(self.model.stages)}")
        resume = self._resume_point(stages) if self.cfg.resume else None
        done: list[str] = list(resume[1]["done_stages"]) if resume else []
        if resume and resume[1]["stage"] in done:
            # a finished stage: its weights and random states; the next stage starts fresh
            checkpoint.load_weights(self.model, resume[0] / checkpoint.WEIGHTS_FILE)
            from accelerate import PartialState

            checkpoint.restore_rng(resume[0], PartialState().process_index)
        if self.compile is not None:
            self.model.compile(**self.compile)  # in place: state-dict keys stay the eager ones
        results = []
        for index, name in enumerate(stages):
            if name in done:
                continue
            mid_stage = resume if resume and resume[1]["stage"] == name else None
            results.append(self._fit_stage(self.model.stages[name], index, done, mid_stage))
            done.append(name)
        return results

    def _resume_point(self, stages: list[str]) -> tuple[Path, dict]:
        """The newest intact checkpoint of this run; ConfigError when there is nothing to resume."""
        found = checkpoint.latest(self.root)
        if found is None:
            raise ConfigError(f"trainer.resume={self.cfg.resume}: nothing to resume, {self.root} "
                              "holds no checkpoint (start the run without trainer.resume)")
        if found[1]["stages"] != stages:
            raise ConfigError(f"trainer.resume: checkpoint {found[0]} belongs to a run of stages "
                              f"{found[1]['stages']}, this one trains {stages}")
        if all(s in found[1]["done_stages"] for s in stages):
            raise ConfigError(f"trainer.resume={self.cfg.resume}: nothing to resume, the run in "
                              f"{self.root.parent} finished every stage ({found[0].name})")
        return found

    def _fit_stage(self, stage: Stage, index: int, done: list[str],
                   resume: tuple[Path, dict] | None) -> StageResult:
        from tqdm.auto import tqdm
        from transformers import get_cosine_schedule_with_warmup

        self.model.apply_stage(stage)
        loader = self._loader(stage, "train", shuffle=True)
        total, per_epoch = self._total_steps(stage, loader)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(stage.warmup_ratio * total), total)
        acc = self._accelerator()
        check_strategy(acc)
        if acc.distributed_type == "DEEPSPEED":  # DeepSpeed clips in its engine
            acc.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] = \
                float(self.cfg.max_grad_norm or 0.0)
        model, optimizer, loader, scheduler = acc.prepare(self.model, optimizer, loader, scheduler)
        self.sharded = sharded(acc)
        # the prepared model's parameters: FSDP2 has replaced the originals by sharded DTensors
        params = [p for p in model.parameters() if p.requires_grad]
        step = 0
        if resume is not None:
            if int(resume[1]["total"]) != total:
                raise ConfigError(f"trainer.resume: checkpoint {resume[0]} was written for "
                                  f"{resume[1]['total']} steps of stage {stage.name!r}, this run "
                                  f"has {total} (trainer.max_steps, batch size or data changed)")
            acc.load_state(str(resume[0]))  # weights, optimiser, scheduler, random states
            step = int(resume[1]["step"])

        def save(tag: str, finished: bool) -> None:
            name = f"{stage.name}-{tag}"
            state = {"stage": stage.name, "step": step, "total": total,
                     "position": [index, step, int(finished)], "stages": self.stages,
                     "done_stages": done + ([stage.name] if finished else [])}
            folder = checkpoint.save(self.root, name, lambda d: self._write_state(acc, model, d),
                                     state,
                                     is_main=acc.is_main_process, barrier=acc.wait_for_everyone)
            if acc.is_main_process and self.run is not None:
                digest = checkpoint.read_state(folder)["sha256"][checkpoint.WEIGHTS_FILE]
                self.run.set_tags({f"zoo.checkpoint.{name}.sha256": digest})

        bar = tqdm(total=total, initial=step, desc=f"stage {stage.name}",
                   disable=not (acc.is_local_main_process and show_progress()), dynamic_ncols=True)
        # per-step values stay on the device (no host sync per step); read back at log time
        window: dict[str, list[Any]] = {}
        losses: list[float] = []
        start = time.perf_counter()
        window_start, samples, tokens = start, 0, 0
        every, save_every = int(self.cfg.log_every), int(self.cfg.save_every)
        model.train()
        optimizer.zero_grad(set_to_none=True)  # gradients the model came with are not this stage's
        while step < total:
            loader.set_epoch(step // per_epoch)
            skip = (step % per_epoch) * int(self.cfg.grad_accum)
            batches = acc.skip_first_batches(loader, skip) if skip else loader
            for batch in batches:
                with acc.accumulate(model):
                    out = model(batch)
                    acc.backward(out.loss)
                    if acc.sync_gradients and self.cfg.max_grad_norm:
                        acc.clip_grad_norm_(params, float(self.cfg.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                samples += int(batch["image"].shape[0]) * acc.num_processes
                if "attention_mask" in batch:
                    tokens = tokens + batch["attention_mask"].sum()
                window.setdefault("loss", []).append(out.loss.detach())
                for key, value in out.logs.items():
                    window.setdefault(key, []).append(value)
                if not acc.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                if step % every == 0 or step == total:
                    now = time.perf_counter()
                    logs = {k: sum(v) / len(v) for k, v in map(as_floats, window.items())}
                    tokens = int(tokens) * acc.num_processes
                    logs.update(lr=scheduler.get_last_lr()[0],
                                samples_per_s=samples / max(now - window_start, 1e-9),
                                peak_memory_mb=peak_memory_mb(acc.device))
                    if tokens:
                        logs["tokens_per_s"] = tokens / max(now - window_start, 1e-9)
                    losses.append(logs["loss"])
                    bar.set_postfix(loss=f"{logs['loss']:.4f}")
                    self._log(stage.name, step, logs, acc.is_main_process)
                    window, window_start, samples, tokens = {}, now, 0, 0
                if save_every and step % save_every == 0 and step < total:
                    save(f"step{step}", finished=False)
                if step >= total:
                    break
        bar.close()
        seconds = time.perf_counter() - start
        save("final", finished=True)
        val_loss = self.validate(acc, model, stage) if self.cfg.validate else None
        result = StageResult(stage.name, step, seconds, losses[-1] if losses else float("nan"),
                             val_loss)
        if val_loss is not None:
            self._log(stage.name, step, {"val_loss": val_loss}, acc.is_main_process)
        if acc.is_main_process:
            log.info(result.summary())
        self.model = acc.unwrap_model(model)
        acc.free_memory()
        return result

    @staticmethod
    def _write_state(acc: Any, model: Any, folder: Path) -> None:
        """Accelerate's ``save_state`` (sharded model and optimiser states under FSDP and
        DeepSpeed, which ``trainer.resume`` reloads); for those, also the full weights gathered
        into one ``model.safetensors`` with the unwrapped model's keys, as a single process
        writes it, for ``zoo eval`` and for resuming at a stage boundary (docs/scale.md)."""
        acc.save_state(str(folder))
        if sharded(acc):
            from accelerate.utils import save

            state = acc.get_state_dict(model)  # collective; the full state on the main process
            save(state, folder / checkpoint.WEIGHTS_FILE, safe_serialization=True)  # main only

    @torch.no_grad()
    def validate(self, acc: Any, model: Any, stage: Stage) -> float | None:
        """Mean loss over (at most ``trainer.val_batches``) validation batches of the stage's mix."""
        try:
            loader = acc.prepare(self._loader(stage, "validation", shuffle=False))
        except DataError:  # no validation samples of the stage's tasks
            return None
        total, count = 0.0, 0
        with eval_mode(model):
            for i, batch in enumerate(loader):
                if i >= int(self.cfg.val_batches):
                    break
                total += float(acc.gather_for_metrics(model(batch).loss.detach().reshape(1)).mean())
                count += 1
        return total / count if count else None

    def _log(self, stage: str, step: int, logs: dict[str, float], is_main: bool) -> None:
        if not is_main:
            return
        if self.run is not None:
            self.run.log_metrics({f"{stage}/{k}": v for k, v in logs.items()}, step=step)
        if self.on_log is not None:
            self.on_log(stage, step, logs)
