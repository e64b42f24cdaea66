"""RowGradientMask: only the named rows get gradients, also after the module's weight tensor is
replaced (what FSDP2 does: it computes with a gathered copy of a sharded parameter)."""

import torch
from torch import nn

from zoo.gradient_mask import RowGradientMask


def test_mask_follows_the_weight_the_module_holds_and_can_be_removed():
    embed = nn.Embedding(6, 3)
    mask = RowGradientMask(embed, rows=[1, 4])
    ids = torch.arange(6)
    embed(ids).sum().backward()
    assert embed.weight.grad[[1, 4]].eq(1).all() and embed.weight.grad[[0, 2, 3, 5]].eq(0).all()
    embed.weight = nn.Parameter(torch.randn(6, 3))  # a new tensor, as FSDP2 swaps in
    embed(ids).sum().backward()
    assert embed.weight.grad[[0, 2, 3, 5]].eq(0).all() and embed.weight.grad[1].eq(1).all()
    embed.weight.grad = None
    embed(ids).sum().backward()  # a second forward does not stack a second hook
    assert embed.weight.grad[4].eq(1).all()
    mask.remove()
    embed.weight.grad = None
    embed(ids).sum().backward()
    assert embed.weight.grad.eq(1).all()
