"""Linear classification head over pooled visual tokens (Med3DInsight's classification downstream).

Tokens ``(B, N, C)`` are pooled to ``(B, C)`` (``mean``, ``max``, or ``cls`` = the encoder's class
token in ``extras["cls"]``), layer-normed, passed through dropout and ``Linear(C, num_classes)``;
the loss is cross-entropy with integer labels ``(B,)``. Accuracy and AUROC are computed from the
logits by the evaluation code (torchmetrics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError, DataError
from zoo.registry import HEADS
from zoo.types import VisualTokens

POOLS = ("mean", "max", "cls")


@dataclass
class ClassOutput:
    """Class logits ``(B, num_classes)`` and the cross-entropy when labels were given."""

    logits: Tensor
    loss: Tensor | None = None


class LinearClassifier(nn.Module):
    """Pool -> LayerNorm -> dropout -> Linear; ``forward(visual, labels=None) -> ClassOutput``."""

    def __init__(self, in_dim: int, num_classes: int, pool: str = "mean",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}")
        if in_dim < 1 or num_classes < 2:
            raise ConfigError(f"in_dim must be >= 1 and num_classes >= 2, got {in_dim}, "
                              f"{num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.num_classes, self.pool = in_dim, num_classes, pool
        self.norm = nn.LayerNorm(in_dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)

    def pooled(self, visual: VisualTokens) -> Tensor:
        if visual.dim != self.in_dim:
            raise ValueError(f"classifier built for width {self.in_dim}, got tokens of width "
                             f"{visual.dim}")
        if self.pool == "cls":
            if "cls" not in visual.extras:
                raise ValueError("pool='cls' needs the encoder's class token in extras['cls']; "
                                 "this encoder gives none (use pool='mean')")
            return visual.extras["cls"]
        return visual.tokens.mean(1) if self.pool == "mean" else visual.tokens.amax(1)

    def forward(self, visual: VisualTokens, labels: Tensor | None = None) -> ClassOutput:
        logits = self.fc(self.drop(self.norm(self.pooled(visual))))
        loss = None
        if labels is not None:
            labels = labels.long().reshape(-1)
            if labels.numel() != logits.shape[0]:
                raise ValueError(f"got {labels.numel()} labels for a batch of {logits.shape[0]}")
            if bool(((labels < 0) | (labels >= self.num_classes)).any()):
                raise DataError(f"labels must lie in 0..{self.num_classes - 1}, got "
                                f"{labels.tolist()}")
            loss = F.cross_entropy(logits, labels)
        return ClassOutput(logits, loss)


@HEADS.register
def linear_classifier(in_dim: int, num_classes: int = 2, pool: str = "mean",
                      dropout: float = 0.0) -> LinearClassifier:
    """Pooled bottleneck features + linear layer; ``in_dim`` is the encoder's ``out_dim``."""
    return LinearClassifier(in_dim, num_classes, pool, dropout)


@HEADS.register
def test_linear_classifier(in_dim: int, num_classes: int = 3, pool: str = "mean",
                           dropout: float = 0.0) -> LinearClassifier:
    """Linear classifier for tests (three classes by default)."""
    return LinearClassifier(in_dim, num_classes, pool, dropout)
