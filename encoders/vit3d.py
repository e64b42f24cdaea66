"""Native 3D Vision Transformer (M3D-LaMed's image encoder; Bai et al. 2024, "M3D").

A plain pre-norm ViT over non-overlapping 3D patches, written for speed (fused qkv projection,
``scaled_dot_product_attention``, no einops copies) while keeping the state-dict layout and the
numerics of MONAI's ``monai.networks.nets.ViT`` with ``proj_type="perceptron"``::

    patch_embedding.patch_embeddings.1.{weight,bias}   Linear(C * pd * ph * pw, hidden)
    patch_embedding.position_embeddings                (1, d * h * w, hidden)
    cls_token                                          (1, 1, hidden)        if cls_token
    blocks.{i}.norm1 / attn.qkv / attn.out_proj / norm2 / mlp.linear1 / mlp.linear2
    norm                                               final LayerNorm

so M3D-CLIP's ``pretrained_ViT.bin`` and SegVol's image encoder load through ``pretrained=PATH``.

Shapes: volume ``(B, C, D, H, W)`` -> patch grid ``(d, h, w) = (D/pd, H/ph, W/pw)`` -> tokens
``(B, d*h*w, hidden)`` in ``d``-major order (MONAI's order). The CLS token (no position embedding,
as in MONAI) is returned separately in ``extras["cls"]`` with shape ``(B, hidden)``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from zoo.build import on_meta
from zoo.checkpoint import read_state_dict
from zoo.checks import positive_int, triple
from zoo.errors import CheckpointError, ConfigError
from zoo.registry import ENCODERS, suggest
from zoo.signature import forwards, renamed
from zoo.types import Conditioning, Grid, VisualTokens, check_volume

POS_EMBED_TYPES = ("learnable", "sincos", "none")
ATTN_IMPLS = ("sdpa",)
XFORMERS_REMOVED = (
    "attn_impl='xformers' was removed: its only torch-compatible release (xformers 0.0.35, built "
    "for torch 2.10 + CUDA 12.8) did not load beside the measured GPU's torch, and SDPA already "
    "runs cuDNN's flash-attention kernels there (docs/performance.md); use 'sdpa'")
POS_KEY = "patch_embedding.position_embeddings"
# Parameters of MONAI's ViT that this encoder does not have (MONAI >= 1.4 builds an unused
# cross-attention norm in every block; ``classification=True`` adds a head). They are dropped when
# a checkpoint is loaded; everything else must match exactly.
IGNORED_CHECKPOINT_PARTS = ("classification_head.", ".norm_cross_attn.", ".cross_attn.")


class PatchFlatten(nn.Module):
    """``(B, C, D, H, W) -> (B, d*h*w, pd*ph*pw*C)``, the feature order of MONAI's perceptron."""

    def __init__(self, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, c, dd, hh, ww = x.shape
        pd, ph, pw = self.patch_size
        x = x.reshape(b, c, dd // pd, pd, hh // ph, ph, ww // pw, pw)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(b, (dd // pd) * (hh // ph) * (ww // pw), pd * ph * pw * c)


class PatchEmbedding(nn.Module):
    """Linear patch embedding plus an absolute position embedding over the patch grid.

    The position table belongs to ``grid`` (the grid at ``img_size``); other grids get a trilinear
    resampling of it at run time.
    """

    def __init__(self, in_channels: int, patch_size: tuple[int, int, int], grid: Grid,
                 hidden_size: int, pos_embed: str, dropout: float) -> None:
        super().__init__()
        self.patch_size, self.grid = patch_size, grid
        patch_dim = in_channels * math.prod(patch_size)
        self.patch_embeddings = nn.Sequential(PatchFlatten(patch_size),
                                              nn.Linear(patch_dim, hidden_size))
        n = math.prod(grid)
        if pos_embed == "sincos":
            from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

            with warnings.catch_warnings():  # MONAI calls torch.meshgrid without indexing=
                warnings.simplefilter("ignore", UserWarning)
                table = build_sincos_position_embedding(list(grid), hidden_size, 3)
            self.position_embeddings = nn.Parameter(table.data.clone(), requires_grad=False)
        else:
            self.position_embeddings = nn.Parameter(torch.zeros(1, n, hidden_size),
                                                    requires_grad=pos_embed == "learnable")
            if pos_embed == "learnable":
                nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)
        self.dropout = nn.Dropout(dropout)

    def position(self, grid: Grid) -> Tensor:
        """Position embedding ``(1, prod(grid), hidden)``, trilinearly resampled when needed."""
        table = self.position_embeddings
        if tuple(grid) == tuple(self.grid):
            return table
        c = table.shape[-1]
        table = table.reshape(1, *self.grid, c).permute(0, 4, 1, 2, 3)
        table = F.interpolate(table.float(), size=tuple(grid), mode="trilinear",
                              align_corners=False).to(self.position_embeddings.dtype)
        return table.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        return self.dropout(self.patch_embeddings(x) + self.position(grid))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (MONAI ``SABlock`` key names),
    computed by ``scaled_dot_product_attention`` (PyTorch picks the flash / memory-efficient
    kernel)."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.drop_output = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        p = self.dropout if self.training else 0.0
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, N, D)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2)
        return self.drop_output(self.out_proj(x.reshape(b, n, c)))


