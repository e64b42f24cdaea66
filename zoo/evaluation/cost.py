"""Measured cost of a model (docs/design.md section 10): FLOPs of one training forward on one sample,
counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies and convolutions;
elementwise operations are not counted)."""

from __future__ import annotations

from typing import Any

import torch

from zoo.types import eval_mode


def flops_per_sample(model: Any, sample: dict[str, Any]) -> int:
    """FLOPs of ``model(model.collate([sample]))`` (forward only, no gradients)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        try:
            batch = model.collate([sample])
            # no parameter may require grad while counting: FlopCounterMode's module tracker
            # hooks autograd on inputs that do, and a grad-less view of a parameter (expanded
            # queries, latents) passed into a submodule makes those hooks fail
            for p in params:
                p.requires_grad_(False)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(batch)
        finally:
            for p in params:
                p.requires_grad_(True)
    return int(counter.get_total_flops())


def visual_tokens(model: Any) -> int | None:
    """Image tokens the model feeds its LM (``num_image_tokens``), when it has that notion."""
    value = getattr(model, "num_image_tokens", None)
    return int(value) if value is not None else None
