"""Classification metrics (Med3DInsight downstream) from torchmetrics: accuracy and AUROC.

``probs`` is ``(N,)`` (positive-class probability, binary) or ``(N, K)`` (class probabilities).
"""

from __future__ import annotations

import torch
from torch import Tensor


def classification_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    from torchmetrics.functional.classification import (binary_accuracy, binary_auroc,
                                                        multiclass_accuracy, multiclass_auroc)

    labels = labels.long()
    if probs.dim() == 2 and probs.shape[1] == 2:
        probs = probs[:, 1]
    if probs.dim() == 1:
        out = {"accuracy": float(binary_accuracy(probs, labels))}
        if labels.unique().numel() == 2:
            out["auroc"] = float(binary_auroc(probs, labels))
        return out
    k = probs.shape[1]
    out = {"accuracy": float(multiclass_accuracy(probs, labels, num_classes=k, average="micro"))}
    if labels.unique().numel() == k:
        out["auroc"] = float(multiclass_auroc(probs, labels, num_classes=k))
    return out


def predicted_class(probs: Tensor) -> Tensor:
    if probs.dim() == 2 and probs.shape[1] > 1:
        return probs.argmax(1)
    probs = probs.reshape(-1)
    return (probs >= 0.5).long()


def as_probs(output: object) -> Tensor:
    """A ``classify`` output (tensor of probabilities, or an object with ``.probs``) as a tensor."""
    probs = getattr(output, "probs", output)
    if not isinstance(probs, Tensor):
        probs = torch.as_tensor(probs)
    return probs.detach().float().cpu()
