"""Slice-inflated encoders: exactness against the 2D tower, 3D attention, RoPE, layout, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import zoo  # noqa: F401
from encoders.backbones2d import TimmViT
from encoders.slice2d import (TINY_TIMM, DepthRoPE, SliceEncoder, depth_attention, fold_channels,
                              inflate_conv)
from zoo.registry import ENCODERS
from zoo.types import Encoder, VisualTokens

MINE = ("test_slice2d", "test_inflate3d", "test_medblip3d")


def tiny_timm():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_TIMM).eval()


def slices_as_images(volume, mean, std):
    """(B, 1, D, H, W) -> (B*D, 3, H, W) normalised RGB images, the 2D tower's own input."""
    images = volume.transpose(1, 2).flatten(0, 1).expand(-1, 3, -1, -1)
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("name", MINE)
def test_contract_and_layout(name):
    enc = ENCODERS.build(name).eval()
    assert isinstance(enc, Encoder)
    vol = torch.rand(2, 1, 4, 32, 48)
    n, grid = enc.output_layout((4, 32, 48))
    out = enc(vol)
    assert isinstance(out, VisualTokens)
    assert out.tokens.shape == (2, n, enc.out_dim) and out.grid == grid
    assert grid[1:] == (2, 3)


@pytest.mark.parametrize("channel_mode", ["repeat", "sum"])
def test_per_slice_encoding_equals_the_2d_tower(channel_mode):
    """k = 0 and no depth embedding: tokens are the tower's own outputs, slice by slice."""
    model = tiny_timm()
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    vol = torch.rand(2, 1, 3, 32, 32)
    with torch.no_grad():  # reference first: the "sum" mode replaces the tower's RGB stem
        expected = model.forward_features(slices_as_images(vol, mean, std))
        enc = SliceEncoder(TimmViT(model, "tiny"), attn3d_blocks=0, depth_pos="none",
                           channel_mode=channel_mode).eval()
        out = enc(vol)
    assert out.grid == (3, 2, 2)
    torch.testing.assert_close(out.tokens.reshape(6, 4, 32), expected[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.extras["cls"].reshape(6, 32), expected[:, 0], atol=1e-5, rtol=1e-5)


def test_channel_modes_agree_on_grey_volumes():
    torch.manual_seed(3)
    repeat = ENCODERS.build("test_slice2d", channel_mode="repeat").eval()
    torch.manual_seed(3)
    summed = ENCODERS.build("test_slice2d", channel_mode="sum").eval()
    assert summed.backbone.patch_conv.in_channels == 1
    vol = torch.rand(1, 1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(repeat(vol).tokens, summed(vol).tokens, atol=1e-5, rtol=1e-5)


def test_fold_channels_is_exact_with_normalisation():
    conv = torch.nn.Conv2d(3, 8, 4, 4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = torch.rand(2, 1, 8, 8)
    rgb = (x.expand(-1, 3, -1, -1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(fold_channels(conv, mean, std)(x), conv(rgb), atol=1e-5, rtol=1e-5)


def test_inflated_patch_embedding_equals_2d_on_depth_constant_volume():
    conv = torch.nn.Conv2d(3, 8, 16, 16)
    conv3d = inflate_conv(conv, 4)
    image = torch.rand(2, 3, 32, 32)
    volume = image.unsqueeze(2).expand(-1, -1, 8, -1, -1)
    out = conv3d(volume)  # (B, C, 2, 2, 2)
    for t in range(2):
        torch.testing.assert_close(out[:, :, t], conv(image), atol=1e-5, rtol=1e-5)


def test_inflate3d_encoder_equals_tower_on_depth_constant_volume():
    """End to end: per-slab encoding (k = 0) of a depth-constant volume = the 2D tower's tokens."""
    model = tiny_timm()
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    with torch.no_grad():
        image = torch.rand(1, 1, 1, 32, 32)
        expected = model.forward_features(slices_as_images(image, mean, std))[:, 1:]
        enc = SliceEncoder(TimmViT(model, "tiny"), patch_mode="inflate", depth_patch=4,
                           attn3d_blocks=0, depth_pos="none").eval()
        out = enc(image.expand(-1, -1, 8, -1, -1))
    assert out.grid == (2, 2, 2)
    for t in range(2):
        torch.testing.assert_close(out.tokens.view(2, 4, 32)[t], expected[0], atol=1e-5, rtol=1e-5)


def test_3d_attention_and_depth_windows_mix_the_right_slices():
    torch.manual_seed(0)
    vol = torch.rand(1, 1, 4, 32, 32)
    changed = vol.clone()
    changed[:, :, 0] = torch.rand(32, 32)

    def per_slice_change(**options):
        torch.manual_seed(1)
        enc = ENCODERS.build("test_slice2d", **options).eval()
        with torch.no_grad():
            a, b = enc(vol).tokens.view(4, 4, 32), enc(changed).tokens.view(4, 4, 32)
        return [(a[t] - b[t]).abs().max().item() > 1e-6 for t in range(4)]

    assert per_slice_change(attn3d_blocks=0) == [True, False, False, False]
    assert per_slice_change(attn3d_blocks=1) == [True, True, True, True]
    assert per_slice_change(attn3d_blocks=1, depth_window=2) == [True, True, False, False]
    assert per_slice_change(attn3d_blocks=1, depth_window=3) == [True, True, True, False]


def test_depth_attention_matches_explicit_windows():
    torch.manual_seed(0)
    b, d, h, n, hd = 2, 5, 2, 3, 4
    q, k, v = (torch.randn(b * d, h, n, hd) for _ in range(3))
    out = depth_attention(q, k, v, b, d, window=2, dropout_p=0.0)
    qs, ks, vs = (t.view(b, d, h, n, hd) for t in (q, k, v))
    for start in range(0, d, 2):
        sl = slice(start, min(start + 2, d))

        def flat(t):
            return t[:, sl].permute(0, 2, 1, 3, 4).reshape(b, h, -1, hd)

        ref = F.scaled_dot_product_attention(flat(qs), flat(ks), flat(vs))
        ref = ref.view(b, h, -1, n, hd).permute(0, 2, 3, 1, 4).reshape(b, -1, n, h * hd)
        torch.testing.assert_close(out.view(b, d, n, h * hd)[:, sl], ref, atol=1e-5, rtol=1e-5)
    full = depth_attention(q, k, v, b, d, window=None, dropout_p=0.0)
    torch.testing.assert_close(full, depth_attention(q, k, v, b, d, window=d, dropout_p=0.0))


def test_depth_rope_is_relative_and_leaves_in_slice_scores_unchanged():
    rope = DepthRoPE()
    torch.manual_seed(0)
    d, hd = 4, 8
    token_q, token_k = torch.randn(hd), torch.randn(hd)
    q = token_q.expand(d, 1, 1, hd).clone()
    k = token_k.expand(d, 1, 1, hd).clone()
    rq, rk = rope(q, k, batch=1, depth=d)
    scores = torch.einsum("ad,bd->ab", rq.view(d, hd), rk.view(d, hd))
    plain = token_q @ token_k
    torch.testing.assert_close(torch.diagonal(scores), plain.expand(d))  # same slice: unchanged
    torch.testing.assert_close(scores[0, 1], scores[2, 3])  # depends on the offset only
    assert not torch.allclose(scores[0, 1], plain)


def test_depth_embeddings():
    vol = torch.rand(1, 1, 4, 32, 32)
    outs = {}
    for pos in ("none", "learned", "sincos", "rope"):
        torch.manual_seed(0)
        enc = ENCODERS.build("test_slice2d", depth_pos=pos, attn3d_blocks=1).eval()
        with torch.no_grad():
            outs[pos] = enc(vol).tokens
        if pos == "learned":
            assert enc.depth_embed.shape == (64, 32)
            assert enc.parameter_groups() == {"new": ["depth_embed"], "frozen": []}
    torch.testing.assert_close(outs["learned"], outs["none"])  # zero-initialised: step 0 = 2D
    assert not torch.allclose(outs["sincos"], outs["none"])
    assert not torch.allclose(outs["rope"], outs["none"])


def test_slice_selection_and_pooling():
    enc = ENCODERS.build("test_slice2d", num_slices=3, pool_hw=2).eval()
    vol = torch.rand(1, 1, 7, 64, 64)
    out = enc(vol)
    assert out.extras["slice_indices"].tolist() == [0, 3, 6]
    assert out.grid == (3, 2, 2) and enc.output_layout((7, 64, 64)) == (12, (3, 2, 2))
    stride = ENCODERS.build("test_slice2d", slice_stride=2, pool_depth=2)
    assert stride.output_layout((8, 32, 32)) == (8, (2, 2, 2))
    # pooling is the mean of the unpooled tokens
    torch.manual_seed(0)
    plain = ENCODERS.build("test_slice2d").eval()
    torch.manual_seed(0)
    pooled = ENCODERS.build("test_slice2d", pool_hw=2, pool_depth=2).eval()
    vol = torch.rand(1, 1, 4, 64, 64)
    with torch.no_grad():
        a = plain(vol).tokens.view(1, 2, 2, 2, 2, 2, 2, 32)  # (b, d', pd, h', ph, w', pw, C)
        b = pooled(vol).tokens.view(1, 2, 2, 2, 32)
    torch.testing.assert_close(a.mean(dim=(2, 4, 6)), b, atol=1e-5, rtol=1e-5)


def test_slice_size_resizes_slices():
    enc = ENCODERS.build("test_slice2d", slice_size=48)
    assert enc.output_layout((4, 100, 80)) == (36, (4, 3, 3))
    assert enc(torch.rand(1, 1, 4, 100, 80)).tokens.shape == (1, 36, 32)


def test_medblip3d_fresh_stem_and_inflate_drop_the_2d_conv():
    med = ENCODERS.build("test_medblip3d")
    names = [n for n, _ in med.named_parameters()]
    assert "patch_embed3d.weight" in names and not any("patch_embed.proj" in n for n in names)
    groups = med.parameter_groups()  # MedBLIP: the fresh stem learns, the 2D tower stays frozen
    assert groups["new"] == ["patch_embed3d.weight", "patch_embed3d.bias"]
    assert set(groups["frozen"]) == set(names) - set(groups["new"])
    inflated = ENCODERS.build("test_inflate3d")
    assert inflated.patch_embed3d.weight.shape == (32, 3, 2, 16, 16)
    assert inflated.parameter_groups() == {"new": [], "frozen": []}


def test_gradient_checkpointing_gives_same_values_and_grads():
    vol = torch.rand(1, 1, 4, 32, 32)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = ENCODERS.build("test_slice2d", grad_checkpointing=ckpt).train()
        out = enc(vol).tokens
        out.square().sum().backward()
        results.append((out.detach(), enc.backbone.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_feature_layer_truncates_blocks():
    enc = ENCODERS.build("test_slice2d", feature_layer=-2, attn3d_blocks=None)
    assert len(enc.backbone.blocks) == 1 and enc.attn3d_blocks == 1
    assert enc(torch.rand(1, 1, 2, 32, 32)).tokens.shape == (1, 8, 32)


def test_errors_are_clear():
    enc = ENCODERS.build("test_slice2d")
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        enc.output_layout((4, 30, 32))
    with pytest.raises(ValueError, match="rank 4"):
        enc(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        enc(torch.rand(1, 2, 4, 32, 32))
    with pytest.raises(ValueError, match="pool_hw=2 does not divide"):
        ENCODERS.build("test_slice2d", pool_hw=2).output_layout((4, 48, 48))
    with pytest.raises(ValueError, match="exceed max_tokens=8"):
        ENCODERS.build("test_slice2d", max_tokens=8).output_layout((4, 32, 32))
    with pytest.raises(ValueError, match="Did you mean: repeat"):
        ENCODERS.build("test_slice2d", channel_mode="repaet")
    with pytest.raises(ValueError, match="depth_pos"):
        ENCODERS.build("test_slice2d", depth_pos="alibi")
    with pytest.raises(ValueError, match="attn3d_blocks"):
        ENCODERS.build("test_slice2d", attn3d_blocks=5)
    with pytest.raises(ValueError, match="not both"):
        ENCODERS.build("test_slice2d", slice_stride=2, num_slices=3)
    with pytest.raises(ValueError, match="num_slices=9 exceeds"):
        ENCODERS.build("test_slice2d", num_slices=9).output_layout((4, 32, 32))
    with pytest.raises(ValueError, match="depth_patch=2"):
        ENCODERS.build("test_inflate3d").output_layout((5, 32, 32))
    with pytest.raises(ValueError, match="patch_mode 'inflate' or 'fresh3d'"):
        ENCODERS.build("test_slice2d", depth_patch=2)
    with pytest.raises(ValueError, match="slice size"):
        ENCODERS.build("test_slice2d", slice_size=40)
    with pytest.raises(ValueError, match="ecosystem"):
        ENCODERS.build("slice2d", backbone="foo:bar")


def test_full_size_builds_on_meta():
    with torch.device("meta"):
        enc = ENCODERS.build("slice2d", backbone="open_clip:ViT-B-16")
        inflated = ENCODERS.build("inflate3d")
    assert enc.output_layout((32, 256, 256)) == (32 * 49, (32, 7, 7))
    assert enc.attn3d_blocks == 3 and enc.out_dim == 768
    assert inflated.output_layout((32, 256, 256)) == (8 * 196, (8, 14, 14))
    assert math.prod(inflated.token_grid((32, 256, 256))) == 1568


@pytest.mark.parametrize("backbone,kwargs,has_cls", [
    ("open_clip:ViT-B-16", dict(width=32, layers=2, head_width=16, image_size=32, patch_size=16), True),
    ("hf:siglip", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, image_size=32, patch_size=16), False),
])
def test_other_ecosystems_run_with_3d_attention(backbone, kwargs, has_cls):
    enc = ENCODERS.build("slice2d", backbone=backbone, backbone_kwargs=kwargs, slice_size=None,
                         pool_hw=1, attn3d_blocks=1, depth_window=2)
    out = enc(torch.rand(2, 1, 3, 64, 32))
    assert out.tokens.shape == (2, 3 * 4 * 2, 32) and out.grid == (3, 4, 2)
    assert ("cls" in out.extras) == has_cls
    out.tokens.sum().backward()
