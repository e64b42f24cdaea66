import pytest
import torch

from zoo.registry import BRIDGES, RECIPES
from zoo.types import Conditioning, VisualTokens


def test_uniform_relevance_leaves_tokens_unchanged():
    bridge = BRIDGES.build("test_text_slice_weighting", in_dim=8, prompt_dim=4)
    torch.nn.init.zeros_(bridge.prompt_proj.weight)
    torch.nn.init.zeros_(bridge.prompt_proj.bias)
    visual = VisualTokens(torch.randn(2, 3 * 4, 8), grid=(3, 2, 2))
    out = bridge(visual, Conditioning(prompt_embedding=torch.randn(2, 4)))
    torch.testing.assert_close(out.tokens, visual.tokens)
    torch.testing.assert_close(out.extras["slice_weights"], torch.full((2, 3), 1 / 3))
    assert out.grid == (3, 2, 2)


def test_the_slice_that_matches_the_prompt_gets_the_most_weight():
    bridge = BRIDGES.build("text_slice_weighting", in_dim=4, prompt_dim=4)
    with torch.no_grad():
        bridge.prompt_proj.weight.copy_(torch.eye(4))
        bridge.prompt_proj.bias.zero_()
    slices = torch.zeros(1, 3, 2, 4)
    for i in range(3):
        slices[0, i, :, i] = 1.0  # slice i points along axis i
    visual = VisualTokens(slices.reshape(1, 6, 4), grid=(3, 1, 2))
    out = bridge(visual, Conditioning(prompt_embedding=torch.tensor([[0.0, 1.0, 0.0, 0.0]])))
    weights = out.extras["slice_weights"][0]
    assert int(weights.argmax()) == 1 and weights.sum().item() == pytest.approx(1.0)


def test_needs_a_grid_and_a_prompt():
    bridge = BRIDGES.build("test_text_slice_weighting", in_dim=8, prompt_dim=4)
    with pytest.raises(ValueError, match="grid"):
        bridge.output_layout(16, None)
    with pytest.raises(ValueError, match="prompt_embedding"):
        bridge(VisualTokens(torch.randn(1, 4, 8), grid=(1, 2, 2)), Conditioning())


def test_tghmoe_recipe_switches_routing_with_the_stage():
    from functools import partial

    from zoo.registry import CONNECTORS, ENCODERS, LMS

    corpus = ["what organ is shown", "the liver", "a small cyst in the left kidney"]
    model = RECIPES.build("tghmoe", encoder=partial(ENCODERS.get("test_tghmoe")),
                          connector=partial(CONNECTORS.get("spatial_pool")),
                          lm=partial(LMS.get("test_llama"), corpus=corpus),
                          image_size=(16, 32, 32), train_lm="full")
    assert model.encoder.prompt_dim == model.lm.hidden_size
    model.apply_stage("shared")
    assert model.encoder.routing == "shared"
    model.apply_stage("specific")
    assert model.encoder.routing == "specific"
