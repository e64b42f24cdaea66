"""A toy recipe and data source for testing the generic training loop without real components."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from zoo.types import Stage, StepOutput, ZooModel


class ToyData:
    """Volumes whose mean intensity encodes a 2-class label; deterministic."""

    def __init__(self, n: int = 24, size: tuple[int, int, int] = (4, 8, 8)) -> None:
        g = torch.Generator().manual_seed(1)
        self.samples = []
        for i in range(n):
            label = i % 2
            image = torch.rand(1, *size, generator=g) * 0.5 + 0.5 * label
            self.samples.append({"image": image, "label": label, "task": "cls",
                                 "meta": {"id": f"case{i}"}})
        self.split_hash = hashlib.sha256(b"toy").hexdigest()

    def dataset(self, split: str, tasks=None):
        if split == "train":
            return self.samples[:16]
        return self.samples[16:]


class ToyModel(ZooModel):
    def __init__(self, size=(4, 8, 8), dropout: float = 0.0) -> None:
        super().__init__()
        voxels = size[0] * size[1] * size[2]
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(voxels, 8), nn.Tanh(),
                                     nn.Dropout(dropout))
        self.heads = nn.ModuleDict({"cls": nn.Linear(8, 2)})
        self.stages = {
            "warmup": Stage("warmup", trainable=("heads",), lr=0.05, epochs=4, batch_size=4),
            "full": Stage("full", trainable=("encoder", "heads"), lr=0.005, epochs=2,
                          batch_size=4),
        }

    def forward(self, batch):
        logits = self.heads["cls"](self.encoder(batch["image"]))
        label = torch.as_tensor(batch["label"], device=logits.device)
        loss = nn.functional.cross_entropy(logits, label)
        return StepOutput(loss, {"acc": float((logits.argmax(-1) == label).float().mean())})
