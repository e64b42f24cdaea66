"""Plane-Slice-Aware Transformer bridge (Med3DInsight)."""

import pytest
import torch
from torch import nn

from encoders import psat as psat_mod
from zoo.types import Bridge, Conditioning, VisualTokens


def psat_parameters(in_dim, width, queries, depth, ffn, slots, teacher):
    """docs/med3dinsight.md's formula."""
    layer = 8 * width ** 2 + 2 * width * ffn + 15 * width + ffn
    proj = 0 if in_dim == width else in_dim * width + width
    return (depth * layer + queries * width + 3 * slots * width + width * teacher + teacher
            + proj)


def cond(planes, indices):
    return Conditioning(plane=torch.tensor(planes), slice_index=torch.tensor(indices))


def test_paper_configuration_parameter_count():
    with torch.device("meta"):
        paper, slip = psat_mod.psat_m3di(), psat_mod.psat_m3di(ffn_dim=8)
        other = psat_mod.psat(in_dim=512)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(paper) == psat_parameters(768, 768, 300, 6, 1024, 128, 512) == 38_743_040
    assert count(slip) == psat_parameters(768, 768, 300, 6, 8, 128, 512) == 29_373_488
    assert count(other) == psat_parameters(512, 768, 300, 6, 1024, 128, 512)
    layer = paper.decoder.layers[0]
    assert layer.norm_first is False and layer.linear1.out_features == 1024
    assert layer.self_attn.batch_first and len(paper.decoder.layers) == 6


def test_forward_contract_and_layout():
    bridge = psat_mod.test_psat(in_dim=24)
    assert isinstance(bridge, Bridge) and isinstance(bridge.input_proj, nn.Linear)
    out = bridge(VisualTokens(torch.randn(3, 8, 24), (2, 2, 2)), cond([0, 1, 2], [0, 5, 15]))
    assert out.tokens.shape == (3, 4, 32) and out.grid is None
    assert out.extras["embedding"].shape == (3, 16)
    assert bridge.output_layout(8, (2, 2, 2)) == (4, None) and bridge.out_dim == 32
    assert isinstance(psat_mod.test_psat(in_dim=32).input_proj, nn.Identity)


def test_plane_slice_embedding_conditions_the_output():
    bridge = psat_mod.test_psat().eval()
    visual = VisualTokens(torch.randn(1, 8, 32).expand(4, -1, -1), (2, 2, 2))
    emb = bridge(visual, cond([0, 0, 0, 1], [2, 3, 4, 2])).extras["embedding"]
    torch.testing.assert_close(emb[0], emb[1])  # same slot: index // 2
    assert not torch.allclose(emb[0], emb[2]) and not torch.allclose(emb[0], emb[3])
    slot3 = psat_mod.psat(in_dim=32, width=32, num_queries=2, depth=1, num_heads=4, ffn_dim=8,
                          num_slots=8, slot_divisor=3, teacher_dim=4).plane_slice
    assert torch.equal(slot3(torch.tensor([0, 0]), torch.tensor([2, 3])),
                       slot3.table.weight[[0, 1]])


def test_gradients_reach_queries_table_and_tokens():
    bridge = psat_mod.test_psat()
    tokens = torch.randn(2, 8, 32, requires_grad=True)
    bridge(VisualTokens(tokens, None), cond([0, 2], [1, 7])).extras["embedding"].sum().backward()
    assert tokens.grad.abs().sum() > 0 and bridge.queries.grad.abs().sum() > 0
    assert bridge.plane_slice.table.weight.grad.abs().sum() > 0


def test_errors_name_the_value_and_range():
    bridge = psat_mod.test_psat()
    visual = VisualTokens(torch.randn(2, 8, 32), (2, 2, 2))
    with pytest.raises(ValueError, match=r"slice index 16 .* 0\.\.15"):
        bridge(visual, cond([0, 0], [1, 16]))
    with pytest.raises(ValueError, match=r"slice index -1"):
        bridge(visual, cond([0, 0], [1, -1]))
    with pytest.raises(ValueError, match=r"plane index 3 .*axial"):
        bridge(visual, cond([0, 3], [1, 1]))
    with pytest.raises(ValueError, match="use_plane_slice=False"):
        bridge(visual, None)
    with pytest.raises(ValueError, match="batch of 2"):
        bridge(visual, cond([0], [1]))
    plain = psat_mod.test_psat(use_plane_slice=False)
    assert plain(visual, None).tokens.shape == (2, 4, 32)
    with pytest.raises(ValueError, match="num_heads"):
        psat_mod.psat(in_dim=8, width=30, num_heads=8)
