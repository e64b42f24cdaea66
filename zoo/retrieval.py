"""Image-text retrieval recall (M3D-Bench's retrieval task; Bai et al. 2024).

Row ``i`` of ``image_emb`` and of ``text_emb`` form a pair. For every test size ``n`` (only sizes
up to the number of pairs, plus ``"all"``) the first ``n`` pairs form the gallery, similarities are
cosine similarities, and recall@k is the fraction of queries whose own partner ranks within the
top ``k``. Directions are named explicitly (M3D's public script swaps its IR/TR labels):

- ``image_to_text``: an image queries all texts;
- ``text_to_image``: a text queries all images.

Ties count in the query's favour only when strictly fewer than ``k`` other candidates score
higher (rank = number of candidates with a strictly greater score); values are fractions in
[0, 1] (M3D prints percentages).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

DIRECTIONS = ("image_to_text", "text_to_image")


def _ranks(sim: Tensor) -> Tensor:
    """Per query row: how many candidates score strictly higher than its own partner."""
    own = sim.diagonal().unsqueeze(1)
    return (sim > own).sum(dim=1)


def retrieval_recall(image_emb: Tensor, text_emb: Tensor, ks: Sequence[int] = (1, 5, 10),
                     sizes: Sequence[int] = (100, 500, 1000, 2000)) -> dict[str, float]:
    """``{"{size}/{direction}/R@{k}": recall}`` for each size <= N and ``"all"``.

    ``image_emb`` and ``text_emb`` are ``(N, E)`` with row ``i`` paired; e.g.
    ``"2000/image_to_text/R@1"`` and ``"all/text_to_image/R@10"``.
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"retrieval_recall needs two (N, E) embeddings of equal shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {tuple(ks)}")
    n = image_emb.shape[0]
    if n == 0:
        raise ValueError("retrieval_recall got no pairs")
    image = F.normalize(image_emb.detach().double(), dim=-1)
    text = F.normalize(text_emb.detach().double(), dim=-1)
    labels = [(str(int(s)), int(s)) for s in sizes if 0 < int(s) <= n] + [("all", n)]
    result: dict[str, float] = {}
    for label, size in labels:
        sim = image[:size] @ text[:size].T
        for direction, matrix in zip(DIRECTIONS, (sim, sim.T)):
            ranks = _ranks(matrix)
            for k in ks:
                result[f"{label}/{direction}/R@{int(k)}"] = float((ranks < int(k)).double().mean())
    return result
