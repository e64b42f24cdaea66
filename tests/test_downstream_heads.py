"""Downstream heads: UNETR-style segmentation decoder and linear classifier."""

import pytest
import torch

from encoders import resnet3d as resnet_mod
from encoders import vit3d as vit_mod
from heads import classifier as cls_mod
from heads import seg_decoder as seg_mod
from zoo.types import MaskOutput, VisualTokens


def test_target_strides_hierarchical_and_plain_vit():
    hier = [(2, 2, 2), (4, 4, 4), (8, 8, 8)]
    assert seg_mod.target_strides(hier) == hier
    vit = [(4, 16, 16)] * 4
    assert seg_mod.target_strides(vit) == [(1, 2, 2), (1, 4, 4), (2, 8, 8), (4, 16, 16)]
    with pytest.raises(ValueError, match="fine to coarse"):
        seg_mod.target_strides([(4, 4, 4), (2, 2, 2)])
    with pytest.raises(ValueError, match="full resolution"):
        seg_mod.target_strides([(2, 2, 2)] * 3)


def test_decoder_on_a_hierarchical_cnn():
    enc = resnet_mod.test_resnet3d()
    dims, strides = seg_mod.feature_spec(enc)
    dec = seg_mod.test_unetr_decoder(dims, strides, out_channels=3, feature_size=2)
    volume = torch.randn(1, 1, 32, 32, 64)
    target = (torch.rand(1, 3, 32, 32, 64) > 0.5).float()
    out = dec(seg_mod.extract_features(enc, volume), volume, target)
    assert isinstance(out, MaskOutput) and out.logits.shape == (1, 3, 32, 32, 64)
    out.loss.backward()
    assert next(enc.parameters()).grad is not None


def test_decoder_on_vit_intermediates_learns():
    enc = vit_mod.test_vit3d(img_size=(8, 32, 32))
    dims, strides = seg_mod.feature_spec(enc)
    assert dims == (64, 64) and strides == ((4, 16, 16),) * 2
    dec = seg_mod.test_unetr_decoder(dims, strides, out_channels=2, activation="softmax")
    volume = torch.randn(1, 1, 8, 32, 32)
    labels = (volume > 0.5).long()
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        out = dec(seg_mod.extract_features(enc, volume), volume, labels)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.logits.shape == (1, 2, 8, 32, 32) and losses[-1] < losses[0]


def test_decoder_errors():
    dec = seg_mod.test_unetr_decoder([4, 8], [2, 4], out_channels=2)
    volume = torch.randn(1, 1, 16, 16, 16)
    good = [torch.randn(1, 4, 8, 8, 8), torch.randn(1, 8, 4, 4, 4)]
    with pytest.raises(ValueError, match=r"feature 1 has shape"):
        dec([good[0], torch.randn(1, 8, 2, 2, 2)], volume)
    with pytest.raises(ValueError, match="2 feature maps"):
        dec(good[:1], volume)
    with pytest.raises(ValueError, match="expects"):
        dec(good, volume, torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="activation"):
        seg_mod.unetr_decoder([4], [2], activation="relu")


@pytest.mark.parametrize("pool", ["mean", "max", "cls"])
def test_linear_classifier(pool):
    head = cls_mod.test_linear_classifier(in_dim=8, pool=pool)
    visual = VisualTokens(torch.randn(4, 6, 8), None, {"cls": torch.randn(4, 8)})
    out = head(visual, torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3) and out.loss > 0
    out.loss.backward()
    with pytest.raises(ValueError, match=r"0\.\.2"):
        head(visual, torch.tensor([0, 1, 3, 1]))


def test_classifier_errors():
    with pytest.raises(ValueError, match="extras"):
        cls_mod.linear_classifier(8, pool="cls")(VisualTokens(torch.randn(2, 3, 8)))
    with pytest.raises(ValueError, match="width 8"):
        cls_mod.linear_classifier(8)(VisualTokens(torch.randn(2, 3, 4)))
    with pytest.raises(ValueError, match="pool"):
        cls_mod.linear_classifier(8, pool="attn")
