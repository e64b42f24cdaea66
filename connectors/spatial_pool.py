"""3D spatial pooling connector (M3D-LaMed's "spatial pooling perceiver"; Bai et al. 2024).

Tokens ``(B, d*h*w, C_in)`` are put back on their grid, average-pooled with a 3D kernel (stride =
kernel) and projected by an MLP to the LLM width: ``(B, (d/kd)*(h/kh)*(w/kw), C_out)``. With M3D's
grid 8 x 16 x 16 and kernel 2, 2048 tokens become 256. No attention is involved.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import nn

from connectors._common import check_input, kernel3, projector, require_grid
from zoo.registry import CONNECTORS
from zoo.types import Grid, VisualTokens


class SpatialPool(nn.Module):
    """``avg_pool3d(kernel, stride=kernel)`` over the token grid, then :func:`projector`."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int | Sequence[int] = 2,
                 depth: int = 2, layer_type: str = "mlp") -> None:
        super().__init__()
        self.kernel = kernel3(kernel)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.projector = projector(in_dim, out_dim, depth, layer_type)

    def out_grid(self, num_tokens: int, grid: Grid | None) -> Grid:
        grid = require_grid("spatial_pool", num_tokens, grid)
        if any(g % k for g, k in zip(grid, self.kernel)):
            raise ValueError(f"connector 'spatial_pool': grid {grid} is not divisible by kernel "
                             f"{self.kernel}")
        return tuple(g // k for g, k in zip(grid, self.kernel))  # type: ignore[return-value]

    def num_out_tokens(self, num_tokens: int, grid: Grid | None = None) -> int:
        d, h, w = self.out_grid(num_tokens, grid)
        return d * h * w

    def forward(self, visual: VisualTokens) -> VisualTokens:
        check_input(visual, self.in_dim, "spatial_pool")
        x = visual.tokens
        out_grid = self.out_grid(x.shape[1], visual.grid)
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *visual.grid)
        x = F.avg_pool3d(x, kernel_size=self.kernel, stride=self.kernel)
        x = self.projector(x.flatten(2).transpose(1, 2))
        return visual.replace(tokens=x, grid=out_grid)


@CONNECTORS.register
def spatial_pool(*, in_dim: int, out_dim: int, kernel: int | Sequence[int] = 2,
                 depth: int = 2, layer_type: str = "mlp") -> SpatialPool:
    """M3D's connector: 3D average pool (kernel 2: 2048 -> 256 tokens), then Linear(in, out), GELU,
    Linear(out, out) for ``depth=2`` (768 -> 4096: 19,931,136 parameters); ``layer_type="linear"``
    drops the GELU (M3D's ``proj_layer_type``)."""
    return SpatialPool(in_dim, out_dim, kernel=kernel, depth=depth, layer_type=layer_type)
