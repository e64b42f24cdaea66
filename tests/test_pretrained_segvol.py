"""SegVol's released layouts: the CLIP text tower built from SegVol's own ``config/clip`` folder
(config and tokenizer only) with its weights from SegVol's checkpoint, and exports that SegVol's
and M3D's strict loaders accept (key lists written from the official code, see
:func:`segvol_official_keys`)."""

import json

import pytest
import torch

from heads.segvol import mask_downscaling_tensors, zoo_to_segvol_keys
from heads.segvol_text import char_clip_tokenizer, tiny_clip_text_tower
from zoo.errors import ConfigError
from zoo.registry import HEADS


def segvol_official_keys(vit_depth: int, decoder_depth: int, clip_layers: int | None,
                         cls: bool = False) -> set[str]:
    """Every state-dict key of SegVol's ``SegVol`` module (BAAI-DCAI/SegVol network/model.py and
    segment_anything_volumetric/build_sam.py, modeling/*.py, read for this list):

    - image_encoder: MONAI ``ViT`` (perceptron patch embedding = Sequential(Rearrange, Linear),
      ``classification=False``): patch_embedding.{patch_embeddings.1.*, position_embeddings},
      blocks.i.{norm1, attn.qkv (no bias), attn.out_proj, norm2, mlp.linear1, mlp.linear2}, norm;
    - prompt_encoder: pe_layer.positional_encoding_gaussian_matrix (buffer), point_embeddings.0-3,
      not_a_point_embed, mask_downscaling.{0,1,3,4,6} (Conv2d, LayerNorm2d, GELU, Conv2d,
      LayerNorm2d, GELU, Conv2d), no_mask_embed;
    - mask_decoder: transformer.layers.i.{self_attn, norm1, cross_attn_token_to_image, norm2,
      mlp.lin1, mlp.lin2, norm3, norm4, cross_attn_image_to_token} (Attention = q/k/v/out_proj),
      transformer.final_attn_token_to_image, transformer.norm_final_attn, iou_token, mask_tokens,
      output_upscaling.{0 (ConvTranspose3d), 1 (LayerNorm), 3 (ConvTranspose3d)},
      output_hypernetworks_mlps.0-3.layers.0-2, iou_prediction_head.layers.0-2,
      txt_align_upscaled_embedding;
    - text_encoder (SegVol only; M3D's seg module has none): clip_text_model.text_model.*
      (transformers 4 CLIPTextModel with its persistent embeddings.position_ids), dim_align.
    """
    wb = ("weight", "bias")
    keys = {f"image_encoder.patch_embedding.patch_embeddings.1.{p}" for p in wb}
    keys |= {"image_encoder.patch_embedding.position_embeddings"}
    keys |= {f"image_encoder.norm.{p}" for p in wb}
    if cls:
        keys.add("image_encoder.cls_token")
    for i in range(vit_depth):
        b = f"image_encoder.blocks.{i}."
        keys |= {b + "attn.qkv.weight"} | {b + f"{m}.{p}" for p in wb for m in
                                          ("norm1", "attn.out_proj", "norm2", "mlp.linear1",
                                           "mlp.linear2")}
    pe = "prompt_encoder."
    keys |= {pe + "pe_layer.positional_encoding_gaussian_matrix", pe + "not_a_point_embed.weight",
             pe + "no_mask_embed.weight"} | {pe + f"point_embeddings.{i}.weight" for i in range(4)}
    keys |= {pe + f"mask_downscaling.{i}.{p}" for i in (0, 1, 3, 4, 6) for p in wb}
    md = "mask_decoder."
    attn = {f"{n}_proj.{p}" for n in "qkvo" for p in wb} - {"o_proj.weight", "o_proj.bias"}
    attn |= {f"out_proj.{p}" for p in wb}
    for i in range(decoder_depth):
        b = f"{md}transformer.layers.{i}."
        for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            keys |= {b + f"{a}.{k}" for k in attn}
        keys |= {b + f"{m}.{p}" for m in ("norm1", "norm2", "norm3", "norm4", "mlp.lin1",
                                          "mlp.lin2") for p in wb}
    keys |= {f"{md}transformer.final_attn_token_to_image.{k}" for k in attn}
    keys |= {f"{md}transformer.norm_final_attn.{p}" for p in wb}
    keys |= {md + "iou_token.weight", md + "mask_tokens.weight"}
    keys |= {f"{md}output_upscaling.{i}.{p}" for i in (0, 1, 3) for p in wb}
    keys |= {f"{md}output_hypernetworks_mlps.{m}.layers.{j}.{p}" for m in range(4)
             for j in range(3) for p in wb}
    keys |= {f"{md}iou_prediction_head.layers.{j}.{p}" for j in range(3) for p in wb}
    keys |= {f"{md}txt_align_upscaled_embedding.{p}" for p in wb}
    if clip_layers is not None:
        t = "text_encoder.clip_text_model.text_model."
        keys |= {t + "embeddings.token_embedding.weight", t + "embeddings.position_embedding.weight",
                 t + "embeddings.position_ids"} | {f"{t}final_layer_norm.{p}" for p in wb}
        for i in range(clip_layers):
            b = f"{t}encoder.layers.{i}."
            keys |= {b + f"{m}.{p}" for m in ("self_attn.q_proj", "self_attn.k_proj",
                                              "self_attn.v_proj", "self_attn.out_proj",
                                              "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2")
                     for p in wb}
        keys |= {f"text_encoder.dim_align.{p}" for p in wb}
    return keys


