"""Linear connector over all visual tokens (M3D's plain linear variant; LLaVA-1's projector).

``(B, N, C_in) -> (B, N, C_out)``; the token count and grid are unchanged.
"""

from __future__ import annotations

from connectors.mlp import TokenMLP
from zoo.registry import CONNECTORS


@CONNECTORS.register
def linear(*, in_dim: int, out_dim: int) -> TokenMLP:
    """One Linear(in, out) applied to every token (no pooling, no activation)."""
    return TokenMLP(in_dim, out_dim, depth=1)
