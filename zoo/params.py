"""Parameter counting, overall and per contract component."""

from __future__ import annotations

from typing import Callable

from torch import nn

from zoo.types import ZooModel


def count(module: nn.Module, trainable_numel: Callable[[nn.Parameter], int] | None = None
          ) -> dict[str, int]:
    """Total and trainable parameter counts of a module (shared parameters counted once);
    ``trainable_numel(param)`` (default: all entries of a parameter that requires grad) counts
    the trainable entries of one parameter."""
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        if trainable_numel is not None:
            trainable += trainable_numel(p)
        else:
            trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


def parameter_report(model: ZooModel) -> dict:
    """``{"total", "trainable", "components": {name: {"total", "trainable"}}}``; trainable counts
    follow ``model.trainable_numel`` (e.g. only the new token rows of LaMed's ``align``)."""
    report = count(model, model.trainable_numel)
    report["components"] = {name: count(part, model.trainable_numel)
                            for name, part in model.components().items()}
    return report
