"""SegVol promptable 3D segmentation head (Du et al., "SegVol: Universal and Interactive Volumetric
Medical Image Segmentation", 2023), as used by M3D-LaMed for ``[SEG]``.

Parts (attribute names = SegVol's state-dict prefixes): ``image_encoder`` (a registered 3D ViT built
by name, MONAI layout; absent with ``share_encoder=True``), ``prompt_encoder``
(:class:`heads.segvol_prompt.SegVolPromptEncoder`), ``mask_decoder``
(:class:`heads.segvol_decoder.SegVolMaskDecoder`) and ``text_encoder`` (frozen CLIP text tower,
:mod:`heads.segvol_text`; optional).

Shapes: volume ``(B, 1, D, H, W)``; K prompts per image: text names ``[B][K]`` or embeddings
``(B, K, E)`` / ``(B, E)``, points ``(B, K, P, 3)`` / ``(B, P, 3)`` in voxel indices ``(d, h, w)``
with labels ``(B, K, P)`` / ``(B, P)``, boxes ``(B, K, 6)`` / ``(B, 6)`` as voxel corners
``[d1, h1, w1, d2, h2, w2]``. Output: :class:`zoo.types.MaskOutput` with one mask per prompt,
``logits (B, K, D, H, W)``, and Dice + BCE when ``target (B, K, D, H, W)`` is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.segvol_decoder import SegVolMaskDecoder
from heads.segvol_prompt import SegVolPromptEncoder
from heads.segvol_text import SegVolTextEncoder, clip_text_tower, tiny_clip_text_tower
from zoo.build import on_meta
from zoo.checkpoint import read_state_dict
from zoo.checks import triple
from zoo.errors import CheckpointError, ConfigError
from zoo.registry import ENCODERS, HEADS
from zoo.signature import renamed
from zoo.types import MaskOutput, VisualTokens, check_volume, parameter_names

PUBLISHED_PARAMS_M = 181.0  # SegVol paper
# SegVol checkpoint keys without a counterpart here (see docs/segvol.md): 2D mask-prompt convs that
# SegVol never calls, HF's old persistent position_ids buffer, MONAI >= 1.4's unused per-block norm.
IGNORED_SEGVOL_KEYS = (re.compile(r"prompt_encoder\.mask_downscaling\."),
                       re.compile(r"\.position_ids$"),
                       re.compile(r"image_encoder\..*\.(norm_cross_attn|cross_attn)\."))
WRAPPER_PREFIXES = ("module.", "model.")
SEGVOL_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.", "text_encoder.")
# Decoder parameters a single-mask output uses (relative to the head): the IoU head and the three
# multimask hypernetworks get no gradient from it, so recipes keep them frozen (unused trainable
# parameters also break DDP).
SINGLE_MASK_DECODER = r"mask_decoder\.(?!iou_prediction_head\.|output_hypernetworks_mlps\.[1-9])"


def _per_prompt(x: Tensor | None, rank: int, batch: int, name: str) -> Tensor | None:
    """Give ``x`` a prompt axis: rank-``rank`` ``(B, ...)`` -> ``(B, 1, ...)``; checks B."""
    if x is None:
        return None
    if x.dim() == rank:
        x = x.unsqueeze(1)
    if x.dim() != rank + 1 or x.shape[0] != batch:
        raise ValueError(f"{name} must have batch size {batch} and rank {rank} (one prompt per "
                         f"image) or {rank + 1} (K prompts per image); got {tuple(x.shape)}")
    return x


class SegVolHead(nn.Module):
    """Promptable segmentation of a 3D volume; one mask per prompt (see module docstring)."""

    def __init__(self, image_encoder: nn.Module | None, prompt_encoder: SegVolPromptEncoder,
                 mask_decoder: SegVolMaskDecoder, text_encoder: SegVolTextEncoder | None,
                 image_size: Sequence[int], patch_size: Sequence[int]) -> None:
        super().__init__()
        self.image_size = triple(image_size, "image_size")
        self.patch_size = triple(patch_size, "patch_size")
        bad = [s for s, p in zip(self.image_size, self.patch_size) if s % p]
        if bad:
            raise ConfigError(f"image_size {self.image_size} is not divisible by patch_size "
                              f"{self.patch_size}")
        self.embed_dim = prompt_encoder.embed_dim
        width = getattr(image_encoder, "out_dim", self.embed_dim)
        if width != self.embed_dim:
            raise ConfigError(f"image encoder width {width} differs from the prompt/decoder width "
                              f"{self.embed_dim}")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.text_encoder = text_encoder
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True)

    @property
    def share_encoder(self) -> bool:
        return self.image_encoder is None

    def parameter_groups(self) -> dict[str, list[str]]:
        """Groups for a recipe's stages (:class:`zoo.types.ParameterGroups`): ``text_prompted``
        (what a text-only prompt with one mask output trains: the decoder parts that output uses,
        the "no mask" dense embedding and the own image encoder; the IoU head and the multimask
        hypernetworks get no gradient from it), ``prompt_encoder``, ``text_align`` (the text
        tower's ``dim_align``) and ``frozen`` (the CLIP text model, frozen as in SegVol)."""
        decoder = re.compile(SINGLE_MASK_DECODER)
        text = self.text_encoder
        return {
            "text_prompted": [n for n in parameter_names(
                self, [self.mask_decoder, self.prompt_encoder.no_mask_embed, self.image_encoder])
                if not n.startswith("mask_decoder.") or decoder.match(n)],
            "prompt_encoder": parameter_names(self, [self.prompt_encoder]),
            "text_align": parameter_names(self, [text.dim_align if text is not None else None]),
            "frozen": parameter_names(self, [text.clip_text_model if text is not None else None]),
        }

    def encode_image(self, volume: Tensor) -> VisualTokens:
        if self.image_encoder is None:
            raise ValueError("this SegVol head shares the recipe's encoder (share_encoder=True): "
                             "pass image_tokens=")
        return self.image_encoder(volume)

    def embed_text(self, text: Sequence[str] | Sequence[Sequence[str]]) -> Tensor:
        """Organ names ``[B]`` or ``[B][K]`` -> ``(B, K, E)`` through the CLIP text tower."""
        if self.text_encoder is None:
            raise ValueError("text prompts need a text tower: build the head with text_tower=True "
                             "and text_pretrained=..., or pass text_embedding=")
        nested = [[t] if isinstance(t, str) else list(t) for t in text]
        k = len(nested[0])
        if any(len(n) != k for n in nested):
            raise ValueError(f"every image needs the same number of text prompts, got "
                             f"{[len(n) for n in nested]}")
        flat = self.text_encoder([name for names in nested for name in names])
        return flat.reshape(len(nested), k, -1)

    def forward(self, volume: Tensor | None = None, *, image_tokens: VisualTokens | None = None,
                text: Sequence[str] | Sequence[Sequence[str]] | None = None,
                text_embedding: Tensor | None = None, points: Tensor | None = None,
                point_labels: Tensor | None = None, boxes: Tensor | None = None,
                target: Tensor | None = None, input_size: Sequence[int] | None = None) -> MaskOutput:
        """Mask logits ``(B, K, D, H, W)`` for K prompts per image; loss if ``target`` is given.

        ``image_tokens`` (precomputed, e.g. the recipe's encoder output) skip the own encoder;
        ``input_size`` is then the volume size the prompts refer to (default: grid x patch).
        """
        if image_tokens is None:
            if volume is None:
                raise ValueError("SegVolHead needs volume= or image_tokens=")
            check_volume(volume)
            image_tokens = self.encode_image(volume)
        if image_tokens.grid is None:
            raise ValueError("SegVolHead needs image tokens with a (d, h, w) grid")
        grid = image_tokens.grid
        if volume is not None:
            size = tuple(volume.shape[2:])
        elif input_size is not None:
            size = triple(input_size, "input_size")
        else:
            size = tuple(g * p for g, p in zip(grid, self.patch_size))
        b = image_tokens.tokens.shape[0]
        image = image_tokens.tokens.transpose(1, 2).reshape(b, -1, *grid)
        if image.shape[1] != self.embed_dim:
            raise ValueError(f"image tokens have width {image.shape[1]}, the head expects "
                             f"{self.embed_dim}")

        if text is not None:
            if text_embedding is not None:
                raise ValueError("pass text= or text_embedding=, not both")
            if len(text) != b:
                raise ValueError(f"text has {len(text)} entries for {b} images")
            text_embedding = self.embed_text(text)
        prompts = {"text_embedding": _per_prompt(text_embedding, 2, b, "text_embedding"),
                   "points": _per_prompt(points, 3, b, "points"),
                   "point_labels": _per_prompt(point_labels, 2, b, "point_labels"),
                   "boxes": _per_prompt(boxes, 2, b, "boxes")}
        ks = {name: p.shape[1] for name, p in prompts.items() if p is not None}
        k = max(ks.values(), default=1)
        if any(v not in (1, k) for v in ks.values()):
            raise ValueError(f"prompt counts per image disagree: {ks} (each must be 1 or {k})")
        flat = {name: (p.expand(b, k, *p.shape[2:]).flatten(0, 1) if p is not None else None)
                for name, p in prompts.items()}
        for name in ("boxes", "text_embedding"):
            if flat[name] is not None:
                flat[name] = flat[name].to(image.dtype)

        sparse, dense = self.prompt_encoder(b * k, grid, size, **flat)
        low, _ = self.mask_decoder(image, self.prompt_encoder.dense_pe(grid).to(image.dtype),
                                   sparse, dense, flat["text_embedding"])
        logits = F.interpolate(low, size=size, mode="trilinear", align_corners=False)
        logits = logits.reshape(b, k, *size)
        loss = self.loss(logits, target) if target is not None else None
        return MaskOutput(logits=logits, loss=loss)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Dice (MONAI, sigmoid) + BCE-with-logits over ``(B, K, D, H, W)``; unweighted (M3D)."""
        if target.shape != logits.shape:
            raise ValueError(f"target shape {tuple(target.shape)} differs from the mask logits "
                             f"{tuple(logits.shape)} (one target mask per prompt)")
        target = target.to(logits.dtype)
        return self.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)

    def load_segvol_checkpoint(self, path: str | Path) -> list[str]:
        """Load SegVol's released weights layout (see docs/segvol.md); returns skipped keys."""
        state = read_state_dict(path)
        return self.load_segvol_state_dict(state, source=str(path))

    def load_segvol_state_dict(self, state: dict[str, Tensor], source: str = "state dict"
                               ) -> list[str]:
        """SegVol key names -> this module; raises listing missing/unexpected keys and shape
        mismatches. Returns the checkpoint keys that were skipped on purpose (ignored SegVol keys;
        the encoder when shared; the text tower when built without one)."""
        own = self.state_dict()
        mapped, skipped = segvol_to_zoo_keys(state, own)
        if self.image_encoder is None:
            skipped += [k for k in mapped if k.startswith("image_encoder.")]
        if self.text_encoder is None:
            skipped += [k for k in mapped if k.startswith("text_encoder.")]
        mapped = {k: v for k, v in mapped.items() if k not in skipped}
        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"{source} does not match the SegVol head: missing keys "
                                  f"{_shorten(missing)}, unexpected keys {_shorten(unexpected)}")
        wrong = {k: (tuple(mapped[k].shape), tuple(v.shape)) for k, v in own.items()
                 if mapped[k].shape != v.shape}
        if wrong:
            raise CheckpointError(f"{source}: shape mismatch (checkpoint, model) {wrong} (check "
                                  "image_size, patch_size and widths)")
        self.load_state_dict(mapped, strict=True)
        return sorted(skipped)


