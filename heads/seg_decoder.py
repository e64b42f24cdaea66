"""UNETR / SwinUNETR-style segmentation decoder over an encoder's multi-scale features.

UNETR (Hatamizadeh et al., 2022) and SwinUNETR decode a 3D encoder with skip connections built from
MONAI blocks. This decoder does both from one description of the encoder's features, so any
backbone of the zoo can be fine-tuned for segmentation (Med3DInsight's downstream task):

- ``feature_dims[i]``, ``feature_strides[i]``: width and per-axis stride (input voxels per feature
  voxel) of feature ``i``, finest first. Hierarchical encoders (``swin3d``, ``resnet3d``) expose
  them as ``encoder.feature_dims`` / ``encoder.feature_strides``; a plain ViT (``vit3d``) gives
  ``n`` maps at its patch stride (block outputs, UNETR's z3, z6, z9, z12): :func:`feature_spec`
  and :func:`extract_features` handle both.
- Target pyramid: the coarsest feature keeps its stride; going finer, a feature keeps its own
  stride when it is finer than the next level's target (hierarchical), else (same-stride ViT
  maps) it is assigned half the next level's target per axis (never below 1), and is brought
  there by transposed convolutions (UNETR's ``UnetrPrUpBlock`` chain), so a patch
  ``(4, 16, 16)`` works.
- Level ``i`` has width ``feature_size * 2^i``; ``UnetrUpBlock`` merges from coarse to fine, a
  ``UnetrBasicBlock`` on the raw volume is the full-resolution skip, ``UnetOutBlock`` gives the
  logits ``(B, out_channels, D, H, W)``.

Loss: MONAI ``DiceCELoss``. ``activation="sigmoid"`` (default) takes multi-hot masks
``(B, K, D, H, W)`` (the zoo's sample schema: one channel per class, may overlap) with Dice + BCE;
``"softmax"`` takes integer labels ``(B, 1, D, H, W)`` with a background class among
``out_channels`` and uses Dice + CE.
"""

from __future__ import annotations

from typing import Any, Sequence

from monai.losses import DiceCELoss
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import Tensor, nn

from zoo.checks import triple
from zoo.errors import ConfigError
from zoo.registry import HEADS
from zoo.signature import forwards
from zoo.types import MaskOutput, Size3, check_volume

