"""The benchmarked cases: registered encoders, bridges and connectors at tiny, small and full size.

Levels (``LEVELS``): ``tiny`` = the ``test_*`` builders at 1 x 32 x 64 x 64; ``small`` = mid-size
settings at 1 x 32 x 128 x 128; ``full`` = M3D's configuration (ViT-B/(4, 16, 16) at
1 x 32 x 256 x 256, 768-wide visual tokens projected to LLaMA-2-7B's 4096). Connectors and bridges
get the token layout the level's ``vit3d`` produces. Every case is a factory that builds on the
current default device, so the same case runs on meta (FLOPs) and on the real device (latency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zoo.bench.cost import Factory
from zoo.registry import BRIDGES, CONNECTORS, ENCODERS
from zoo.types import VisualTokens

LEVELS: dict[str, dict[str, Any]] = {
    "tiny": {"size": (32, 64, 64), "width": 64, "lm_dim": 64},
    "small": {"size": (32, 128, 128), "width": 384, "lm_dim": 1024},
    "full": {"size": (32, 256, 256), "width": 768, "lm_dim": 4096},
}
PATCH = (4, 16, 16)
SMALL_VIT = dict(hidden_size=384, depth=6, num_heads=6, mlp_dim=1536)
# Volume sizes of the scaling table (D, H, W), from M3D's input up to a 512^2 in-plane CT.
SCALING_SIZES = ((32, 128, 128), (32, 256, 256), (64, 256, 256), (64, 512, 512))


@dataclass
class Case:
    kind: str        # encoder | bridge | connector
    name: str        # registry key
    level: str
    size: tuple[int, int, int]
    factory: Factory


def volume_input(size: tuple[int, int, int]) -> tuple[torch.Tensor]:
    return (torch.randn(1, 1, *size),)


def vit_tokens(size: tuple[int, int, int], width: int) -> tuple[VisualTokens]:
    """Patch tokens ``(1, d*h*w, width)`` with the grid vit3d gives ``size``."""
    grid = tuple(s // p for s, p in zip(size, PATCH))
    return (VisualTokens(torch.randn(1, grid[0] * grid[1] * grid[2], width), grid, {}),)


def _encoder(name: str, size: tuple[int, int, int], **kwargs: Any) -> Factory:
    return lambda: (ENCODERS.build(name, **kwargs), volume_input(size))


def _on_tokens(registry: Any, name: str, size: tuple[int, int, int], token_dim: int,
               **kwargs: Any) -> Factory:
    return lambda: (registry.build(name, **kwargs), vit_tokens(size, token_dim))


def encoder_cases(level: str, size: tuple[int, int, int] | None = None) -> list[Case]:
    """Encoders at ``level`` (``size`` overrides the level's volume size, for scaling)."""
    size = tuple(size or LEVELS[level]["size"])
    if level == "tiny":
        specs = {"vit3d": ("test_vit3d", {"img_size": size}), "swin3d": ("test_swin3d", {}),
                 "resnet3d": ("test_resnet3d", {}), "slice2d": ("test_slice2d", {})}
    elif level == "small":
        specs = {"vit3d": ("vit3d", {"img_size": size, **SMALL_VIT}),
                 "swin3d": ("swin3d", {"feature_size": 24}),
                 "resnet3d": ("resnet3d", {"block_inplanes": (32, 64, 128, 256)}),
                 "slice2d": ("slice2d", {"backbone": "timm:vit_small_patch16_224"})}
    else:
        specs = {"vit3d": ("vit3d_base_m3d", {}), "swin3d": ("swin3d", {}),
                 "resnet3d": ("resnet3d", {}), "slice2d": ("slice2d", {})}
    return [Case("encoder", key, level, size, _encoder(key, size, **kw))
            for _, (key, kw) in specs.items()]


def token_cases(level: str, size: tuple[int, int, int] | None = None) -> list[Case]:
    """Bridges and connectors on the level's vit3d tokens."""
    size = tuple(size or LEVELS[level]["size"])
    width, lm_dim = LEVELS[level]["width"], LEVELS[level]["lm_dim"]
    io = {"in_dim": width, "out_dim": lm_dim}
    if level == "tiny":
        connectors = {"spatial_pool": io, "mlp": io, "sequence_pool": io, "test_perceiver": io}
        bridges = {"test_psat": {"in_dim": width, "use_plane_slice": False}}
    else:
        connectors = {"spatial_pool": io, "mlp": io, "sequence_pool": io, "perceiver": io}
        psat = {"in_dim": width, "use_plane_slice": False, "dropout": 0.0}
        bridges = {"psat": psat if level == "full" else {**psat, "width": 384, "depth": 3}}
    cases = [Case("bridge", key, level, size, _on_tokens(BRIDGES, key, size, width, **kw))
             for key, kw in bridges.items()]
    cases += [Case("connector", key, level, size, _on_tokens(CONNECTORS, key, size, width, **kw))
              for key, kw in connectors.items()]
    return cases


def component_cases(levels: tuple[str, ...]) -> list[Case]:
    return [case for level in levels for case in encoder_cases(level) + token_cases(level)]


def scaling_cases(sizes: tuple[tuple[int, int, int], ...] = SCALING_SIZES) -> list[Case]:
    """Full-size strategies as the volume grows: 3D attention (vit3d), windows (swin3d),
    convolutions (resnet3d), D x per-slice 2D (slice2d), fixed queries (perceiver, psat)."""
    picked = ("vit3d_base_m3d", "swin3d", "slice2d", "perceiver", "psat", "spatial_pool")
    return [case for size in sizes for case in encoder_cases("full", size) + token_cases("full", size)
            if case.name in picked]
