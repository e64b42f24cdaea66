"""M3D-CLIP's release layout loads into the zoo's CLIP3D and reproduces its similarity matrix.

The expected keys are those of M3D's ``M3DCLIP`` (BAAI-DCAI/M3D LaMed/src/model/CLIP.py, read for
:func:`clip_official_keys`); its forward multiplies the unit-vector similarities by the stored
``logit_scale`` as it is (no exp), which the zoo reproduces with ``m3d_as_coded_scale``.
"""

import json
import math
from functools import partial

import pytest
import torch

from encoders.vit3d import test_vit3d as tiny_vit3d
from heads.contrastive import test_contrastive as tiny_contrastive
from recipes.clip3d import clip3d
from tests.test_pretrained_segvol import segvol_official_keys
from zoo.errors import CheckpointError
from zoo.pretrained.files import write_weights
from zoo.pretrained.m3d_clip import m3d_clip_config, m3d_clip_state_dict

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "liver", "is", "normal", "a",
         "lesion", "in", "kidney", "left", "right", "."] + list("abcdefghijklmnopqrstuvwxyz")


def write_bert_tokenizer(folder):
    """BertTokenizer.save_pretrained's files (train_CLIP.py saves the tokenizer in the output
    folder): vocab.txt, tokenizer_config.json, special_tokens_map.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None,
         "model_max_length": 512, "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]",
         "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]"}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]"}))


def clip_official_keys(vit_depth: int, bert_layers: int) -> set[str]:
    """M3DCLIP's state dict: vision_encoder (M3D's MONAI ViT copy, classification=True: a
    cls_token, no head), language_encoder (BertModel.from_pretrained, so with its pooler; the
    position_ids buffer is not persistent in transformers 4.40), mm_vision_proj,
    mm_language_proj (Linear), logit_scale."""
    wb = ("weight", "bias")
    keys = {"vision_encoder." + k[len("image_encoder."):]
            for k in segvol_official_keys(vit_depth, 0, None, cls=True)
            if k.startswith("image_encoder.")}
    e = "language_encoder.embeddings."
    keys |= {e + f"{n}_embeddings.weight" for n in ("word", "position", "token_type")}
    keys |= {e + f"LayerNorm.{p}" for p in wb}
    for i in range(bert_layers):
        b = f"language_encoder.encoder.layer.{i}."
        keys |= {b + f"{m}.{p}" for p in wb for m in (
            "attention.self.query", "attention.self.key", "attention.self.value",
            "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
            "output.dense", "output.LayerNorm")}
    keys |= {f"language_encoder.pooler.dense.{p}" for p in wb}
    keys |= {f"{m}.{p}" for m in ("mm_vision_proj", "mm_language_proj") for p in wb}
    return keys | {"logit_scale"}


def build(init_from=None, as_coded=False, tokenizer=None):
    return clip3d(encoder=partial(tiny_vit3d, hidden_size=32, num_heads=4),
                  head=partial(tiny_contrastive, m3d_as_coded_scale=as_coded),
                  tokenizer=tokenizer, init_from=init_from)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("M3D-CLIP")
    write_bert_tokenizer(folder)
    torch.manual_seed(0)
    model = build(tokenizer=str(folder))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        model.head.logit_scale.fill_(2.9)  # a trained value, stored raw
    state = m3d_clip_state_dict(model)
    hidden = model.head.text_model.config.hidden_size
    state["language_encoder.pooler.dense.weight"] = torch.randn(hidden, hidden)
    state["language_encoder.pooler.dense.bias"] = torch.randn(hidden)
    (folder / "config.json").write_text(json.dumps(m3d_clip_config(model)))
    write_weights(state, folder, max_shard_size="100KB")
    return model, folder, state


def batch(model):
    images = torch.randn(3, 1, 32, 64, 64, generator=torch.Generator().manual_seed(3))
    texts = ["the liver is normal .", "a lesion in the left kidney .", "right kidney ."]
    return {"image": images, **model.head.tokenize(texts)}


def test_release_keys_are_m3d_clips(release):
    model, folder, state = release
    assert set(state) == clip_official_keys(vit_depth=2, bert_layers=2)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "m3d_clip"


@pytest.mark.parametrize("as_coded", [False, True])
def test_release_reproduces_the_similarity_matrix(release, as_coded):
    model, folder, _ = release
    loaded = build(init_from=str(folder), as_coded=as_coded).eval()
    assert loaded.head.tokenizer.get_vocab() == model.head.tokenizer.get_vocab()
    report = loaded.init_report
    assert set(report.skipped) == {"language_encoder.pooler.dense.weight",
                                   "language_encoder.pooler.dense.bias"} and not report.kept
    model.eval()
    b = batch(model)
    image, text = model.embed_pairs(b)
    cosine = image @ text.T
    got = loaded.similarity(b)
    # M3D's forward: logit_scale * image_features @ text_features.T with the raw parameter;
    # the zoo's default: CLIP's exp(logit_scale), clamped at 100
    scale = 2.9 if as_coded else min(math.exp(2.9), 100.0)
    torch.testing.assert_close(got, scale * cosine, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.embed_pairs(b)[0], image, rtol=0, atol=1e-6)


def test_config_mismatch_is_named(release):
    model, folder, _ = release
    with pytest.raises(CheckpointError, match="num_heads=4, the encoder has 2"):
        clip3d(encoder=partial(tiny_vit3d, hidden_size=32, num_heads=2), head=tiny_contrastive,
               init_from=str(folder))
