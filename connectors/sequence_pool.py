"""1D sequence pooling connector (the "sequence" pooling variant in M3D-LaMed's code).

The flat token list ``(B, N, C_in)`` is average-pooled with a 1D kernel ``k`` (stride ``k``), which
ignores 3D adjacency, then projected by an MLP: ``(B, N/k, C_out)``. M3D's 2048 tokens with
``k = 8`` also give 256 tokens.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from connectors._common import check_input, projector
from zoo.checks import positive_int
from zoo.errors import ConfigError
from zoo.registry import CONNECTORS
from zoo.types import Grid, VisualTokens


class SequencePool(nn.Module):
    """``avg_pool1d(kernel, stride=kernel)`` over the token order, then :func:`projector`.

    The output keeps a grid ``(d, h, w/k)`` only when ``k`` divides ``w`` (then every pooled token
    covers ``k`` neighbours along W); otherwise its grid is None.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int = 8, depth: int = 2, layer_type: str = "mlp") -> None:
        super().__init__()
        self.kernel = positive_int("kernel", kernel)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.projector = projector(in_dim, out_dim, depth, layer_type)

    def num_out_tokens(self, num_tokens: int, grid: Grid | None = None) -> int:
        if num_tokens % self.kernel:
            raise ConfigError(f"connector 'sequence_pool': {num_tokens} tokens are not divisible by "
                              f"kernel {self.kernel}")
        return num_tokens // self.kernel

    def out_grid(self, grid: Grid | None) -> Grid | None:
        if grid is None or grid[2] % self.kernel:
            return None
        return (grid[0], grid[1], grid[2] // self.kernel)

    def forward(self, visual: VisualTokens) -> VisualTokens:
        check_input(visual, self.in_dim, "sequence_pool")
        self.num_out_tokens(visual.tokens.shape[1])
        x = F.avg_pool1d(visual.tokens.transpose(1, 2), self.kernel, self.kernel)
        x = self.projector(x.transpose(1, 2))
        return visual.replace(tokens=x, grid=self.out_grid(visual.grid))


@CONNECTORS.register
def sequence_pool(*, in_dim: int, out_dim: int, kernel: int = 8, depth: int = 2,
                  layer_type: str = "mlp") -> SequencePool:
    """M3D's 1D variant: average pool the flat token list by ``kernel`` (2048 -> 256 at 8), then
    the same projector as :func:`connectors.spatial_pool.spatial_pool`."""
    return SequencePool(in_dim, out_dim, kernel=kernel, depth=depth, layer_type=layer_type)