class MLP(nn.Module):
    """``linear1 -> GELU -> dropout -> linear2 -> dropout`` (MONAI ``MLPBlock``, "vit" dropout)."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.fn = nn.GELU()
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.linear2(self.drop1(self.fn(self.linear1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int, qkv_bias: bool,
                 dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias, dropout)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT3D(nn.Module):
    """3D ViT encoder: ``forward(volume (B, C, D, H, W)) -> VisualTokens((B, N, hidden), grid)``.

    ``img_size`` is the volume size the position table was made for (the training size of a
    checkpoint); any other size whose sides are multiples of ``patch_size`` also runs, with the
    table resampled trilinearly over the patch grid. ``attn_impl`` names the attention kernel
    (:data:`ATTN_IMPLS`: SDPA only; ``"xformers"`` was removed and is refused saying so).
    """

    _no_split_modules = ["Block"]  # the unit sharded training wraps (docs/scale.md)

    def __init__(self, img_size: Sequence[int] = (32, 256, 256),
                 patch_size: Sequence[int] = (4, 16, 16), in_channels: int = 1,
                 hidden_size: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_dim: int = 3072, qkv_bias: bool = False, cls_token: bool = True,
                 dropout: float = 0.0, pos_embed: str = "learnable",
                 grad_checkpointing: bool = False, attn_impl: str = "sdpa") -> None:
        super().__init__()
        self.img_size = triple(img_size, "img_size")
        self.patch_size = triple(patch_size, "patch_size")
        for key, value in (("in_channels", in_channels), ("hidden_size", hidden_size),
                           ("depth", depth), ("num_heads", num_heads), ("mlp_dim", mlp_dim)):
            positive_int(key, value)
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if pos_embed not in POS_EMBED_TYPES:
            raise ConfigError(f"pos_embed={pos_embed!r} is not one of {POS_EMBED_TYPES}."
                              f"{suggest(str(pos_embed), POS_EMBED_TYPES)}")
        if attn_impl == "xformers":
            raise ConfigError(XFORMERS_REMOVED)
        if attn_impl not in ATTN_IMPLS:
            raise ConfigError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}."
                              f"{suggest(str(attn_impl), ATTN_IMPLS)}")
        if pos_embed == "sincos" and hidden_size % 6:
            raise ConfigError(f"pos_embed='sincos' needs hidden_size divisible by 6, got {hidden_size}")
        self.in_channels, self.out_dim, self.depth = in_channels, hidden_size, depth
        self.grid = self._grid(self.img_size, "img_size")
        self.patch_embedding = PatchEmbedding(in_channels, self.patch_size, self.grid,
                                              hidden_size, pos_embed, dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if cls_token else None
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_dim, qkv_bias, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(hidden_size)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.apply(_init_weights)

    # ----------------------------------------------------------------------------------- layout
    def _grid(self, spatial_size: Sequence[int], name: str = "volume") -> Grid:
        size = tuple(int(s) for s in spatial_size)
        if len(size) != 3 or any(s % p for s, p in zip(size, self.patch_size)):
            raise ConfigError(f"{name} spatial size (D, H, W) = {size} is not divisible by "
                              f"patch_size {self.patch_size}")
        return tuple(s // p for s, p in zip(size, self.patch_size))  # type: ignore[return-value]

    def output_layout(self, spatial_size: Sequence[int]) -> tuple[int, Grid]:
        """``(num_patch_tokens, (d, h, w))`` for a ``(D, H, W)`` input (CLS not counted)."""
        grid = self._grid(spatial_size)
        return math.prod(grid), grid

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    # ---------------------------------------------------------------------------------- forward
    def _embed(self, volume: Tensor) -> tuple[Tensor, Grid]:
        check_volume(volume, "volume", channels=self.in_channels)
        grid = self._grid(volume.shape[2:])
        x = self.patch_embedding(volume, grid)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x, grid

    def _block(self, index: int, x: Tensor) -> Tensor:
        block = self.blocks[index]
        if self.grad_checkpointing and torch.is_grad_enabled() and x.requires_grad:
            return _checkpoint(block, x, use_reentrant=False)
        return block(x)

    def _visual(self, x: Tensor, grid: Grid) -> VisualTokens:
        if self.cls_token is None:
            return VisualTokens(x, grid, {})
        return VisualTokens(x[:, 1:], grid, {"cls": x[:, 0]})

    def forward(self, volume: Tensor, cond: Conditioning | None = None) -> VisualTokens:
        """Final-norm patch tokens ``(B, d*h*w, hidden)``; ``extras["cls"]`` ``(B, hidden)``."""
        x, grid = self._embed(volume)
        for i in range(self.depth):
            x = self._block(i, x)
        return self._visual(self.norm(x), grid)

    def forward_intermediates(self, volume: Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, output_fmt: str = "NLC",
                              intermediates_only: bool = False,
                              ) -> list[Tensor] | tuple[VisualTokens, list[Tensor]]:
        """Block outputs for multi-level decoders (UNETR/SegVol style), timm's convention.

        ``indices``: ``None`` = every block, an int ``n`` = the last ``n`` blocks, a sequence =
        those block indices (negative counts from the end). Each intermediate is the patch-token
        output of that block (CLS removed), final-normed when ``norm=True``, shaped
        ``(B, N, hidden)`` for ``output_fmt="NLC"`` or ``(B, hidden, d, h, w)`` for ``"NCDHW"``.
        Returns the list, or ``(forward output, list)`` unless ``intermediates_only``.
        """
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NLC", "NCDHW"):
            raise ValueError(f"output_fmt must be 'NLC' or 'NCDHW', got {output_fmt!r}")
        if isinstance(indices, Sequence) and not isinstance(indices, str):
            indices = [int(i) for i in indices]
            bad = [i for i in indices if not -self.depth <= i < self.depth]
            if bad:
                raise ValueError(f"indices {bad} out of range for depth {self.depth}")
        take, last = feature_take_indices(self.depth, indices)
        x, grid = self._embed(volume)
        start = 1 if self.cls_token is not None else 0
        outs = []
        stop = last + 1 if intermediates_only else self.depth
        for i in range(stop):
            x = self._block(i, x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, start:]
                if output_fmt == "NCDHW":
                    y = y.transpose(1, 2).reshape(y.shape[0], -1, *grid)
                outs.append(y)
        if intermediates_only:
            return outs
        return self._visual(self.norm(x), grid), outs

    # ------------------------------------------------------------------------------- checkpoint
    def load_checkpoint(self, path: str | Path, prefix: str | None = None) -> None:
        """Load a MONAI-ViT-layout state dict (``.bin``/``.pt``/``.pth`` or ``.safetensors``).

        Prefix rule: with ``prefix=None`` the ViT is located by its position-embedding key: the
        text before ``patch_embedding.position_embeddings`` (e.g. ``vision_encoder.``,
        ``module.image_encoder.`` or nothing) is the prefix; only keys under it are used (the rest
        belongs to other towers of the same file) and it is stripped. Keys of MONAI parts this
        encoder lacks (:data:`IGNORED_CHECKPOINT_PARTS`) are dropped; any other missing or
        unexpected key, or a shape mismatch, raises naming the keys.
        """
        self.load_monai_state(read_state_dict(path), prefix, path)

    def load_monai_state(self, state: dict[str, Tensor], prefix: str | None = None,
                         path: Any = "state dict") -> None:
        """:meth:`load_checkpoint` on a state dict in memory (e.g. a MONAI ``ViT``'s own);
        ``path`` names its source in errors."""
        state = select_prefix(state, prefix, path)
        state = {k: v for k, v in state.items()
                 if not any(part in f".{k}" for part in IGNORED_CHECKPOINT_PARTS)}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not match vit3d: missing keys {missing[:20]}"
                                  f"{' ...' if len(missing) > 20 else ''}, unexpected keys "
                                  f"{unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} "
                                  "(check cls_token, qkv_bias and depth)")
        wrong = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                 if state[k].shape != v.shape}
        if wrong:
            hint = ""
            if POS_KEY in wrong:
                hint = (f" ({POS_KEY} has {state[POS_KEY].shape[1]} positions: build with the "
                        "img_size the checkpoint was trained at; other input sizes are then "
                        "resampled at run time)")
            raise CheckpointError(f"checkpoint {path}: shape mismatch (checkpoint, model) {wrong}{hint}")
        self.load_state_dict(state, strict=True)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) Linear weights, zero biases, unit LayerNorms (MONAI's patch-embedding
    init, applied to every block too; a choice, the M3D paper does not state one)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def select_prefix(state: dict[str, Tensor], prefix: str | None, path: Any) -> dict[str, Tensor]:
    """Keep the keys under ``prefix`` (found from the position-embedding key when None), stripped."""
    if prefix is None:
        hits = [k[: -len(POS_KEY)] for k in state if k.endswith(POS_KEY)]
        if len(hits) != 1:
            raise CheckpointError(f"checkpoint {path}: cannot locate the ViT: {len(hits)} keys end with "
                                  f"{POS_KEY!r} ({hits[:5]}); pass pretrained_prefix=")
        prefix = hits[0]
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        raise CheckpointError(f"checkpoint {path}: no key starts with prefix {prefix!r}")
    return picked


@ENCODERS.register
@renamed(checkpoint="pretrained=VALUE", checkpoint_prefix="pretrained_prefix=VALUE")
def vit3d(img_size: Sequence[int] = (32, 256, 256), patch_size: Sequence[int] = (4, 16, 16),
          in_channels: int = 1, hidden_size: int = 768, depth: int = 12, num_heads: int = 12,
          mlp_dim: int = 3072, qkv_bias: bool = False, cls_token: bool = True,
          dropout: float = 0.0, pos_embed: str = "learnable", pretrained: str | None = None,
          pretrained_prefix: str | None = None, grad_checkpointing: bool = False,
          attn_impl: str = "sdpa") -> ViT3D:
    """Native 3D ViT with every hyper-parameter exposed (defaults: M3D's ViT-B, see
    :func:`vit3d_base_m3d`); ``pretrained`` loads a MONAI-ViT-layout state dict from a local file
    (skipped when building on the meta device; ``pretrained_prefix`` picks its keys' prefix);
    ``attn_impl``: ``"sdpa"`` (the only kernel)."""
    model = ViT3D(img_size=img_size, patch_size=patch_size, in_channels=in_channels,
                  hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
                  qkv_bias=qkv_bias, cls_token=cls_token, dropout=dropout, pos_embed=pos_embed,
                  grad_checkpointing=grad_checkpointing, attn_impl=attn_impl)
    if pretrained and not on_meta():
        model.load_checkpoint(pretrained, pretrained_prefix)
    return model


M3D_VIT = dict(img_size=(32, 256, 256), patch_size=(4, 16, 16), in_channels=1, hidden_size=768,
               depth=12, num_heads=12, mlp_dim=3072, qkv_bias=False, cls_token=True, dropout=0.0,
               pos_embed="learnable")
TEST_VIT = dict(M3D_VIT, img_size=(32, 64, 64), hidden_size=64, depth=2, num_heads=4, mlp_dim=128)


def _preset(defaults: dict[str, Any], overrides: dict[str, Any], name: str) -> ViT3D:
    known = set(inspect.signature(vit3d).parameters)
    for key in overrides:
        if key not in known:
            raise ConfigError(f"{name}() got an unknown argument {key!r}.{suggest(key, sorted(known))}")
    return vit3d(**{**defaults, **overrides})


@ENCODERS.register
@renamed(checkpoint="pretrained=VALUE", checkpoint_prefix="pretrained_prefix=VALUE")
@forwards(vit3d, defaults=M3D_VIT)
def vit3d_base_m3d(**overrides: Any) -> ViT3D:
    """M3D-LaMed's 3D ViT-B/(4, 16, 16) at 1 x 32 x 256 x 256: 2048 patch tokens + CLS, width 768,
    12 blocks, 12 heads, MLP 3072, no qkv bias (about 87.4 M parameters). Keyword arguments of
    :func:`vit3d` override the preset (e.g. ``pretrained=/models/M3D-CLIP/pretrained_ViT.bin``)."""
    return _preset(M3D_VIT, overrides, "vit3d_base_m3d")


@ENCODERS.register
@renamed(checkpoint="pretrained=VALUE", checkpoint_prefix="pretrained_prefix=VALUE")
@forwards(vit3d, defaults=TEST_VIT)
def test_vit3d(**overrides: Any) -> ViT3D:
    """Tiny 3D ViT for tests: 1 x 32 x 64 x 64, patch (4, 16, 16) -> grid 8 x 4 x 4 = 128 tokens,
    width 64, 2 blocks, 4 heads, MLP 128, CLS token. Keyword arguments of :func:`vit3d` override."""
    return _preset(TEST_VIT, overrides, "test_vit3d")
