"""Slice-inflated 2D ViT encoders: a pretrained 2D tower reads a 3D volume.

Three ways of feeding a volume ``(B, C, D, H, W)`` to a 2D tower (:mod:`encoders.backbones2d`):

- ``slice2d`` (TGH-MoE, "Adapting 2D MLLM for 3D CT image analysis", 2026): every selected axial
  slice is patch-embedded by the tower's own 2D stem; the lower blocks run per slice and the top
  ``attn3d_blocks`` blocks let the tokens of all slices (or of depth windows of ``depth_window``
  slices) attend jointly, with rotary position embedding along depth;
- ``inflate3d`` (I3D, Carreira and Zisserman 2017): the 2D patch kernel is repeated ``depth_patch``
  times along depth and divided by ``depth_patch``, giving a 3D patch embedding that equals the 2D
  one on depth-constant input; the 3D tokens then run through the 2D blocks;
- ``medblip3d`` (MedBLIP, Chen et al. 2023): a freshly initialised 3D patch embedding in front of
  the 2D blocks, which stay frozen (``freeze_tower``; :meth:`SliceEncoder.parameter_groups`).

Token layout: ``d`` depth positions (selected slices, or slabs of ``depth_patch`` slices) times an
``h x w`` patch grid; every depth position carries the tower's prefix tokens (CLS) through the
blocks, which are dropped from the output (their final states are in ``extras["cls"]``,
``(B, d, C)``). Output ``VisualTokens((B, d'*h'*w', C), grid=(d', h', w'))`` in d-major order, after
optional average pooling by ``pool_depth`` x ``pool_hw`` x ``pool_hw``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from encoders.backbones2d import Backbone2D, attend, build_backbone2d, run_block
from zoo.checks import positive_int
from zoo.errors import ConfigError
from zoo.registry import ENCODERS, suggest
from zoo.signature import forwards
from zoo.types import Conditioning, Grid, VisualTokens, check_volume, parameter_names

PATCH_MODES: tuple[str, ...] = ("slice", "inflate", "fresh3d")
CHANNEL_MODES: tuple[str, ...] = ("repeat", "sum")
DEPTH_POS: tuple[str, ...] = ("rope", "learned", "sincos", "none")


def _choice(value: str, options: tuple[str, ...], key: str) -> str:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {options}.{suggest(str(value), options)}")
    return value


def top_blocks(spec: int | None, depth: int, key: str) -> int:
    """Number of top blocks: ``None`` = the top quarter (ceil), ``-1`` = all, else ``0..depth``."""
    if spec is None:
        return math.ceil(depth / 4)
    if spec == -1:
        return depth
    if isinstance(spec, bool) or not isinstance(spec, int) or not 0 <= spec <= depth:
        raise ConfigError(f"{key} must be None (top quarter), -1 (all) or an int in [0, {depth}], "
                          f"got {spec!r}")
    return spec


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Transformer sinusoids ``(len(positions), dim)``: ``[sin(p f_i), cos(p f_i)]``,
    ``f_i = 10000^(-2i/dim)``."""
    from timm.layers.pos_embed_sincos import freq_bands

    angles = positions.float()[:, None] * freq_bands(dim, step=2, device=positions.device)[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class DepthRoPE(nn.Module):
    """1D rotary embedding over the depth index, applied to q and k of the 3D-attention blocks.

    Form (a choice; TGH-MoE does not publish it): standard RoPE on the whole head dimension with
    frequencies ``theta^(-2i/head_dim)`` (``theta`` = ``rope_theta``, default 10000) and interleaved
    pairs (timm's ``apply_rot_embed``); a token's position is the depth index of its slice in the
    token grid (prefix tokens share their slice's index). Tokens of one slice get the same rotation,
    so attention inside a slice is unchanged; only cross-slice scores see the depth offset.
    """

    def __init__(self, theta: float = 10000.0) -> None:
        super().__init__()
        if theta <= 1.0:
            raise ConfigError(f"rope_theta must be > 1, got {theta}")
        self.theta = float(theta)

    def forward(self, q: Tensor, k: Tensor, batch: int, depth: int) -> tuple[Tensor, Tensor]:
        """``q, k (B*d, heads, n, hd)`` with rows in (sample, depth) order."""
        from timm.layers.pos_embed_sincos import apply_rot_embed, freq_bands

        hd = q.shape[-1]
        if hd % 2:
            raise ConfigError(f"depth RoPE needs an even head dimension, got {hd}")
        pos = torch.arange(depth, device=q.device, dtype=torch.float32)
        angles = pos[:, None] * freq_bands(hd, temperature=self.theta, step=2, device=q.device)[None]
        angles = angles.repeat_interleave(2, dim=-1).repeat(batch, 1).view(batch * depth, 1, 1, hd)
        sin, cos = angles.sin(), angles.cos()
        return apply_rot_embed(q, sin, cos), apply_rot_embed(k, sin, cos)


def depth_attention(q: Tensor, k: Tensor, v: Tensor, batch: int, depth: int, window: int | None,
                    dropout_p: float) -> Tensor:
    """Joint attention of the tokens of ``window`` consecutive depth positions (all when ``None``).

    ``q, k, v (B*d, heads, n, hd)`` -> ``(B*d, n, heads*hd)``. Windows do not overlap; when ``d`` is
    not a multiple of the window the last window is shorter.
    """
    w = depth if window is None else min(window, depth)
    _, h, n, hd = q.shape
    qs, ks, vs = (t.view(batch, depth, h, n, hd) for t in (q, k, v))
    main = (depth // w) * w
    pieces = [(0, main, w)] + ([(main, depth, depth - main)] if main < depth else [])
    outs = []
    for start, end, size in pieces:
        groups = (end - start) // size

        def windows(t: Tensor) -> Tensor:
            t = t[:, start:end].reshape(batch, groups, size, h, n, hd).permute(0, 1, 3, 2, 4, 5)
            return t.reshape(batch * groups, h, size * n, hd)

        o = F.scaled_dot_product_attention(windows(qs), windows(ks), windows(vs), dropout_p=dropout_p)
        o = o.view(batch, groups, h, size, n, hd).permute(0, 1, 3, 4, 2, 5)
        outs.append(o.reshape(batch, end - start, n, h * hd))
    return torch.cat(outs, dim=1).reshape(batch * depth, n, h * hd)


def fold_channels(conv: nn.Conv2d, mean: tuple[float, ...] | None,
                  std: tuple[float, ...] | None) -> nn.Conv2d:
    """A 1-channel copy of an RGB stem: ``channel_mode="sum"``.

    With per-channel normalisation ``(x - m_c) / s_c`` folded in, ``conv1ch(x)`` equals
    ``conv(normalise(repeat(x)))`` exactly: ``W' = sum_c W_c / s_c``,
    ``b' = b - sum_c (m_c / s_c) sum(W_c)``.
    """
    weight = conv.weight.detach()
    cin = weight.shape[1]
    mean_t = weight.new_tensor(mean) if mean is not None else weight.new_zeros(cin)
    std_t = weight.new_tensor(std) if std is not None else weight.new_ones(cin)
    folded = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        folded.weight.copy_((weight / std_t.view(1, -1, 1, 1)).sum(dim=1, keepdim=True))
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(conv.out_channels)
        folded.bias.copy_(bias - (weight * (mean_t / std_t).view(1, -1, 1, 1)).sum(dim=(1, 2, 3)))
    return folded


def inflate_conv(conv: nn.Conv2d, depth_patch: int) -> nn.Conv3d:
    """I3D inflation: kernel repeated ``depth_patch`` times along depth and divided by it, so a
    depth-constant input gives the 2D response; stride ``depth_patch`` along depth."""
    weight = conv.weight.detach()
    conv3d = nn.Conv3d(conv.in_channels, conv.out_channels, (depth_patch, *conv.kernel_size),
                       (depth_patch, *conv.stride), bias=conv.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv3d.weight.copy_(weight.unsqueeze(2).repeat(1, 1, depth_patch, 1, 1) / depth_patch)
        if conv.bias is not None:
            conv3d.bias.copy_(conv.bias.detach())
    return conv3d


class SliceEncoder(nn.Module):
    """A 2D ViT tower over a 3D volume: ``forward(volume, cond) -> VisualTokens``.

    Args (all validated; choices not published by TGH-MoE are marked "choice"):
        backbone: a :class:`~encoders.backbones2d.Backbone2D`.
        patch_mode: ``"slice"`` (2D stem per slice), ``"inflate"`` (I3D 3D stem from the 2D one),
            ``"fresh3d"`` (new 3D stem, MedBLIP).
        depth_patch: slices per depth token (``"slice"`` needs 1).
        in_channels: volume channels; ``channel_mode="repeat"`` repeats a 1-channel volume to the
            stem's RGB channels (3-channel volumes pass through), ``"sum"`` sums the stem kernel
            over its input channels into a 1-channel stem (normalisation folded in). Both give the
            same tokens on a grey image.
        normalize: apply the tower's RGB mean/std (input intensities are taken as [0, 1] images).
        slice_size: resize every slice to ``slice_size x slice_size`` (bilinear, antialiased)
            before patching; ``None`` keeps ``H x W``. Slices must end up divisible by the patch.
        slice_stride / num_slices: use every ``slice_stride``-th slice, or ``num_slices`` slices at
            evenly spaced indices ``round(linspace(0, D-1, num_slices))`` (not both).
        depth_pos: ``"rope"`` (RoPE on q/k of the 3D blocks, :class:`DepthRoPE`), ``"learned"``
            (zero-initialised table of ``max_depth`` rows, so step 0 equals the 2D tower),
            ``"sincos"`` (fixed sinusoids) or ``"none"``; embeddings are added to every token
            before the tower's pre-norm.
        attn3d_blocks: how many top blocks attend across slices: ``None`` = top quarter (choice),
            ``-1`` = all, ``0`` = pure per-slice encoding.
        depth_window: joint attention within non-overlapping windows of this many depth
            positions (memory: cost per block ~ ``d * window * n^2``); ``None`` = all.
        feature_layer: output of this block (``-1`` = last; ``-2`` = penultimate, LLaVA /
            Phi-3-Vision style); later blocks are removed from the module.
        final_norm: apply the tower's final norm to the output tokens.
        pool_hw / pool_depth: average pooling of the output token grid (the token budget knob:
            ``d/pool_depth * h/pool_hw * w/pool_hw`` tokens); ``max_tokens`` raises when exceeded.
        grad_checkpointing: checkpoint every block in training.
        freeze_tower: keep the pretrained 2D tower frozen wherever a recipe trains the encoder;
            only the new parameters (a fresh 3D stem, a learned depth table) learn (MedBLIP).
    """

    def __init__(self, backbone: Backbone2D, *, patch_mode: str = "slice", depth_patch: int = 1,
                 in_channels: int = 1, channel_mode: str = "repeat", normalize: bool = True,
                 slice_size: int | None = None, slice_stride: int = 1, num_slices: int | None = None,
                 depth_pos: str = "rope", rope_theta: float = 10000.0, max_depth: int = 64,
                 attn3d_blocks: int | None = None, depth_window: int | None = None,
                 feature_layer: int = -1, final_norm: bool = True, pool_hw: int = 1,
                 pool_depth: int = 1, max_tokens: int | None = None,
                 grad_checkpointing: bool = False, freeze_tower: bool = False) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone2D):
            raise TypeError(f"backbone must be a Backbone2D, got {type(backbone).__name__}")
        self.patch_mode = _choice(patch_mode, PATCH_MODES, "patch_mode")
        self.channel_mode = _choice(channel_mode, CHANNEL_MODES, "channel_mode")
        self.depth_pos = _choice(depth_pos, DEPTH_POS, "depth_pos")
        self.depth_patch = positive_int("depth_patch", depth_patch)
        if self.patch_mode == "slice" and self.depth_patch != 1:
            raise ConfigError(f"depth_patch={depth_patch} needs patch_mode 'inflate' or 'fresh3d'; "
                              "patch_mode='slice' embeds single slices")
        self.in_channels = positive_int("in_channels", in_channels)
        self.slice_stride = positive_int("slice_stride", slice_stride)
        if num_slices is not None:
            positive_int("num_slices", num_slices)
            if slice_stride != 1:
                raise ConfigError("set either slice_stride or num_slices, not both "
                                  f"(slice_stride={slice_stride}, num_slices={num_slices})")
        self.num_slices = num_slices
        self.slice_size = None if slice_size is None else positive_int("slice_size", slice_size)
        if self.slice_size is not None:
            backbone.grid(self.slice_size)
        self.pool_hw = positive_int("pool_hw", pool_hw)
        self.pool_depth = positive_int("pool_depth", pool_depth)
        self.max_tokens = None if max_tokens is None else positive_int("max_tokens", max_tokens)
        self.final_norm, self.normalize = bool(final_norm), bool(normalize)
        self.depth_window = None if depth_window is None else positive_int("depth_window", depth_window)

        depth = len(backbone.blocks)
        if isinstance(feature_layer, bool) or not isinstance(feature_layer, int) \
                or not -depth <= feature_layer < depth:
            raise ConfigError(f"feature_layer must be an int in [{-depth}, {depth - 1}], "
                              f"got {feature_layer!r}")
        used = feature_layer % depth + 1
        backbone.blocks = nn.ModuleList(list(backbone.blocks)[:used])
        self.backbone = backbone
        self.num_blocks = used
        self.attn3d_blocks = top_blocks(attn3d_blocks, used, "attn3d_blocks")
        self.out_dim = backbone.width

        conv = backbone.patch_conv
        stem_in = conv.in_channels
        if self.channel_mode == "repeat" and self.in_channels not in (1, stem_in):
            raise ConfigError(f"channel_mode='repeat' takes 1 or {stem_in} input channels, got "
                              f"in_channels={in_channels}")
        if self.channel_mode == "sum" and self.in_channels != 1:
            raise ConfigError(f"channel_mode='sum' needs in_channels=1, got {in_channels}")
        if normalize and len(backbone.image_mean) != stem_in:
            raise ConfigError(f"normalize=True: the tower's mean/std have {len(backbone.image_mean)} "
                              f"channels but its stem takes {stem_in}")
        self.register_buffer("mean", torch.tensor(backbone.image_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.image_std).view(1, -1, 1, 1, 1), persistent=False)
        if self.channel_mode == "sum":
            conv = fold_channels(conv, backbone.image_mean if normalize else None,
                                 backbone.image_std if normalize else None)
            backbone.set_patch_conv(conv)
        self.stem_channels = conv.in_channels
        self.patch_embed3d: nn.Module | None = None
        if self.patch_mode != "slice":
            if self.patch_mode == "inflate":
                self.patch_embed3d = inflate_conv(conv, self.depth_patch)
            else:
                p = backbone.patch_size
                self.patch_embed3d = nn.Conv3d(conv.in_channels, backbone.width, (self.depth_patch, p, p),
                                               (self.depth_patch, p, p))
            backbone.set_patch_conv(nn.Identity())  # the 2D stem is replaced, not kept as dead weight

        self.rope = DepthRoPE(rope_theta) if self.depth_pos == "rope" else None
        self.max_depth = positive_int("max_depth", max_depth)
        self.depth_embed = (nn.Parameter(torch.zeros(self.max_depth, backbone.width))
                            if self.depth_pos == "learned" else None)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.freeze_tower = bool(freeze_tower)

    # ----------------------------------------------------------------------------------- layout
    def parameter_groups(self) -> dict[str, list[str]]:
        """``new``: parameters that do not come from the pretrained 2D tower (a fresh 3D stem, a
        learned depth table), which learn whenever the encoder is used; ``frozen`` (with
        ``freeze_tower``): every other parameter, which stays fixed even where the recipe trains
        the encoder (:class:`zoo.types.ParameterGroups`)."""
        new = parameter_names(self, [self.patch_embed3d if self.patch_mode == "fresh3d" else None,
                                     self.depth_embed])
        frozen = [n for n, _ in self.named_parameters() if n not in new] if self.freeze_tower else []
        return {"new": new, "frozen": frozen}

    def selected_slices(self, depth: int) -> Tensor:
        """Indices of the slices used for a volume of ``depth`` slices."""
        if self.num_slices is not None:
            if self.num_slices > depth:
                raise ConfigError(f"num_slices={self.num_slices} exceeds the volume depth D={depth}")
            return torch.linspace(0, depth - 1, self.num_slices).round().long()
        return torch.arange(0, depth, self.slice_stride)

    def token_grid(self, spatial_size: tuple[int, int, int]) -> Grid:
        """The unpooled token grid ``(d, h, w)`` for an input ``(D, H, W)``."""
        if len(spatial_size) != 3:
            raise ConfigError(f"spatial_size must be (D, H, W), got {spatial_size!r}")
        depth, height, width = (int(s) for s in spatial_size)
        n = len(self.selected_slices(depth))
        if n % self.depth_patch:
            raise ConfigError(f"{n} selected slices are not divisible by depth_patch={self.depth_patch}")
        size = (self.slice_size, self.slice_size) if self.slice_size else (height, width)
        h, w = self.backbone.grid(size)
        d = n // self.depth_patch
        if self.depth_embed is not None and d > self.max_depth:
            raise ConfigError(f"{d} depth positions exceed max_depth={self.max_depth} of the learned "
                              "depth embedding")
        return d, h, w

    def output_layout(self, spatial_size: tuple[int, int, int]) -> tuple[int, Grid]:
        """``(num_tokens, (d', h', w'))`` after pooling, for a ``(D, H, W)`` input."""
        d, h, w = self.token_grid(spatial_size)
        for key, size, factor in (("pool_depth", d, self.pool_depth), ("pool_hw", h, self.pool_hw),
                                  ("pool_hw", w, self.pool_hw)):
            if size % factor:
                raise ConfigError(f"{key}={factor} does not divide the token grid {(d, h, w)} of input "
                                  f"{tuple(spatial_size)}")
        grid = (d // self.pool_depth, h // self.pool_hw, w // self.pool_hw)
        count = math.prod(grid)
        if self.max_tokens is not None and count > self.max_tokens:
            raise ConfigError(f"{count} visual tokens (grid {grid}) exceed max_tokens={self.max_tokens}; "
                              "raise pool_hw / pool_depth, lower num_slices or slice_size")
        return count, grid

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    # ---------------------------------------------------------------------------------- forward
    def _prepare(self, volume: Tensor) -> Tensor:
        """Select slices, resize them, map channels to the stem: ``(B, Cs, D', S, S)``."""
        x = volume.index_select(2, self.selected_slices(volume.shape[2]).to(volume.device))
        if self.slice_size is not None and tuple(x.shape[-2:]) != (self.slice_size,) * 2:
            b, c, d, h, w = x.shape
            x = x.transpose(1, 2).reshape(b * d, c, h, w)
            x = F.interpolate(x, size=(self.slice_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=True)
            x = x.view(b, d, c, self.slice_size, self.slice_size).transpose(1, 2)
        if self.channel_mode == "repeat":
            x = x.expand(-1, self.stem_channels, -1, -1, -1) if x.shape[1] == 1 else x
            if self.normalize:
                x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def _patch_tokens(self, x: Tensor) -> tuple[Tensor, int, tuple[int, int]]:
        """``(B, Cs, D', S, S) -> (B*d, h*w, C)`` patch tokens, ``d`` and ``(h, w)``."""
        b = x.shape[0]
        if self.patch_embed3d is None:
            d = x.shape[2]
            images = x.transpose(1, 2).flatten(0, 1)
            grid = self.backbone.grid(images.shape[-2:])
            return self.backbone.patchify(images), d, grid
        y = self.patch_embed3d(x)  # (B, C, d, h, w)
        d, grid = y.shape[2], (y.shape[3], y.shape[4])
        tokens = y.permute(0, 2, 3, 4, 1).reshape(b * d, grid[0] * grid[1], y.shape[1])
        return self.backbone.patch_norm(tokens), d, grid

    def _depth_embedding(self, batch: int, depth: int, like: Tensor) -> Tensor | None:
        if self.depth_pos == "learned":
            table = self.depth_embed[:depth]
        elif self.depth_pos == "sincos":
            table = sincos_1d(torch.arange(depth, device=like.device), self.out_dim)
        else:
            return None
        return table.to(like.dtype).repeat(batch, 1).unsqueeze(1)  # (B*d, 1, C)

    def _route(self, volume: Tensor, cond: Conditioning | None) -> Any:
        """Per-forward routing context for routed FFNs (none in the dense encoder)."""
        return None

    def _block(self, index: int, x: Tensor, batch: int, depth: int, route: Any,
               stats: list) -> tuple[Tensor, Tensor]:
        """One block on ``x (B*d, n, C)``; returns ``(x, auxiliary loss)``."""
        block = self.backbone.blocks[index]
        parts = self.backbone.block_parts(block)
        joint = index >= self.num_blocks - self.attn3d_blocks

        def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
            if not joint:
                return attend(q, k, v, dropout_p)
            if self.rope is not None:
                q, k = self.rope(q, k, batch, depth)
            return depth_attention(q, k, v, batch, depth, self.depth_window, dropout_p)

        aux = [x.new_zeros(())]
        mlp: Callable[[Tensor], Tensor] = block.mlp
        if getattr(block.mlp, "routed", False):
            def mlp(h: Tensor) -> Tensor:
                y, loss, layer_stats = block.mlp(h.reshape(batch, -1, h.shape[-1]), route)
                aux[0] = loss
                stats.append(layer_stats)
                return y.view_as(h)

        def run(t: Tensor) -> tuple[Tensor, Tensor]:
            out = run_block(parts, mlp, t, attention, self.training)
            return out, aux[0]

        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return _checkpoint(run, x, use_reentrant=False)
        return run(x)

    def encode(self, volume: Tensor, cond: Conditioning | None = None) -> tuple[Tensor, Tensor, Grid, dict]:
        """Unpooled tokens ``(B, d, P + h*w, C)``, summed auxiliary loss, grid and extras."""
        check_volume(volume, "volume", channels=self.in_channels)
        batch = volume.shape[0]
        self.token_grid(volume.shape[2:])  # validates sizes with readable errors
        x, depth, grid = self._patch_tokens(self._prepare(volume))
        x = self.backbone.embed_tokens(x, grid, self._depth_embedding(batch, depth, x))
        route = self._route(volume, cond)
        stats: list = []
        aux = x.new_zeros(())
        for i in range(self.num_blocks):
            x, block_aux = self._block(i, x, batch, depth, route, stats)
            aux = aux + block_aux
        if self.final_norm:
            x = self.backbone.norm(x)
        x = x.view(batch, depth, x.shape[1], x.shape[2])
        return x, aux, (depth, *grid), {"moe": stats, "route": route}

    def forward(self, volume: Tensor, cond: Conditioning | None = None) -> VisualTokens:
        """``volume (B, C, D, H, W)`` -> ``VisualTokens((B, d'*h'*w', C), (d', h', w'))``;
        ``extras``: ``"cls"`` ``(B, d, C)`` when the tower has a CLS token, ``"slice_indices"``."""
        check_volume(volume, "volume", channels=self.in_channels)
        _, out_grid = self.output_layout(volume.shape[2:])
        x, aux, (d, h, w), info = self.encode(volume, cond)
        prefix = self.backbone.num_prefix_tokens
        extras: dict[str, Any] = {"slice_indices": self.selected_slices(volume.shape[2])}
        if prefix:
            extras["cls"] = x[:, :, 0]
        tokens = x[:, :, prefix:].reshape(x.shape[0], d, h, w, x.shape[-1])
        if self.pool_depth > 1 or self.pool_hw > 1:
            pooled = F.avg_pool3d(tokens.permute(0, 4, 1, 2, 3),
                                  (self.pool_depth, self.pool_hw, self.pool_hw))
            tokens = pooled.permute(0, 2, 3, 4, 1)
        extras.update(self._extras(aux, info))
        return VisualTokens(tokens.reshape(x.shape[0], -1, x.shape[-1]), out_grid, extras)

    def _extras(self, aux: Tensor, info: dict) -> dict[str, Any]:
        return {}


def build_slice_encoder(backbone: str, pretrained: str | None, backbone_kwargs: dict | None,
                        **options: Any) -> SliceEncoder:
    """Build a tower from its backbone string and wrap it (options: :class:`SliceEncoder`)."""
    return SliceEncoder(build_backbone2d(backbone, pretrained, backbone_kwargs), **options)


# Tiny timm ViT for tests: width 32, 2 blocks, 2 heads, 32 px, patch 16.
TINY_TIMM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}


@ENCODERS.register
@forwards(SliceEncoder, exclude=("backbone", "patch_mode"))
def slice2d(backbone: str = "open_clip:ViT-B-16", pretrained: str | None = None,
            backbone_kwargs: dict | None = None, slice_size: int | None = 224, pool_hw: int = 2,
            **options: Any) -> SliceEncoder:
    """TGH-MoE-style slice encoder without experts: 2D stem per slice, depth RoPE, 3D attention
    in the top quarter of the blocks (options: :class:`SliceEncoder`)."""
    return build_slice_encoder(backbone, pretrained, backbone_kwargs, patch_mode="slice",
                               slice_size=slice_size, pool_hw=pool_hw, **options)


@ENCODERS.register
@forwards(SliceEncoder, exclude=("backbone", "patch_mode"))
def inflate3d(backbone: str = "open_clip:ViT-B-16", pretrained: str | None = None,
              backbone_kwargs: dict | None = None, depth_patch: int = 4, slice_size: int | None = 224,
              attn3d_blocks: int | None = -1, **options: Any) -> SliceEncoder:
    """I3D-inflated 2D tower: the 2D patch kernel repeated over ``depth_patch`` slices and divided
    by it; 3D tokens attend jointly in every block by default (options: :class:`SliceEncoder`)."""
    return build_slice_encoder(backbone, pretrained, backbone_kwargs, patch_mode="inflate",
                               depth_patch=depth_patch, slice_size=slice_size,
                               attn3d_blocks=attn3d_blocks, **options)


@ENCODERS.register
@forwards(SliceEncoder, exclude=("backbone", "patch_mode"))
def medblip3d(backbone: str = "open_clip:ViT-B-16", pretrained: str | None = None,
              backbone_kwargs: dict | None = None, depth_patch: int = 4, slice_size: int | None = 224,
              attn3d_blocks: int | None = -1, freeze_tower: bool = True,
              **options: Any) -> SliceEncoder:
    """MedBLIP-style: a fresh 3D patch embedding in front of the 2D blocks, which stay frozen
    (``freeze_tower``): recipes train the new stem only (``parameter_groups``)."""
    return build_slice_encoder(backbone, pretrained, backbone_kwargs, patch_mode="fresh3d",
                               depth_patch=depth_patch, slice_size=slice_size,
                               attn3d_blocks=attn3d_blocks, freeze_tower=freeze_tower, **options)


@ENCODERS.register
@forwards(SliceEncoder, exclude=("backbone", "patch_mode"))
def test_slice2d(attn3d_blocks: int | None = 1, **options: Any) -> SliceEncoder:
    """Tiny ``slice2d`` on a random timm ViT (width 32, 2 blocks, 32 px slices, patch 16)."""
    return build_slice_encoder("timm:vit_tiny_patch16_224", None, TINY_TIMM, patch_mode="slice",
                               attn3d_blocks=attn3d_blocks, **options)


@ENCODERS.register
@forwards(SliceEncoder, exclude=("backbone", "patch_mode"))
def test_inflate3d(depth_patch: int = 2, attn3d_blocks: int | None = -1,
                   **options: Any) -> SliceEncoder:
    """Tiny ``inflate3d``: random timm ViT (width 32, 2 blocks), depth patch 2, 3D attention."""
    return build_slice_encoder("timm:vit_tiny_patch16_224", None, TINY_TIMM, patch_mode="inflate",
                               depth_patch=depth_patch, attn3d_blocks=attn3d_blocks, **options)


@ENCODERS.register
@forwards(SliceEncoder, exclude=("backbone", "patch_mode"))
def test_medblip3d(depth_patch: int = 2, attn3d_blocks: int | None = -1,
                   freeze_tower: bool = True, **options: Any) -> SliceEncoder:
    """Tiny ``medblip3d``: fresh 3D patch embedding (depth patch 2) over a random timm ViT,
    whose blocks stay frozen."""
    return build_slice_encoder("timm:vit_tiny_patch16_224", None, TINY_TIMM, patch_mode="fresh3d",
                               depth_patch=depth_patch, attn3d_blocks=attn3d_blocks,
                               freeze_tower=freeze_tower, **options)
