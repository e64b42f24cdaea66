"""Shared pieces of the connectors: input checks and the MLP projector."""

from __future__ import annotations

from torch import nn

from zoo.checks import positive_int
from zoo.errors import ConfigError
from zoo.types import Grid, VisualTokens


# M3D's ``proj_layer_type`` values (docs/native3d.md "Connectors"): "mlp" puts GELU between the
# Linears, "linear" stacks them without an activation.
LAYER_TYPES = ("mlp", "linear")


def projector(in_dim: int, out_dim: int, depth: int, layer_type: str = "mlp") -> nn.Sequential:
    """M3D's projector: ``Linear(in, out)`` then ``depth - 1`` times ``Linear(out, out)``, with a
    GELU before each of those for ``layer_type="mlp"`` and nothing for ``"linear"``.

    ``depth=2`` gives ``Linear, GELU, Linear`` (indices 0, 2; LLaVA-1.5's ``mlp2x_gelu``) or
    ``Linear, Linear`` (indices 0, 1); the Sequential's indices are M3D's state-dict keys.
    """
    positive_int("in_dim", in_dim), positive_int("out_dim", out_dim), positive_int("depth", depth)
    if layer_type not in LAYER_TYPES:
        from zoo.registry import suggest

        raise ConfigError(f"layer_type={layer_type!r} is not one of {LAYER_TYPES}."
                          f"{suggest(str(layer_type), LAYER_TYPES)}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += ([nn.GELU()] if layer_type == "mlp" else []) + [nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def check_input(visual: VisualTokens, in_dim: int, name: str) -> None:
    if visual.dim != in_dim:
        raise ValueError(f"connector {name!r} expects {in_dim}-dim tokens (in_dim), got "
                         f"{visual.dim} (tokens {tuple(visual.tokens.shape)})")


def require_grid(name: str, num_tokens: int, grid: Grid | None) -> Grid:
    """The grid, or a clear error for gridless tokens (bridges, perceivers) and wrong counts."""
    if grid is None:
        raise ConfigError(f"connector {name!r} pools over the 3D token grid, but the visual tokens "
                          "have none (a bridge or perceiver upstream?); use sequence_pool, mlp, "
                          "linear or perceiver instead")
    if grid[0] * grid[1] * grid[2] != num_tokens:
        raise ConfigError(f"connector {name!r}: grid {tuple(grid)} does not match {num_tokens} "
                          "tokens")
    return tuple(grid)  # type: ignore[return-value]