def _shorten(keys: list[str], n: int = 20) -> str:
    return str(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def segvol_to_zoo_keys(state: dict[str, Tensor], own: dict[str, Tensor] | None = None
                       ) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a SegVol state dict into this head's names; returns (renamed, ignored keys).

    Rules: strip a wrapper prefix (``module.`` from DataParallel, ``model.``); drop
    :data:`IGNORED_SEGVOL_KEYS`; ``text_encoder.clip_text_model.text_model.X`` ->
    ``text_encoder.clip_text_model.X`` when the installed transformers' CLIPTextModel has no
    ``text_model`` level (transformers >= 5; decided from ``own`` keys). Everything else keeps
    its name.
    """
    keep_text_level = own is not None and any(
        k.startswith("text_encoder.clip_text_model.text_model.") for k in own)
    out, ignored = {}, []
    for key, value in state.items():
        name = key
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):].startswith(SEGVOL_PARTS):
                name = name[len(prefix):]
                break
        if any(p.search(name) for p in IGNORED_SEGVOL_KEYS):
            ignored.append(key)
            continue
        old = "text_encoder.clip_text_model.text_model."
        if name.startswith(old) and not keep_text_level:
            name = "text_encoder.clip_text_model." + name[len(old):]
        out[name] = value
    return out, ignored


# SegVol's prompt encoder (build_sam.py: mask_in_chans=16) has SAM's mask-prompt convs:
# Conv2d(1, 4, 2, 2), LayerNorm2d(4), GELU, Conv2d(4, 16, 2, 2), LayerNorm2d(16), GELU,
# Conv2d(16, E, 1). Its forward passes masks=None, so they are never called.
MASK_IN_CHANS = 16


def mask_downscaling_tensors(embed_dim: int) -> dict[str, Tensor]:
    """SegVol's ``prompt_encoder.mask_downscaling.*`` with their shapes, for exports that SegVol's
    and M3D's strict loaders must accept: convs zero, LayerNorm2d weights one (no forward path
    of SegVol reads them, so these values change no output)."""
    quarter = MASK_IN_CHANS // 4
    shapes = {"0.weight": (quarter, 1, 2, 2), "0.bias": (quarter,), "1.weight": (quarter,),
              "1.bias": (quarter,), "3.weight": (MASK_IN_CHANS, quarter, 2, 2),
              "3.bias": (MASK_IN_CHANS,), "4.weight": (MASK_IN_CHANS,), "4.bias": (MASK_IN_CHANS,),
              "6.weight": (embed_dim, MASK_IN_CHANS, 1, 1), "6.bias": (embed_dim,)}
    return {f"prompt_encoder.mask_downscaling.{k}": (torch.ones(v) if k in ("1.weight", "4.weight")
                                                     else torch.zeros(v))
            for k, v in shapes.items()}


def zoo_to_segvol_keys(state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """This head's state dict in SegVol's released layout, complete for SegVol's strict
    ``load_state_dict`` (and, with ``prefix="model."``, for M3D's ``initialize_seg_modules``):
    the CLIP tower gets its ``text_model.`` level and the persistent ``position_ids`` buffer of
    the transformers SegVol was trained with, and :func:`mask_downscaling_tensors` are added
    when the prompt encoder is in ``state``."""
    out = {}
    text_level = "text_encoder.clip_text_model."
    for key, value in state.items():
        if key.startswith(text_level) and not key.startswith(text_level + "text_model."):
            key = text_level + "text_model." + key[len(text_level):]
        out[key] = value
    table = out.get(text_level + "text_model.embeddings.position_embedding.weight")
    if table is not None:
        out.setdefault(text_level + "text_model.embeddings.position_ids",
                       torch.arange(table.shape[0])[None])
    no_mask = out.get("prompt_encoder.no_mask_embed.weight")
    if no_mask is not None:
        for key, value in mask_downscaling_tensors(no_mask.shape[1]).items():
            out.setdefault(key, value.to(no_mask.dtype))
    return {prefix + k: v for k, v in out.items()}


def build_segvol(image_size: Sequence[int], patch_size: Sequence[int], embed_dim: int,
                 encoder: str, encoder_kwargs: dict[str, Any] | None, share_encoder: bool,
                 decoder_depth: int, decoder_heads: int, decoder_mlp_dim: int,
                 upscaling_norm: str, text_tower: SegVolTextEncoder | None,
                 segvol_point_order: bool, pretrained: str | None) -> SegVolHead:
    """Assemble a :class:`SegVolHead` (shared by the registered builders)."""
    image_size, patch_size = triple(image_size, "image_size"), triple(patch_size, "patch_size")
    grid = tuple(s // p for s, p in zip(image_size, patch_size))
    image_encoder = None
    if not share_encoder:
        kwargs = dict(img_size=image_size, patch_size=patch_size, hidden_size=embed_dim)
        image_encoder = ENCODERS.build(encoder, **{**kwargs, **(encoder_kwargs or {})})
    head = SegVolHead(
        image_encoder,
        SegVolPromptEncoder(embed_dim, segvol_point_order=segvol_point_order),
        SegVolMaskDecoder(embed_dim, decoder_depth, decoder_heads, decoder_mlp_dim,
                          text_dim=embed_dim, upscaling_norm=upscaling_norm, grid=grid),
        text_tower, image_size, patch_size)
    if pretrained and not on_meta():
        head.load_segvol_checkpoint(pretrained)
    return head


# SegVol's image encoder: MONAI ViT-B, perceptron patch embedding, no CLS, no qkv bias.
SEGVOL_VIT = dict(in_channels=1, depth=12, num_heads=12, mlp_dim=3072, qkv_bias=False,
                  cls_token=False, dropout=0.0, pos_embed="learnable")


@HEADS.register
@renamed(checkpoint="pretrained=VALUE", clip_path="text_pretrained=VALUE")
def segvol(image_size: Sequence[int] = (32, 256, 256), patch_size: Sequence[int] = (4, 16, 16),
           embed_dim: int = 768, encoder: str = "vit3d",
           encoder_kwargs: dict[str, Any] | None = None, share_encoder: bool = False,
           decoder_depth: int = 2, decoder_heads: int = 8, decoder_mlp_dim: int = 2048,
           upscaling_norm: str = "segvol", text_tower: bool = True,
           text_pretrained: str | None = None, segvol_point_order: bool = True,
           pretrained: str | None = None) -> SegVolHead:
    """SegVol as published: ViT-B/(4, 16, 16) at 32 x 256 x 256 (built by name, ``encoder``,
    with ``encoder_kwargs`` overriding SegVol's ViT settings), prompt encoder, two-way decoder
    (depth 2, width 768, MLP 2048, 8 heads) and, with ``text_tower``, a frozen CLIP text tower
    built from the local folder ``text_pretrained`` (SegVol's ``config/clip``: config and
    tokenizer, the weights then come from ``pretrained``; or any CLIP folder with weights).
    ``share_encoder=True`` builds no image encoder: forward then takes the recipe's
    ``image_tokens``. ``pretrained`` loads SegVol's released layout from a local file."""
    tower = None
    if text_tower:
        if text_pretrained is None and not on_meta():
            raise ConfigError("segvol: text_tower=True needs text_pretrained= (a local CLIP folder "
                              "with "
                              "config and tokenizer, e.g. SegVol's config/clip), or set "
                              "text_tower=False")
        tower = clip_text_tower(text_pretrained, out_dim=embed_dim)
        if tower.weights_from_checkpoint and not pretrained and not on_meta():
            raise ConfigError(f"segvol: text_pretrained={text_pretrained} has a config and "
                              "tokenizer but no weights; they are in SegVol's checkpoint: set "
                              "pretrained=")
    return build_segvol(image_size, patch_size, embed_dim, encoder,
                        {**SEGVOL_VIT, **(encoder_kwargs or {})}, share_encoder, decoder_depth,
                        decoder_heads, decoder_mlp_dim, upscaling_norm, tower,
                        segvol_point_order, pretrained)


@HEADS.register
@renamed(checkpoint="pretrained=VALUE")
def test_segvol(image_size: Sequence[int] = (16, 32, 32), patch_size: Sequence[int] = (4, 8, 8),
                embed_dim: int = 32, share_encoder: bool = False, text_tower: bool = True,
                upscaling_norm: str = "segvol", pretrained: str | None = None) -> SegVolHead:
    """Tiny SegVol for tests: 16 x 32 x 32 input, patch (4, 8, 8) -> grid 4 x 4 x 4, width 32,
    ``test_vit3d`` encoder (1 block), decoder depth 1 with 2 heads and MLP 64, and a tiny random
    CLIP text tower with an in-memory character tokenizer."""
    tower = tiny_clip_text_tower(out_dim=embed_dim) if text_tower else None
    encoder_kwargs = dict(depth=1, num_heads=2, mlp_dim=64, cls_token=False)
    return build_segvol(image_size, patch_size, embed_dim, "test_vit3d", encoder_kwargs,
                        share_encoder, 1, 2, 64, upscaling_norm, tower, True, pretrained)


def segvol_parameter_counts(**overrides: Any) -> dict[str, int]:
    """Per-component parameter counts of the stand-alone SegVol (built on meta, default CLIP
    ViT-B/32 text config): image_encoder, text tower (CLIP, dim_align), prompt_encoder, and the
    mask decoder split into transformer, output_upscaling (its spatial LayerNorm separately),
    hypernetworks, IoU head, text alignment and tokens; plus ``total``."""
    with torch.device("meta"):
        head = segvol(**overrides)

    def n(module: nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    dec = head.mask_decoder
    counts = {
        "image_encoder": n(head.image_encoder),
        "text_encoder.clip_text_model": n(head.text_encoder.clip_text_model) if head.text_encoder else 0,
        "text_encoder.dim_align": n(head.text_encoder.dim_align) if head.text_encoder else 0,
        "prompt_encoder": n(head.prompt_encoder),
        "mask_decoder.transformer": n(dec.transformer),
        "mask_decoder.output_upscaling (convs)": n(dec.output_upscaling) - n(dec.output_upscaling[1]),
        "mask_decoder.output_upscaling.1 (LayerNorm)": n(dec.output_upscaling[1]),
        "mask_decoder.output_hypernetworks_mlps": n(dec.output_hypernetworks_mlps),
        "mask_decoder.iou_prediction_head": n(dec.iou_prediction_head),
        "mask_decoder.txt_align_upscaled_embedding": n(dec.txt_align_upscaled_embedding),
        "mask_decoder.tokens": n(dec.iou_token) + n(dec.mask_tokens),
    }
    counts["total"] = n(head)
    if sum(v for k, v in counts.items() if k != "total") != counts["total"]:
        raise RuntimeError("segvol_parameter_counts: components do not add up to the total")
    return counts


__all__ = ["SegVolHead", "segvol", "test_segvol", "segvol_parameter_counts", "read_state_dict",
           "segvol_to_zoo_keys", "zoo_to_segvol_keys", "mask_downscaling_tensors"]
