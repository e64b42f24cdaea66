"""3D max-pooling connector: the spatial-pooling connector with max instead of mean.

Tokens ``(B, d*h*w, C_in)`` are put back on their grid, max-pooled with a 3D kernel (stride =
kernel, the last window of a side that the kernel does not divide covers what remains, a kernel
longer than a side is cut to it) and projected to the LLM width: ``(B, d'*h'*w', C_out)``. Each
output token keeps the strongest response of its window per channel, where average pooling
(:mod:`connectors.spatial_pool`) dilutes a feature that fills a small part of the window.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from connectors.spatial_pool import SpatialPool
from zoo.registry import CONNECTORS


class MaxPool(SpatialPool):
    """``max_pool3d(kernel, stride=kernel, ceil_mode=True)`` on the grid windows of
    :class:`~connectors.spatial_pool.SpatialPool`, then its projector."""

    name = "max_pool"

    def reduce(self, x: Tensor) -> Tensor:
        window = self.window(tuple(x.shape[2:]))  # type: ignore[arg-type]
        return F.max_pool3d(x, kernel_size=window, stride=window, ceil_mode=True)


@CONNECTORS.register
def max_pool(*, in_dim: int, out_dim: int, kernel: int | Sequence[int] = 2, depth: int = 2,
             layer_type: str = "mlp") -> MaxPool:
    """3D max pooling of the token grid (kernel 2: 8 x 4 x 4 -> 4 x 2 x 2), then the spatial-pool
    connector's projector."""
    return MaxPool(in_dim, out_dim, kernel=kernel, depth=depth, layer_type=layer_type)
