"""Contracts shared by every component (docs/design.md section 4).

Tensor layouts:
- volumes: ``(B, C, D, H, W)`` float, finite; spacing and orientation travel in sample metadata;
- visual tokens: ``(B, N, C)`` with an optional ``(d, h, w)`` grid such that ``d * h * w == N``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from zoo.errors import ConfigError, DataError
from zoo.registry import suggest

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


Grid = tuple[int, int, int]  # a token grid (d, h, w)
Size3 = tuple[int, int, int]  # a size in voxels (D, H, W)


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


# Parameter groups every component has, empty unless it declares them: ``new`` (parameters that do
# not come from its pretrained weights: they must learn whenever the component is used) and
# ``frozen`` (pretrained parts that stay fixed whenever the component trains).
DEFAULT_GROUPS: tuple[str, ...] = ("new", "frozen")


@runtime_checkable
class ParameterGroups(Protocol):
    """A component that names groups of its own parameters for the stages of a recipe:
    ``{group: [parameter names relative to the component]}`` (e.g. a causal LM's ``lora`` and
    ``input_embeddings``, an encoder's ``new`` and ``frozen``), so that recipes select parameters
    by role instead of by name patterns (docs/design.md section 7)."""

    def parameter_groups(self) -> dict[str, list[str]]: ...


def parameter_names(root: nn.Module, parts: Any) -> list[str]:
    """Names (relative to ``root``, in its order) of the parameters of ``parts``: modules or
    parameters inside ``root`` (None entries are skipped). Matching is by identity, so a tied
    parameter is named once, under the name ``root.named_parameters()`` gives it."""
    ids: set[int] = set()
    for part in parts:
        if isinstance(part, nn.Parameter):
            ids.add(id(part))
        elif part is not None:
            ids.update(id(p) for p in part.parameters())
    return [name for name, p in root.named_parameters() if id(p) in ids]


@runtime_checkable
class RoutedEncoder(Protocol):
    """An encoder with task-level routing switched per stage (TGH-MoE): ``set_routing("shared"
    | "specific")`` and, once at the boundary, ``init_groups_from_shared()``."""

    def set_routing(self, mode: str) -> None: ...

    def init_groups_from_shared(self) -> None: ...


# What evaluation and LM warm-up ask a model for (docs/design.md section 8): a model has the
# capability when it has the method, checked with ``isinstance(model, Protocol)``.
@runtime_checkable
class AnswerScorer(Protocol):
    """``answer_logprob(samples) -> (B,)`` summed log-likelihood of each sample's answer given its
    image and prompt (closed VQA ranks the choices by it)."""

    def answer_logprob(self, samples: list[dict[str, Any]]) -> Tensor: ...


@runtime_checkable
class Segmenter(Protocol):
    """``segment(samples) -> (texts, masks)``: ``masks[i]`` ``(K_i, D, H, W)`` probabilities
    (one per ``[SEG]`` the answer holds, for a LaMed); ``max_new_tokens`` is passed when its
    signature names it."""

    def segment(self, samples: Any, **kwargs: Any) -> tuple[list[str], Any]: ...


@runtime_checkable
class PromptSegmenter(Protocol):
    """``segment_volume(image (1, 1, D, H, W), text, rule) -> (1, 1, D, H, W)`` mask logits for a
    text prompt on a volume of any size (SegVol: zoom-out-zoom-in with ``rule`` "zoo" or
    "segvol"; with a shared encoder, one pass at the model's input size)."""

    def segment_volume(self, image: Tensor, text: str, rule: str | None = None) -> Tensor: ...


@runtime_checkable
class PairEmbedder(Protocol):
    """``embed_pairs(batch) -> (image (B, E), text (B, E))`` unit embeddings (retrieval)."""

    def embed_pairs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class Classifier(Protocol):
    """``classify(samples) -> (B,) or (B, K)`` class probabilities."""

    def classify(self, samples: list[dict[str, Any]]) -> Tensor: ...


@runtime_checkable
class TextModel(Protocol):
    """``text_loss(samples) -> ()`` language-model loss on the samples' text alone (LM warm-up)."""

    def text_loss(self, samples: list[dict[str, Any]]) -> Tensor: ...


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
    """One training/eval step: scalar ``loss`` to backpropagate and ``logs``, floats or detached
    0-dim tensors (kept on the device: the trainer reads them back only when it logs)."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A training stage: what is trainable, which data mix, default optimiser settings.

    ``trainable`` holds roles (docs/design.md section 7): ``"connector"`` (every parameter of the
    model's ``connector`` except its ``frozen`` group) or ``"lm:lora"`` (the ``lora`` group the
    ``lm`` declares in :meth:`ParameterGroups.parameter_groups`); the part before ``:`` is an
    attribute path of the model (``heads.seg``). ``tasks`` names the data mix (empty = every task
    the data offers).
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


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout) inside the block; its previous mode is restored on
    leaving, also when the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


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

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        """The parameters a role selects (:class:`Stage`): ``"path"`` = every parameter of the
        component at ``path`` except its ``frozen`` group, ``"path:group"`` = that group."""
        path, _, group = role.partition(":")
        try:
            module = self.get_submodule(path)
        except AttributeError:
            parts = [n for n, m in self.named_children() if any(True for _ in m.parameters())]
            raise ConfigError(f"role {role!r}: {type(self).__name__} has no component {path!r} "
                              f"(components: {', '.join(parts)})") from None
        declared = module.parameter_groups() if isinstance(module, ParameterGroups) else {}
        if not group:
            frozen = {id(module.get_parameter(n)) for n in declared.get("frozen", ())}
            return [p for p in module.parameters() if id(p) not in frozen]
        if group not in declared and group not in DEFAULT_GROUPS:
            raise ConfigError(f"role {role!r}: {path} ({type(module).__name__}) has no parameter "
                              f"group {group!r}.{suggest(group, list(declared))} Groups: "
                              f"{', '.join(sorted({*declared, *DEFAULT_GROUPS}))}")
        return [module.get_parameter(n) for n in declared.get(group, ())]

    def apply_stage(self, stage: Stage | str) -> list[str]:
        """Freeze everything, then unfreeze the parameters of the stage's roles.

        Returns the names of trainable parameters; a role that selects nothing raises, since it
        is almost always a typo or a component that the recipe lacks.
        """
        stage = self.stages[stage] if isinstance(stage, str) else stage
        chosen: set[int] = set()
        for role in stage.trainable:
            params = self.role_parameters(role)
            if not params:
                raise ConfigError(f"stage {stage.name!r}: role {role!r} selects no parameter of "
                                  f"{type(self).__name__}")
            chosen.update(id(p) for p in params)
        trainable = []
        for name, param in self.named_parameters():
            param.requires_grad_(id(param) in chosen)
            if id(param) in chosen:
                trainable.append(name)
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
