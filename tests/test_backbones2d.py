"""The 2D tower interface against each library's own forward (tiny random towers, CPU)."""

import pytest
import torch

import zoo  # noqa: F401  (environment fixes first)
from encoders.backbones2d import (ECOSYSTEMS, HFVisionViT, OpenClipViT, TimmViT, build_backbone2d,
                                  parse_backbone)
from zoo.errors import CheckpointError, ConfigError

TINY_TIMM = dict(embed_dim=32, depth=2, num_heads=2, img_size=32)
TINY_OPEN_CLIP = dict(width=32, layers=2, head_width=16, image_size=32, patch_size=16)
TINY_HF = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               image_size=32, patch_size=16)


def timm_pair(**extra):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                              **TINY_TIMM, **extra).eval()
    return TimmViT(model, "tiny").eval(), lambda x: model.forward_features(x)


def open_clip_pair():
    from open_clip.model import _build_vision_tower

    visual = _build_vision_tower(16, dict(TINY_OPEN_CLIP)).eval()
    visual.output_tokens = True
    tower = OpenClipViT(visual, "tiny", (0.5,) * 3, (0.5,) * 3).eval()
    return tower, lambda x: visual(x)[1], 1  # open_clip returns patch tokens without CLS


def hf_pair(kind):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**TINY_HF)).eval()

        def ref(x, **kw):
            return model.post_layernorm(model(pixel_values=x, **kw).last_hidden_state)
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**TINY_HF)).eval()

        def ref(x, **kw):
            return model(pixel_values=x, **kw).last_hidden_state
    return HFVisionViT(model, kind, (0.5,) * 3, (0.5,) * 3).eval(), ref


@pytest.mark.parametrize("kind", ["timm", "open_clip", "hf_clip", "hf_siglip"])
def test_interface_forward_equals_library_forward(kind):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if kind == "timm":
            tower, ref = timm_pair()
            mine, theirs = tower(x), ref(x)
        elif kind == "open_clip":
            tower, ref, skip = open_clip_pair()
            mine, theirs = tower(x)[:, skip:], ref(x)
        else:
            tower, ref = hf_pair(kind[3:])
            mine, theirs = tower(x), ref(x)
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert tower.width == 32 and tower.patch_size == 16 and tower.native_grid == (2, 2)
    assert tower.num_prefix_tokens == (0 if kind == "hf_siglip" else 1)
    assert len(tower.blocks) == 2 and all(hasattr(b, "mlp") for b in tower.blocks)


@pytest.mark.parametrize("kind", ["timm", "hf_clip", "hf_siglip"])
def test_resized_position_embedding_matches_library(kind):
    """A 64 x 48 slice (4 x 3 grid) through the interface equals the library's own resampling."""
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        if kind == "timm":
            tower, ref = timm_pair(dynamic_img_size=True)
            theirs = ref(x)
        else:
            tower, ref = hf_pair(kind[3:])
            theirs = ref(x, interpolate_pos_encoding=True)
        mine = tower(x)
    assert mine.shape[1] == tower.num_prefix_tokens + 12
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_open_clip_position_resampling_uses_open_clip_helper():
    from open_clip.model import resize_pos_embed
    from types import SimpleNamespace

    tower, _, _ = open_clip_pair()
    pos = tower.pos_embed((3, 3))
    state = {"visual.positional_embedding": tower.positional_embedding.detach().clone()}
    resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(3, 3))))
    assert pos.shape == (1, 10, 32)
    torch.testing.assert_close(pos[0], state["visual.positional_embedding"])
    torch.testing.assert_close(pos[0, 0], tower.positional_embedding[0])  # class position kept


def test_build_from_strings_covers_three_ecosystems():
    timm_tower = build_backbone2d("timm:vit_tiny_patch16_224", None, TINY_TIMM)
    oc_tower = build_backbone2d("open_clip:ViT-B-16", None, TINY_OPEN_CLIP)
    clip_tower = build_backbone2d("hf:clip_vision_model", None, TINY_HF)
    siglip_tower = build_backbone2d("hf:siglip", None, TINY_HF)
    for tower, eco in ((timm_tower, "timm"), (oc_tower, "open_clip"), (clip_tower, "hf"),
                       (siglip_tower, "hf")):
        assert tower.ecosystem == eco
        assert tower(torch.randn(1, 3, 32, 32)).shape[-1] == 32
    assert siglip_tower.image_mean == (0.5, 0.5, 0.5)
    assert oc_tower.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert not hasattr(oc_tower, "proj")  # the unused projection is not kept as dead weight


