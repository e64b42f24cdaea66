import math

import pytest
import torch
from monai.networks.nets import ViT

from encoders.vit3d import IGNORED_CHECKPOINT_PARTS, ViT3D, vit3d
from zoo import ENCODERS
from zoo.build import on_meta
from zoo.errors import CheckpointError, ConfigError
from zoo.types import Encoder, VisualTokens

TINY = dict(img_size=(32, 64, 64), patch_size=(4, 16, 16), hidden_size=64, num_heads=4,
            mlp_dim=128)


def monai_vit(cls_token: bool = True, qkv_bias: bool = False, **overrides) -> ViT:
    """A random MONAI ViT with the tiny settings; CLS via classification=True, head removed."""
    kw = dict(TINY, **overrides)
    net = ViT(in_channels=1, img_size=kw["img_size"], patch_size=kw["patch_size"],
              hidden_size=kw["hidden_size"], mlp_dim=kw["mlp_dim"], num_layers=2,
              num_heads=kw["num_heads"], proj_type="perceptron", classification=cls_token,
              qkv_bias=qkv_bias)
    with torch.no_grad():  # make every parameter non-trivial (MONAI zero-inits some)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def monai_patch_tokens(net: ViT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = net.__dict__["_modules"].pop("classification_head", None)
    try:
        out, _ = net(x)
    finally:
        if head is not None:
            net.classification_head = head
    if hasattr(net, "cls_token"):
        return out[:, 1:], out[:, 0]
    return out, None


@pytest.mark.parametrize("name", ENCODERS.list("*vit3d*"))
def test_registered_and_protocol(name):
    assert name in ("vit3d", "vit3d_base_m3d", "test_vit3d")
    with torch.device("meta"):
        model = ENCODERS.build(name)
    assert isinstance(model, Encoder)


def test_m3d_preset_size_and_layout():
    with torch.device("meta"):
        model = ENCODERS.build("vit3d_base_m3d")
    assert sum(p.numel() for p in model.parameters()) == 87_389_184
    assert model.output_layout((32, 256, 256)) == (2048, (8, 16, 16))
    assert model.out_dim == 768


def test_tiny_forward_contract():
    model = ENCODERS.build("test_vit3d").eval()
    out = model(torch.randn(2, 1, 32, 64, 64))
    assert isinstance(out, VisualTokens)
    assert out.tokens.shape == (2, 128, 64) and out.grid == (8, 4, 4)
    assert out.extras["cls"].shape == (2, 64)
    assert model.output_layout((32, 64, 64)) == (128, (8, 4, 4))
    no_cls = ENCODERS.build("test_vit3d", cls_token=False)
    assert no_cls(torch.randn(1, 1, 32, 64, 64)).extras == {}


@pytest.mark.parametrize("cls_token,qkv_bias", [(True, False), (False, True)])
def test_monai_state_dict_loads_with_identical_outputs(tmp_path, cls_token, qkv_bias):
    net = monai_vit(cls_token=cls_token, qkv_bias=qkv_bias)
    path = tmp_path / "pretrained_ViT.bin"
    torch.save({f"vision_encoder.{k}": v for k, v in net.state_dict().items()}, path)
    model = ENCODERS.build("test_vit3d", cls_token=cls_token, qkv_bias=qkv_bias,
                           pretrained=str(path)).eval()
    x = torch.randn(2, 1, 32, 64, 64)
    with torch.no_grad():
        ref_tokens, ref_cls = monai_patch_tokens(net, x)
        out = model(x)
    torch.testing.assert_close(out.tokens, ref_tokens, atol=1e-5, rtol=0)
    if cls_token:
        torch.testing.assert_close(out.extras["cls"], ref_cls, atol=1e-5, rtol=0)
    # the encoder's own keys are exactly MONAI's minus its unused parts
    monai_keys = {k for k in net.state_dict()
                  if not any(p in f".{k}" for p in IGNORED_CHECKPOINT_PARTS)}
    assert set(model.state_dict()) == monai_keys


def test_safetensors_and_image_encoder_prefix(tmp_path):
    from safetensors.torch import save_file

    net = monai_vit()
    state = {f"model.image_encoder.{k}": v.contiguous() for k, v in net.state_dict().items()}
    state["model.text_encoder.weight"] = torch.zeros(3)  # another tower in the same file
    save_file(state, tmp_path / "segvol.safetensors")
    model = vit3d(**TINY, depth=2, pretrained=str(tmp_path / "segvol.safetensors")).eval()
    x = torch.rand(1, 1, 32, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).tokens, monai_patch_tokens(net, x)[0], atol=1e-5,
                                   rtol=0)


