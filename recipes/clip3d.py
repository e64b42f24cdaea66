"""M3D-CLIP (Bai et al. 2024): contrastive pretraining of a 3D image encoder against reports.

Tensor contract: ``batch["image"] (B, C, D, H, W)``, ``batch["input_ids"]/["attention_mask"]
(B, T)`` from the samples' answers (the reports of ``caption`` samples). One stage, ``pretrain``,
trains everything (docs/reference.md A: LR 1e-4, weight decay 0.1, cosine). The encoder can be handed
to LaMed afterwards with ``encoder.pretrained=`` (weights under ``encoder.``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from zoo.registry import RECIPES
from zoo.types import Stage, StepOutput, ZooModel


class CLIP3D(ZooModel):
    """3D encoder + contrastive head (image and text towers, symmetric InfoNCE)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, stages: dict[str, Stage],
                 max_length: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({"contrastive": head})
        self.stages = stages
        self.max_length = max_length

    @property
    def head(self) -> nn.Module:
        return self.heads["contrastive"]

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().collate(samples)
        batch.update(self.head.tokenize([s["answer"] for s in samples], self.max_length))
        return batch

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        out = self.head(self.encoder(batch["image"]), batch["input_ids"], batch["attention_mask"])
        return StepOutput(out.loss, {"logit_scale": float(out.logit_scale)})

    @torch.no_grad()
    def similarity(self, batch: dict[str, Any]) -> Tensor:
        """``(B_image, B_text)`` scaled cosine similarities (M3D-CLIP's ``logits_per_image``)."""
        image, text = self.embed_pairs(batch)
        return self.head.similarity(image, text)

    @torch.no_grad()
    def embed_pairs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Unit image and text embeddings ``(B, E)`` each, for retrieval evaluation."""
        out = self.head(self.encoder(batch["image"]), batch["input_ids"], batch["attention_mask"])
        return out.image, out.text


@RECIPES.register
def clip3d(encoder: Callable[..., Any], head: Callable[..., Any], tokenizer: Any = None,
           max_length: int = 128, lr: float = 1e-4, weight_decay: float = 0.1,
           epochs: float = 100.0, batch_size: int = 8, warmup_ratio: float = 0.03,
           init_from: str | None = None) -> CLIP3D:
    """M3D-CLIP: ``encoder`` + contrastive ``head`` trained on image-report pairs.

    ``tokenizer``: a local tokenizer directory for the head's text tower; None uses the
    ``init_from`` folder's tokenizer when it has one, else the offline benchmark tokenizer
    (ignored when the head loads its own text model by ``text_pretrained``).

    ``init_from``: M3D-CLIP's release folder (or a state-dict file of ``M3DCLIP``), loaded by
    :func:`zoo.pretrained.m3d_clip.load_m3d_clip` into the components built here (``encoder=
    vit3d_base_m3d head=contrastive`` for the release); the report is ``model.init_report``.
    """
    if tokenizer is None and init_from:
        from zoo.pretrained.m3d_clip import has_tokenizer

        tokenizer = init_from if has_tokenizer(init_from) else None
    if tokenizer is None:
        from zoo.tokenizer import benchmark_tokenizer

        tokenizer = benchmark_tokenizer()
    vision = encoder()
    contrastive_head = head(image_dim=vision.out_dim, tokenizer=tokenizer)
    stages = {"pretrain": Stage("pretrain", trainable=("encoder", "heads"),
                                tasks=("caption",), lr=lr, weight_decay=weight_decay,
                                epochs=epochs, warmup_ratio=warmup_ratio, batch_size=batch_size)}
    model = CLIP3D(vision, contrastive_head, stages, max_length)
    from zoo.pretrained.m3d_clip import load_m3d_clip
    from zoo.pretrained.report import init_from as load_init

    load_init(model, init_from, load_m3d_clip)
    return model
