"""Plane-Slice-Aware Transformer (PSAT): Med3DInsight's bridge from 3D tokens to a 2D teacher space.

Learned queries attend to the 3D encoder's tokens through post-norm transformer decoder layers
(self-attention over the queries, cross-attention to the 3D tokens, FFN), DETR style. One learned
plane-slice vector per sample, looked up from a table of 3 planes x ``num_slots`` slots with
``slot = slice_index // slot_divisor``, is added to every query and to every 3D token, so the
output knows which 2D slice it must describe. Query 0's output, projected by
``Linear(width, teacher_dim)``, is the 3D embedding aligned with the teacher's slice embedding.

Shapes: input ``VisualTokens((B, N, in_dim))``; output ``VisualTokens((B, Q, width), grid=None,
extras={"embedding": (B, teacher_dim)})``. The paper's configuration (:func:`psat_m3di`): 300
queries, 6 layers, width 768, 8 heads, dropout 0.1, 128 slots, teacher 512 (BiomedCLIP).

FFN width: the intended width is 1024; the authors' released code passes its arguments in an order
that makes the FFN 8 wide. ``ffn_dim=8`` reproduces that; the default is 1024.

Attention: :class:`torch.nn.TransformerDecoderLayer` calls ``multi_head_attention_forward`` with
``need_weights=False``, which runs ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.checks import positive_int
from zoo.errors import ConfigError
from zoo.registry import BRIDGES
from zoo.types import PLANES, Conditioning, Grid, VisualTokens



class PlaneSliceEmbedding(nn.Module):
    """Learned table of ``3 x num_slots`` vectors: ``(plane (B,), slice_index (B,))`` to
    ``(B, width)``."""

    def __init__(self, width: int, num_slots: int = 128, slot_divisor: int = 2) -> None:
        super().__init__()
        if num_slots < 1 or slot_divisor < 1:
            raise ConfigError(f"num_slots and slot_divisor must be >= 1, got {num_slots}, "
                              f"{slot_divisor}")
        self.num_slots = num_slots
        self.slot_divisor = slot_divisor
        self.table = nn.Embedding(len(PLANES) * num_slots, width)

    def forward(self, plane: Tensor, slice_index: Tensor) -> Tensor:
        plane = plane.long().reshape(-1)
        slot = slice_index.long().reshape(-1).div(self.slot_divisor, rounding_mode="floor")
        if plane.shape != slot.shape:
            raise ValueError(f"cond.plane has {plane.numel()} entries but cond.slice_index has "
                             f"{slot.numel()}")
        if plane.device.type != "meta":
            bad_plane = plane[(plane < 0) | (plane >= len(PLANES))]
            if bad_plane.numel():
                raise ValueError(f"plane index {int(bad_plane[0])} is unknown: expected 0.."
                                 f"{len(PLANES) - 1} for {PLANES}")
            bad = (slot < 0) | (slot >= self.num_slots)
            if bool(bad.any()):
                index = int(slice_index.reshape(-1)[bad][0])
                raise ValueError(f"slice index {index} is out of range: PSAT has {self.num_slots} "
                                 f"slots of {self.slot_divisor} slices, so indices 0.."
                                 f"{self.num_slots * self.slot_divisor - 1} are valid")
        return self.table(plane * self.num_slots + slot)


class PSAT(nn.Module):
    """Learned queries -> post-norm decoder over 3D tokens -> query 0 -> teacher space."""

    def __init__(self, in_dim: int, width: int = 768, num_queries: int = 300, depth: int = 6,
                 num_heads: int = 8, ffn_dim: int = 1024, dropout: float = 0.1,
                 num_slots: int = 128, slot_divisor: int = 2, teacher_dim: int = 512,
                 use_plane_slice: bool = True) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("width", width), ("num_queries", num_queries),
                            ("depth", depth), ("num_heads", num_heads), ("ffn_dim", ffn_dim),
                            ("teacher_dim", teacher_dim)):
            positive_int(f"PSAT {name}", value)
        if width % num_heads:
            raise ConfigError(f"PSAT num_heads={num_heads} does not divide width={width}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"PSAT dropout must be in [0, 1), got {dropout}")
        self.out_dim = width
        self.num_queries = num_queries
        self.teacher_dim = teacher_dim
        self.input_proj = nn.Linear(in_dim, width) if in_dim != width else nn.Identity()
        # DETR-style queries, standard-normal initialised like nn.Embedding
        self.queries = nn.Parameter(torch.randn(num_queries, width))
        self.plane_slice = (PlaneSliceEmbedding(width, num_slots, slot_divisor)
                            if use_plane_slice else None)
        layer = nn.TransformerDecoderLayer(width, num_heads, dim_feedforward=ffn_dim,
                                           dropout=dropout, activation="relu", batch_first=True,
                                           norm_first=False)
        self.decoder = nn.TransformerDecoder(layer, num_layers=depth)
        self.head = nn.Linear(width, teacher_dim)

    def output_layout(self, num_tokens: int, grid: Grid | None) -> tuple[int, None]:
        return self.num_queries, None

    def forward(self, visual: VisualTokens, cond: Conditioning | None = None) -> VisualTokens:
        memory = self.input_proj(visual.tokens)
        queries = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        if self.plane_slice is not None:
            if cond is None or cond.plane is None or cond.slice_index is None:
                raise ValueError("PSAT needs cond.plane and cond.slice_index (B,) for its "
                                 "plane-slice embedding; build it with use_plane_slice=False to "
                                 "run without slice information")
            ps = self.plane_slice(cond.plane.to(memory.device), cond.slice_index.to(memory.device))
            if ps.shape[0] != memory.shape[0]:
                raise ValueError(f"cond has {ps.shape[0]} plane/slice entries for a batch of "
                                 f"{memory.shape[0]}")
            ps = ps.unsqueeze(1).to(memory.dtype)
            queries = queries + ps
            memory = memory + ps
        out = self.decoder(queries, memory)
        return VisualTokens(out, None, {"embedding": self.head(out[:, 0])})


@BRIDGES.register
def psat(in_dim: int, width: int = 768, num_queries: int = 300, depth: int = 6,
         num_heads: int = 8, ffn_dim: int = 1024, dropout: float = 0.1, num_slots: int = 128,
         slot_divisor: int = 2, teacher_dim: int = 512, use_plane_slice: bool = True) -> PSAT:
    """Plane-Slice-Aware Transformer with every option exposed; ``in_dim`` is the encoder width
    (supplied by the recipe; projected to ``width`` when different)."""
    return PSAT(in_dim, width, num_queries, depth, num_heads, ffn_dim, dropout, num_slots,
                slot_divisor, teacher_dim, use_plane_slice)


@BRIDGES.register
def psat_m3di(in_dim: int = 768, ffn_dim: int = 1024, teacher_dim: int = 512) -> PSAT:
    """Med3DInsight's PSAT: 300 queries, 6 post-norm layers, width 768, 8 heads, dropout 0.1,
    3 x 128 plane-slice slots (slot = index // 2), output Linear(768, 512). ``ffn_dim=8``
    reproduces the released code's argument-order slip. 38,743,040 parameters at in_dim 768."""
    return psat(in_dim, ffn_dim=ffn_dim, teacher_dim=teacher_dim)


@BRIDGES.register
def test_psat(in_dim: int = 32, width: int = 32, num_queries: int = 4, depth: int = 2,
              num_heads: int = 4, ffn_dim: int = 64, dropout: float = 0.0, num_slots: int = 8,
              slot_divisor: int = 2, teacher_dim: int = 16, use_plane_slice: bool = True) -> PSAT:
    """Tiny PSAT for tests: 4 queries, 2 layers, width 32, 8 slots, teacher 16."""
    return psat(in_dim, width, num_queries, depth, num_heads, ffn_dim, dropout, num_slots,
                slot_divisor, teacher_dim, use_plane_slice)
