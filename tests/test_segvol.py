import math

import pytest
import torch
import torch.nn.functional as F

from heads.segvol import (PUBLISHED_PARAMS_M, segvol_parameter_counts, segvol_to_zoo_keys,
                          test_segvol as build_test_segvol, zoo_to_segvol_keys)
from heads.segvol_inference import BACKGROUND_LOGIT, _region, _window_prompts, zoom_out_zoom_in
from heads.segvol_prompt import SegVolPromptEncoder
from heads.segvol_text import clip_text_tower, tiny_clip_text_tower
from zoo.errors import CheckpointError
from zoo.registry import ENCODERS, HEADS
from zoo.types import MaskOutput

SIZE = (16, 32, 32)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return HEADS.build("test_segvol").eval()


@pytest.fixture(scope="module")
def volume():
    return torch.rand(2, 1, *SIZE, generator=torch.Generator().manual_seed(1))


def test_registered_test_variant_is_listed():
    assert "test_segvol" in HEADS.list("test_*") and "segvol" in HEADS


def test_text_prompts_give_one_mask_per_prompt(head, volume):
    with torch.no_grad():
        out = head(volume, text=[["liver", "kidney", "spleen"], ["aorta", "liver", "lung"]])
    assert isinstance(out, MaskOutput) and out.loss is None
    assert out.logits.shape == (2, 3, *SIZE)
    assert not torch.allclose(out.logits[0, 0], out.logits[0, 1])
    # the same prompt on the same image gives the same mask wherever it sits in the list
    with torch.no_grad():
        alone = head(volume[1:], text=[["liver"]]).logits
    torch.testing.assert_close(alone[0, 0], out.logits[1, 1], rtol=1e-4, atol=1e-4)


def test_multiple_prompts_equal_separate_runs(head, volume):
    emb = torch.randn(2, 3, head.embed_dim)
    boxes = torch.tensor([[[0, 0, 0, 8, 16, 16], [4, 4, 4, 12, 28, 20], [1, 2, 3, 15, 31, 31]]] * 2)
    with torch.no_grad():
        joint = head(volume, text_embedding=emb, boxes=boxes).logits
        for k in range(3):
            single = head(volume, text_embedding=emb[:, k], boxes=boxes[:, k]).logits
            torch.testing.assert_close(single[:, 0], joint[:, k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["points", "boxes", "points+boxes", "text+points", "text+boxes",
                                  "text+points+boxes", "none"])
def test_prompt_types_and_combinations(head, volume, kind):
    prompts = {}
    if "points" in kind:
        prompts["points"] = torch.tensor([[[4, 10, 12], [8, 20, 20]], [[2, 3, 4], [9, 9, 9]]])
        prompts["point_labels"] = torch.tensor([[1, 0], [1, -1]])
    if "boxes" in kind:
        prompts["boxes"] = torch.tensor([[0, 0, 0, 8, 16, 16], [4, 4, 4, 12, 28, 20]])
    if "text" in kind:
        prompts["text"] = ["liver", "kidney"]
    with torch.no_grad():
        out = head(volume, **prompts)
    assert out.logits.shape == (2, 1, *SIZE)
    assert torch.isfinite(out.logits).all()


def test_points_move_the_mask_and_padding_points_are_position_free(head, volume):
    labels = torch.ones(1, 1)
    with torch.no_grad():
        a = head(volume[:1], points=torch.tensor([[[2, 4, 4]]]), point_labels=labels).logits
        b = head(volume[:1], points=torch.tensor([[[12, 28, 28]]]), point_labels=labels).logits
        c = head(volume[:1], points=torch.tensor([[[2, 4, 4]]]), point_labels=-labels).logits
        d = head(volume[:1], points=torch.tensor([[[12, 28, 28]]]), point_labels=-labels).logits
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, d)


def test_point_encoding_reproduces_segvol_axis_normalisation():
    enc = SegVolPromptEncoder(8)
    point = torch.tensor([[[3.0, 10.0, 20.0]]])
    size = (16, 32, 64)
    got = enc._encode_coords(point, size)
    c = point[0, 0] + 0.5
    expected = enc.pe_layer.encode(torch.stack([c[0] / 32, c[1] / 16, c[2] / 64]))
    torch.testing.assert_close(got[0, 0], expected)
    consistent = SegVolPromptEncoder(8, segvol_point_order=False)
    consistent.load_state_dict(enc.state_dict())
    expected = enc.pe_layer.encode(torch.stack([c[1] / 32, c[0] / 16, c[2] / 64]))
    torch.testing.assert_close(consistent._encode_coords(point, size)[0, 0], expected)
    # the dense PE of a grid equals the point PE of the grid-cell centres (consistent order)
    pe = consistent.dense_pe((2, 3, 4))
    assert pe.shape == (1, 8, 2, 3, 4)
    centre = torch.tensor([1.5 * 8, 2.5 * 10, 3.5 * 16]) - 0.5  # centre of cell (1, 2, 3)
    torch.testing.assert_close(pe[0, :, 1, 2, 3],
                               consistent._encode_coords(centre, (16, 30, 64)), rtol=1e-5,
                               atol=1e-5)


