"""M3D-LaMed's released layouts load into the zoo's LaMed with identical outputs.

A tiny zoo LaMed (the "released" model) is exported to M3D's layout; the key lists are checked
against the layout M3D's code produces and consumes (:func:`lamed_official_keys`, written from
BAAI-DCAI/M3D: LaMed/src/model/lamed_arch.py, language_model/lamed_*.py, multimodal_encoder/vit.py,
multimodal_projector/*.py, train/train.py, utils/merge_lora_weights_and_save_hf_model.py), then
written as M3D writes it (config.json with M3D's fields, safetensors shards with an index, the
sentencepiece tokenizer files with M3D's four added tokens; ``mm_projector.bin``;
``model_with_lora.bin``) and loaded by ``recipe.init_from`` into freshly built models.
"""

import json
from functools import partial

import pytest
import torch

from connectors.spatial_pool import spatial_pool
from encoders.vit3d import test_vit3d as tiny_vit3d
from heads.causal_lm import hf
from heads.causal_lm import test_llama as tiny_llama
from heads.causal_lm import test_phi3 as tiny_phi3
from heads.segvol import segvol
from recipes.lamed import lamed
from tests.test_pretrained_segvol import segvol_official_keys
from zoo.errors import CheckpointError
from zoo.pretrained.files import write_weights
from zoo.pretrained.m3d_lamed import m3d_lamed_config, m3d_lamed_state_dict

IMAGE = (32, 64, 64)
PATCH = (4, 16, 16)
VIT = dict(hidden_size=96, num_heads=12, mlp_dim=64, depth=2)  # M3D's towers have 12 heads
M3D_TOKENS = ("<im_patch>", "<bx_start>", "<bx_end>", "[SEG]")


