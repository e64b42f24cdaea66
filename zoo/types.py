"""Contracts shared by every component (docs/design.md section 4).

Tensor layouts:
- volumes: ``(B, C, D, H, W)`` float, finite; spacing and orientation travel in sample metadata;
- visual tokens: ``(B, N, C)`` with an optional ``(d, h, w)`` grid such that ``d * h * w == N``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from zoo.errors import DataError

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
COMPONENT_KEYS: tuple[str, ...] = ("encoder", "bridge", "connector", "lm", "heads")
# Values of a sample's "task" key (docs/design.md section 6; M3D-Bench tasks plus classification).
# Image-text retrieval is evaluated on "caption" samples; "slice" samples are the (volume, 2D slice,
# slice text) triplets of Med3DInsight pretraining.
TASK_NAMES: tuple[str, ...] = ("caption", "vqa_closed", "vqa_open", "rec", "reg", "seg", "refseg",
                               "cls", "slice")


def stack_batch(tensors: list[Tensor]) -> Tensor:
    """``torch.stack(tensors)`` through ``torch.utils.data.default_collate``: inside a DataLoader
    worker the stacked batch is written straight into shared memory, saving the copy the worker
    would otherwise make to hand it to the training process (docs/performance.md, "Data
    pipeline")."""
    from torch.utils.data import default_collate

    return default_collate(tensors)


def check_volume(volume: Tensor, name: str = "volume", channels: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``volume`` is a finite float (B, C, D, H, W)."""
    if not isinstance(volume, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(volume).__name__}")
    if volume.dim() != 5:
        raise ValueError(f"{name} must have shape (B, C, D, H, W); got rank {volume.dim()} "
                         f"shape {tuple(volume.shape)}")
    if not volume.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {volume.dtype}")
    if channels is not None and volume.shape[1] != channels:
        raise ValueError(f"{name} has {volume.shape[1]} channels, expected {channels} "
                         f"(shape {tuple(volume.shape)})")
    # The finiteness check reads a value back from the device; it is skipped under torch.compile
    # (it would break the graph) and on meta (no values).
    if volume.device.type != "meta" and not torch.compiler.is_compiling() \
            and not bool(torch.isfinite(volume).all()):
        raise DataError(f"{name} contains NaN or infinite values")


@dataclass
class VisualTokens:
    """Visual tokens ``(B, N, C)``; ``grid`` is the ``(d, h, w)`` layout of N when it has one."""

    tokens: Tensor
    grid: tuple[int, int, int] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3:
            raise ValueError(f"VisualTokens.tokens must be (B, N, C), got shape "
                             f"{tuple(self.tokens.shape)}")
        if self.grid is not None:
            self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
            n = self.grid[0] * self.grid[1] * self.grid[2] if len(self.grid) == 3 else -1
            if n != self.tokens.shape[1]:
                raise ValueError(f"VisualTokens grid {self.grid} does not match "
                                 f"{self.tokens.shape[1]} tokens")

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def replace(self, **changes: Any) -> "VisualTokens":
        return dataclasses.replace(self, **changes)


@dataclass
class Conditioning:
    """What text-guided or slice-aware parts need; components that do not use it ignore it.

    prompt_embedding ``(B, E)``; task_id ``(B,)`` long; plane ``(B,)`` long index into
    :data:`PLANES`; slice_index ``(B,)`` long index along that plane's axis.
    """

    prompt_embedding: Tensor | None = None
    task_id: Tensor | None = None
    plane: Tensor | None = None
    slice_index: Tensor | None = None


Grid = tuple[int, int, int]


@runtime_checkable
class Encoder(Protocol):
    """``forward(volume (B, C, D, H, W), cond) -> VisualTokens`` of width ``out_dim``.

    ``output_layout(spatial_size)`` gives ``(num_tokens, grid)`` for a ``(D, H, W)`` input before
    any forward, so collators can size the image placeholder.
    """

    out_dim: int

    def output_layout(self, spatial_size: tuple[int, int, int]) -> tuple[int, Grid | None]: ...

    def forward(self, volume: Tensor, cond: Conditioning | None = None) -> VisualTokens: ...


@runtime_checkable
class Bridge(Protocol):
    """``forward(visual, cond) -> VisualTokens``; ``output_layout`` maps an input layout."""

    out_dim: int

    def output_layout(self, num_tokens: int, grid: Grid | None) -> tuple[int, Grid | None]: ...

    def forward(self, visual: VisualTokens, cond: Conditioning | None = None) -> VisualTokens: ...


@runtime_checkable
class Connector(Protocol):
    """Maps visual tokens into the LLM width ``out_dim``.

    ``num_out_tokens(num_tokens, grid)`` is known before any forward (the collator needs it); it
    takes the token count as well as the grid because bridges and perceivers emit gridless tokens.
    """

    out_dim: int

    def num_out_tokens(self, num_tokens: int, grid: Grid | None = None) -> int: ...

    def forward(self, visual: VisualTokens) -> VisualTokens: ...


@dataclass
class LMOutput:
    """Causal-LM result: ``logits (B, T, V)``, last hidden state ``(B, T, H)``, loss if labels."""

    logits: Tensor
    hidden_states: Tensor | None = None
    loss: Tensor | None = None


@dataclass
class MaskOutput:
    """Segmentation result: mask logits ``(B, K, D, H, W)``, loss if targets were given."""

    logits: Tensor
    loss: Tensor | None = None


@dataclass
class EmbeddingOutput:
    """Contrastive result: L2-normalised embeddings ``(B, E)`` per tower, loss if paired."""

    image: Tensor
    text: Tensor | None = None
    logit_scale: Tensor | None = None
    loss: Tensor | None = None


@dataclass
class StepOutput:
    """One training/eval step: scalar ``loss`` to backpropagate and float ``logs``."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A training stage: what is trainable, which data mix, default optimiser settings.

    ``trainable`` holds regular expressions matched (``re.match``) against full parameter names of
    the model, e.g. ``r"connector\\."`` or ``r"lm\\..*lora_"``; ``tasks`` names the data mix
    (empty = every task the data offers).
    """

    name: str
    trainable: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: float = 1.0
    warmup_ratio: float = 0.03
    batch_size: int = 2

    def __post_init__(self) -> None:
        """The recipe's stage settings (learning rates, epochs, batch size from its config) are
        checked here, in one line naming the stage (docs/guarantees.md)."""
        from zoo.errors import ConfigError
        from zoo.settings import count, number

        where = f"stage {self.name!r}:"
        number(f"{where} lr", self.lr, 0, strict=True, meaning=" (the recipe's learning rate)")
        number(f"{where} weight_decay", self.weight_decay, 0)
        number(f"{where} epochs", self.epochs, 0, strict=True, meaning=" (the recipe's epochs)")
        number(f"{where} warmup_ratio", self.warmup_ratio, 0)
        if self.warmup_ratio >= 1:
            raise ConfigError(f"{where} warmup_ratio={self.warmup_ratio!r}: expected a number "
                              "in [0, 1)")
        count(f"{where} batch_size", self.batch_size, 1, meaning=" (the recipe's batch size)")


class ZooModel(nn.Module):
    """Base of every recipe's model: components as attributes, stages, one forward per batch.

    Subclasses set ``self.stages`` and implement ``forward(batch) -> StepOutput`` and, where the
    model produces outputs beyond a loss, ``generate(batch, **gen_kwargs)``.
    """

    stages: dict[str, Stage]

    def components(self) -> dict[str, nn.Module]:
        """The model's parts under the contract names ``encoder, bridge, connector, lm, heads``."""
        return {k: getattr(self, k) for k in COMPONENT_KEYS
                if isinstance(getattr(self, k, None), nn.Module)}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Samples -> batch. Default: stack ``image`` (and ``mask`` when every sample has one),
        keep every other key as a list. Recipes with text override this (tokenisation lives
        with the model because the image-token count does)."""
        batch: dict[str, Any] = {k: [s.get(k) for s in samples] for k in samples[0]}
        batch["image"] = stack_batch([s["image"] for s in samples])
        if all(s.get("mask") is not None for s in samples):
            batch["mask"] = stack_batch([s["mask"] for s in samples])
        return batch

    def generate(self, batch: dict[str, Any], **gen_kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not generate outputs")

    def apply_stage(self, stage: Stage | str) -> list[str]:
        """Freeze everything, then unfreeze parameters matching the stage's patterns.

        Returns the names of trainable parameters; a pattern that matches nothing raises, since it
        is almost always a typo or a component that the recipe lacks.
        """
        stage = self.stages[stage] if isinstance(stage, str) else stage
        patterns = [re.compile(p) for p in stage.trainable]
        hits = {p.pattern: 0 for p in patterns}
        trainable = []
        for name, param in self.named_parameters():
            matched = [p for p in patterns if p.match(name)]
            param.requires_grad_(bool(matched))
            for p in matched:
                hits[p.pattern] += 1
            if matched:
                trainable.append(name)
        unused = [p for p, n in hits.items() if n == 0]
        if unused:
            raise ValueError(f"stage {stage.name!r}: trainable pattern(s) {unused} match no "
                             f"parameter of {type(self).__name__}")
        return trainable

    def trainable_numel(self, param: nn.Parameter) -> int:
        """How many entries of ``param`` the current stage can change (parameter counts): all of
        them when it requires grad; recipes that mask gradients override this."""
        return param.numel() if param.requires_grad else 0

    @property
    def _no_split_modules(self) -> list[str]:
        """Class names of the blocks that sharded training wraps as units: those the components
        declare in their own ``_no_split_modules`` (a Hugging Face LM's decoder layer, vit3d's
        ``Block``), kept only where a module of that class is present. Accelerate's FSDP
        ``TRANSFORMER_BASED_WRAP`` reads this attribute when its config names no class, so one
        config file fits every encoder/LM pair (docs/scale.md)."""
        present = {type(m).__name__ for m in self.modules()}
        declared = {name for m in self.modules() if m is not self
                    for name in (getattr(m, "_no_split_modules", None) or ())}
        return sorted(declared & present)
