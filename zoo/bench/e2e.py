"""End-to-end cost: seconds per optimiser step of a composed recipe (build -> collate -> forward ->
backward -> AdamW step), per stage, with the recipe's own stages and data mix.

The step is the Trainer's inner loop without Accelerate, logging or checkpoints, so the number is
the model's cost, not the bookkeeping's. Batches come from the configured data source (the
synthetic benchmark by default), collated by the model.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from zoo.errors import ConfigError

# Recipe configurations timed by default: tiny (the test components) and small (mid-size encoder).
E2E_CONFIGS: dict[str, list[str]] = {
    "lamed/tiny": ["recipe=lamed", "data=test_synth"],
    "lamed/small": ["recipe=lamed", "data=test_synth", "encoder=vit3d",
                    "encoder.img_size=[32,64,64]", "encoder.hidden_size=384", "encoder.depth=6",
                    "encoder.num_heads=6", "encoder.mlp_dim=1536"],
    "tghmoe/tiny": ["recipe=tghmoe", "encoder=test_tghmoe", "data=test_synth"],
    "tghmoe/small": ["recipe=tghmoe", "data=test_synth", "encoder=tghmoe",
                     "encoder.backbone=timm:vit_small_patch16_224", "~encoder.backbone_kwargs",
                     "encoder.slice_size=64"],
}


def train_step_seconds(overrides: Sequence[str], steps: int = 3, batch_size: int = 2,
                       stage: str | None = None) -> dict[str, Any]:
    """Median seconds per training step (after one warm-up step) of the first (or named) stage;
    ``cpu_seconds``: the median CPU time of the process per step (all threads), which a shared
    machine inflates less than wall time."""
    from zoo.build import build_model
    from zoo.config import compose
    from zoo.jobs import build_data

    cfg = compose(list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg)
    data = build_data(cfg)
    name = stage or next(iter(model.stages))
    chosen = model.stages[name]
    model.apply_stage(chosen)
    dataset = data.dataset("train", tasks=list(chosen.tasks) or None)
    if len(dataset) < batch_size:
        raise ConfigError(f"{' '.join(overrides)}: {len(dataset)} training samples for stage "
                          f"{name!r}, fewer than batch_size={batch_size}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    times, cpu_times = [], []
    for i in range(steps + 1):
        batch = model.collate([dataset[(i * batch_size + j) % len(dataset)]
                               for j in range(batch_size)])
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step is the warm-up
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {"stage": name, "seconds": statistics.median(times),
            "cpu_seconds": statistics.median(cpu_times), "batch_size": batch_size,
            "trainable": sum(p.numel() for p in params),
            "total": sum(p.numel() for p in model.parameters())}


def sweep_wall_seconds(overrides: Sequence[str] = (), command: Sequence[str] | None = None,
                       log: Any = print) -> float:
    """Wall seconds of ``zoo sweep`` (the default experiment unless ``overrides`` say otherwise),
    run as a child process with its output passed through; raises if the sweep fails."""
    import subprocess
    import sys

    argv = list(command or [sys.executable, "-m", "zoo", "sweep"]) + list(overrides)
    log(f"timing: {' '.join(argv)}")
    start = time.perf_counter()
    done = subprocess.run(argv, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"`{' '.join(argv)}` exited with {done.returncode} after {seconds:.0f} s")
    return seconds
