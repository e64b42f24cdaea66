"""SegVol mask decoder: SAM's two-way transformer and hypernetwork mask head in 3D, plus SegVol's
text-voxel similarity map (Du et al., "SegVol", 2023; Kirillov et al., "Segment Anything", 2023).

Shapes: image embedding ``(B, C, d, h, w)``; prompt tokens ``(B*K, T, C)``; output mask logits
``(B*K, M, 4d, 4h, 4w)`` (M = 1, or 3 with ``multimask``) and IoU predictions ``(B*K, M)``.
Module and attribute names follow SegVol's state dict (``transformer.layers.N.self_attn.q_proj``,
``cross_attn_token_to_image``, ``mlp.lin1``, ``norm1..4``, ``final_attn_token_to_image``,
``norm_final_attn``, ``iou_token``, ``mask_tokens``, ``output_upscaling.*``,
``output_hypernetworks_mlps.N.layers.M``, ``iou_prediction_head``, ``txt_align_upscaled_embedding``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zoo.errors import ConfigError
from zoo.types import Size3



class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to ``dim // downsample_rate`` (SAM),
    computed with ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if downsample_rate <= 0 or dim % downsample_rate or inner % num_heads:
            raise ConfigError(f"attention: dim {dim} / downsample_rate {downsample_rate} must be "
                              f"divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)))
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))`` (the transformer MLP; ReLU in SAM/SegVol)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (hypernetworks and IoU head)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class TwoWayBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention
    (each followed by a residual and LayerNorm ``norm1..norm4``). The first block of SAM applies
    self-attention without positional encoding and without a residual; ``skip_first_layer_pe``
    reproduces that."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int,
                 skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
                ) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks plus a final token->image attention (SAM).

    ``forward(image (B, C, d, h, w), image_pe (B, C, d, h, w), tokens (B, T, C))`` ->
    ``(tokens (B, T, C), image tokens (B, d*h*w, C))``.
    """

    def __init__(self, depth: int = 2, embedding_dim: int = 768, num_heads: int = 8,
                 mlp_dim: int = 2048, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        self.layers = nn.ModuleList(
            TwoWayBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, i == 0)
            for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        out = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + out), keys


class ChannelLayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, d, h, w)`` (SAM's LayerNorm2d in 3D)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.movedim(1, -1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)


class SegVolMaskDecoder(nn.Module):
    """Two-way transformer + x4 transposed-conv upsampling + hypernetwork masks + text similarity.

    ``upscaling_norm``: ``"segvol"`` normalises the first upsampled map with
    ``nn.LayerNorm((C/4, 2d, 2h, 2w))`` as SegVol does (its affine weights are tied to the token
    grid ``grid`` given here, so other grids raise); ``"channel"`` uses a grid-free channel
    LayerNorm (a choice for training at several input sizes, not the paper's).
    """

    def __init__(self, transformer_dim: int = 768, depth: int = 2, num_heads: int = 8,
                 mlp_dim: int = 2048, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, text_dim: int | None = 768,
                 upscaling_norm: str = "segvol", grid: Size3 | None = None) -> None:
        super().__init__()
        if transformer_dim % 8:
            raise ConfigError(f"transformer_dim must be divisible by 8, got {transformer_dim}")
        if upscaling_norm not in ("segvol", "channel"):
            raise ConfigError(f"upscaling_norm must be 'segvol' or 'channel', got {upscaling_norm!r}")
        if upscaling_norm == "segvol" and (grid is None or len(grid) != 3):
            raise ConfigError(f"upscaling_norm='segvol' needs the token grid (d, h, w), got {grid}")
        self.transformer = TwoWayTransformer(depth, transformer_dim, num_heads, mlp_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        c4, c8 = transformer_dim // 4, transformer_dim // 8
        self.grid = tuple(int(g) for g in grid) if grid is not None else None
        norm = (nn.LayerNorm((c4, *(2 * g for g in self.grid))) if upscaling_norm == "segvol"
                else ChannelLayerNorm3d(c4))
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, c4, kernel_size=2, stride=2), norm, nn.GELU(),
            nn.ConvTranspose3d(c4, c8, kernel_size=2, stride=2), nn.GELU())
        self.upscaling_norm = upscaling_norm
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, c8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens,
                                       iou_head_depth)
        self.txt_align_upscaled_embedding = nn.Linear(text_dim, c8) if text_dim else None

    def forward(self, image: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                text_embedding: Tensor | None = None, multimask: bool = False
                ) -> tuple[Tensor, Tensor]:
        """``image (B, C, d, h, w)``, ``image_pe (1, C, d, h, w)``, ``sparse (B*K, T, C)``,
        ``dense (B*K, C, d, h, w)``, ``text_embedding (B*K, E)`` -> masks ``(B*K, M, 4d, 4h, 4w)``,
        iou ``(B*K, M)``."""
        b, c, *grid = image.shape
        n = sparse.shape[0]
        if n % b:
            raise ValueError(f"{n} prompt sets do not divide evenly over {b} images")
        if self.upscaling_norm == "segvol" and tuple(grid) != self.grid:
            raise ValueError(f"image token grid {tuple(grid)} differs from the grid {self.grid} "
                             "the decoder was built for (upscaling_norm='segvol' ties its "
                             "LayerNorm to the grid; build with that grid or use 'channel')")
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).to(sparse.dtype)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = image.repeat_interleave(n // b, dim=0) + dense
        pos = image_pe.expand(n, -1, -1, -1, -1)
        hs, keys = self.transformer(src, pos, tokens)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(n, c, *grid))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                            dim=1)  # (n, M+1, C/8)
        flat = upscaled.flatten(2)  # (n, C/8, V)
        masks = hyper @ flat
        if text_embedding is not None:
            if self.txt_align_upscaled_embedding is None:
                raise ValueError("this decoder was built with text_dim=None: no text similarity map")
            sim = self.txt_align_upscaled_embedding(text_embedding).unsqueeze(1) @ flat
            masks = masks + sim
        masks = masks.reshape(n, -1, *upscaled.shape[2:])
        iou = self.iou_prediction_head(hs[:, 0])
        keep = slice(1, None) if multimask else slice(0, 1)
        return masks[:, keep], iou[:, keep]
