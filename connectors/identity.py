"""Identity connector: visual tokens pass unchanged (when the encoder already has the LLM width)."""

from __future__ import annotations

from torch import nn

from connectors._common import check_input
from zoo.checks import positive_int
from zoo.errors import ConfigError
from zoo.registry import CONNECTORS
from zoo.types import Grid, VisualTokens


class IdentityConnector(nn.Module):
    """``(B, N, C) -> (B, N, C)`` unchanged; ``in_dim`` must equal ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        positive_int("in_dim", in_dim), positive_int("out_dim", out_dim)
        if in_dim != out_dim:
            raise ConfigError(f"connector 'identity' needs in_dim == out_dim, got in_dim={in_dim} "
                              f"(encoder width) and out_dim={out_dim} (LLM width); use linear, mlp "
                              "or spatial_pool to change the width")
        self.in_dim = self.out_dim = in_dim

    def num_out_tokens(self, num_tokens: int, grid: Grid | None = None) -> int:
        return num_tokens

    def forward(self, visual: VisualTokens) -> VisualTokens:
        check_input(visual, self.in_dim, "identity")
        return visual


@CONNECTORS.register
def identity(*, in_dim: int, out_dim: int) -> IdentityConnector:
    """No-op connector; raises unless the encoder width equals the LLM width."""
    return IdentityConnector(in_dim, out_dim)
