"""A convolutional 3D stem as the whole encoder: strided convolutions, no attention.

A few MONAI ``Convolution`` blocks (3 x 3 x 3 kernel, padding 1, group norm, GELU), each with its
own stride, turn a volume ``(B, C, D, H, W)`` into a token grid. With the default strides
``(2, 4, 4), (2, 2, 2), (1, 2, 2)`` the total stride is M3D's ViT patch ``(4, 16, 16)``, so the
grid is the ViT's (8 x 16 x 16 at 32 x 256 x 256): the same token layout from local features
only, the convolutional early-fusion baseline of Xiao et al. 2021 ("Early convolutions help
transformers see better") without the transformer. Output ``VisualTokens((B, d*h*w, C), (d, h, w))``
with ``d = ceil(D / s_d)`` per stage and axis.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from zoo.checks import positive_int, triple
from zoo.errors import ConfigError
from zoo.registry import ENCODERS
from zoo.types import Conditioning, Grid, VisualTokens, check_volume


class Conv3DStem(nn.Module):
    """``len(widths)`` strided conv blocks; ``out_dim`` = ``widths[-1]``."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (64, 128, 256),
                 strides: Sequence[int | Sequence[int]] = ((2, 4, 4), (2, 2, 2), (1, 2, 2)),
                 groups: int = 8) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        self.in_channels = positive_int("in_channels", in_channels)
        widths = [positive_int("widths", w) for w in widths]
        self.strides = tuple(triple(s, "strides") for s in strides)
        if not widths or len(widths) != len(self.strides):
            raise ConfigError(f"widths {tuple(widths)} and strides {self.strides} need one entry "
                              "per stage, and at least one stage")
        bad = [w for w in widths if w % positive_int("groups", groups)]
        if bad:
            raise ConfigError(f"groups={groups} does not divide the widths {bad}")
        channels = [self.in_channels, *widths]
        self.stages = nn.Sequential(*(
            Convolution(3, c_in, c_out, strides=s, kernel_size=3, act="GELU",
                        norm=("group", {"num_groups": groups}))
            for c_in, c_out, s in zip(channels, channels[1:], self.strides)))
        self.out_dim = widths[-1]

    def output_layout(self, spatial_size: Sequence[int]) -> tuple[int, Grid]:
        """``(d * h * w, (d, h, w))`` for a ``(D, H, W)`` input."""
        grid = triple(spatial_size, "spatial_size")
        for stride in self.strides:
            grid = tuple(-(-g // s) for g, s in zip(grid, stride))  # type: ignore[assignment]
        return math.prod(grid), grid

    def forward(self, volume: Tensor, cond: Conditioning | None = None) -> VisualTokens:
        check_volume(volume, "volume", channels=self.in_channels)
        x = self.stages(volume)
        return VisualTokens(x.flatten(2).transpose(1, 2), tuple(x.shape[2:]))


@ENCODERS.register
def conv3d_stem(in_channels: int = 1, widths: Sequence[int] = (64, 128, 256),
                strides: Sequence[int | Sequence[int]] = ((2, 4, 4), (2, 2, 2), (1, 2, 2)),
                groups: int = 8) -> Conv3DStem:
    """Convolutional stem encoder: strided 3 x 3 x 3 conv blocks with the ViT's total patch stride
    (4, 16, 16), giving its token grid from local features alone."""
    return Conv3DStem(in_channels, widths, strides, groups)


@ENCODERS.register
def test_conv3d_stem(in_channels: int = 1, widths: Sequence[int] = (8, 16, 32),
                     groups: int = 4) -> Conv3DStem:
    """Tiny convolutional stem for tests: widths 8, 16, 32; 32 x 64 x 64 gives 8 x 4 x 4 tokens."""
    return Conv3DStem(in_channels, widths, groups=groups)