def test_loss_is_monai_dice_plus_bce_and_trains(volume):
    from monai.losses import DiceLoss

    torch.manual_seed(0)
    model = build_test_segvol()
    target = torch.zeros(2, 2, *SIZE)
    target[:, 0, 4:10, 8:20, 8:20] = 1
    target[:, 1, 2:6, 0:10, 20:30] = 1
    out = model(volume, text=[["liver", "kidney"]] * 2, target=target)
    expected = DiceLoss(sigmoid=True)(out.logits, target) + F.binary_cross_entropy_with_logits(
        out.logits, target)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.mask_decoder.mask_tokens.weight.grad.abs().sum() > 0
    assert model.image_encoder.patch_embedding.patch_embeddings[1].weight.grad is not None
    assert all(p.grad is None for p in model.text_encoder.clip_text_model.parameters())
    with pytest.raises(ValueError, match="one target mask per prompt"):
        model(volume, text=["liver", "kidney"], target=target)


@pytest.mark.parametrize("image_size,patch_size", [((8, 48, 32), (4, 8, 8)),
                                                   ((12, 24, 40), (4, 8, 8)),
                                                   ((16, 16, 16), (8, 4, 4))])
def test_non_default_input_sizes_and_patch_grids(image_size, patch_size):
    model = HEADS.build("test_segvol", image_size=image_size, patch_size=patch_size,
                        text_tower=False).eval()
    vol = torch.rand(1, 1, *image_size)
    with torch.no_grad():
        out = model(vol, boxes=torch.tensor([[0, 0, 0, 4, 8, 8]]), text_embedding=torch.randn(1, 32))
    assert out.logits.shape == (1, 1, *image_size)
    grid = tuple(s // p for s, p in zip(image_size, patch_size))
    assert model.mask_decoder.output_upscaling[1].weight.shape == (8, *(2 * g for g in grid))


def test_runtime_grid_change_needs_the_channel_norm():
    seg = HEADS.build("test_segvol", text_tower=False).eval()
    chan = HEADS.build("test_segvol", text_tower=False, upscaling_norm="channel").eval()
    vol = torch.rand(1, 1, 24, 40, 32)  # not the build size: grid 6 x 5 x 4
    with torch.no_grad():
        assert chan(vol, points=torch.tensor([[[3, 3, 3]]]), point_labels=torch.ones(1, 1)
                    ).logits.shape == (1, 1, 24, 40, 32)
        with pytest.raises(ValueError, match="differs from the grid"):
            seg(vol, points=torch.tensor([[[3, 3, 3]]]), point_labels=torch.ones(1, 1))


def test_shared_encoder_takes_precomputed_tokens(head, volume):
    shared = HEADS.build("test_segvol", share_encoder=True)
    assert shared.image_encoder is None
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("image_encoder.")}
    shared.load_state_dict(state)
    shared.eval()
    with torch.no_grad():
        tokens = head.image_encoder(volume)
        ref = head(volume, text=["liver", "kidney"]).logits
        got = shared(image_tokens=tokens, text=["liver", "kidney"]).logits
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="pass image_tokens"):
        shared(volume, text=["liver", "kidney"])
    wide = ENCODERS.build("test_vit3d", img_size=SIZE, patch_size=(4, 8, 8), cls_token=False)
    with torch.no_grad(), pytest.raises(ValueError, match="width 64"):
        shared(image_tokens=wide(volume), text=["liver", "kidney"])


def _segvol_layout(model):
    """A state dict in SegVol's released layout: DataParallel prefix, transformers-4 text level,
    and the keys SegVol has but this head drops."""
    return {k: v.clone() for k, v in zoo_to_segvol_keys(model.state_dict(), prefix="module.").items()}


