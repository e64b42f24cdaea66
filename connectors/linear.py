"""Linear connector over all visual tokens (M3D's plain linear variants; LLaVA-1's projector).

``(B, N, C_in) -> (B, N, C_out)``; the token count and grid are unchanged.
"""

from __future__ import annotations

from connectors.mlp import TokenMLP
from zoo.registry import CONNECTORS


@CONNECTORS.register
def linear(*, in_dim: int, out_dim: int, depth: int = 1) -> TokenMLP:
    """Linear(in, out), then ``depth - 1`` times Linear(out, out), on every token; no pooling and
    no activation (M3D's ``linear`` layer type: ``depth=2`` is Linear, Linear)."""
    return TokenMLP(in_dim, out_dim, depth=depth, layer_type="linear")