def test_open_clip_timm_trunk_biomedclip_style():
    """An open_clip config whose vision tower is a timm trunk maps to the timm interface."""
    tower = build_backbone2d("open_clip:ViT-B-16", None,
                             {"timm_model_name": "vit_tiny_patch16_224", "timm_pool": "",
                              "timm_proj": "linear", "image_size": 224})
    assert isinstance(tower, TimmViT) and tower.ecosystem == "open_clip"
    assert tower.width == 192 and tower.patch_size == 16 and tower.native_grid == (14, 14)
    assert tower(torch.randn(1, 3, 32, 32)).shape == (1, 5, 192)


def test_pretrained_state_dict_files_load(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_TIMM)
    save_file(model.state_dict(), str(tmp_path / "vit.safetensors"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "vit.pt")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval().forward_features(x)
        fresh = build_backbone2d("timm:vit_tiny_patch16_224", None, TINY_TIMM).eval()
        assert not torch.allclose(fresh(x), ref)
        for name in ("vit.safetensors", "vit.pt"):
            loaded = build_backbone2d("timm:vit_tiny_patch16_224", str(tmp_path / name), TINY_TIMM).eval()
            torch.testing.assert_close(loaded(x), ref)


def test_open_clip_checkpoint_with_visual_prefix_loads(tmp_path):
    from open_clip.model import _build_vision_tower

    visual = _build_vision_tower(512, dict(TINY_OPEN_CLIP)).eval()
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state["logit_scale"] = torch.ones(())
    state["text_projection"] = torch.ones(2, 2)
    torch.save(state, tmp_path / "clip.bin")
    tower = build_backbone2d("open_clip:ViT-B-16", str(tmp_path / "clip.bin"), TINY_OPEN_CLIP)
    torch.testing.assert_close(tower.conv1.weight, visual.conv1.weight)
    torch.testing.assert_close(tower.positional_embedding, visual.positional_embedding)


def test_hf_local_directory_loads(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = SiglipVisionModel(SiglipVisionConfig(**TINY_HF)).eval()
    model.save_pretrained(tmp_path / "siglip")
    tower = build_backbone2d(f"hf:{tmp_path / 'siglip'}", str(tmp_path / "siglip")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), model(pixel_values=x).last_hidden_state)


def test_mismatched_checkpoint_names_missing_keys(tmp_path):
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        build_backbone2d("open_clip:ViT-B-16", str(tmp_path / "bad.pt"), TINY_OPEN_CLIP)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_backbone2d("timm:vit_tiny_patch16_224", str(tmp_path / "nope.pt"), TINY_TIMM)
    with pytest.raises(ValueError, match="download"):
        build_backbone2d("timm:vit_tiny_patch16_224", True, TINY_TIMM)


@pytest.mark.parametrize("spec", ["foo:bar", "vit_base_patch16_224", "timmm:vit_base_patch16_224"])
def test_unknown_ecosystem_lists_prefixes(spec):
    with pytest.raises(ValueError) as info:
        parse_backbone(spec)
    for prefix in ECOSYSTEMS:
        assert prefix in str(info.value)
    if spec.startswith("timmm"):
        assert "Did you mean: timm" in str(info.value)


def test_unknown_model_names_suggest():
    with pytest.raises(ConfigError, match="Did you mean: ViT-L-14-336"):
        build_backbone2d("open_clip:ViT-L-14-33")
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_backbone2d("timm:vit_tiny_patch16_2244")
    with pytest.raises(ValueError, match="neither a local directory"):
        build_backbone2d("hf:/no/such/dir")
    with pytest.raises(ConfigError, match="vision_cfg"):
        build_backbone2d("open_clip:ViT-B-16", None, {"widht": 32})


def test_slice_size_not_divisible_by_patch():
    tower = build_backbone2d("timm:vit_tiny_patch16_224", None, TINY_TIMM)
    assert tower.grid((48, 64)) == (3, 4)
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        tower.grid((30, 32))
    with pytest.raises(ValueError, match="not divisible"):
        tower(torch.randn(1, 3, 40, 40))


def test_full_size_towers_build_on_meta():
    with torch.device("meta"):
        tower = build_backbone2d("open_clip:ViT-L-14-336")
    assert (tower.width, tower.patch_size, tower.native_grid, len(tower.blocks)) == (1024, 14, (24, 24), 24)
    assert tower.grid(224) == (16, 16)


def test_hf_full_clip_directory_and_state_dict_give_the_vision_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(vision_config=TINY_HF, projection_dim=16,
                     text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, vocab_size=100))
    model = CLIPModel(cfg).eval()
    model.save_pretrained(tmp_path / "clip")
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        vision = model.vision_model
        ref = vision.post_layernorm(vision(pixel_values=x).last_hidden_state)
        from_dir = build_backbone2d(f"hf:{tmp_path / 'clip'}", str(tmp_path / "clip")).eval()
        from_file = build_backbone2d("hf:clip", str(tmp_path / "clip.pt"), TINY_HF).eval()
        torch.testing.assert_close(from_dir(x), ref)
        torch.testing.assert_close(from_file(x), ref)