def write_m3d_tokenizer(folder, eos="</s>", extra=()):
    """The tokenizer files M3D's release folders hold (written by a slow LlamaTokenizer after
    train.py added <im_patch>, <bx_start>, <bx_end> as additional special tokens and [SEG] as a
    plain added token): tokenizer.model (sentencepiece, byte fallback), tokenizer_config.json,
    special_tokens_map.json and added_tokens.json. ``extra``: the base tokenizer's own added
    tokens (Phi-3 has some, e.g. <|endoftext|>)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    folder.mkdir(parents=True, exist_ok=True)
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = 2  # BPE
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.trainer_spec.byte_fallback = True
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False

    def piece(text, score, kind=1):
        p = proto.pieces.add()
        p.piece, p.score, p.type = text, score, kind

    piece("<unk>", 0, 2), piece("<s>", 0, 3), piece("</s>", 0, 3)
    for i in range(256):
        piece(f"<0x{i:02X}>", 0, 6)
    for i, c in enumerate("▁abcdefghijklmnopqrstuvwxyz0123456789.,?"):
        piece(c, -1.0 - i)
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    base = len(proto.pieces)
    added = list(extra) + list(M3D_TOKENS)
    ids = {t: base + i for i, t in enumerate(added)}

    def entry(text, special, normalized=False):
        return {"content": text, "lstrip": False, "normalized": normalized, "rstrip": False,
                "single_word": False, "special": special}

    decoder = {"0": entry("<unk>", True), "1": entry("<s>", True), "2": entry("</s>", True)}
    decoder.update({str(i): entry(t, t != "[SEG]", normalized=t == "[SEG]")
                    for t, i in ids.items()})
    config = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
              "additional_special_tokens": list(M3D_TOKENS[:3]), "bos_token": "<s>",
              "clean_up_tokenization_spaces": False, "eos_token": eos, "legacy": False,
              "model_max_length": 512, "pad_token": "<unk>", "padding_side": "right",
              "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
              "use_default_system_prompt": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "added_tokens.json").write_text(json.dumps(ids))
    token = {k: v for k, v in entry("", True).items() if k != "special"}
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": [dict(token, content=t) for t in M3D_TOKENS[:3]],
         "bos_token": dict(token, content="<s>"), "eos_token": dict(token, content=eos),
         "pad_token": "<unk>", "unk_token": dict(token, content="<unk>")}))
    return ids


def lamed_official_keys(family: str, llm_layers: int, vit_depth: int, seg_vit_depth: int,
                        seg_decoder_depth: int) -> set[str]:
    """The state-dict keys of M3D's LamedLlamaForCausalLM / LamedPhi3ForCausalLM with vision
    tower, spp projector (mlp, depth 2) and SegVol, as saved by save_pretrained / torch.save:

    - the HF LLM: model.embed_tokens, model.layers.i.{self_attn.{q,k,v,o}_proj | Phi-3:
      self_attn.{qkv,o}_proj}, mlp.{gate,up,down}_proj | Phi-3: mlp.{gate_up,down}_proj,
      input_layernorm, post_attention_layernorm}, model.norm, lm_head (rotary buffers are not
      persistent);
    - model.vision_tower.vision_tower: M3D's MONAI ViT copy (vit.py, classification=True: a
      cls_token, the classification head commented out, perceptron patch embedding, no qkv bias);
    - model.mm_projector.projector.{0,2} (SpatialPoolingProjector, layer_type mlp, depth 2);
    - model.seg_projector.{0,2} (Linear, ReLU, Linear, Dropout);
    - model.seg_module: SegVol without text encoder (segmentation_module/builder.py).
    """
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    projections = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj") if family == "llama" else
                   ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"))
    for i in range(llm_layers):
        keys |= {f"model.layers.{i}.{p}.weight" for p in projections}
        keys |= {f"model.layers.{i}.{n}.weight" for n in ("input_layernorm",
                                                           "post_attention_layernorm")}
    vit = {k[len("image_encoder."):] for k in segvol_official_keys(vit_depth, 0, None, cls=True)
           if k.startswith("image_encoder.")}
    keys |= {"model.vision_tower.vision_tower." + k for k in vit}
    keys |= {f"model.mm_projector.projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    keys |= {f"model.seg_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    keys |= {"model.seg_module." + k for k in segvol_official_keys(seg_vit_depth,
                                                                    seg_decoder_depth, None)}
    return keys


def lora_official_keys(release_keys: set[str]) -> set[str]:
    """model_with_lora.bin (train.py: torch.save(model.state_dict()) of peft 0.8.2's
    PeftModelForCausalLM, LoRA on find_all_linear_names: every Linear outside vision_tower,
    mm_projector, embed_tokens, lm_head, seg_projector, seg_module, i.e. the decoder layers'
    projections): base_model.model.<key>, each targeted Linear as base_layer + lora_A/B.default."""
    out = set()
    for key in release_keys:
        if key.startswith("model.layers.") and "_proj." in key:
            module = key[: -len(".weight")]
            out |= {f"{module}.base_layer.weight", f"{module}.lora_A.default.weight",
                    f"{module}.lora_B.default.weight"}
        else:
            out.add(key)
    return {"base_model.model." + k for k in out}


def build(lm, train_lm="full", init_from=None, layer_type="mlp", seg_decoder_heads=8):
    seg_head = partial(segvol, embed_dim=96, encoder="vit3d",
                       encoder_kwargs=dict(depth=1, num_heads=12, mlp_dim=64),
                       decoder_depth=1, decoder_heads=seg_decoder_heads, decoder_mlp_dim=64,
                       text_tower=False)
    return lamed(encoder=partial(tiny_vit3d, **VIT),
                 connector=partial(spatial_pool, kernel=2, depth=2, layer_type=layer_type),
                 lm=lm, head=seg_head, image_size=IMAGE, train_lm=train_lm,
                 share_encoder=False, init_from=init_from)


SAMPLES = [{"image": torch.randn(1, *IMAGE, generator=torch.Generator().manual_seed(s)),
            "prompt": p, "answer": a, "task": "vqa_open"}
           for s, (p, a) in enumerate([("where is the liver?", "right upper abdomen."),
                                       ("segment the spleen.", "it is [SEG].")])]


def outputs(model):
    """LM logits, and SegVol mask logits prompted by the projected last hidden state of each
    sample's final token (M3D's [SEG] path), in eval mode."""
    model.eval()
    batch = model.collator(SAMPLES)
    with torch.no_grad():
        embeds, visual = model.embed_inputs(batch)
        out = model.lm(embeds, batch["attention_mask"])
        prompt = model.seg_projector(out.hidden_states[:, -1])
        masks = model.heads["seg"](batch["image"], text_embedding=prompt).logits
    return out.logits, masks


@pytest.fixture(scope="module", params=["llama", "phi3"])
def release(request, tmp_path_factory):
    """(family, released zoo model, folder in M3D's release layout)."""
    from transformers import AutoTokenizer

    family = request.param
    folder = tmp_path_factory.mktemp(f"M3D-LaMed-{family}")
    extra = ("<|endoftext|>",) if family == "phi3" else ()
    write_m3d_tokenizer(folder, eos="<|endoftext|>" if family == "phi3" else "</s>", extra=extra)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    factory = tiny_llama if family == "llama" else tiny_phi3
    torch.manual_seed(0)
    model = build(partial(factory, tokenizer=tokenizer, num_heads=4, seed=1))
    with torch.no_grad():  # the zoo initialises some parts at zero: make every tensor count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = m3d_lamed_state_dict(model)
    config = m3d_lamed_config(model)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_weights(state, folder, max_shard_size="200KB")
    return family, model, folder


def test_export_is_m3ds_layout_key_for_key(release):
    family, model, folder = release
    state = m3d_lamed_state_dict(model)
    assert set(state) == lamed_official_keys(family, 2, VIT["depth"], 1, 1)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == f"lamed_{family}"
    assert config["architectures"] == [f"Lamed{'Llama' if family == 'llama' else 'Phi3'}ForCausalLM"]
    assert (config["mm_projector_type"], config["proj_layer_type"], config["proj_layer_num"],
            config["proj_pooling_type"], config["proj_pooling_size"]) == ("spp", "mlp", 2,
                                                                          "spatial", 2)
    assert config["seg_token_id"] == model.lm.special_ids["[SEG]"]
    assert config["vocab_size"] == len(model.lm.tokenizer)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded


@pytest.mark.parametrize("train_lm", ["full", "lora"])
def test_release_folder_loads_with_identical_logits_and_masks(release, train_lm):
    family, model, folder = release
    loaded = build(partial(hf, pretrained=str(folder)), train_lm=train_lm, init_from=str(folder))
    report = loaded.init_report
    assert loaded.lm.tokenizer.convert_ids_to_tokens(
        [loaded.lm.special_ids[t] for t in M3D_TOKENS]) == list(M3D_TOKENS)
    assert not report.kept if train_lm == "full" else all(".lora_" in k for k in report.kept)
    assert set(report.skipped) == {k for k in m3d_lamed_state_dict(model)
                                   if ".mask_downscaling." in k}
    assert len(report.placed) + len(report.skipped) == len(m3d_lamed_state_dict(model))
    want_logits, want_masks = outputs(model)
    got_logits, got_masks = outputs(loaded)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_masks, want_masks, rtol=0, atol=1e-5)
    if train_lm == "full":  # the comparison can fail: the same build without init_from differs
        plain_logits, plain_masks = outputs(build(partial(hf, pretrained=str(folder))))
        assert not torch.allclose(plain_logits, want_logits, atol=1e-3)
        assert not torch.allclose(plain_masks, want_masks, atol=1e-3)


