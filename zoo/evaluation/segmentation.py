"""Segmentation Dice (semantic and referring segmentation, docs/reference.md C) with MONAI.

``dice_soft`` is M3D's as-coded metric (Dice on probabilities); ``dice`` thresholds at 0.5 first.
Both come from ``monai.losses.DiceLoss`` (``1 - loss`` per item and channel, mean over channels,
MONAI's default smoothing 1e-5 so an empty prediction of an empty target scores 1). Masks are
``(B, K, D, H, W)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _dice(pred: Tensor, target: Tensor) -> Tensor:
    from monai.losses import DiceLoss

    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"Dice needs prediction and target of the same (B, K, D, H, W) shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    loss = DiceLoss(reduction="none")(pred.float(), target.float())  # (B, K, 1, 1, 1)
    return 1.0 - loss.flatten(1).mean(1)


def dice_scores(probs: Tensor, target: Tensor, threshold: float = 0.5) -> list[dict[str, float]]:
    """Per item ``{"dice": thresholded, "dice_soft": on probabilities}``."""
    soft = _dice(probs, target)
    hard = _dice((probs > threshold).float(), target)
    return [{"dice": float(h), "dice_soft": float(s)} for h, s in zip(hard, soft)]


def empty_mask_scores(target: Tensor) -> list[dict[str, float]]:
    """The empty-mask baseline's scores on targets ``(B, K, D, H, W)``."""
    return dice_scores(torch.zeros_like(target, dtype=torch.float32), target)
