"""Task-grouped, text-guided mixture-of-experts FFN (the expert layer of TGH-MoE).

TGH-MoE ("Adapting 2D MLLM for 3D CT image analysis", 2026) routes hierarchically: a hard
task-level choice of an expert group from the text, then token-level routing inside the group.
This module is the token level: ``num_groups`` groups of ``experts_per_group`` experts, each an
upcycled copy of a pretrained FFN (so every routing gives the dense output at initialisation:
the top-k weights are renormalised to sum to one). The gate of each group sees the token plus a
projection of the prompt embedding (choice: ``gate(x + W_p LayerNorm(p))``, linear by default or an
MLP with ``router_hidden`` units); the paper publishes none of these details.

Load balancing (choice: Switch Transformer, Fedus et al. 2022, extended to top-k):
``E * sum_e f_e * P_e`` per group, ``f_e`` = share of the group's token-to-expert assignments that
went to expert ``e``, ``P_e`` = mean router probability of ``e``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zoo.errors import ConfigError


@dataclass
class RouteContext:
    """Per-forward routing inputs: ``groups (B,)`` long expert-group index of every sample,
    ``prompt (B, P)`` pooled prompt embedding or ``None``."""

    groups: Tensor
    prompt: Tensor | None = None


class GroupedMoE(nn.Module):
    """``forward(x (B, T, C), route) -> (y (B, T, C), load-balancing loss (), stats)``.

    ``stats`` maps ``"<group name>/load"`` ``(E,)``, ``"/entropy"`` and ``"/lb"`` (detached) for
    every group present in the batch.
    """

    routed = True  # tells the slice encoder to pass the routing context

    def __init__(self, mlp: nn.Module, width: int, group_names: tuple[str, ...],
                 experts_per_group: int = 4, top_k: int = 2, prompt_dim: int | None = None,
                 router_hidden: int = 0) -> None:
        super().__init__()
        if experts_per_group < 1 or not 1 <= top_k <= experts_per_group:
            raise ConfigError(f"need 1 <= top_k <= experts_per_group, got top_k={top_k}, "
                              f"experts_per_group={experts_per_group}")
        if router_hidden < 0:
            raise ConfigError(f"router_hidden must be >= 0, got {router_hidden}")
        if not group_names:
            raise ConfigError("group_names must name at least one expert group")
        self.group_names = tuple(group_names)
        self.num_experts, self.top_k = experts_per_group, top_k
        self.experts = nn.ModuleList(copy.deepcopy(mlp) for _ in range(len(group_names) * experts_per_group))

        def gate() -> nn.Module:
            if router_hidden == 0:
                return nn.Linear(width, experts_per_group)
            return nn.Sequential(nn.Linear(width, router_hidden), nn.GELU(),
                                 nn.Linear(router_hidden, experts_per_group))

        self.gates = nn.ModuleList(gate() for _ in group_names)
        self.prompt_norm = nn.LayerNorm(prompt_dim) if prompt_dim else None
        self.prompt_proj = nn.Linear(prompt_dim, width) if prompt_dim else None

    def init_groups_from_shared(self) -> None:
        """Copy group 0 (the shared group of the first stage) into every other group."""
        e = self.num_experts
        with torch.no_grad():
            for g in range(1, len(self.group_names)):
                for i in range(e):
                    self.experts[g * e + i].load_state_dict(self.experts[i].state_dict())
                self.gates[g].load_state_dict(self.gates[0].state_dict())

    def forward(self, x: Tensor, route: RouteContext) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b, t, c = x.shape
        flat = x.reshape(b * t, c)
        token_group = route.groups.repeat_interleave(t)
        shift = None
        if self.prompt_proj is not None:
            if route.prompt is None:
                raise ValueError("this MoE layer is text-guided (prompt_dim set) but got no prompt "
                                 "embedding; pass Conditioning(prompt_embedding=(B, E))")
            shift = self.prompt_proj(self.prompt_norm(route.prompt.to(x.dtype)))  # (B, C)
            shift = shift.repeat_interleave(t, dim=0)
        out = torch.zeros_like(flat)
        losses, stats = [], {}
        for g in route.groups.unique().tolist():
            rows = (token_group == g).nonzero().squeeze(1)
            xs = flat.index_select(0, rows)
            z = xs if shift is None else xs + shift.index_select(0, rows)
            probs = self.gates[g](z).float().softmax(dim=-1)
            top_p, top_i = probs.topk(self.top_k, dim=-1)
            weights = (top_p / top_p.sum(dim=-1, keepdim=True)).to(x.dtype)
            ys = torch.zeros_like(xs)
            for e in range(self.num_experts):
                tok, slot = (top_i == e).nonzero(as_tuple=True)
                if tok.numel():
                    y = self.experts[g * self.num_experts + e](xs.index_select(0, tok))
                    ys = ys.index_add(0, tok, y * weights[tok, slot].unsqueeze(-1))
            out = out.index_copy(0, rows, ys)
            load = F.one_hot(top_i, self.num_experts).sum(dim=(0, 1)).float() / top_i.numel()
            lb = self.num_experts * (load * probs.mean(dim=0)).sum()
            losses.append(lb)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
            name = self.group_names[g]
            stats.update({f"{name}/load": load.detach(), f"{name}/entropy": entropy.detach(),
                          f"{name}/lb": lb.detach()})
        return out.view(b, t, c), torch.stack(losses).mean(), stats
