"""Light 3D reconstruction decoder: Med3DInsight's MSE reconstruction branch.

The journal version of Med3DInsight adds an MSE term for reconstructing the input volume from the
3D encoder's bottleneck, so the encoder keeps voxel-level information while it aligns with the 2D
teacher. Here the bottleneck tokens ``(B, N, C)`` with their grid ``(d, h, w)`` are reshaped to a
map and upsampled by transposed convolutions (MONAI ``get_conv_layer``: factor <= 2 per axis per
step, instance norm, GELU), halving the width at each step (never below ``min_width``); a 1x1x1 conv
gives ``out_channels``. Output ``(B, out_channels, d * s_d, h * s_h, w * s_w)`` for the encoder's
bottleneck stride ``s``; loss = ``MSE(reconstruction, volume)`` (its weight in the pretraining
objective is ``recon_weight`` of :class:`heads.alignment.Med3DInsightLoss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import Tensor, nn

from zoo.errors import ConfigError
from zoo.registry import HEADS
from zoo.types import VisualTokens, check_volume


@dataclass
class ReconOutput:
    """Reconstructed volume ``(B, C, D, H, W)`` and the MSE when a target was given."""

    volume: Tensor
    loss: Tensor | None = None


class ReconDecoder3D(nn.Module):
    """Bottleneck tokens -> volume by transposed-conv upsampling."""

    def __init__(self, in_dim: int, stride: int | Sequence[int] = 32, out_channels: int = 1,
                 min_width: int = 16) -> None:
        super().__init__()
        factors = ([int(stride)] * 3 if isinstance(stride, (int, float))
                   else [int(s) for s in stride])
        if len(factors) != 3 or any(f < 1 or f & (f - 1) for f in factors):
            raise ConfigError(f"stride must be a power of two or 3 of them (the encoder's "
                              f"bottleneck stride), got {stride!r}")
        if in_dim < 1 or out_channels < 1 or min_width < 1:
            raise ConfigError(f"in_dim, out_channels and min_width must be >= 1, got {in_dim}, "
                              f"{out_channels}, {min_width}")
        self.in_dim, self.stride = in_dim, tuple(factors)
        layers: list[nn.Module] = []
        width = in_dim
        while any(f > 1 for f in factors):
            step = tuple(2 if f > 1 else 1 for f in factors)
            out = max(width // 2, min_width)
            layers.append(get_conv_layer(3, width, out, kernel_size=step, stride=step,
                                         act="gelu", norm="instance", conv_only=False,
                                         is_transposed=True))
            factors = [f // s for f, s in zip(factors, step)]
            width = out
        self.up = nn.Sequential(*layers)
        self.out = UnetOutBlock(3, width, out_channels)

    def forward(self, visual: VisualTokens, target: Tensor | None = None) -> ReconOutput:
        if visual.grid is None:
            raise ValueError("ReconDecoder3D needs visual tokens with a grid (the encoder's "
                             "bottleneck), got grid=None")
        if visual.dim != self.in_dim:
            raise ValueError(f"ReconDecoder3D built for width {self.in_dim}, got tokens of width "
                             f"{visual.dim}")
        b = visual.tokens.shape[0]
        x = visual.tokens.transpose(1, 2).reshape(b, self.in_dim, *visual.grid)
        recon = self.out(self.up(x))
        loss = None
        if target is not None:
            check_volume(target, "reconstruction target")
            if target.shape != recon.shape:
                raise ValueError(f"reconstruction target has shape {tuple(target.shape)}, the "
                                 f"decoder produces {tuple(recon.shape)} (grid {visual.grid} x "
                                 f"stride {self.stride})")
            loss = F.mse_loss(recon, target)
        return ReconOutput(recon, loss)


@HEADS.register
def recon3d(in_dim: int, stride: int | Sequence[int] = 32, out_channels: int = 1,
            min_width: int = 16) -> ReconDecoder3D:
    """Reconstruction decoder; ``in_dim`` and ``stride`` are the encoder's bottleneck width and
    stride (from the recipe: ``encoder.out_dim``, ``encoder.feature_strides[-1]``)."""
    return ReconDecoder3D(in_dim, stride, out_channels, min_width)


@HEADS.register
def test_recon3d(in_dim: int, stride: int | Sequence[int] = 32, out_channels: int = 1,
                 min_width: int = 4) -> ReconDecoder3D:
    """Tiny reconstruction decoder for tests (widths down to 4)."""
    return ReconDecoder3D(in_dim, stride, out_channels, min_width)
