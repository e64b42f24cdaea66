"""Parameter counting, overall and per contract component."""

from __future__ import annotations

from torch import nn

from zoo.types import ZooModel


def count(module: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts of a module (shared parameters counted once)."""
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


def parameter_report(model: ZooModel) -> dict:
    """``{"total", "trainable", "components": {name: {"total", "trainable"}}}``."""
    report = count(model)
    report["components"] = {name: count(part) for name, part in model.components().items()}
    return report
