"""Perceiver resampler connector (Flamingo, Alayrac et al. 2022; as used by RadFM, Wu et al. 2023).

``num_queries`` learned latents of width ``in_dim`` attend, layer after layer, to the visual tokens
concatenated with themselves (keys/values = ``[tokens; latents]``), each layer followed by a
feed-forward block; a final LayerNorm and ``Linear(in_dim, out_dim)`` map them to the LLM width.
``(B, N, C_in) -> (B, num_queries, C_out)`` for any N; the output has no grid.
RadFM's sizes are the defaults: 32 latents, depth 6, 8 heads of 64, feed-forward x4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from connectors._common import check_input
from zoo.checks import positive_int
from zoo.registry import CONNECTORS
from zoo.types import Grid, VisualTokens


class PerceiverAttention(nn.Module):
    """Latents ``(B, Q, C)`` cross-attend to ``[media; latents]`` ``(B, N + Q, C)``."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        b, q_len, _ = latents.shape
        latents = self.norm_latents(latents)
        context = torch.cat((self.norm_media(media), latents), dim=1)
        q = self.to_q(latents).view(b, q_len, self.heads, self.dim_head).transpose(1, 2)
        k, v = (self.to_kv(context).view(b, context.shape[1], 2, self.heads, self.dim_head)
                .permute(2, 0, 3, 1, 4))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, q_len, -1))


class Perceiver(nn.Module):
    """Perceiver resampler followed by a projection to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32, depth: int = 6,
                 heads: int = 8, dim_head: int = 64, ff_mult: int = 4) -> None:
        super().__init__()
        for key, value in (("in_dim", in_dim), ("out_dim", out_dim), ("num_queries", num_queries),
                           ("depth", depth), ("heads", heads), ("dim_head", dim_head),
                           ("ff_mult", ff_mult)):
            positive_int(key, value)
        self.in_dim, self.out_dim, self.num_queries = in_dim, out_dim, num_queries
        self.latents = nn.Parameter(torch.randn(num_queries, in_dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(in_dim, heads, dim_head),
                           nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim * ff_mult,
                                                                         bias=False),
                                         nn.GELU(), nn.Linear(in_dim * ff_mult, in_dim, bias=False))])
            for _ in range(depth))
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def num_out_tokens(self, num_tokens: int, grid: Grid | None = None) -> int:
        return self.num_queries

    def forward(self, visual: VisualTokens) -> VisualTokens:
        check_input(visual, self.in_dim, "perceiver")
        media = visual.tokens
        x = self.latents.to(media.dtype).repeat(media.shape[0], 1, 1)
        for attn, ff in self.layers:
            x = x + attn(media, x)
            x = x + ff(x)
        return visual.replace(tokens=self.proj(self.norm(x)), grid=None)


@CONNECTORS.register
def perceiver(*, in_dim: int, out_dim: int, num_queries: int = 32, depth: int = 6, heads: int = 8,
              dim_head: int = 64, ff_mult: int = 4) -> Perceiver:
    """RadFM-style perceiver resampler (32 learned queries, 6 layers, 8 x 64 heads), then
    Linear(in_dim, out_dim); emits ``num_queries`` gridless tokens."""
    return Perceiver(in_dim, out_dim, num_queries=num_queries, depth=depth, heads=heads,
                     dim_head=dim_head, ff_mult=ff_mult)


@CONNECTORS.register
def test_perceiver(*, in_dim: int, out_dim: int, num_queries: int = 8, depth: int = 1,
                   heads: int = 2, dim_head: int = 16, ff_mult: int = 2) -> Perceiver:
    """Tiny perceiver for tests: 8 queries, 1 layer, 2 heads of 16."""
    return Perceiver(in_dim, out_dim, num_queries=num_queries, depth=depth, heads=heads,
                     dim_head=dim_head, ff_mult=ff_mult)
