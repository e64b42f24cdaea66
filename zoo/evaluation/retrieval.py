"""Per-item image-text retrieval scores around :func:`zoo.retrieval.retrieval_recall`.

For item ``i`` and direction ``d`` the score ``{d}/R@k`` is 1 when ``i``'s partner ranks within the
top ``k`` of all test pairs (same rank rule as :mod:`zoo.retrieval`), so per-item means equal the
``"all"`` recalls, and variants can be compared pairwise.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from zoo.retrieval import DIRECTIONS, retrieval_recall


def per_item_recall(image_emb: Tensor, text_emb: Tensor,
                    ks: Sequence[int] = (1, 5, 10)) -> list[dict[str, float]]:
    image = F.normalize(image_emb.detach().double(), dim=-1)
    text = F.normalize(text_emb.detach().double(), dim=-1)
    sim = image @ text.T
    out: list[dict[str, float]] = [{} for _ in range(sim.shape[0])]
    for direction, matrix in zip(DIRECTIONS, (sim, sim.T)):
        ranks = (matrix > matrix.diagonal().unsqueeze(1)).sum(1)
        for i, rank in enumerate(ranks.tolist()):
            for k in ks:
                out[i][f"{direction}/R@{k}"] = float(rank < k)
    return out


def aggregate_recall(image_emb: Tensor, text_emb: Tensor,
                     sizes: Sequence[int] = (100, 500, 1000, 2000)) -> dict[str, float]:
    return retrieval_recall(image_emb, text_emb, sizes=sizes)