def test_weights_load_from_a_state_dict_in_segvol_layout(head, volume, tmp_path):
    state = _segvol_layout(head)
    for key in ("module.image_encoder.patch_embedding.patch_embeddings.1.weight",
                "module.image_encoder.blocks.0.attn.qkv.weight",
                "module.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "module.prompt_encoder.point_embeddings.3.weight",
                "module.prompt_encoder.not_a_point_embed.weight",
                "module.prompt_encoder.no_mask_embed.weight",
                "module.mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
                "module.mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight",
                "module.mask_decoder.transformer.layers.0.cross_attn_image_to_token.v_proj.bias",
                "module.mask_decoder.transformer.layers.0.mlp.lin1.weight",
                "module.mask_decoder.transformer.layers.0.norm4.weight",
                "module.mask_decoder.transformer.final_attn_token_to_image.out_proj.weight",
                "module.mask_decoder.transformer.norm_final_attn.weight",
                "module.mask_decoder.iou_token.weight", "module.mask_decoder.mask_tokens.weight",
                "module.mask_decoder.output_upscaling.0.weight",
                "module.mask_decoder.output_upscaling.1.weight",
                "module.mask_decoder.output_upscaling.3.weight",
                "module.mask_decoder.output_hypernetworks_mlps.3.layers.2.weight",
                "module.mask_decoder.iou_prediction_head.layers.2.bias",
                "module.mask_decoder.txt_align_upscaled_embedding.weight",
                "module.text_encoder.dim_align.weight",
                "module.text_encoder.clip_text_model.text_model.embeddings.token_embedding.weight",
                "module.text_encoder.clip_text_model.text_model.final_layer_norm.weight"):
        assert key in state, key
    path = tmp_path / "segvol.pth"
    torch.save({"model": state, "epoch": 3}, path)
    torch.manual_seed(123)
    fresh = HEADS.build("test_segvol", pretrained=str(path)).eval()
    with torch.no_grad():
        ref = head(volume, text=["liver", "kidney"], boxes=torch.tensor([[0, 0, 0, 8, 8, 8]] * 2))
        got = fresh(volume, text=["liver", "kidney"], boxes=torch.tensor([[0, 0, 0, 8, 8, 8]] * 2))
    torch.testing.assert_close(got.logits, ref.logits)
    # a model without the text tower skips the text keys and says so
    no_text = HEADS.build("test_segvol", text_tower=False)
    skipped = no_text.load_segvol_state_dict(state)
    assert "module.prompt_encoder.mask_downscaling.0.weight" in skipped
    assert "text_encoder.dim_align.weight" in skipped


