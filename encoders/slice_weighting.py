"""Text-relevance slice weighting (Med-2E3's text-guided slice scoring), a bridge.

Slice tokens ``(B, d*h*w, C)`` on a grid ``(d, h, w)`` are re-weighted per slice by how well the
slice matches the prompt: ``w = softmax(scale * cos(mean_slice_token, W p))`` over the d slices,
tokens of slice i scaled by ``d * w_i`` (uniform relevance leaves the tokens unchanged). The grid is
kept, so pooling connectors still apply. Med-2E3 uses 32 axial slices and a "temperature 5"; we read
it as a multiplier on cosine similarities (``scale=5``): dividing cosines by 5 would make the weights
almost uniform. That reading is a choice, exposed as ``scale``.

Contract: ``forward(visual (grid required), cond.prompt_embedding (B, E)) -> VisualTokens`` of the
same shape with ``extras["slice_weights"] (B, d)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.checks import positive_int
from zoo.errors import ConfigError
from zoo.registry import BRIDGES
from zoo.types import Conditioning, Grid, VisualTokens


class TextSliceWeighting(nn.Module):
    def __init__(self, in_dim: int, prompt_dim: int, scale: float = 5.0) -> None:
        super().__init__()
        for key, value in (("in_dim", in_dim), ("prompt_dim", prompt_dim)):
            positive_int(f"text_slice_weighting: {key}", value)
        if scale <= 0:
            raise ConfigError(f"text_slice_weighting: scale must be > 0, got {scale}")
        self.out_dim = in_dim
        self.scale = float(scale)
        self.prompt_proj = nn.Linear(prompt_dim, in_dim)

    def output_layout(self, num_tokens: int, grid: Grid | None) -> tuple[int, Grid | None]:
        if grid is None:
            raise ConfigError("text_slice_weighting needs visual tokens with a (d, h, w) grid "
                              "(a slice encoder); this encoder gives none")
        return num_tokens, grid

    def forward(self, visual: VisualTokens, cond: Conditioning | None = None) -> VisualTokens:
        if visual.grid is None:
            self.output_layout(visual.tokens.shape[1], None)
        if cond is None or cond.prompt_embedding is None:
            raise ValueError("text_slice_weighting needs cond.prompt_embedding (B, E)")
        b, n, c = visual.tokens.shape
        d = visual.grid[0]
        slices = visual.tokens.view(b, d, n // d, c)
        prompt = self.prompt_proj(cond.prompt_embedding.to(slices.dtype))
        similarity = F.cosine_similarity(slices.mean(2), prompt.unsqueeze(1), dim=-1)  # (B, d)
        weights = torch.softmax(self.scale * similarity, dim=1)
        tokens = (slices * (d * weights)[:, :, None, None]).view(b, n, c)
        return visual.replace(tokens=tokens, extras={**visual.extras, "slice_weights": weights})


@BRIDGES.register
def text_slice_weighting(in_dim: int, prompt_dim: int, scale: float = 5.0) -> TextSliceWeighting:
    """Med-2E3-style text-relevance slice weighting; ``in_dim`` and ``prompt_dim`` (the encoder
    width and the LLM hidden size) are supplied by the recipe."""
    return TextSliceWeighting(in_dim, prompt_dim, scale)


@BRIDGES.register
def test_text_slice_weighting(in_dim: int = 32, prompt_dim: int = 16,
                              scale: float = 5.0) -> TextSliceWeighting:
    """Tiny defaults for tests (the module has no size of its own beyond the prompt projection)."""
    return TextSliceWeighting(in_dim, prompt_dim, scale)
