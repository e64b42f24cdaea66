"""SegVol prompt encoder (Du et al., "SegVol", 2023; SAM's prompt encoder lifted to 3D).

Sparse prompts become tokens of width ``embed_dim``: points ``(B, P, 3)`` with labels ``(B, P)``
(1 foreground, 0 background, -1 padding), boxes ``(B, 6)`` as two corner tokens with learned corner
embeddings, and a text / ``[SEG]`` embedding ``(B, embed_dim)`` as one extra token. Positions are
encoded with SAM's random Fourier features in 3D (a fixed Gaussian matrix buffer). The dense prompt
is the learned "no mask" embedding broadcast over the image grid; :meth:`dense_pe` encodes that
grid. Nothing depends on a fixed input size: the grid and the input size are forward arguments.

Attribute names follow SegVol's state dict (``pe_layer.positional_encoding_gaussian_matrix``,
``point_embeddings.N.weight``, ``not_a_point_embed``, ``no_mask_embed``). SegVol's
``mask_downscaling`` (2D convolutions for mask prompts, never called in SegVol) is not built.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from zoo.errors import ConfigError
from zoo.types import Size3



class RandomFourierPE3d(nn.Module):
    """SAM-style random Fourier position encoding: coords in [0, 1]^3 -> ``(..., 2 * num_feats)``.

    ``positional_encoding_gaussian_matrix (3, num_feats)`` is a fixed buffer drawn from
    N(0, scale^2). Row order follows SegVol: rows 0, 1, 2 act on the grid axes 1, 0, 2 (SAM's
    ``(x, y)`` = (width, height) convention carried into 3D).
    """

    def __init__(self, num_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        if num_feats <= 0:
            raise ConfigError(f"num_feats must be positive, got {num_feats}")
        if scale <= 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(3, num_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """``(..., 3)`` coordinates in [0, 1] (SegVol row order) -> ``(..., 2 * num_feats)``."""
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        proj = 2 * math.pi * proj
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def grid(self, size: Size3) -> Tensor:
        """Encoding of the voxel centres of a ``(d, h, w)`` grid -> ``(C, d, h, w)``."""
        device = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in size]
        a0, a1, a2 = torch.meshgrid(*axes, indexing="ij")
        return self.encode(torch.stack([a1, a0, a2], dim=-1)).permute(3, 0, 1, 2)


class SegVolPromptEncoder(nn.Module):
    """Points / boxes / text -> sparse tokens ``(B, T, C)`` and dense embedding ``(B, C, d, h, w)``.

    ``segvol_point_order=True`` (default) reproduces SegVol's normalisation of point coordinates
    exactly: a point ``(c0, c1, c2)`` given in voxel indices of the ``(D, H, W)`` input is encoded
    from ``(c0 / H, c1 / D, c2 / W)`` (SAM's x/y swap inherited by SegVol, which its released
    weights were trained with). ``False`` encodes ``(c1 / H, c0 / D, c2 / W)``, consistent with
    :meth:`dense_pe`; use it only when training from scratch (a choice, not the paper's).
    """

    num_point_embeddings = 4  # background point, foreground point, box corner 1, box corner 2

    def __init__(self, embed_dim: int = 768, pe_scale: float = 1.0,
                 segvol_point_order: bool = True) -> None:
        super().__init__()
        if embed_dim <= 0 or embed_dim % 2:
            raise ConfigError(f"embed_dim must be a positive even number, got {embed_dim}")
        self.embed_dim = embed_dim
        self.segvol_point_order = segvol_point_order
        self.pe_layer = RandomFourierPE3d(embed_dim // 2, pe_scale)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim)
                                              for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self, grid: Size3) -> Tensor:
        """Positional encoding of the image-token grid ``(1, C, d, h, w)``."""
        return self.pe_layer.grid(tuple(int(g) for g in grid)).unsqueeze(0)

    def _encode_coords(self, coords: Tensor, input_size: Size3) -> Tensor:
        """Voxel coordinates ``(..., 3)`` in (D, H, W) index order -> ``(..., C)``."""
        c = coords.float() + 0.5  # voxel centre
        d, h, w = input_size
        if self.segvol_point_order:
            norm = torch.stack([c[..., 0] / h, c[..., 1] / d, c[..., 2] / w], dim=-1)
        else:
            norm = torch.stack([c[..., 1] / h, c[..., 0] / d, c[..., 2] / w], dim=-1)
        return self.pe_layer.encode(norm)

    def embed_points(self, points: Tensor, labels: Tensor, input_size: Size3, pad: bool) -> Tensor:
        """``(B, P, 3)`` points, ``(B, P)`` labels -> ``(B, P (+1 padding), C)``."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape (B, P, 3), got {tuple(points.shape)}")
        if labels.shape != points.shape[:2]:
            raise ValueError(f"point_labels must have shape {tuple(points.shape[:2])}, got "
                             f"{tuple(labels.shape)}")
        if pad:  # SAM: a padding point stands in for the missing box
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        emb = self._encode_coords(points, input_size)
        labels = labels.unsqueeze(-1)
        emb = torch.where(labels == -1, self.not_a_point_embed.weight.to(emb.dtype), emb)
        emb = emb + (labels == 0) * self.point_embeddings[0].weight
        emb = emb + (labels == 1) * self.point_embeddings[1].weight
        return emb

    def embed_boxes(self, boxes: Tensor, input_size: Size3) -> Tensor:
        """``(B, 6)`` voxel boxes ``[d1, h1, w1, d2, h2, w2]`` -> two corner tokens ``(B, 2, C)``."""
        if boxes.dim() != 2 or boxes.shape[-1] != 6:
            raise ValueError(f"boxes must have shape (B, 6), got {tuple(boxes.shape)}")
        emb = self._encode_coords(boxes.reshape(-1, 2, 3), input_size)
        corners = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return emb + corners

    def forward(self, batch_size: int, grid: Size3, input_size: Size3,
                points: Tensor | None = None, point_labels: Tensor | None = None,
                boxes: Tensor | None = None, text_embedding: Tensor | None = None,
                ) -> tuple[Tensor, Tensor]:
        """Sparse tokens ``(B, T, C)`` (points, box corners, text; T may be 0) and dense
        ``(B, C, d, h, w)``. Every prompt tensor has leading dimension ``batch_size``."""
        weight = self.no_mask_embed.weight
        sparse = [weight.new_zeros(batch_size, 0, self.embed_dim)]
        if (points is None) != (point_labels is None):
            raise ValueError("points and point_labels must be given together")
        if points is not None:
            sparse.append(self.embed_points(points, point_labels, input_size, pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes, input_size))
        if text_embedding is not None:
            if text_embedding.shape != (batch_size, self.embed_dim):
                raise ValueError(f"text_embedding must have shape ({batch_size}, {self.embed_dim}), "
                                 f"got {tuple(text_embedding.shape)}")
            sparse.append(text_embedding.unsqueeze(1))
        for t in sparse:
            if t.shape[0] != batch_size:
                raise ValueError(f"prompt batch {t.shape[0]} does not match batch size {batch_size}")
        dense = weight.reshape(1, -1, 1, 1, 1).expand(batch_size, -1, *grid)
        return torch.cat([t.to(weight.dtype) for t in sparse], dim=1), dense