def test_stage2_model_with_lora_loads_adapters(release, tmp_path):
    family, model, folder = release
    torch.manual_seed(1)
    trained = build(partial(hf, pretrained=str(folder)), train_lm="lora", init_from=str(folder))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    state = m3d_lamed_state_dict(trained)
    assert set(state) == lora_official_keys(lamed_official_keys(family, 2, VIT["depth"], 1, 1))
    path = tmp_path / "model_with_lora.bin"
    torch.save(state, path)
    loaded = build(partial(hf, pretrained=str(folder)), train_lm="lora", init_from=str(path))
    assert not loaded.init_report.kept
    for got, want in zip(outputs(loaded), outputs(trained)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(CheckpointError, match="LoRA adapters.*train_lm=lora"):
        build(partial(hf, pretrained=str(folder)), train_lm="full", init_from=str(path))


@pytest.mark.parametrize("rows", ["all", "new"])
def test_stage1_mm_projector_bin_places_projector_and_embeddings(release, tmp_path, rows):
    family, model, folder = release
    state = {k: v for k, v in m3d_lamed_state_dict(model).items()
             if "mm_projector" in k or "embed_tokens" in k}
    assert set(state) == {"model.embed_tokens.weight"} | {
        f"model.mm_projector.projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    ids = [model.lm.special_ids[t] for t in M3D_TOKENS]
    if rows == "new":  # M3D also accepts only the 4 new rows (initialize_vision_tokenizer)
        state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][ids]
    path = tmp_path / "mm_projector.bin"
    torch.save(state, path)
    loaded = build(partial(hf, pretrained=str(folder)), train_lm="lora", init_from=str(path))
    for got, want in zip(loaded.connector.state_dict().values(),
                         model.connector.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    table = loaded.lm.model.get_input_embeddings().weight
    torch.testing.assert_close(table[ids], model.lm.model.get_input_embeddings().weight[ids])
    assert any("vision" not in k and k.startswith("encoder.") for k in loaded.init_report.kept)


def test_config_mismatch_names_field_and_override(release):
    family, model, folder = release
    with pytest.raises(CheckpointError, match="connector.layer_type=mlp"):
        build(partial(hf, pretrained=str(folder)), layer_type="linear", init_from=str(folder))
    with pytest.raises(CheckpointError, match="decoder has 8 heads"):
        build(partial(hf, pretrained=str(folder)), seg_decoder_heads=4, init_from=str(folder))


def test_not_a_release_folder_is_refused(release, tmp_path):
    family, model, folder = release
    other = tmp_path / "plain"
    other.mkdir()
    config = json.loads((folder / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type='llama'.*M3D-LaMed release"):
        build(partial(hf, pretrained=str(folder)), init_from=str(other))


def test_preset_wires_m3ds_components_to_the_folder(release):
    """experiment=m3d_lamed: ViT-B at 32 x 256 x 256, spatial_pool (kernel 2, mlp, depth 2), the
    folder's LLM through lm=hf, SegVol with its own ViT (built on meta: only config.json read)."""
    from zoo.build import build_on_meta
    from zoo.config import compose

    family, model, folder = release
    cfg = compose(["experiment=m3d_lamed", f"recipe.init_from={folder}"])
    assert cfg.lm.pretrained == str(folder)
    built = build_on_meta(cfg)
    assert built.num_image_tokens == 256 and built.heads["seg"].image_encoder is not None
    assert built.lm.special_ids["[SEG]"] == model.lm.special_ids["[SEG]"]
    assert type(built.lm.model.get_base_model()).__name__ == type(model.lm.model).__name__


# config.json of GoodBaiBai88/M3D-LaMed-Llama-2-7B as published on the model hub (auto_map and
# _name_or_path left out: never read).
PUBLISHED_LLAMA = {
    "architectures": ["LamedLlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
    "image_channel": 1, "image_size": [32, 256, 256], "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "mm_hidden_size": 768,
    "mm_projector_type": "spp", "model_type": "lamed_llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "patch_size": [4, 16, 16],
    "pretraining_tp": 1, "proj_layer_num": 2, "proj_layer_type": "mlp", "proj_pooling_size": 2,
    "proj_pooling_type": "spatial", "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 10000.0, "seg_token_id": 32003, "segmentation_module": "segvol",
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.39.1",
    "use_cache": True, "vision_select_feature": "patch", "vision_select_layer": -1,
    "vision_tower": "vit3d", "vocab_size": 32004}


def test_published_llama_config_is_llama2_7b_with_m3ds_projector(tmp_path):
    from heads.causal_lm import LLAMA2_7B
    from zoo.pretrained.m3d_lamed import base_llm_config, expected_projector, projector_signature

    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_LLAMA))
    config = base_llm_config(tmp_path)
    assert config.model_type == "llama" and config.vocab_size == 32004
    assert not hasattr(config, "seg_token_id") and not hasattr(config, "image_size")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads"):
        assert getattr(config, key) == LLAMA2_7B[key]
    want, override = expected_projector(PUBLISHED_LLAMA)
    assert override == ("connector=spatial_pool connector.kernel=2 connector.depth=2 "
                        "connector.layer_type=mlp")
    with torch.device("meta"):
        assert projector_signature(spatial_pool(in_dim=768, out_dim=4096)) == want


def test_incomplete_or_inconsistent_folders_are_refused(release, tmp_path):
    import shutil

    family, model, folder = release
    state = m3d_lamed_state_dict(model)
    partial_dir = tmp_path / "partial"
    shutil.copytree(folder, partial_dir)
    for f in partial_dir.glob("model-*.safetensors"):
        f.unlink()
    (partial_dir / "model.safetensors.index.json").unlink()
    del state["model.seg_projector.2.bias"]
    write_weights(state, partial_dir, max_shard_size="200KB")
    with pytest.raises(CheckpointError, match="not in the file: seg_projector.2.bias"):
        build(partial(hf, pretrained=str(folder)), init_from=str(partial_dir))
    index = json.loads((partial_dir / "model.safetensors.index.json").read_text())
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = "model-00002-of-" + index["weight_map"][first].split("-of-")[1]
    (partial_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="does not hold what model.safetensors.index.json"):
        build(partial(hf, pretrained=str(folder)), init_from=str(partial_dir))
