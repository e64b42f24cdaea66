"""Connector specifics; the shared contract of every connector is in test_contracts.py."""

import pytest
import torch

from zoo import CONNECTORS
from zoo.types import Connector, VisualTokens


def tokens(b=2, grid=(8, 4, 4), dim=32) -> VisualTokens:
    n = grid[0] * grid[1] * grid[2]
    return VisualTokens(torch.randn(b, n, dim), grid, {"cls": torch.randn(b, dim)})


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("in_dim,out_dim,params", [(768, 4096, 19_931_136),
                                                   (768, 3072, 11_802_624)])
def test_spatial_pool_parameter_counts(in_dim, out_dim, params):
    with torch.device("meta"):
        conn = CONNECTORS.build("spatial_pool", in_dim=in_dim, out_dim=out_dim)
    assert n_params(conn) == params
    assert conn.num_out_tokens(2048, (8, 16, 16)) == 256


def test_spatial_pool_matches_hand_pooling():
    conn = CONNECTORS.build("spatial_pool", in_dim=4, out_dim=6, kernel=(1, 2, 2), depth=1)
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(1, 32, 4)  # grid 2 x 4 x 4
    out = conn(VisualTokens(x, (2, 4, 4)))
    assert out.grid == (2, 2, 2) and out.tokens.shape == (1, 8, 6)
    vol = x.reshape(2, 4, 4, 4)  # (d, h, w, C)
    first = vol[0, :2, :2].reshape(4, 4).mean(0)  # d=0, h in 0..1, w in 0..1
    torch.testing.assert_close(out.tokens[0, 0], conn.projector(first))
    layers = [type(m).__name__ for m in CONNECTORS.build("spatial_pool", in_dim=4,
                                                         out_dim=6).projector]
    assert layers == ["Linear", "GELU", "Linear"]


def test_sequence_pool_is_flat_and_keeps_grid_only_when_exact():
    conn = CONNECTORS.build("sequence_pool", in_dim=4, out_dim=4, kernel=8, depth=1)
    x = torch.randn(1, 2048, 4)
    with torch.no_grad():
        out = conn(VisualTokens(x, (8, 16, 16)))
    assert out.tokens.shape == (1, 256, 4) and out.grid == (8, 16, 2)
    torch.testing.assert_close(out.tokens[0, 1], conn.projector(x[0, 8:16].mean(0)))
    assert conn.num_out_tokens(2048) == 256
    assert conn(VisualTokens(torch.randn(1, 16, 4), (1, 4, 4))).grid is None
    assert conn(VisualTokens(torch.randn(1, 16, 4), None)).tokens.shape == (1, 2, 4)
    with pytest.raises(ValueError, match="20 tokens are not divisible by kernel 8"):
        conn.num_out_tokens(20)


def test_pooling_refuses_gridless_and_indivisible():
    conn = CONNECTORS.build("spatial_pool", in_dim=32, out_dim=32)
    gridless = VisualTokens(torch.randn(1, 128, 32), None)
    with pytest.raises(ValueError, match="have none"):
        conn(gridless)
    with pytest.raises(ValueError, match="have none"):
        conn.num_out_tokens(128)
    with pytest.raises(ValueError, match=r"grid \(8, 4, 3\) does not match 128 tokens"):
        conn.num_out_tokens(128, (8, 4, 3))
    with pytest.raises(ValueError, match="expects 32-dim tokens"):
        conn(tokens(dim=16))


def test_identity_and_argument_errors():
    with pytest.raises(ValueError, match="in_dim == out_dim.*in_dim=768.*out_dim=4096"):
        CONNECTORS.build("identity", in_dim=768, out_dim=4096)
    visual = tokens()
    assert CONNECTORS.build("identity", in_dim=32, out_dim=32)(visual) is visual
    with pytest.raises(ValueError, match="depth must be a positive int, got 0"):
        CONNECTORS.build("mlp", in_dim=4, out_dim=4, depth=0)
    with pytest.raises(ValueError, match="kernel must be a positive int"):
        CONNECTORS.build("spatial_pool", in_dim=4, out_dim=4, kernel=0)
    assert n_params(CONNECTORS.build("linear", in_dim=768, out_dim=4096)) == 768 * 4096 + 4096


def test_perceiver_any_token_count_and_gradients():
    conn = CONNECTORS.build("test_perceiver", in_dim=32, out_dim=24)
    assert conn.num_out_tokens(999) == 8
    for n in (5, 128):
        out = conn(VisualTokens(torch.randn(2, n, 32, requires_grad=True)))
        assert out.tokens.shape == (2, 8, 24) and out.grid is None
    out.tokens.sum().backward()
    assert conn.latents.grad is not None and conn.latents.grad.abs().sum() > 0
    # outputs depend on the visual tokens, not only on the learned queries
    a = conn(VisualTokens(torch.randn(1, 16, 32))).tokens
    b = conn(VisualTokens(torch.randn(1, 16, 32))).tokens
    assert not torch.allclose(a, b)
    with torch.device("meta"):
        full = CONNECTORS.build("perceiver", in_dim=768, out_dim=4096)
    assert full.num_out_tokens(2048, (8, 16, 16)) == 32 and len(full.layers) == 6