def test_checkpoint_key_errors_list_keys(tmp_path):
    net = monai_vit(cls_token=False)
    path = tmp_path / "vit.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(CheckpointError, match="missing keys \\['cls_token'\\]"):
        ENCODERS.build("test_vit3d", pretrained=str(path))
    state = net.state_dict()
    state["blocks.0.attn.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="unexpected keys \\['blocks.0.attn.extra'\\]"):
        ENCODERS.build("test_vit3d", cls_token=False, pretrained=str(path))
    with pytest.raises(ValueError, match="position_embeddings has 128 positions"):
        torch.save(net.state_dict(), path)
        ENCODERS.build("test_vit3d", cls_token=False, img_size=(32, 128, 128),
                       pretrained=str(path))
    with pytest.raises(FileNotFoundError):
        ENCODERS.build("test_vit3d", pretrained=str(tmp_path / "none.bin"))


def test_checkpoint_skipped_on_meta(tmp_path):
    with torch.device("meta"):
        assert on_meta()
        model = ENCODERS.build("test_vit3d", pretrained=str(tmp_path / "absent.bin"))
    assert next(model.parameters()).is_meta


def test_position_embedding_interpolates_to_other_sizes():
    model = ENCODERS.build("test_vit3d").eval()
    out = model(torch.randn(1, 1, 64, 32, 32))
    assert out.grid == (16, 2, 2) and out.tokens.shape == (1, 64, 64)
    table = model.patch_embedding.position_embeddings
    assert torch.equal(model.patch_embedding.position((8, 4, 4)), table)
    # trilinear resampling to the same grid is the identity; to a coarser one it averages
    grid = model.patch_embedding.grid
    same = torch.nn.functional.interpolate(
        table.reshape(1, *grid, -1).permute(0, 4, 1, 2, 3), size=grid, mode="trilinear")
    torch.testing.assert_close(same.flatten(2).transpose(1, 2), table)
    coarse = model.patch_embedding.position((4, 2, 2)).reshape(4, 2, 2, -1)
    torch.testing.assert_close(coarse[0, 0, 0], table.reshape(8, 4, 4, -1)[:2, :2, :2]
                               .mean((0, 1, 2)))


def test_bad_inputs_raise_clearly():
    model = ENCODERS.build("test_vit3d")
    with pytest.raises(ValueError, match="rank 4"):
        model(torch.randn(1, 32, 64, 64))
    with pytest.raises(ValueError, match="2 channels, expected 1"):
        model(torch.randn(1, 2, 32, 64, 64))
    bad = torch.randn(1, 1, 32, 64, 64)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad)
    with pytest.raises(ValueError, match=r"\(30, 64, 64\) is not divisible by patch_size "
                                         r"\(4, 16, 16\)"):
        model(torch.randn(1, 1, 30, 64, 64))
    with pytest.raises(ValueError, match="img_size spatial size"):
        ENCODERS.build("test_vit3d", img_size=(32, 60, 64))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        ENCODERS.build("test_vit3d", num_heads=5)
    with pytest.raises(ValueError, match="Did you mean: learnable"):
        ENCODERS.build("test_vit3d", pos_embed="learnabel")
    with pytest.raises(ConfigError, match="Did you mean: depth"):
        ENCODERS.build("test_vit3d", detph=3)


def test_gradient_checkpointing_same_gradients():
    x = torch.randn(1, 1, 32, 64, 64)
    grads = []
    for flag in (False, True):
        torch.manual_seed(1)
        model = ENCODERS.build("test_vit3d", grad_checkpointing=flag)
        out = model(x)
        (out.tokens.square().mean() + out.extras["cls"].sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_forward_intermediates():
    model = ENCODERS.build("test_vit3d", depth=3).eval()
    x = torch.randn(2, 1, 32, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=[0, -1], norm=True)
        only = model.forward_intermediates(x, indices=1, output_fmt="NCDHW",
                                           intermediates_only=True)
        plain = model(x)
    torch.testing.assert_close(final.tokens, plain.tokens)
    torch.testing.assert_close(feats[-1], plain.tokens)  # last block + norm == forward
    assert len(feats) == 2 and feats[0].shape == (2, 128, 64)
    assert len(only) == 1 and only[0].shape == (2, 64, 8, 4, 4)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[3])


def test_dropout_only_in_training():
    model = ENCODERS.build("test_vit3d", dropout=0.5)
    x = torch.randn(1, 1, 32, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).tokens, model(x).tokens)
    model.train()
    assert not torch.equal(model(x).tokens, model(x).tokens)


def test_sincos_position_embedding_is_fixed():
    with pytest.raises(ValueError, match="divisible by 6"):
        ViT3D(**TINY, depth=1, pos_embed="sincos")
    model = ViT3D(**dict(TINY, hidden_size=48), depth=1, pos_embed="sincos")
    table = model.patch_embedding.position_embeddings
    assert not table.requires_grad and math.isclose(float(table.abs().max()), 1.0, rel_tol=1e-6)


def test_attn_impl_is_validated_and_xformers_is_refused_saying_why():
    with pytest.raises(ValueError, match="attn_impl='sdp' is not one of .*Did you mean: sdpa"):
        ENCODERS.build("test_vit3d", attn_impl="sdp")
    with pytest.raises(ConfigError, match="attn_impl='xformers' was removed: .*; use 'sdpa'"):
        ENCODERS.build("vit3d_base_m3d", attn_impl="xformers")