def test_checkpoint_key_errors_list_the_keys(head):
    state = _segvol_layout(head)
    del state["module.mask_decoder.iou_token.weight"]
    state["module.mask_decoder.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        HEADS.build("test_segvol").load_segvol_state_dict(state)
    assert "mask_decoder.iou_token.weight" in str(info.value)
    assert "mask_decoder.extra_head.weight" in str(info.value)
    state = _segvol_layout(head)
    other = HEADS.build("test_segvol", image_size=(16, 32, 48))
    with pytest.raises(ValueError, match="shape mismatch"):
        other.load_segvol_state_dict(state)
    renamed, ignored = segvol_to_zoo_keys({"model.mask_decoder.iou_token.weight": torch.zeros(1)})
    assert list(renamed) == ["mask_decoder.iou_token.weight"] and not ignored


def test_text_tower_from_a_local_clip_directory(tmp_path):
    torch.manual_seed(0)
    tower = tiny_clip_text_tower(out_dim=32)
    tower.clip_text_model.save_pretrained(tmp_path)
    tower.tokenizer.save_pretrained(tmp_path)
    loaded = clip_text_tower(tmp_path, out_dim=32)
    loaded.dim_align.load_state_dict(tower.dim_align.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(["liver", "left kidney"]), tower(["liver", "left kidney"]))
    assert not any(p.requires_grad for p in loaded.clip_text_model.parameters())
    with pytest.raises(FileNotFoundError, match="text_pretrained"):
        clip_text_tower(tmp_path / "missing")


def test_errors_are_clear(head, volume):
    no_text = HEADS.build("test_segvol", text_tower=False)
    with pytest.raises(ValueError, match="text tower"):
        no_text(volume, text=["liver", "kidney"])
    with pytest.raises(ValueError, match="prompt counts per image disagree"):
        head(volume, text_embedding=torch.randn(2, 3, 32), boxes=torch.zeros(2, 2, 6))
    with pytest.raises(ValueError, match="point_labels"):
        head(volume, points=torch.zeros(2, 2, 3), point_labels=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="text_pretrained"):
        HEADS.build("segvol")


def test_region_and_window_prompt_mapping_hand_values():
    prob = torch.zeros(2, 20, 40, 40)
    prob[0, 5:7, 10:12, 30:40] = 0.9
    prob[1, 8, 20, 20] = 0.6
    region = _region(prob, (8, 16, 16), margin=1)
    # union d 5..8, h 10..20, w 20..39; grown by 1 -> [4, 10), [9, 22), [19, 41); short axes grown
    # to the window (d by 1 + 1, h by 1 + 2), then clipped to the volume (w ends at 40)
    assert region == (slice(3, 11), slice(8, 24), slice(19, 40))
    assert _region(torch.zeros(1, 4, 4, 4), (2, 2, 2), 0) is None
    points = torch.tensor([[[2.0, 3.0, 4.0], [10.0, 3.0, 4.0]]])
    labels = torch.tensor([[1, 1]])
    boxes = torch.tensor([[0.0, 0.0, 0.0, 5.0, 5.0, 5.0], [20.0, 20.0, 20.0, 30.0, 30.0, 30.0]])
    start, size = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([8.0, 8.0, 8.0])
    p, lab, b, miss = _window_prompts(points, labels, boxes, start, size)
    torch.testing.assert_close(p, torch.tensor([[[1.0, 2.0, 3.0], [9.0, 2.0, 3.0]]]))
    assert lab.tolist() == [[1, -1]]
    torch.testing.assert_close(b[0], torch.tensor([0.0, 0.0, 0.0, 4.0, 4.0, 4.0]))
    assert miss.tolist() == [False, True]


def test_zoom_out_zoom_in_slides_windows_on_a_larger_volume(head):
    calls = []
    hook_pre = head.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    # shift every logit up so the zoom-out region covers the whole volume (deterministic windows)
    hook = head.register_forward_hook(
        lambda m, a, out: MaskOutput(out.logits + 10.0, out.loss))
    try:
        vol = torch.rand(1, 1, 24, 48, 40)
        boxes = torch.tensor([[[0, 0, 0, 4, 4, 4], [0, 0, 0, 23, 47, 39]]])
        out = zoom_out_zoom_in(head, vol, text=[["liver", "kidney"]], boxes=boxes)
    finally:
        hook.remove()
        hook_pre.remove()
    assert out.shape == (1, 2, 24, 48, 40)
    # 1 zoom-out pass + 2 x 2 x 2 windows of 16 x 32 x 32 at overlap 0.5
    assert len(calls) == 1 + 8
    # far corner: only windows that miss the first prompt's box -> background logits
    assert out[0, 0, 23, 47, 39].item() == BACKGROUND_LOGIT
    assert out[0, 0, 0, 0, 0].item() > 0 and out[0, 1, 23, 47, 39].item() > 0
    small = zoom_out_zoom_in(head, torch.rand(1, 1, *SIZE), text=[["liver"]])
    assert small.shape == (1, 1, *SIZE)


def test_parameter_counts_next_to_the_published_181m():
    counts = segvol_parameter_counts()
    assert counts["image_encoder"] == 87_388_416  # MONAI ViT-B at 32x256x256, no CLS
    assert counts["text_encoder.clip_text_model"] == 63_165_952  # CLIP ViT-B/32 text tower
    assert counts["mask_decoder.output_upscaling.1 (LayerNorm)"] == 2 * 192 * 16 * 32 * 32
    assert math.isclose(counts["total"] / 1e6, PUBLISHED_PARAMS_M, rel_tol=2e-3)


def test_recipe_trains_the_head_on_sample_prompts():
    from zoo.build import build_model
    from zoo.config import compose

    cfg = compose(["recipe=segvol", "head=test_segvol", "data=test_synth", "~encoder",
                   "~connector", "~lm"])
    model = build_model(cfg)
    assert model.heads.image_size == SIZE
    trainable = model.apply_stage("train")
    assert any(n.startswith("heads.mask_decoder.") for n in trainable)
    assert "heads.text_encoder.dim_align.weight" in trainable
    assert not any(".clip_text_model." in n for n in trainable)
    mask = torch.zeros(2, 1, *SIZE)
    mask[:, :, 4:8, 8:16, 8:16] = 1
    samples = [{"image": torch.rand(1, *SIZE), "mask": m, "prompt": p, "task": "seg"}
               for m, p in zip(mask, ["Please segment the liver.", "Segment the spleen."])]
    batch = model.collate(samples)
    out = model(batch)
    assert out.loss.requires_grad and math.isfinite(out.logs["loss"])
    out.loss.backward()
    assert not any("iou_prediction_head" in n or "hypernetworks_mlps.1" in n for n in trainable)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"trainable but unused (breaks DDP): {no_grad}"
    assert model.generate(batch).logits.shape == (2, 1, *SIZE)
    with pytest.raises(ValueError, match="data.size"):
        model({**batch, "image": torch.rand(2, 1, 16, 32, 16)})


def test_recipe_with_a_shared_encoder():
    from zoo.build import build_model
    from zoo.config import compose

    cfg = compose(["recipe=segvol", "head=test_segvol", "data=test_synth", "encoder=test_vit3d",
                   "+encoder.hidden_size=32", "+encoder.patch_size=[4,8,8]", "~connector", "~lm"])
    model = build_model(cfg)
    assert model.heads.image_encoder is None and model.encoder is not None
    assert any(n.startswith("encoder.") for n in model.apply_stage("train"))
    batch = model.collate([{"image": torch.rand(1, *SIZE), "mask": torch.zeros(1, *SIZE),
                            "prompt": "Segment the liver.", "task": "seg"}])
    assert math.isfinite(model(batch).logs["loss"])
