"""TGH-MoE: a 2D MLLM vision tower adapted to CT volumes with a text-guided hierarchical MoE.

"Adapting 2D MLLM for 3D CT image analysis" (2026): the pretrained 2D tower (CLIP ViT-L/14 at
336 px, Phi-3-Vision's) reads the volume slice by slice, the top blocks attend across slices with
rotary position embedding along depth (:class:`encoders.slice2d.SliceEncoder`), and the FFNs of the
top blocks become a hierarchical mixture of experts:

1. task level, hard: every sample picks one expert group from the text, either from its task
   label (``Conditioning.task_id``, an index into :data:`zoo.types.TASK_NAMES`, mapped to a group
   by ``task_groups``) or predicted from the pooled prompt embedding ``Conditioning.
   prompt_embedding (B, E)`` by a small task router (``task_source``);
2. token level: top-k routing among the group's experts, with the prompt embedding added to the
   router input (:class:`encoders.moe.GroupedMoE`).

Experts are upcycled copies of the pretrained FFN, so at initialisation the encoder equals the
dense slice encoder. Two stages: ``set_routing("shared")`` (task routing off, every sample uses
group 0, "the shared group") and ``set_routing("specific")`` (hard task routing); at the stage
boundary the recipe calls :meth:`TGHMoEEncoder.init_groups_from_shared` once (not again on resume)
so every task group starts from the trained shared experts.

Unpublished details are options with documented defaults (docs/reference.md E): 4 experts per group,
top-2, Switch load-balancing loss weight 0.01, MoE and 3D attention in the top quarter of the
blocks, pooled prompt embedding as router input, five task groups.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.backbones2d import build_backbone2d
from encoders.moe import GroupedMoE, RouteContext
from encoders.slice2d import TINY_TIMM, SliceEncoder, _choice, top_blocks
from zoo.errors import ConfigError
from zoo.registry import ENCODERS, suggest
from zoo.signature import forwards
from zoo.types import TASK_NAMES, Conditioning, parameter_names

TASK_GROUP_NAMES: tuple[str, ...] = ("caption", "vqa", "positioning", "segmentation", "other")
# The five task families of the recipe (a choice): retrieval uses caption samples.
DEFAULT_TASK_GROUPS: dict[str, str] = {
    "caption": "caption", "vqa_closed": "vqa", "vqa_open": "vqa", "rec": "positioning",
    "reg": "positioning", "seg": "segmentation", "refseg": "segmentation", "cls": "other"}
ROUTING_MODES: tuple[str, ...] = ("shared", "specific")
TASK_SOURCES: tuple[str, ...] = ("auto", "id", "router")


class TaskRouter(nn.Module):
    """Pooled prompt embedding ``(B, E)`` -> task-group logits ``(B, G)``:
    LayerNorm, Linear(E, hidden), GELU, Linear(hidden, G)."""

    def __init__(self, prompt_dim: int, num_groups: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(prompt_dim), nn.Linear(prompt_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_groups))

    def forward(self, prompt: Tensor) -> Tensor:
        return self.net(prompt)


def _group_table(task_groups: dict[str, str]) -> tuple[tuple[str, ...], list[int]]:
    """(group names: those of TASK_GROUP_NAMES in use, in that order, then any custom names sorted;
    group index per TASK_NAMES entry). Tasks the mapping does not name go to ``"other"``."""
    unknown = sorted(set(task_groups) - set(TASK_NAMES))
    if unknown:
        raise ConfigError(f"task_groups names unknown task {unknown[0]!r}.{suggest(unknown[0], TASK_NAMES)} "
                          f"Tasks: {', '.join(TASK_NAMES)}")
    values = [str(task_groups.get(t, "other")) for t in TASK_NAMES]  # unmapped tasks -> "other"
    names = tuple([g for g in TASK_GROUP_NAMES if g in values] +
                  sorted({v for v in values if v not in TASK_GROUP_NAMES}))
    return names, [names.index(v) for v in values]


class TGHMoEEncoder(SliceEncoder):
    """Slice encoder whose top ``moe_blocks`` FFNs are task-grouped, text-guided MoEs.

    Extra args (the rest: :class:`~encoders.slice2d.SliceEncoder`):
        prompt_dim: width E of ``Conditioning.prompt_embedding`` (the LLM hidden size); ``None``
            = token routers without text and no task router.
        task_groups: task name -> group name (tasks of ``TASK_NAMES`` it omits go to ``"other"``).
        experts_per_group, top_k, router_hidden: token-level routing (:class:`GroupedMoE`).
        moe_blocks: ``None`` = top quarter of the blocks (ceil), ``-1`` = all, or a count.
        lb_weight: weight of the mean (over MoE layers and groups) Switch load-balancing loss.
        task_source: ``"id"`` (labels), ``"router"`` (predicted from the prompt) or ``"auto"``
            (labels when given, else predicted). The task router is trained by cross-entropy
            against the labels whenever both are present, weighted by ``task_loss_weight``.
        routing: initial mode, ``"shared"`` or ``"specific"`` (see :meth:`set_routing`).
    """

    def __init__(self, backbone: Any, *, prompt_dim: int | None = None,
                 task_groups: dict[str, str] | None = None, experts_per_group: int = 4,
                 top_k: int = 2, router_hidden: int = 0, moe_blocks: int | None = None,
                 lb_weight: float = 0.01, task_source: str = "auto", task_loss_weight: float = 1.0,
                 task_router_hidden: int = 256, routing: str = "shared", **options: Any) -> None:
        super().__init__(backbone, **options)
        if prompt_dim is not None and (isinstance(prompt_dim, bool) or not isinstance(prompt_dim, int)
                                       or prompt_dim < 1):
            raise ConfigError(f"prompt_dim must be a positive int or None, got {prompt_dim!r}")
        if lb_weight < 0 or task_loss_weight < 0:
            raise ConfigError(f"lb_weight and task_loss_weight must be >= 0, got {lb_weight}, "
                              f"{task_loss_weight}")
        self.prompt_dim = prompt_dim
        self.group_names, table = _group_table(dict(task_groups or DEFAULT_TASK_GROUPS))
        self.register_buffer("task_to_group", torch.tensor(table, dtype=torch.long), persistent=False)
        self.task_source = _choice(task_source, TASK_SOURCES, "task_source")
        if self.task_source == "router" and prompt_dim is None:
            raise ConfigError("task_source='router' predicts the task from the prompt embedding; "
                              "set prompt_dim")
        self.lb_weight, self.task_loss_weight = float(lb_weight), float(task_loss_weight)
        self.num_moe_blocks = top_blocks(moe_blocks, self.num_blocks, "moe_blocks")
        self.moe_indices = tuple(range(self.num_blocks - self.num_moe_blocks, self.num_blocks))
        for i in self.moe_indices:
            block = self.backbone.blocks[i]
            block.mlp = GroupedMoE(block.mlp, self.out_dim, self.group_names, experts_per_group,
                                   top_k, prompt_dim, router_hidden)
        self.task_router = (TaskRouter(prompt_dim, len(self.group_names), task_router_hidden)
                            if prompt_dim is not None and self.task_source != "id" else None)
        self.routing = "shared"
        self.set_routing(routing)

    # --------------------------------------------------------------------------------- control
    def set_routing(self, mode: str) -> None:
        """``"shared"``: task routing off, every sample uses group 0 (first stage);
        ``"specific"``: hard routing to the sample's task group (second stage)."""
        self.routing = _choice(mode, ROUTING_MODES, "routing")

    def init_groups_from_shared(self) -> None:
        """Copy the shared group (group 0) experts and gate into every task group (once, at the
        shared -> specific stage boundary)."""
        for i in self.moe_indices:
            self.backbone.blocks[i].mlp.init_groups_from_shared()

    def parameter_groups(self) -> dict[str, list[str]]:
        """The slice encoder's groups, with the routers (token gates, prompt projections, task
        router) among the ``new`` parameters, and ``experts``: the MoE layers (experts and their
        routers) and the task router, what the ``specific`` stage trains when the shared parts
        stay frozen."""
        groups = super().parameter_groups()
        moe = [self.backbone.blocks[i].mlp for i in self.moe_indices]
        routers = [part for layer in moe for part in (layer.gates, layer.prompt_norm, layer.prompt_proj)]
        new = set(groups["new"]) | set(parameter_names(self, [*routers, self.task_router]))
        groups["new"] = [n for n, _ in self.named_parameters() if n in new]
        if self.freeze_tower:
            groups["frozen"] = [n for n, _ in self.named_parameters() if n not in new]
        groups["experts"] = parameter_names(self, [*moe, self.task_router])
        return groups

    # --------------------------------------------------------------------------------- routing
    def _route(self, volume: Tensor, cond: Conditioning | None) -> dict[str, Any]:
        batch = volume.shape[0]
        cond = cond or Conditioning()
        prompt, labels, logits = cond.prompt_embedding, None, None
        if self.prompt_dim is not None:
            if prompt is None:
                raise ValueError(f"TGH-MoE with prompt_dim={self.prompt_dim} needs "
                                 "Conditioning.prompt_embedding of shape (B, prompt_dim)")
            if prompt.dim() != 2 or tuple(prompt.shape) != (batch, self.prompt_dim):
                raise ValueError(f"prompt_embedding must have shape ({batch}, {self.prompt_dim}), "
                                 f"got {tuple(prompt.shape)}")
        else:
            prompt = None
        if cond.task_id is not None:
            task_id = torch.as_tensor(cond.task_id, device=volume.device).long().view(-1)
            if task_id.numel() != batch or bool(((task_id < 0) | (task_id >= len(TASK_NAMES))).any()):
                raise ValueError(f"task_id must hold {batch} indices into TASK_NAMES "
                                 f"(0..{len(TASK_NAMES) - 1}), got {task_id.tolist()}")
            labels = self.task_to_group.to(task_id.device)[task_id]
        if self.task_router is not None and prompt is not None:
            logits = self.task_router(prompt.to(self.task_router.net[1].weight.dtype))
        if self.routing == "shared":
            groups = torch.zeros(batch, dtype=torch.long, device=volume.device)
        elif self.task_source == "id" or (self.task_source == "auto" and labels is not None):
            if labels is None:
                raise ValueError("routing='specific' with task_source='id' needs Conditioning.task_id")
            groups = labels
        else:
            if logits is None:
                raise ValueError("routing='specific' without task_id needs the task router: set "
                                 "prompt_dim and pass Conditioning.prompt_embedding")
            groups = logits.argmax(dim=-1)
        return {"context": RouteContext(groups, prompt), "labels": labels, "logits": logits}

    def _block(self, index: int, x: Tensor, batch: int, depth: int, route: Any, stats: list):
        return super()._block(index, x, batch, depth, None if route is None else route["context"], stats)

    def _extras(self, aux: Tensor, info: dict) -> dict[str, Any]:
        route = info["route"]
        lb = aux / max(1, self.num_moe_blocks)
        loss = self.lb_weight * lb
        stats: dict[str, Tensor] = {"moe/lb_loss": lb.detach()}
        labels, logits = route["labels"], route["logits"]
        if logits is not None and labels is not None:
            task_loss = F.cross_entropy(logits.float(), labels)
            loss = loss + self.task_loss_weight * task_loss
            stats["moe/task_router_loss"] = task_loss.detach()
            stats["moe/task_router_acc"] = (logits.argmax(-1) == labels).float().mean()
        per_key: dict[str, list[Tensor]] = {}
        for layer in info["moe"]:
            for key, value in layer.items():
                per_key.setdefault(key, []).append(value)
        for key, values in per_key.items():
            mean = torch.stack(values).mean(dim=0)
            if key.endswith("/load"):
                for e, share in enumerate(mean):
                    stats[f"moe/{key}_e{e}"] = share
            else:
                stats[f"moe/{key}"] = mean
        return {"aux_loss": loss, "router_stats": stats,
                "task_group": route["context"].groups.detach()}


