"""MLP connector over all visual tokens (LLaVA-1.5's ``mlp2x_gelu`` projector; M3D's variants).

``(B, N, C_in) -> (B, N, C_out)``; the token count and grid are unchanged.
"""

from __future__ import annotations

from torch import nn

from connectors._common import check_input, projector
from zoo.registry import CONNECTORS
from zoo.types import Grid, VisualTokens


class TokenMLP(nn.Module):
    """:func:`connectors._common.projector` applied to every token."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, layer_type: str = "mlp") -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.projector = projector(in_dim, out_dim, depth, layer_type)

    def num_out_tokens(self, num_tokens: int, grid: Grid | None = None) -> int:
        return num_tokens

    def forward(self, visual: VisualTokens) -> VisualTokens:
        check_input(visual, self.in_dim, type(self).__name__)
        return visual.replace(tokens=self.projector(visual.tokens))


@CONNECTORS.register
def mlp(*, in_dim: int, out_dim: int, depth: int = 2) -> TokenMLP:
    """All tokens through Linear(in, out), then ``depth - 1`` times GELU, Linear(out, out)."""
    return TokenMLP(in_dim, out_dim, depth=depth)