def write_segvol_clip_folder(folder, tower):
    """SegVol's config/clip layout: a whole CLIP model's config.json (model_type "clip", the
    text tower under text_config), vocab.json, tokenizer.json, special_tokens_map.json and a
    tokenizer_config.json without tokenizer_class; no weights and no merges.txt."""
    from transformers import CLIPConfig

    folder.mkdir(parents=True, exist_ok=True)
    text = tower.clip_text_model.config.to_dict()
    config = CLIPConfig(text_config=text, vision_config={"hidden_size": 16, "num_hidden_layers": 1,
                                                         "num_attention_heads": 2,
                                                         "intermediate_size": 32})
    (folder / "config.json").write_text(config.to_json_string())
    tok = tower.tokenizer
    tok.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(tok.get_vocab()))
    special = {"content": "<|endoftext|>", "single_word": False, "lstrip": False,
               "rstrip": False, "normalized": True}
    start = dict(special, content="<|startoftext|>")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": start, "eos_token": special, "unk_token": special,
         "pad_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"unk_token": special, "bos_token": start, "eos_token": special,
         "pad_token": "<|endoftext|>", "add_prefix_space": False, "errors": "replace",
         "do_lower_case": True}))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return HEADS.build("test_segvol").eval()


def test_export_has_every_key_of_segvols_and_m3ds_strict_loaders(reference):
    exported = zoo_to_segvol_keys(reference.state_dict())
    assert set(exported) == segvol_official_keys(vit_depth=1, decoder_depth=1, clip_layers=1)
    assert exported["text_encoder.clip_text_model.text_model.embeddings.position_ids"].tolist() \
        == [list(range(77))]
    assert exported["prompt_encoder.mask_downscaling.6.weight"].shape == (32, 16, 1, 1)
    # M3D's initialize_seg_modules keeps keys under "model.", drops the text encoder and loads
    # the rest strictly into its seg module (image_encoder, prompt_encoder, mask_decoder)
    for_m3d = zoo_to_segvol_keys(HEADS.build("test_segvol", text_tower=False).state_dict(),
                                 prefix="model.")
    m3d_side = {k[len("model."):] for k in for_m3d}
    assert m3d_side == segvol_official_keys(vit_depth=1, decoder_depth=1, clip_layers=None)
    assert set(mask_downscaling_tensors(8)) <= m3d_side


def test_text_tower_builds_from_segvols_config_clip_folder(reference, tmp_path):
    clip_dir = tmp_path / "config" / "clip"
    write_segvol_clip_folder(clip_dir, reference.text_encoder)
    path = tmp_path / "segvol.pth"
    torch.save({"model": zoo_to_segvol_keys(reference.state_dict(), prefix="module."),
                "epoch": 1}, path)
    with pytest.raises(ConfigError, match="no weights.*pretrained="):
        HEADS.build("segvol", text_pretrained=str(clip_dir), image_size=(16, 32, 32),
                    patch_size=(4, 8, 8), embed_dim=32)
    from heads.segvol import build_segvol
    from heads.segvol_text import clip_text_tower

    tower = clip_text_tower(clip_dir, out_dim=32)
    assert tower.weights_from_checkpoint
    assert tower.tokenizer("liver")["input_ids"] == reference.text_encoder.tokenizer("liver")["input_ids"]
    loaded = build_segvol((16, 32, 32), (4, 8, 8), 32, "test_vit3d",
                          dict(depth=1, num_heads=2, mlp_dim=64, cls_token=False), False, 1, 2, 64,
                          "segvol", tower, True, str(path)).eval()
    volume = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        want = reference(volume, text=[["liver", "left kidney"]])
        got = loaded(volume, text=[["liver", "left kidney"]])
    torch.testing.assert_close(got.logits, want.logits)


def test_char_tokenizer_round_trips_through_segvols_files(tmp_path):
    from transformers import AutoTokenizer

    tower = tiny_clip_text_tower(out_dim=8)
    write_segvol_clip_folder(tmp_path, tower)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__.startswith("CLIPTokenizer")
    assert loaded("A computerized tomography of a liver.")["input_ids"] == \
        char_clip_tokenizer()("A computerized tomography of a liver.")["input_ids"]