def build_tghmoe(backbone: str, pretrained: str | None, backbone_kwargs: dict | None,
                 **options: Any) -> TGHMoEEncoder:
    return TGHMoEEncoder(build_backbone2d(backbone, pretrained, backbone_kwargs), **options)


@ENCODERS.register
@forwards(TGHMoEEncoder, SliceEncoder, exclude=("backbone",))
def tghmoe(backbone: str = "open_clip:ViT-L-14-336", pretrained: str | None = None,
           backbone_kwargs: dict | None = None, prompt_dim: int | None = None,
           slice_size: int | None = 224, pool_hw: int = 2, **options: Any) -> TGHMoEEncoder:
    """TGH-MoE encoder on CLIP ViT-L/14-336 (Phi-3-Vision's tower; OpenAI weights need
    ``backbone_kwargs={"quick_gelu": true}``). Defaults: 224 px slices (16 x 16 patches), 2 x 2
    pooling -> (D, 8, 8) tokens; options: :class:`TGHMoEEncoder`."""
    return build_tghmoe(backbone, pretrained, backbone_kwargs, prompt_dim=prompt_dim,
                        slice_size=slice_size, pool_hw=pool_hw, **options)


@ENCODERS.register
@forwards(TGHMoEEncoder, SliceEncoder, exclude=("backbone",))
def test_tghmoe(prompt_dim: int | None = 16, experts_per_group: int = 3,
                attn3d_blocks: int | None = 1, **options: Any) -> TGHMoEEncoder:
    """Tiny TGH-MoE on a random timm ViT (width 32, 2 blocks): MoE and 3D attention in the top
    block, 3 experts per group, top-2 routing, prompt width 16."""
    return build_tghmoe("timm:vit_tiny_patch16_224", None, TINY_TIMM, prompt_dim=prompt_dim,
                        experts_per_group=experts_per_group, attn3d_blocks=attn3d_blocks,
                        **options)


def tghmoe_param_formula(tower_params: int, width: int, ffn_params: int, moe_blocks: int,
                         groups: int, experts: int, prompt_dim: int | None, router_hidden: int = 0,
                         task_router_hidden: int = 256) -> dict[str, int]:
    """Parameter arithmetic of :class:`TGHMoEEncoder` (documented in docs/tghmoe.md)."""
    gate = (width * experts + experts) if router_hidden == 0 else \
        (width * router_hidden + router_hidden + router_hidden * experts + experts)
    prompt = 0 if prompt_dim is None else (2 * prompt_dim + prompt_dim * width + width)
    per_block = (groups * experts - 1) * ffn_params + groups * gate + prompt
    task_router = 0 if prompt_dim is None else (2 * prompt_dim + prompt_dim * task_router_hidden
                                                + task_router_hidden + task_router_hidden * groups + groups)
    return {"tower": tower_params, "per_moe_block": per_block, "task_router": task_router,
            "total": tower_params + moe_blocks * per_block + task_router,
            "experts_added": moe_blocks * (groups * experts - 1) * ffn_params}
