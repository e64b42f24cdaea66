"""3D backbones for Med3DInsight: Swin (SwinUNETR encoder) and a residual 3D CNN."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from encoders import resnet3d as resnet_mod
from encoders import swin3d as swin_mod
from zoo.errors import CheckpointError
from zoo.types import Encoder

BUILDERS = [swin_mod.test_swin3d, resnet_mod.test_resnet3d]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_features_match_their_description_and_tokens_the_bottleneck(build):
    enc = build()
    assert isinstance(enc, Encoder)
    volume = torch.randn(1, 1, 32, 32, 64)
    feats = enc.forward_features(volume)
    assert len(feats) == len(enc.feature_dims) == len(enc.feature_strides) == 5
    for f, dim, stride in zip(feats, enc.feature_dims, enc.feature_strides):
        assert f.shape == (1, dim, 32 // stride[0], 32 // stride[1], 64 // stride[2])
    visual = enc(volume)
    n, grid = enc.output_layout((32, 32, 64))
    assert visual.grid == grid == (1, 1, 2) and visual.tokens.shape == (1, n, enc.out_dim)
    assert torch.equal(visual.tokens, feats[-1].flatten(2).transpose(1, 2))


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_bad_input_is_named(build):
    enc = build()
    with pytest.raises(ValueError, match="multiples of 32"):
        enc(torch.randn(1, 1, 32, 32, 40))
    with pytest.raises(ValueError, match="channels"):
        enc(torch.randn(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        enc(torch.full((1, 1, 32, 32, 32), float("nan")))


def test_full_size_parameter_counts_on_meta():
    with torch.device("meta"):
        swin, res = swin_mod.swin3d(), resnet_mod.resnet3d()
    assert swin.out_dim == 768 and res.out_dim == 512
    assert sum(p.numel() for p in swin.parameters()) == 8_062_002
    assert sum(p.numel() for p in res.parameters()) == 33_160_896
    assert next(swin.parameters()).device.type == "meta"


def test_swin_loads_swinunetr_weights(tmp_path):
    ref = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1),
                    num_heads=(1, 2, 2, 4), window_size=2)
    torch.save(ref.state_dict(), tmp_path / "swinunetr.pt")
    enc = swin_mod.test_swin3d(pretrained=str(tmp_path / "swinunetr.pt")).eval()
    volume = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ours = enc.forward_features(volume)
        theirs = ref.eval().swinViT(volume, normalize=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    bad = {k: v for k, v in ref.state_dict().items() if "layers4" not in k}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        swin_mod.test_swin3d(pretrained=str(tmp_path / "bad.pt"))


def test_constructor_validation():
    with pytest.raises(ValueError, match="feature_size"):
        swin_mod.swin3d(feature_size=20)
    with pytest.raises(ValueError, match="block"):
        resnet_mod.resnet3d(block="wide")


def test_conv3d_stem_gives_the_vit_grid_and_any_size():
    from zoo.registry import ENCODERS

    enc = ENCODERS.build("test_conv3d_stem")
    assert isinstance(enc, Encoder) and enc.output_layout((32, 64, 64)) == (128, (8, 4, 4))
    out = enc(torch.rand(2, 1, 20, 40, 36))  # sides the strides do not divide: rounded up
    assert out.grid == enc.output_layout((20, 40, 36))[1] == (5, 3, 3)
    assert out.tokens.shape == (2, 45, 32)
    with torch.device("meta"):
        full = ENCODERS.build("conv3d_stem")
    assert full.output_layout((32, 256, 256)) == ENCODERS.build("test_vit3d").output_layout(
        (32, 256, 256))  # the ViT's patch grid, 8 x 16 x 16
    with pytest.raises(ValueError, match="one entry per stage"):
        ENCODERS.build("conv3d_stem", widths=(8, 16))
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        ENCODERS.build("conv3d_stem", groups=3)
