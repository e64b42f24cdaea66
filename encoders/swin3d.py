"""Swin Transformer 3D encoder: the encoder half of MONAI's SwinUNETR (Hatamizadeh et al., 2022).

Wraps :class:`monai.networks.nets.swin_unetr.SwinTransformer` behind the encoder contract. With
``patch_size=2`` and four stages the encoder emits five feature maps at strides 2, 4, 8, 16 and 32
with widths ``F, 2F, 4F, 8F, 16F`` (``F = feature_size``). The last one is the bottleneck: its
voxels are the visual tokens ``(B, (D/32)(H/32)(W/32), 16F)``; at 128^3 with ``F = 48`` that is
64 tokens of width 768, the shape of the nnFormer bottleneck used by Med3DInsight.

``forward_features(volume)`` returns the five maps finest first (each layer-normed over channels,
as SwinUNETR's ``normalize=True``), ready for :mod:`heads.seg_decoder`; ``feature_dims`` and
``feature_strides`` describe them before any forward.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import Tensor, nn

from zoo.build import on_meta
from zoo.checkpoint import read_state_dict
from zoo.errors import CheckpointError, ConfigError
from zoo.registry import ENCODERS
from zoo.signature import forwards, renamed
from zoo.types import Conditioning, Grid, VisualTokens, check_volume



class Swin3DEncoder(nn.Module):
    """SwinUNETR's Swin encoder; tokens = bottleneck voxels ``(B, N, 16 * feature_size)``.

    Attention in the windows goes through ``scaled_dot_product_attention`` when
    ``use_flash_attention`` is set and gradients are off (MONAI's switch); training uses MONAI's
    explicit attention because it adds the relative position bias before the softmax.
    """

    def __init__(self, in_channels: int = 1, feature_size: int = 48,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, patch_size: int = 2, mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, use_v2: bool = False,
                 use_checkpoint: bool = False, use_flash_attention: bool = True) -> None:
        super().__init__()
        if in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
        if feature_size < 1 or feature_size % 12 != 0:
            raise ConfigError(f"feature_size must be a positive multiple of 12 (SwinUNETR's "
                              f"constraint), got {feature_size}")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ConfigError(f"depths and num_heads need 4 entries (one per Swin stage), got "
                              f"depths={tuple(depths)} num_heads={tuple(num_heads)}")
        for i, heads in enumerate(num_heads):
            if (feature_size * 2 ** i) % heads:
                raise ConfigError(f"num_heads[{i}]={heads} does not divide the stage width "
                                  f"{feature_size * 2 ** i}")
        if patch_size < 1:
            raise ConfigError(f"patch_size must be >= 1, got {patch_size}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        # MONAI's constructor calls .item() on a linspace, which the meta device refuses: on meta,
        # build on the CPU and move to meta (transient memory, no checkpoint is read there)
        with torch.device("cpu") if on_meta() else nullcontext():
            self.swin = SwinTransformer(
                in_chans=in_channels, embed_dim=feature_size, window_size=(window_size,) * 3,
                patch_size=(patch_size,) * 3, depths=tuple(depths), num_heads=tuple(num_heads),
                mlp_ratio=mlp_ratio, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint, spatial_dims=3,
                use_v2=use_v2, use_flash_attention=use_flash_attention)
        if on_meta():
            self.swin.to("meta")
        self.feature_dims: tuple[int, ...] = tuple(feature_size * 2 ** i for i in range(5))
        self.feature_strides: tuple[Grid, ...] = tuple((patch_size * 2 ** i,) * 3 for i in range(5))
        self.out_dim = self.feature_dims[-1]

    def _check(self, volume: Tensor) -> None:
        check_volume(volume, "volume", channels=self.in_channels)
        self.output_layout(tuple(volume.shape[2:]))

    def output_layout(self, spatial_size: Sequence[int]) -> tuple[int, Grid]:
        """``(num_tokens, grid)`` of the bottleneck for a ``(D, H, W)`` input."""
        stride = self.feature_strides[-1][0]
        size = tuple(int(s) for s in spatial_size)
        if len(size) != 3 or any(s % stride or s <= 0 for s in size):
            raise ConfigError(f"swin3d: spatial size {size} must be 3 positive multiples of "
                              f"{stride} (patch_size {self.patch_size} x 2^4 merges)")
        grid = tuple(s // stride for s in size)
        return math.prod(grid), grid  # type: ignore[return-value]

    def forward_features(self, volume: Tensor) -> list[Tensor]:
        """Five maps ``(B, F * 2^i, D / (p 2^i), H / (p 2^i), W / (p 2^i))``, finest first."""
        self._check(volume)
        return self.swin(volume, normalize=True)

    def forward(self, volume: Tensor, cond: Conditioning | None = None) -> VisualTokens:
        bottleneck = self.forward_features(volume)[-1]
        grid = tuple(bottleneck.shape[2:])
        return VisualTokens(bottleneck.flatten(2).transpose(1, 2), grid, {})

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a SwinUNETR (``swinViT.*``) or bare Swin encoder state dict; strict."""
        state = read_state_dict(path)
        for prefix in ("module.swinViT.", "swinViT.", "module.", ""):
            picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if "patch_embed.proj.weight" in picked:
                break
        else:
            raise CheckpointError(f"swin3d checkpoint {path}: no 'patch_embed.proj.weight' under the "
                                  "prefixes 'swinViT.', 'module.' or none")
        missing, unexpected = self.swin.load_state_dict(picked, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"swin3d checkpoint {path} (prefix {prefix!r}): missing keys "
                                  f"{missing[:10]}, unexpected keys {unexpected[:10]}")


@ENCODERS.register
@renamed(checkpoint="pretrained=VALUE")
def swin3d(in_channels: int = 1, feature_size: int = 48, depths: Sequence[int] = (2, 2, 2, 2),
           num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, patch_size: int = 2,
           mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
           drop_path_rate: float = 0.0, use_v2: bool = False, use_checkpoint: bool = False,
           use_flash_attention: bool = True, pretrained: str | None = None) -> Swin3DEncoder:
    """SwinUNETR's Swin encoder (defaults: feature size 48, 8,062,002 parameters, bottleneck width
    768 at stride 32). ``pretrained`` loads SwinUNETR weights (``swinViT.*``) from a local file,
    skipped on the meta device."""
    model = Swin3DEncoder(in_channels, feature_size, depths, num_heads, window_size, patch_size,
                          mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate, use_v2,
                          use_checkpoint, use_flash_attention)
    if pretrained and not on_meta():
        model.load_checkpoint(pretrained)
    return model


@ENCODERS.register
@renamed(checkpoint="pretrained=VALUE")
@forwards(swin3d)
def test_swin3d(in_channels: int = 1, feature_size: int = 12, depths: Sequence[int] = (1, 1, 1, 1),
                num_heads: Sequence[int] = (1, 2, 2, 4), window_size: int = 2,
                **kwargs) -> Swin3DEncoder:
    """Tiny Swin encoder for tests: feature size 12, one block per stage, window 2 (bottleneck
    width 192; a 32^3 input gives 1 token, 64^3 gives 8)."""
    return swin3d(in_channels=in_channels, feature_size=feature_size, depths=depths,
                  num_heads=num_heads, window_size=window_size, **kwargs)
