"""Base of the connectors that reduce the 3D token grid, then project to the LLM width.

Tokens ``(B, d*h*w, C_in)`` are put back on their grid ``(B, C_in, d, h, w)``, reduced to a smaller
grid by the subclass, flattened and projected by :func:`connectors._common.projector`:
``(B, d'*h'*w', C_out)`` with grid ``(d', h', w')``. The output grid, hence the token count, is
known before any forward (the Connector contract in ``zoo/types.py``). A new reducer defines
``name``, :meth:`GridReducer.reduced_grid` and :meth:`GridReducer.reduce` and nothing else.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from connectors._common import check_input, projector, require_grid
from zoo.types import Grid, VisualTokens


class GridReducer(nn.Module):
    """Grid in, smaller grid out, then ``projector(in_dim, out_dim, depth, layer_type)``."""

    name = "grid_reducer"  # the registry name, for messages

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, layer_type: str = "mlp") -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.projector = projector(in_dim, out_dim, depth, layer_type)

    def reduced_grid(self, grid: Grid) -> Grid:
        """The ``(d', h', w')`` that :meth:`reduce` makes of ``grid``."""
        raise NotImplementedError

    def reduce(self, x: Tensor) -> Tensor:
        """``(B, C, d, h, w) -> (B, C, d', h', w')``."""
        raise NotImplementedError

    def out_grid(self, num_tokens: int, grid: Grid | None) -> Grid:
        return self.reduced_grid(require_grid(self.name, num_tokens, grid))

    def num_out_tokens(self, num_tokens: int, grid: Grid | None = None) -> int:
        return math.prod(self.out_grid(num_tokens, grid))

    def forward(self, visual: VisualTokens) -> VisualTokens:
        check_input(visual, self.in_dim, self.name)
        b, n, c = visual.tokens.shape
        out_grid = self.out_grid(n, visual.grid)
        x = self.reduce(visual.tokens.transpose(1, 2).reshape(b, c, *visual.grid))
        if tuple(x.shape[2:]) != out_grid:
            raise RuntimeError(f"connector {self.name!r}: reduce() gave grid {tuple(x.shape[2:])}, "
                               f"reduced_grid() promised {out_grid}")
        x = self.projector(x.flatten(2).transpose(1, 2))
        return visual.replace(tokens=x, grid=out_grid)
