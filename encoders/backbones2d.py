"""One small interface over 2D ViT towers from timm, open_clip and Hugging Face transformers.

Slice-inflated encoders (``encoders.slice2d``, ``encoders.tghmoe``; TGH-MoE, "Adapting 2D MLLM for
3D CT image analysis", 2026) run a pretrained 2D tower's transformer blocks themselves, so they can
make the top blocks attend across slices and swap FFNs for mixtures of experts. A
:class:`Backbone2D` exposes exactly what that needs, in one layout for every ecosystem:

- ``patchify(images (N, Cin, H, W)) -> (N, h*w, width)``: the tower's patch convolution
  (``patch_conv``, replaceable with :meth:`set_patch_conv`);
- ``embed_tokens(patches (N, h*w, width), (h, w)) -> (N, P + h*w, width)``: prefix tokens (CLS,
  registers), the 2D position embedding (resampled bicubically when ``(h, w)`` differs from the
  pretraining grid) and the tower's pre-norm;
- ``blocks`` (the library's own block modules, each with a swappable ``mlp`` attribute) and
  ``block_parts(block)`` (norms, q/k/v projection into ``(N, heads, L, head_dim)``, output
  projection, layer scales), so one generic pre-norm block forward serves every tower;
- ``norm`` (final norm), ``width``, ``patch_size``, ``num_prefix_tokens``, ``grid(size)``,
  ``image_mean`` / ``image_std`` (the tower's RGB normalisation).

Backbone strings: ``timm:<model name>`` (e.g. ``timm:vit_base_patch16_224``), ``open_clip:<config>``
(e.g. ``open_clip:ViT-L-14-336``; configs with a timm trunk, BiomedCLIP-style, too) and
``hf:<local dir | model type>`` (CLIP / SigLIP vision models; a model type such as
``clip_vision_model`` builds from a config). ``pretrained=None`` builds from the config alone;
``pretrained=PATH`` loads a local state-dict file (``.safetensors`` / ``.pt`` / ``.bin``) or, for
``hf:``, a local model directory (``local_files_only=True``). Nothing is ever fetched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import CheckpointError, ConfigError, MissingFileError
import zoo  # noqa: F401  (environment fixes before timm / open_clip / transformers imports)
from zoo.build import on_meta
from zoo.checkpoint import read_state_dict, reading_hf_folder
from zoo.registry import suggest

ECOSYSTEMS: tuple[str, ...] = ("timm", "open_clip", "hf")
HF_VISION_TYPES: tuple[str, ...] = ("clip", "clip_vision_model", "siglip", "siglip_vision_model")
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class BlockParts:
    """A pre-norm block in a common shape: ``x + ls1(out(attn(qkv(norm1(x)))))``, then
    ``x + ls2(mlp(norm2(x)))``. ``qkv(x (N, L, C)) -> q, k, v`` each ``(N, heads, L, head_dim)``
    (after any q/k norm); ``out(o (N, L, heads*head_dim)) -> (N, L, C)``."""

    norm1: Callable[[Tensor], Tensor]
    qkv: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    out: Callable[[Tensor], Tensor]
    ls1: Callable[[Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    ls2: Callable[[Tensor], Tensor]
    attn_dropout: float
    drop_path1: Callable[[Tensor], Tensor] = nn.Identity()
    drop_path2: Callable[[Tensor], Tensor] = nn.Identity()


def _heads(x: Tensor, num_heads: int) -> Tensor:
    n, length, c = x.shape
    return x.view(n, length, num_heads, c // num_heads).transpose(1, 2)


def parse_backbone(backbone: str) -> tuple[str, str]:
    """``"eco:name" -> (eco, name)``; a clear error for a missing or unknown ecosystem prefix."""
    if not isinstance(backbone, str) or ":" not in backbone:
        raise ConfigError(f"backbone={backbone!r} names no ecosystem; write '<prefix>:<name>' with a "
                          f"prefix among {', '.join(ECOSYSTEMS)} (e.g. 'timm:vit_base_patch16_224', "
                          "'open_clip:ViT-L-14-336', 'hf:/path/to/clip')")
    eco, name = backbone.split(":", 1)
    if eco not in ECOSYSTEMS:
        raise ConfigError(f"backbone={backbone!r}: unknown ecosystem prefix {eco!r}."
                          f"{suggest(eco, ECOSYSTEMS)} "
                          f"Known prefixes: {', '.join(ECOSYSTEMS)}")
    if not name:
        raise ConfigError(f"backbone={backbone!r}: empty model name after '{eco}:'")
    return eco, name


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _load_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"pretrained={source!r} does not fit {type(module).__name__}: missing keys "
                              f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected keys "
                              f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")


class Backbone2D(nn.Module):
    """Common interface; subclasses hold the library's own submodules under their own names."""

    ecosystem: str = ""
    width: int
    patch_size: int
    num_prefix_tokens: int
    native_grid: tuple[int, int]
    blocks: nn.ModuleList
    norm: nn.Module

    def __init__(self, name: str, image_mean: tuple[float, ...], image_std: tuple[float, ...]) -> None:
        super().__init__()
        self.name = name
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)

    # ------------------------------------------------------------------------- patch embedding
    @property
    def patch_conv(self) -> nn.Module:
        raise NotImplementedError

    def set_patch_conv(self, conv: nn.Module) -> None:
        raise NotImplementedError

    def grid(self, size: tuple[int, int] | int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an ``(H, W)`` slice; a clear error when not divisible."""
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h % self.patch_size or w % self.patch_size or h < 1 or w < 1:
            raise ConfigError(f"slice size (H, W) = {(h, w)} is not divisible by the patch size "
                              f"{self.patch_size} of backbone {self.ecosystem}:{self.name}; resize "
                              f"slices (slice_size=...) to a multiple of {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def patchify(self, images: Tensor) -> Tensor:
        """``(N, Cin, H, W) -> (N, h*w, width)`` with the tower's patch convolution."""
        self.grid(images.shape[-2:])
        return self.patch_norm(self.patch_conv(images).flatten(2).transpose(1, 2))

    def patch_norm(self, tokens: Tensor) -> Tensor:
        """Norm applied right after the patch projection (timm ``patch_embed.norm``), else identity."""
        return tokens

    # ------------------------------------------------------------------ prefix and positions
    def prefix_tokens(self, n: int) -> Tensor | None:
        """``(n, P, width)`` CLS/register tokens (without position embedding) or ``None``."""
        raise NotImplementedError

    def pos_embed(self, grid: tuple[int, int]) -> Tensor | None:
        """Position embedding for ``grid``: ``(1, P + h*w, C)`` if it covers the prefix tokens
        (:attr:`pos_covers_prefix`), else ``(1, h*w, C)``; ``None`` when the tower has none."""
        raise NotImplementedError

    pos_covers_prefix: bool = True

    def pre_norm(self, x: Tensor) -> Tensor:
        return x

    def embed_tokens(self, patches: Tensor, grid: tuple[int, int], extra: Tensor | None = None) -> Tensor:
        """Patch tokens ``(N, h*w, C)`` -> ``(N, P + h*w, C)``: prefix, position, pre-norm.

        ``extra`` (broadcastable to ``(N, 1, C)``, e.g. a depth embedding) is added to every token,
        prefix included, together with the position embedding (before the pre-norm)."""
        prefix = self.prefix_tokens(patches.shape[0])
        pos = self.pos_embed(grid)
        if pos is not None:
            pos = pos.to(patches.dtype)
        if pos is not None and not self.pos_covers_prefix:
            patches = patches + pos
            pos = None
        x = patches if prefix is None else torch.cat([prefix.to(patches.dtype), patches], dim=1)
        if pos is not None:
            x = x + pos
        if extra is not None:
            x = x + extra.to(x.dtype)
        return self.pre_norm(x)

    # ---------------------------------------------------------------------------------- blocks
    def block_parts(self, block: nn.Module) -> BlockParts:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        """The tower's own 2D forward through this interface: ``(N, Cin, H, W) -> (N, P + h*w, C)``
        final-normed tokens (used to check the interface against the library's forward)."""
        x = self.embed_tokens(self.patchify(images), self.grid(images.shape[-2:]))
        for block in self.blocks:
            x = run_block(self.block_parts(block), block.mlp, x, attend, self.training)
        return self.norm(x)


def attend(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
    """Plain per-image attention: ``(N, heads, L, hd) -> (N, L, heads*hd)``."""
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return o.transpose(1, 2).flatten(2)


def run_block(parts: BlockParts, mlp: Callable[[Tensor], Tensor], x: Tensor,
              attention: Callable[[Tensor, Tensor, Tensor, float], Tensor], training: bool) -> Tensor:
    """Generic pre-norm block on ``x (N, L, C)``; ``attention`` decides which tokens attend."""
    q, k, v = parts.qkv(parts.norm1(x))
    o = attention(q, k, v, parts.attn_dropout if training else 0.0)
    x = x + parts.drop_path1(parts.ls1(parts.out(o)))
    return x + parts.drop_path2(parts.ls2(mlp(parts.norm2(x))))


# ====================================================================================== timm
class TimmViT(Backbone2D):
    """timm ``VisionTransformer`` (also the trunk of open_clip's timm towers, e.g. BiomedCLIP)."""

    ecosystem = "timm"

    def __init__(self, model: nn.Module, name: str) -> None:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block, VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise ConfigError(f"timm:{name} is a {type(model).__name__}; only timm "
                              "VisionTransformer models are supported")
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        super().__init__(name, cfg.get("mean", OPENAI_CLIP_MEAN), cfg.get("std", OPENAI_CLIP_STD))
        for i, block in enumerate(model.blocks):
            if type(block) is not Block or not isinstance(block.attn, Attention) \
                    or getattr(block.attn, "gate", None) is not None:
                raise ConfigError(f"timm:{name} block {i} is a {type(block).__name__} with "
                                  f"{type(block.attn).__name__}; only the standard pre-norm "
                                  "Block with timm Attention (ungated) is supported")
        if getattr(model.patch_embed, "dynamic_img_pad", False):
            raise ConfigError(f"timm:{name}: dynamic_img_pad is not supported")
        self.patch_embed = model.patch_embed
        self.cls_token, self.reg_token = model.cls_token, model.reg_token
        self.pos_embed_param = model.pos_embed
        self.pos_drop, self.norm_pre = model.pos_drop, model.norm_pre
        self.blocks, self.norm = model.blocks, model.norm
        self.width = model.embed_dim
        ps = model.patch_embed.patch_size
        if ps[0] != ps[1]:
            raise ConfigError(f"timm:{name}: non-square patch {ps}")
        self.patch_size = int(ps[0])
        self.native_grid = tuple(model.patch_embed.grid_size)  # type: ignore[assignment]
        self.num_prefix_tokens = model.num_prefix_tokens
        self.pos_covers_prefix = not model.no_embed_class

    @property
    def patch_conv(self) -> nn.Module:
        return self.patch_embed.proj

    def set_patch_conv(self, conv: nn.Module) -> None:
        self.patch_embed.proj = conv

    def patch_norm(self, tokens: Tensor) -> Tensor:
        return self.patch_embed.norm(tokens)

    def prefix_tokens(self, n: int) -> Tensor | None:
        parts = [t.expand(n, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        return torch.cat(parts, dim=1) if parts else None

    def pos_embed(self, grid: tuple[int, int]) -> Tensor | None:
        from timm.layers import resample_abs_pos_embed

        if self.pos_embed_param is None:
            return None
        if tuple(grid) == self.native_grid:
            return self.pos_embed_param
        prefix = self.num_prefix_tokens if self.pos_covers_prefix else 0
        return resample_abs_pos_embed(self.pos_embed_param, new_size=list(grid),
                                      old_size=list(self.native_grid), num_prefix_tokens=prefix)

    def pre_norm(self, x: Tensor) -> Tensor:
        return self.norm_pre(self.pos_drop(x))

    def block_parts(self, block: nn.Module) -> BlockParts:
        attn = block.attn

        def qkv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            n, length, _ = x.shape
            q, k, v = attn.qkv(x).view(n, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            return attn.q_norm(q), attn.k_norm(k), v

        def out(o: Tensor) -> Tensor:
            return attn.proj_drop(attn.proj(attn.norm(o)))

        return BlockParts(block.norm1, qkv, out, block.ls1, block.norm2, block.ls2,
                          attn.attn_drop.p, block.drop_path1, block.drop_path2)


def build_timm(name: str, pretrained: str | None, kwargs: dict[str, Any]) -> TimmViT:
    import timm

    if not timm.is_model(name):
        known = timm.list_models("vit_*")
        raise ConfigError(f"backbone='timm:{name}': unknown timm model.{suggest(name, known)}")
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if pretrained and not on_meta():
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(read_state_dict(pretrained), model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        _load_strict(model, state, str(pretrained))
    return TimmViT(model, name)


# ================================================================================= open_clip
class OpenClipViT(Backbone2D):
    """open_clip ``VisionTransformer`` (OpenAI CLIP layout: ``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``); ``proj`` and
    the pooling are not part of the token path and are not kept."""

    ecosystem = "open_clip"

    def __init__(self, visual: nn.Module, name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        from open_clip.transformer import ResidualAttentionBlock

        super().__init__(name, mean, std)
        for i, block in enumerate(visual.transformer.resblocks):
            if type(block) is not ResidualAttentionBlock or not block.attn.batch_first \
                    or not block.attn._qkv_same_embed_dim:
                raise ConfigError(f"open_clip:{name} block {i} is a {type(block).__name__}; "
                                  "only the default ResidualAttentionBlock is supported")
        if getattr(visual, "attn_pool", None) is not None or visual.final_ln_after_pool:
            raise ConfigError(f"open_clip:{name}: attentional pooling / final_ln_after_pool "
                              "towers are not supported")
        self.conv1, self.class_embedding = visual.conv1, visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre, self.blocks, self.norm = visual.ln_pre, visual.transformer.resblocks, visual.ln_post
        self.width = visual.conv1.out_channels
        self.patch_size = int(visual.patch_size[0])
        self.native_grid = tuple(visual.grid_size)  # type: ignore[assignment]
        self.num_prefix_tokens = 1

    @property
    def patch_conv(self) -> nn.Module:
        return self.conv1

    def set_patch_conv(self, conv: nn.Module) -> None:
        self.conv1 = conv

    def prefix_tokens(self, n: int) -> Tensor:
        return self.class_embedding.view(1, 1, -1).expand(n, -1, -1)

    def pos_embed(self, grid: tuple[int, int]) -> Tensor:
        # open_clip's own helper (bicubic, antialiased, class position kept); it resizes a state
        # dict in place for a model whose ``visual.grid_size`` is the target grid.
        from types import SimpleNamespace

        from open_clip.model import resize_pos_embed

        if tuple(grid) == self.native_grid:
            return self.positional_embedding.unsqueeze(0)
        state = {"visual.positional_embedding": self.positional_embedding}
        resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=tuple(grid))))
        return state["visual.positional_embedding"].unsqueeze(0)

    def pre_norm(self, x: Tensor) -> Tensor:
        return self.ln_pre(x)

    def block_parts(self, block: nn.Module) -> BlockParts:
        attn = block.attn

        def qkv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            return _heads(q, attn.num_heads), _heads(k, attn.num_heads), _heads(v, attn.num_heads)

        return BlockParts(block.ln_1, qkv, attn.out_proj, block.ls_1, block.ln_2, block.ls_2,
                          float(attn.dropout))


def _open_clip_config(name: str) -> dict[str, Any]:
    from open_clip.factory import get_model_config, list_models

    if name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"backbone='open_clip:{name}': schema names are not supported; use a built-in "
                          "config name and pretrained=PATH for the weights")
    cfg = get_model_config(name)
    if cfg is None:
        raise ConfigError(f"backbone='open_clip:{name}': unknown open_clip config."
                          f"{suggest(name, list_models())}")
    return cfg


def build_open_clip(name: str, pretrained: str | None, kwargs: dict[str, Any]) -> Backbone2D:
    """Build the visual tower of an open_clip config; ``kwargs`` override ``vision_cfg`` keys,
    plus top-level ``embed_dim`` and ``quick_gelu`` (OpenAI weights need ``quick_gelu=True``)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cfg = _open_clip_config(name)
    kwargs = dict(kwargs)
    embed_dim = kwargs.pop("embed_dim", cfg["embed_dim"])
    quick_gelu = kwargs.pop("quick_gelu", cfg.get("quick_gelu", False))
    fields = set(CLIPVisionCfg.__dataclass_fields__)
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ConfigError(f"backbone_kwargs {unknown} are not open_clip vision_cfg keys."
                          f"{suggest(unknown[0], sorted(fields))}")
    vision_cfg = {**cfg["vision_cfg"], **kwargs}
    visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
    if pretrained and not on_meta():
        state = _strip_prefix(read_state_dict(pretrained), "visual.")
        _load_strict(visual, state, str(pretrained))
    pre = cfg.get("preprocess_cfg", {})
    mean, std = pre.get("mean", OPENAI_DATASET_MEAN), pre.get("std", OPENAI_DATASET_STD)
    if hasattr(visual, "trunk"):  # timm trunk (BiomedCLIP-style); its head (projection) is unused
        tower = TimmViT(visual.trunk, name)
        tower.ecosystem, tower.image_mean, tower.image_std = "open_clip", tuple(mean), tuple(std)
        return tower
    return OpenClipViT(visual, name, mean, std)


# ============================================================================ Hugging Face
class HFVisionViT(Backbone2D):
    """transformers ``CLIPVisionModel`` / ``SiglipVisionModel`` (CLS for CLIP, none for SigLIP).

    The final norm is ``post_layernorm`` (SigLIP applies it to every token in its own forward;
    CLIP applies it only to the pooled CLS, so CLIP's ``last_hidden_state`` is the un-normed
    input of :attr:`norm`)."""

    ecosystem = "hf"

    def __init__(self, model: nn.Module, name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(name, mean, std)
        self.embeddings = model.embeddings
        self.pre_layrnorm = getattr(model, "pre_layrnorm", nn.Identity())
        self.blocks, self.norm = model.encoder.layers, model.post_layernorm
        cfg = model.config
        self.width, self.patch_size = cfg.hidden_size, cfg.patch_size
        self.native_grid = (cfg.image_size // cfg.patch_size,) * 2
        self.num_prefix_tokens = 1 if hasattr(self.embeddings, "class_embedding") else 0

    @property
    def patch_conv(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def set_patch_conv(self, conv: nn.Module) -> None:
        self.embeddings.patch_embedding = conv

    def prefix_tokens(self, n: int) -> Tensor | None:
        if not self.num_prefix_tokens:
            return None
        return self.embeddings.class_embedding.view(1, 1, -1).expand(n, -1, -1)

    def pos_embed(self, grid: tuple[int, int]) -> Tensor:
        # transformers' own bicubic helper; it only reads the shape of its first argument
        shape_probe = torch.empty(1, self.num_prefix_tokens + grid[0] * grid[1], self.width, device="meta")
        return self.embeddings.interpolate_pos_encoding(shape_probe, grid[0] * self.patch_size,
                                                        grid[1] * self.patch_size)

    def pre_norm(self, x: Tensor) -> Tensor:
        return self.pre_layrnorm(x)

    def block_parts(self, block: nn.Module) -> BlockParts:
        attn = block.self_attn

        def qkv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return tuple(_heads(p(x), attn.num_heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj))

        return BlockParts(block.layer_norm1, qkv, attn.out_proj, nn.Identity(), block.layer_norm2,
                          nn.Identity(), float(attn.dropout))


def _hf_means(model_type: str, directory: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        pre = json.loads((directory / "preprocessor_config.json").read_text())
        if "image_mean" in pre and "image_std" in pre:
            return tuple(pre["image_mean"]), tuple(pre["image_std"])
    if model_type.startswith("siglip"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def build_hf(name: str, pretrained: str | None, kwargs: dict[str, Any]) -> HFVisionViT:
    """``name``: a local model directory, or a model type in :data:`HF_VISION_TYPES` (config built
    from ``kwargs``); ``pretrained``: a local directory or state-dict file."""
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    classes = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}
    directory = Path(name) if Path(name).is_dir() else None
    if directory is not None:
        with reading_hf_folder(directory, "vision model folder"):
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    elif name in HF_VISION_TYPES:
        config = AutoConfig.for_model(name if name.endswith("_vision_model") else f"{name}_vision_model")
    else:
        raise ConfigError(f"backbone='hf:{name}' is neither a local directory nor a model type among "
                          f"{HF_VISION_TYPES}.{suggest(name, HF_VISION_TYPES)}")
    family = config.model_type.split("_")[0]
    if family not in classes:
        raise ConfigError(f"backbone='hf:{name}' has model_type {config.model_type!r}; "
                          f"supported: {HF_VISION_TYPES}")
    config = getattr(config, "vision_config", config)
    for key, value in kwargs.items():
        if not hasattr(config, key):
            raise ConfigError(f"backbone_kwargs key {key!r} is not a field of {type(config).__name__}")
        setattr(config, key, value)
    source = Path(pretrained) if pretrained else None
    if source is not None and source.is_dir() and not on_meta():
        with reading_hf_folder(source, "vision model folder"):
            model = classes[family].from_pretrained(str(source), config=config,
                                                    local_files_only=True)
    else:
        model = classes[family](config)
        if source is not None and not on_meta():
            state = read_state_dict(source)
            for prefix in ("vision_model.", "model.vision_model."):
                state = _strip_prefix(state, prefix)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            _load_strict(model, state, str(source))
    mean, std = _hf_means(config.model_type, source if source is not None and source.is_dir()
                          else directory)
    return HFVisionViT(model, name, mean, std)


_BUILDERS: dict[str, Callable[[str, str | None, dict[str, Any]], Backbone2D]] = {
    "timm": build_timm, "open_clip": build_open_clip, "hf": build_hf}


def build_backbone2d(backbone: str, pretrained: str | None | bool = None,
                     backbone_kwargs: dict[str, Any] | None = None) -> Backbone2D:
    """Build a :class:`Backbone2D` from ``"<ecosystem>:<name>"``; see the module docstring.

    ``backbone_kwargs`` go to the ecosystem's constructor: ``timm.create_model`` kwargs, open_clip
    ``vision_cfg`` overrides (plus ``embed_dim``, ``quick_gelu``), or HF vision-config fields.
    ``pretrained``: ``None``/``False`` = random init from the config; a local path = weights.
    """
    eco, name = parse_backbone(backbone)
    if pretrained is True:
        raise ConfigError("pretrained=True would need a download; pass a local file or directory path")
    if pretrained and not Path(str(pretrained)).exists() and not on_meta():
        raise MissingFileError(f"pretrained={pretrained!r}: no such file or directory")
    return _BUILDERS[eco](name, str(pretrained) if pretrained else None, dict(backbone_kwargs or {}))
