"""3D spatial pooling connector (M3D-LaMed's "spatial pooling perceiver"; Bai et al. 2024).

Tokens ``(B, d*h*w, C_in)`` are put back on their grid, average-pooled with a 3D kernel (stride =
kernel) and projected by an MLP to the LLM width: ``(B, ceil(d/kd)*ceil(h/kh)*ceil(w/kw), C_out)``.
With M3D's grid 8 x 16 x 16 and kernel 2, 2048 tokens become 256. No attention is involved.

Any grid fits (docs/native3d.md): where a side is not a multiple of the kernel, the last window
along it averages the tokens that remain, and a kernel longer than a side is cut to that side.
So a slice tower's 32 x 7 x 7 grid with kernel 2 gives 16 x 4 x 4, and a 3D CNN's 1 x 8 x 8
bottleneck gives 1 x 4 x 4; grids that divide pool exactly as M3D's.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from connectors.grid_reducer import GridReducer
from zoo.checks import triple
from zoo.registry import CONNECTORS
from zoo.types import Grid


class SpatialPool(GridReducer):
    """``avg_pool3d(kernel, stride=kernel, ceil_mode=True)`` over the token grid (the kernel cut
    to the grid where longer), then :func:`connectors._common.projector`."""

    name = "spatial_pool"

    def __init__(self, in_dim: int, out_dim: int, kernel: int | Sequence[int] = 2,
                 depth: int = 2, layer_type: str = "mlp") -> None:
        super().__init__(in_dim, out_dim, depth, layer_type)
        self.kernel = triple(kernel, "kernel")

    def window(self, grid: Grid) -> tuple[int, int, int]:
        return tuple(min(k, g) for k, g in zip(self.kernel, grid))  # type: ignore[return-value]

    def reduced_grid(self, grid: Grid) -> Grid:
        return tuple(-(-g // k) for g, k in zip(grid, self.window(grid)))  # type: ignore[return-value]

    def reduce(self, x: Tensor) -> Tensor:
        window = self.window(tuple(x.shape[2:]))  # type: ignore[arg-type]
        return F.avg_pool3d(x, kernel_size=window, stride=window, ceil_mode=True)


@CONNECTORS.register
def spatial_pool(*, in_dim: int, out_dim: int, kernel: int | Sequence[int] = 2,
                 depth: int = 2, layer_type: str = "mlp") -> SpatialPool:
    """M3D's connector: 3D average pool (kernel 2: 2048 -> 256 tokens), then Linear(in, out), GELU,
    Linear(out, out) for ``depth=2`` (768 -> 4096: 19,931,136 parameters); ``layer_type="linear"``
    drops the GELU (M3D's ``proj_layer_type``)."""
    return SpatialPool(in_dim, out_dim, kernel=kernel, depth=depth, layer_type=layer_type)