def test_perceiver_runs_under_the_flop_counter():
    """Cost accounting counts FLOPs with module tracking; the latents must not enter a submodule
    as a grad-less view of a parameter (that broke FlopCounterMode's backward hooks)."""
    from torch.utils.flop_counter import FlopCounterMode

    connector = CONNECTORS.build("test_perceiver", in_dim=8, out_dim=8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        connector(VisualTokens(torch.randn(1, 4, 8)))
    assert counter.get_total_flops() > 0


def test_linear_layer_type_stacks_linears_without_activation():
    """M3D's projector builder (spatial_pooling_projector.py): layer_type 'linear' with depth 2 is
    Sequential(Linear(in, out), Linear(out, out)), keys projector.0 and projector.1; 'mlp' puts a
    GELU between (keys projector.0 and projector.2)."""
    from connectors.linear import linear
    from connectors.spatial_pool import spatial_pool

    conn = linear(in_dim=8, out_dim=6, depth=2)
    assert list(conn.state_dict()) == ["projector.0.weight", "projector.0.bias",
                                       "projector.1.weight", "projector.1.bias"]
    x = torch.randn(2, 5, 8)
    out = conn(VisualTokens(x, None)).tokens
    expected = conn.projector[1](conn.projector[0](x))
    torch.testing.assert_close(out, expected)
    pool = spatial_pool(in_dim=8, out_dim=6, depth=2, layer_type="linear")
    assert [type(m).__name__ for m in pool.projector] == ["Linear", "Linear"]
    mlp_pool = spatial_pool(in_dim=8, out_dim=6, depth=2)
    assert [type(m).__name__ for m in mlp_pool.projector] == ["Linear", "GELU", "Linear"]
    with pytest.raises(ValueError, match="layer_type='lienar'.*Did you mean: linear"):
        spatial_pool(in_dim=8, out_dim=6, layer_type="lienar")


@pytest.mark.parametrize("grid,out_grid", [((32, 7, 7), (16, 4, 4)), ((1, 8, 8), (1, 4, 4)),
                                           ((8, 4, 3), (4, 2, 2)), ((1, 1, 1), (1, 1, 1))])
def test_spatial_pool_fits_any_grid(grid, out_grid):
    """The last window of a side the kernel does not divide averages the tokens left; a kernel
    longer than a side is cut to it (docs/native3d.md)."""
    conn = CONNECTORS.build("spatial_pool", in_dim=4, out_dim=4, depth=1)
    n = grid[0] * grid[1] * grid[2]
    assert conn.num_out_tokens(n, grid) == out_grid[0] * out_grid[1] * out_grid[2]
    x = torch.randn(1, n, 4)
    out = conn(VisualTokens(x, grid))
    assert out.grid == out_grid
    vol = x.reshape(*grid, 4)
    last = vol[-(grid[0] - 2 * (out_grid[0] - 1)) if grid[0] > 1 else 0:,
               2 * (out_grid[1] - 1):, 2 * (out_grid[2] - 1):].reshape(-1, 4).mean(0)
    torch.testing.assert_close(out.tokens[0, -1], conn.projector(last))


def test_a_new_grid_reducer_needs_only_its_grid_rule_and_reduction():
    import torch.nn.functional as F

    from connectors.grid_reducer import GridReducer

    class MaxPool(GridReducer):
        name = "max_pool"

        def reduced_grid(self, grid):
            return tuple(g // 2 for g in grid)

        def reduce(self, x):
            return F.max_pool3d(x, 2)

    conn = MaxPool(in_dim=8, out_dim=6)
    assert isinstance(conn, Connector) and conn.num_out_tokens(128, (8, 4, 4)) == 16
    out = conn(tokens(dim=8))
    assert out.tokens.shape == (2, 16, 6) and out.grid == (4, 2, 2)
    with pytest.raises(ValueError, match="have none"):
        conn(VisualTokens(torch.randn(1, 8, 8)))


def test_max_pool_keeps_each_windows_strongest_token():
    conn = CONNECTORS.build("max_pool", in_dim=4, out_dim=6, kernel=(1, 2, 2), depth=1)
    x = torch.randn(1, 2 * 5 * 4, 4)  # grid 2 x 5 x 4: the last h window holds one row
    out = conn(VisualTokens(x, (2, 5, 4)))
    assert out.grid == (2, 3, 2) and conn.num_out_tokens(40, (2, 5, 4)) == 12
    vol = x.reshape(2, 5, 4, 4)  # (d, h, w, C)
    torch.testing.assert_close(out.tokens[0, 0], conn.projector(vol[0, :2, :2].reshape(4, 4).amax(0)))
    torch.testing.assert_close(out.tokens[0, 5], conn.projector(vol[0, 4:, 2:].reshape(2, 4).amax(0)))
    # one strong token in a window survives max pooling, average pooling dilutes it by the window
    spike = torch.zeros(1, 2 * 4 * 4, 4)
    spike[0, 0] = 8.0
    pooled = {name: CONNECTORS.build(name, in_dim=4, out_dim=4).reduce(
        spike.transpose(1, 2).reshape(1, 4, 2, 4, 4)) for name in ("max_pool", "spatial_pool")}
    assert float(pooled["max_pool"].max()) == 8.0 and float(pooled["spatial_pool"].max()) == 1.0
