"""Stand-alone SegVol (Du et al. 2023): the SegVol head with its own 3D ViT, trained on
segmentation samples with their text prompts.

Tensor contract: ``batch["image"] (B, 1, D, H, W)`` at the head's input size,
``batch["mask"] (B, 1, D, H, W)``, ``batch["prompt"]`` a list of B strings. Each prompt is encoded
verbatim by the frozen CLIP text tower (the sample prompts are whole sentences such as "Please
segment the liver.", not SegVol's organ-name template) and aligned by ``dim_align``.

With an ``encoder`` (the recipe's encoder group) the head is built with ``share_encoder=True`` and
segments from that encoder's tokens (M3D runs a second ViT for SegVol; sharing is the ablation).

Stage ``train``: everything but the CLIP text tower (frozen, as in SegVol) and the decoder parts
that the single-mask output never uses (IoU head, multimask hypernetworks); Dice + BCE.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from zoo.errors import ConfigError, DataError
from zoo.registry import RECIPES
from zoo.types import MaskOutput, Stage, StepOutput, ZooModel, check_volume


class SegVolModel(ZooModel):
    """``heads``: a SegVol head with a text tower (heads/segvol.py); ``encoder``: optional shared
    encoder whose tokens replace the head's own ViT."""

    def __init__(self, head: nn.Module, stages: dict[str, Stage],
                 encoder: nn.Module | None = None, prompt_mix: bool = True) -> None:
        super().__init__()
        if getattr(head, "text_encoder", None) is None:
            raise ConfigError("recipe segvol needs a SegVol head with a text tower (text_tower=true)")
        if (encoder is None) == (head.image_encoder is None):
            raise ConfigError("recipe segvol: use either the head's own encoder (encoder=null) or "
                              "a shared encoder with share_encoder=true, not both or neither")
        self.encoder = encoder
        self.heads = head
        self.stages = stages
        self.prompt_mix = prompt_mix

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (B, 1, D, H, W), text embedding (B, 1, E))`` of a batch, checked."""
        image = batch["image"]
        check_volume(image, "batch['image']")
        if tuple(image.shape[2:]) != tuple(self.heads.image_size):
            raise ValueError(f"batch['image'] spatial size {tuple(image.shape[2:])} differs from "
                             f"the SegVol input size {self.heads.image_size} (set data.size)")
        prompts = batch.get("prompt")
        if not prompts or len(prompts) != image.shape[0]:
            raise DataError("recipe segvol needs batch['prompt'] with one text per image")
        return image, self.heads.text_encoder(list(prompts), raw=True)[:, None]

    def _segment(self, image: torch.Tensor, text: torch.Tensor, target: torch.Tensor | None,
                 tokens: Any = None, **prompts: torch.Tensor) -> MaskOutput:
        if tokens is None and self.encoder is not None:
            tokens = self.encoder(image)
        return self.heads(image, image_tokens=tokens, text_embedding=text, target=target, **prompts)

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        if batch.get("mask") is None:
            raise ConfigError("recipe segvol trains on samples with a 'mask' (tasks seg / refseg)")
        image, text = self._inputs(batch)
        target = batch["mask"].to(image.dtype)
        tokens = self.heads.encode_image(image) if self.encoder is None else self.encoder(image)
        combos = {"text": {}}
        if self.prompt_mix and bool(target.flatten(1).any(1).all()):
            combos.update(mask_prompts(target[:, 0]))
        logs, total = {}, 0.0
        for name, prompts in combos.items():
            loss = self._segment(image, text, target, tokens, **prompts).loss
            logs[f"loss_{name}"] = loss.detach()
            total = total + loss
        loss = total / len(combos)
        logs["loss"] = loss.detach()
        return StepOutput(loss=loss, logs=logs)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], **gen_kwargs: Any) -> MaskOutput:
        """Mask logits ``(B, 1, D, H, W)`` (threshold sigmoid at 0.5 for a mask)."""
        image, text = self._inputs(batch)
        return self._segment(image, text, None)

    @torch.no_grad()
    def segment_volume(self, image: torch.Tensor, text: str, rule: str | None = None
                       ) -> torch.Tensor:
        """Mask logits ``(1, 1, D, H, W)`` of ``text`` on ``image`` ``(1, 1, D, H, W)`` at any
        size: zoom-out-zoom-in (``rule`` "zoo", the default, or "segvol"; docs/segvol.md); a
        shared encoder reads the model's input size only, in one pass (no ``rule``)."""
        from heads.segvol_inference import zoom_out_zoom_in

        if self.heads.share_encoder:
            if rule is not None:
                raise ConfigError("--seg-rule: this SegVol model reads a shared encoder's tokens, "
                                  "which zoom-out-zoom-in cannot re-encode per window")
            return self.generate({"image": image, "prompt": [text]}).logits
        return zoom_out_zoom_in(self.heads, image, text=[text], rule=rule or "zoo")


def mask_prompts(mask: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Box and point prompts derived from non-empty target masks ``(B, D, H, W)`` (SegVol trains
    on several prompt combinations): ``text+box`` gets the mask's voxel box
    ``[d1, h1, w1, d2, h2, w2]``; ``text+points`` one foreground voxel (label 1) and one
    background voxel (label 0), drawn uniformly (a choice; SegVol's sampling is not restated)."""
    boxes, points = [], []
    for m in mask:
        index = torch.nonzero(m)
        boxes.append(torch.cat([index.min(0).values, index.max(0).values]))
        fg = index[torch.randint(len(index), (1,), device=m.device)][0]
        bg_index = torch.nonzero(m == 0)
        bg = bg_index[torch.randint(len(bg_index), (1,), device=m.device)][0] if len(bg_index) \
            else fg
        points.append(torch.stack([fg, bg]))
    labels = torch.tensor([[1, 0]], device=mask.device).expand(len(mask), 2)
    return {"box": {"boxes": torch.stack(boxes).float()},
            "points": {"points": torch.stack(points).float(), "point_labels": labels}}


@RECIPES.register
def segvol(head: Callable[..., Any], encoder: Callable[..., Any] | None = None,
           image_size: Sequence[int] = (32, 256, 256),
           lr: float = 1e-4, weight_decay: float = 1e-5, epochs: float = 10.0,
           batch_size: int = 2, warmup_ratio: float = 0.03,
           tasks: Sequence[str] = ("seg", "refseg"), prompt_mix: bool = True) -> SegVolModel:
    """SegVol trained alone (``head`` = a SegVol head factory, built at ``image_size``; with an
    ``encoder`` factory the head shares that encoder); ``prompt_mix`` averages the loss over
    text, text+box and text+points prompts built from the target mask (SegVol's several prompt
    combinations), else text only; one stage ``train`` with AdamW at ``lr``
    (SegVol's optimiser settings are not restated in its paper: these defaults are a choice)."""
    shared = encoder() if encoder is not None else None
    built = head(image_size=tuple(int(s) for s in image_size), share_encoder=shared is not None)
    trainable = ("heads:text_prompted", "heads:text_align") + (
        ("heads:prompt_encoder",) if prompt_mix else ()) + (("encoder",) if shared else ())
    stage = Stage(name="train", trainable=trainable,
                  tasks=tuple(tasks), lr=lr, weight_decay=weight_decay, epochs=epochs,
                  warmup_ratio=warmup_ratio, batch_size=batch_size)
    return SegVolModel(built, {"train": stage}, shared, prompt_mix)