def _ratio(coarse: Size3, fine: Size3, name: str) -> Size3:
    if any(c % f for c, f in zip(coarse, fine)):
        raise ConfigError(f"{name}: stride {coarse} is not a multiple of {fine}")
    return tuple(c // f for c, f in zip(coarse, fine))  # type: ignore[return-value]


def target_strides(strides: Sequence[Size3]) -> list[Size3]:
    """The decoder's stride per level (see module docstring), finest first."""
    for i in range(len(strides) - 1):
        if any(a > b for a, b in zip(strides[i], strides[i + 1])):
            raise ConfigError(f"feature_strides must go from fine to coarse: level {i} has stride "
                              f"{strides[i]}, level {i + 1} has {strides[i + 1]}")
    targets = [strides[-1]]
    for stride in reversed(strides[:-1]):
        nxt = targets[0]
        if stride != nxt and all(a <= b for a, b in zip(stride, nxt)):
            target = stride
        else:
            target = tuple(max(s // 2, 1) for s in nxt)
            if target == nxt:
                raise ConfigError(f"cannot build a pyramid: several features share stride {nxt}, "
                                  "which is already full resolution; pass fewer levels")
        _ratio(stride, target, "feature_strides")  # type: ignore[arg-type]
        targets.insert(0, target)  # type: ignore[arg-type]
    return targets


class _UpChain(nn.Sequential):
    """Transposed conv (factor <= 2 per axis) + residual conv block per step (UNETR's pr-up)."""

    def __init__(self, in_ch: int, out_ch: int, factor: Size3, norm_name: Any, res_block: bool):
        layers: list[nn.Module] = []
        remaining = list(factor)
        while any(r > 1 for r in remaining):
            step = tuple(2 if r > 1 else 1 for r in remaining)
            layers.append(get_conv_layer(3, in_ch, out_ch, kernel_size=step, stride=step,
                                         conv_only=True, is_transposed=True))
            layers.append(UnetrBasicBlock(3, out_ch, out_ch, kernel_size=3, stride=1,
                                          norm_name=norm_name, res_block=res_block))
            remaining = [r // s for r, s in zip(remaining, step)]
            in_ch = out_ch
        super().__init__(*layers)


class UNETRDecoder(nn.Module):
    """Skip-connected 3D decoder; ``forward(features, volume, target=None) -> MaskOutput``."""

    def __init__(self, in_channels: int, out_channels: int, feature_dims: Sequence[int],
                 feature_strides: Sequence[int | Sequence[int]], feature_size: int = 16,
                 norm_name: str | tuple = "instance", res_block: bool = True,
                 activation: str = "sigmoid") -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or feature_size < 1:
            raise ConfigError(f"in_channels, out_channels and feature_size must be >= 1, got "
                              f"{in_channels}, {out_channels}, {feature_size}")
        if len(feature_dims) != len(feature_strides) or not feature_dims:
            raise ConfigError(f"feature_dims ({len(feature_dims)}) and feature_strides "
                              f"({len(feature_strides)}) must be non-empty and equally long")
        if activation not in ("sigmoid", "softmax"):
            raise ConfigError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        if activation == "softmax" and out_channels < 2:
            raise ConfigError("activation='softmax' needs out_channels >= 2 (background + classes)")
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.feature_dims = tuple(int(d) for d in feature_dims)
        self.strides = [triple(s, f"feature_strides[{i}]") for i, s in enumerate(feature_strides)]
        self.targets = target_strides(self.strides)
        widths = [feature_size * 2 ** i for i in range(len(self.strides))]
        self.adapters = nn.ModuleList()
        levels = zip(self.feature_dims, self.strides, self.targets)
        for i, (dim, stride, target) in enumerate(levels):
            factor = _ratio(stride, target, f"feature {i}")
            self.adapters.append(
                UnetrBasicBlock(3, dim, widths[i], kernel_size=3, stride=1, norm_name=norm_name,
                                res_block=res_block) if factor == (1, 1, 1)
                else _UpChain(dim, widths[i], factor, norm_name, res_block))
        self.ups = nn.ModuleList(
            UnetrUpBlock(3, widths[i + 1], widths[i], kernel_size=3,
                         upsample_kernel_size=_ratio(self.targets[i + 1], self.targets[i], "up"),
                         norm_name=norm_name, res_block=res_block)
            for i in range(len(widths) - 1))
        self.stem = self.stem_up = None
        out_width = widths[0]
        if self.targets[0] != (1, 1, 1):
            self.stem = UnetrBasicBlock(3, in_channels, feature_size, kernel_size=3, stride=1,
                                        norm_name=norm_name, res_block=res_block)
            self.stem_up = UnetrUpBlock(3, widths[0], feature_size, kernel_size=3,
                                        upsample_kernel_size=self.targets[0], norm_name=norm_name,
                                        res_block=res_block)
            out_width = feature_size
        self.out = UnetOutBlock(3, out_width, out_channels)
        self.loss_fn = (DiceCELoss(sigmoid=True) if activation == "sigmoid"
                        else DiceCELoss(softmax=True, to_onehot_y=True))

    def _check(self, features: Sequence[Tensor], volume: Tensor) -> None:
        check_volume(volume, "volume", channels=self.in_channels)
        if len(features) != len(self.strides):
            raise ValueError(f"decoder built for {len(self.strides)} feature maps, got "
                             f"{len(features)}")
        for i, (f, dim, stride) in enumerate(zip(features, self.feature_dims, self.strides)):
            expect = tuple(s // st for s, st in zip(volume.shape[2:], stride))
            if f.dim() != 5 or f.shape[1] != dim or tuple(f.shape[2:]) != expect:
                raise ValueError(f"feature {i} has shape {tuple(f.shape)}; expected (B, {dim}, "
                                 f"*{expect}) for volume {tuple(volume.shape)} at stride {stride}")

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        want = self.out_channels if self.activation == "sigmoid" else 1
        if target.dim() != 5 or target.shape[1] != want or target.shape[2:] != logits.shape[2:]:
            raise ValueError(f"target has shape {tuple(target.shape)}; activation "
                             f"{self.activation!r} expects (B, {want}, *{tuple(logits.shape[2:])})")
        return self.loss_fn(logits, target.to(logits.dtype))

    def forward(self, features: Sequence[Tensor], volume: Tensor,
                target: Tensor | None = None) -> MaskOutput:
        self._check(features, volume)
        skips = [adapter(f) for adapter, f in zip(self.adapters, features)]
        x = skips[-1]
        for i in range(len(skips) - 2, -1, -1):
            x = self.ups[i](x, skips[i])
        if self.stem is not None:
            x = self.stem_up(x, self.stem(volume))
        logits = self.out(x)
        return MaskOutput(logits, self.loss(logits, target) if target is not None else None)


def _vit_levels(encoder: nn.Module, levels: int | None) -> list[int]:
    depth = int(getattr(encoder, "depth"))
    levels = levels or min(4, depth)
    if not 1 <= levels <= depth:
        raise ConfigError(f"levels={levels} must be in 1..{depth} (the ViT's depth)")
    return [depth * (k + 1) // levels - 1 for k in range(levels)]


def feature_spec(encoder: nn.Module, levels: int | None = None,
                 ) -> tuple[tuple[int, ...], tuple[Size3, ...]]:
    """``(feature_dims, feature_strides)`` of an encoder for :class:`UNETRDecoder`.

    Encoders with ``forward_features`` describe themselves; a ViT with ``forward_intermediates``
    gives ``levels`` (default ``min(4, depth)``) evenly spaced block outputs at its patch stride.
    """
    if hasattr(encoder, "forward_features") and hasattr(encoder, "feature_dims"):
        return tuple(encoder.feature_dims), tuple(encoder.feature_strides)
    if hasattr(encoder, "forward_intermediates"):
        n = len(_vit_levels(encoder, levels))
        return (int(encoder.out_dim),) * n, (triple(encoder.patch_size, "patch_size"),) * n
    raise TypeError(f"{type(encoder).__name__} exposes neither forward_features (with "
                    "feature_dims/feature_strides) nor forward_intermediates")


def extract_features(encoder: nn.Module, volume: Tensor, levels: int | None = None) -> list[Tensor]:
    """The maps described by :func:`feature_spec`, finest first, ``(B, C_i, d_i, h_i, w_i)``."""
    if hasattr(encoder, "forward_features") and hasattr(encoder, "feature_dims"):
        return list(encoder.forward_features(volume))
    if hasattr(encoder, "forward_intermediates"):
        return list(encoder.forward_intermediates(volume, _vit_levels(encoder, levels),
                                                  output_fmt="NCDHW", intermediates_only=True))
    raise TypeError(f"{type(encoder).__name__} exposes neither forward_features nor "
                    "forward_intermediates")


@HEADS.register
def unetr_decoder(feature_dims: Sequence[int], feature_strides: Sequence[int | Sequence[int]],
                  out_channels: int = 2, in_channels: int = 1, feature_size: int = 16,
                  norm_name: str = "instance", res_block: bool = True,
                  activation: str = "sigmoid") -> UNETRDecoder:
    """UNETR/SwinUNETR-style decoder; ``feature_dims``/``feature_strides`` come from the recipe
    (:func:`feature_spec` of its encoder), ``out_channels`` is the number of mask channels."""
    return UNETRDecoder(in_channels, out_channels, feature_dims, feature_strides, feature_size,
                        norm_name, res_block, activation)


@HEADS.register
@forwards(unetr_decoder)
def test_unetr_decoder(feature_dims: Sequence[int], feature_strides: Sequence[int | Sequence[int]],
                       out_channels: int = 2, in_channels: int = 1, feature_size: int = 4,
                       **kwargs: Any) -> UNETRDecoder:
    """Tiny decoder for tests: level widths 4, 8, 16, ..."""
    return unetr_decoder(feature_dims, feature_strides, out_channels, in_channels, feature_size,
                         **kwargs)
