"""Residual 3D CNN encoder: MONAI's :class:`monai.networks.nets.ResNet` without its classifier.

The MedicalNet / Med3D family (Chen et al., 2019; Hara et al., 2018) as a compact convolutional
alternative behind the encoder contract. With the stem stride 2 on every axis and the max pool on,
``forward_features`` returns five maps, finest first: the stem output (stride 2, width
``block_inplanes[0]``) and ``layer1..layer4`` (strides 4, 8, 16, 32, widths
``block_inplanes[i] * expansion``; expansion 1 for ``basic`` blocks, 4 for ``bottleneck``).
The visual tokens are the ``layer4`` voxels ``(B, (D/32)(H/32)(W/32), out_dim)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from monai.networks.nets import ResNet
from torch import Tensor, nn

from zoo.errors import ConfigError
from zoo.registry import ENCODERS
from zoo.signature import forwards
from zoo.types import Conditioning, Grid, VisualTokens, check_volume

BLOCKS = {"basic": 1, "bottleneck": 4}


class ResNet3DEncoder(nn.Module):
    """MONAI ResNet trunk exposing its stem and four stages as multi-scale features."""

    def __init__(self, in_channels: int = 1, block: str = "basic",
                 layers: Sequence[int] = (2, 2, 2, 2),
                 block_inplanes: Sequence[int] = (64, 128, 256, 512), norm: str = "batch",
                 conv1_size: int = 7) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ConfigError(f"layers and block_inplanes need 4 entries, got layers="
                              f"{tuple(layers)} block_inplanes={tuple(block_inplanes)}")
        if in_channels < 1 or min(layers) < 1 or min(block_inplanes) < 1:
            raise ConfigError(f"in_channels, layers and block_inplanes must be >= 1, got "
                              f"{in_channels}, {tuple(layers)}, {tuple(block_inplanes)}")
        self.in_channels = in_channels
        self.net = ResNet(block=block, layers=list(layers), block_inplanes=list(block_inplanes),
                          spatial_dims=3, n_input_channels=in_channels, conv1_t_size=conv1_size,
                          conv1_t_stride=2, no_max_pool=False, feed_forward=False, norm=norm)
        # the classifier pieces are unused by an encoder: drop them so they hold no parameters
        self.net.avgpool = nn.Identity()
        self.net.fc = None
        expansion = BLOCKS[block]
        self.feature_dims: tuple[int, ...] = (block_inplanes[0],) + tuple(
            c * expansion for c in block_inplanes)
        self.feature_strides: tuple[Grid, ...] = tuple((2 ** (i + 1),) * 3 for i in range(5))
        self.out_dim = self.feature_dims[-1]

    def output_layout(self, spatial_size: Sequence[int]) -> tuple[int, Grid]:
        """``(num_tokens, grid)`` of the ``layer4`` map for a ``(D, H, W)`` input."""
        size = tuple(int(s) for s in spatial_size)
        if len(size) != 3 or any(s % 32 or s <= 0 for s in size):
            raise ConfigError(f"resnet3d: spatial size {size} must be 3 positive multiples of 32 "
                              "(five stride-2 stages)")
        grid = tuple(s // 32 for s in size)
        return math.prod(grid), grid  # type: ignore[return-value]

    def forward_features(self, volume: Tensor) -> list[Tensor]:
        """Five maps ``(B, feature_dims[i], D / s_i, H / s_i, W / s_i)``, ``s_i = 2^(i+1)``,
        finest first."""
        check_volume(volume, "volume", channels=self.in_channels)
        self.output_layout(tuple(volume.shape[2:]))
        net = self.net
        x = net.act(net.bn1(net.conv1(volume)))
        features = [x]
        x = net.maxpool(x)
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = stage(x)
            features.append(x)
        return features

    def forward(self, volume: Tensor, cond: Conditioning | None = None) -> VisualTokens:
        bottleneck = self.forward_features(volume)[-1]
        return VisualTokens(bottleneck.flatten(2).transpose(1, 2), tuple(bottleneck.shape[2:]), {})


@ENCODERS.register
def resnet3d(in_channels: int = 1, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2),
             block_inplanes: Sequence[int] = (64, 128, 256, 512), norm: str = "batch",
             conv1_size: int = 7) -> ResNet3DEncoder:
    """3D ResNet trunk (defaults: ResNet-18 layout, bottleneck width 512 at stride 32)."""
    return ResNet3DEncoder(in_channels, block, layers, block_inplanes, norm, conv1_size)


@ENCODERS.register
@forwards(resnet3d)
def test_resnet3d(in_channels: int = 1, block_inplanes: Sequence[int] = (4, 8, 8, 16),
                  layers: Sequence[int] = (1, 1, 1, 1), conv1_size: int = 3,
                  **kwargs: Any) -> ResNet3DEncoder:
    """Tiny 3D ResNet for tests: one basic block per stage, widths 4-8-8-16, stem 3^3."""
    return resnet3d(in_channels=in_channels, block_inplanes=block_inplanes, layers=layers,
                    conv1_size=conv1_size, **kwargs)
