"""A gradient mask on rows of a module's weight that holds under sharded training (docs/scale.md).

LaMed's ``align`` stage lets only the new special tokens' rows of the embedding matrices move
(docs/reference.md A). A hook on the ``nn.Parameter`` registered before training would be lost
under FSDP2, which replaces each parameter by a sharded ``DTensor`` and computes with a gathered,
unsharded copy. So the mask is attached through the module instead: a forward pre-hook registers
the gradient hook on whatever tensor the module holds as ``weight`` when it runs (the parameter
itself in one process, under DDP and DeepSpeed; the gathered copy under FSDP2), once per tensor.
The gradient reaching the optimiser is then the masked one in every case.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch
from torch import Tensor, nn


class RowGradientMask:
    """Zero the gradient of every row of ``module.weight`` but ``rows`` (index of dim 0)."""

    def __init__(self, module: nn.Module, rows: Sequence[int]) -> None:
        self.rows = sorted(set(int(r) for r in rows))
        self._hooked: list[tuple[weakref.ref, Any]] = []
        self._pre_hook = module.register_forward_pre_hook(self._attach)

    @torch.compiler.disable  # plain Python bookkeeping; runs eagerly under torch.compile
    def _attach(self, module: nn.Module, args: Any) -> None:
        weight = module.weight
        if not weight.requires_grad or any(ref() is weight for ref, _ in self._hooked):
            return
        self._hooked = [(ref, h) for ref, h in self._hooked if ref() is not None]
        self._hooked.append((weakref.ref(weight), weight.register_hook(self._mask)))

    def _mask(self, grad: Tensor) -> Tensor:
        # built from the gradient, whose rows are the full matrix's also where the weight itself
        # is a partition at hook time (DeepSpeed ZeRO-3)
        keep = torch.zeros(grad.shape[0], 1, dtype=grad.dtype, device=grad.device)
        keep[self.rows] = 1
        return grad * keep

    def remove(self) -> None:
        """Detach the mask: no gradient is masked afterwards."""
        self._pre_hook.remove()
        for _, handle in self._hooked:
            handle.remove()
        self._hooked = []
