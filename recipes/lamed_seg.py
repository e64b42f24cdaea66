"""The ``[SEG]`` path of M3D-LaMed (Bai et al. 2024): LM hidden states -> SegVol prompts -> masks.

The last-layer hidden state at the position that *predicts* ``[SEG]`` (teacher forcing: the
positions whose next label is ``[SEG]``; generation: the state that produced a generated ``[SEG]``)
goes through :class:`SegProjector` (Linear(H, H), ReLU, Linear(H, E), Dropout 0.1) and is used as
the SegVol head's text-prompt embedding ``(E,)``. Each ``[SEG]`` token gets its own mask (M3D
averages the masks of several tokens; here they stay separate, one target channel per token).

Shapes: hidden states ``(B, T, H)``, prompts ``(K_i, E)`` per sample, masks ``(K_i, D, H, W)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from zoo.errors import ConfigError, DataError
from zoo.types import VisualTokens


class SegProjector(nn.Sequential):
    """``(N, H) -> (N, E)``: Linear(H, H), ReLU, Linear(H, E), Dropout (M3D's ``[SEG]`` MLP)."""

    def __init__(self, hidden_size: int, prompt_dim: int, dropout: float = 0.1) -> None:
        super().__init__(nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                         nn.Linear(hidden_size, prompt_dim), nn.Dropout(dropout))


def teacher_seg_positions(labels: Tensor, seg_id: int) -> Tensor:
    """``(B, T)`` bool: positions whose next label is ``[SEG]`` (their state predicts it)."""
    where = torch.zeros_like(labels, dtype=torch.bool)
    where[:, :-1] = labels[:, 1:] == seg_id
    return where


def generated_seg_positions(ids: Tensor, seg_id: int, eos_id: int | None) -> Tensor:
    """``(B, T_new)`` bool: generated ``[SEG]`` tokens before each row's first eos."""
    where = ids == seg_id
    if eos_id is not None:
        where &= (ids == eos_id).long().cumsum(1) == 0
    return where


def batch_masks(batch: dict[str, Any], size: int) -> list[Tensor | None]:
    """Per-sample target masks ``(K, D, H, W)`` (or ``None``): the collator stacks ``mask`` only
    when every sample has one of one shape, else keeps a list."""
    masks = batch.get("mask")
    if masks is None:
        return [None] * size
    if isinstance(masks, Tensor):
        return list(masks.unbind(0))
    if len(masks) != size:
        raise ValueError(f"batch['mask'] has {len(masks)} entries for {size} samples")
    return list(masks)


def seg_target(mask: Tensor, count: int, index: int) -> Tensor:
    """The sample's mask ``(K, D, H, W)`` as ``count`` targets, one per ``[SEG]`` token: K must
    equal ``count`` (token k <-> channel k), or be 1 (shared by every token)."""
    if mask.dim() != 4:
        raise DataError(f"sample {index}: mask must be (K, D, H, W), got {tuple(mask.shape)}")
    if mask.shape[0] == count:
        return mask
    if mask.shape[0] == 1:
        return mask.expand(count, *mask.shape[1:])
    raise DataError(f"sample {index}: the answer has {count} [SEG] tokens but the mask has "
                    f"{mask.shape[0]} channels (need one channel per [SEG], or one shared)")


def run_head(head: nn.Module, image: Tensor, tokens: VisualTokens, prompts: list[Tensor],
             targets: list[Tensor] | None = None) -> tuple[list[Tensor], Tensor | None, int]:
    """SegVol on the samples of ``image (N, C, D, H, W)`` / ``tokens`` (N rows) with prompts
    ``[(K_i, E)]`` (K_i >= 1); samples sharing a K run as one batch.

    Returns the mask logits ``[(K_i, D, H, W)]``, the Dice + BCE loss averaged over the masks
    (when ``targets`` ``[(K_i, D, H, W)]`` are given) and the number of masks."""
    logits: list[Tensor | None] = [None] * len(prompts)
    total, count = None, 0
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.shape[0], []).append(i)
    for k, rows in groups.items():
        sub = VisualTokens(tokens.tokens[rows], tokens.grid)
        target = torch.stack([targets[i] for i in rows]) if targets is not None else None
        out = head(image[rows], image_tokens=sub, text_embedding=torch.stack([prompts[i] for i in rows]),
                   target=target)
        for row, value in zip(rows, out.logits):
            logits[row] = value
        if out.loss is not None:
            total = out.loss * (k * len(rows)) + (total if total is not None else 0.0)
        count += k * len(rows)
    loss = total / count if total is not None else None
    return logits, loss, count  # type: ignore[return-value]


def save_mask_nifti(mask: Tensor, meta: dict[str, Any], path: str | Path) -> Path:
    """Write a model-space mask ``(D, H, W)`` (or ``(K, D, H, W)``, saved as a 4D image) as NIfTI.

    Prepared NIfTI/DICOM inputs carry ``meta["affine"]``: the voxel-to-world (RAS) affine of the
    prepared ``(X, Y, Z)`` array, whose storage order is the transpose of ``(D, H, W)``; the
    mask is written in that frame, so it overlays the source scan in any viewer (it is not
    resampled back to the source grid). Without an affine (npy inputs) the identity is used
    with the stored spacing on the diagonal."""
    import nibabel as nib
    import numpy as np

    array = mask.detach().cpu().float().numpy()
    if array.ndim not in (3, 4):
        raise ValueError(f"mask must be (D, H, W) or (K, D, H, W), got {array.shape}")
    array = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    affine = meta.get("affine")
    if affine is None:
        spacing = meta.get("spacing") or (1.0, 1.0, 1.0)
        affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"meta['affine'] must be 4 x 4, got {affine.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(path))
    return path


def build_seg_head(head: Callable[..., Any], vision: Any, image_size: Sequence[int],
                   share_encoder: bool | None) -> Any:
    """The SegVol head for the ``[SEG]`` path, built at the recipe's ``image_size`` without a
    CLIP text tower (the LM supplies the prompts). ``share_encoder`` (None: the head factory's
    own setting) makes it read the recipe encoder's patch tokens: its width becomes the
    encoder's width and its patch size ``image_size / grid``; the encoder must give a grid."""
    if share_encoder is None:
        share_encoder = bool(getattr(head, "keywords", {}).get("share_encoder", False))
    kwargs: dict[str, Any] = dict(image_size=tuple(int(s) for s in image_size),
                                  share_encoder=share_encoder, text_tower=False)
    if share_encoder:
        _, grid = vision.output_layout(kwargs["image_size"])
        if grid is None or any(s % g for s, g in zip(kwargs["image_size"], grid)):
            raise ConfigError(f"recipe.share_encoder=true: encoder tokens have grid {grid}, which "
                              f"does not tile image_size {kwargs['image_size']}; SegVol needs a "
                              "(d, h, w) patch grid (use share_encoder=false)")
        kwargs.update(patch_size=tuple(s // g for s, g in zip(kwargs["image_size"], grid)),
                      embed_dim=vision.out_dim)
    return head(**kwargs)
