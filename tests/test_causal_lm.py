import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heads import causal_lm as clm  # not `import test_llama`: pytest would collect it
from heads.causal_lm import (LLAMA2_7B, PHI3_MINI, SPECIAL_TOKENS, CausalLM, add_special_tokens,
                             hf, llama2_7b, phi3_mini)
from heads.lora import DEFAULT_LORA_TARGET
from zoo.params import count
from zoo.registry import LMS
from zoo.seam import ImageTextCollator
from zoo.tokenizer import build_local_tokenizer

CORPUS = [
    "What organ is highlighted in this abdominal CT scan?",
    "Where is the lesion? <bx_start>[0.250, 0.125, 0.500, 0.750, 0.625, 0.875]<bx_end>",
    "Segment the pancreas please. Sure, it is [SEG].",
    "Closed question: A. liver B. spleen C. kidney D. lung",
] * 3


@pytest.fixture(scope="module")
def make_tokenizer(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tok")

    def make(**kwargs):
        return build_local_tokenizer(CORPUS, vocab_size=300, cache_dir=cache, **kwargs)

    return make


@pytest.fixture(scope="module")
def lm(make_tokenizer):
    return clm.test_llama(tokenizer=make_tokenizer()).eval()


def test_registered_lms():
    assert {"test_llama", "test_phi3", "llama2_7b", "phi3_mini", "hf"} <= set(LMS.list())
    assert LMS.list("test_*") == ["test_llama", "test_phi3"]


def test_special_tokens_get_mean_rows(make_tokenizer):
    tok = make_tokenizer()
    old_len = len(tok)
    lm = clm.test_llama(tokenizer=tok)
    assert set(lm.special_ids) == set(SPECIAL_TOKENS)
    assert sorted(lm.special_ids.values()) == list(range(old_len, old_len + 4))
    for table in (lm.model.get_input_embeddings().weight, lm.model.get_output_embeddings().weight):
        assert table.shape[0] == old_len + 4
        mean = table[:old_len].mean(0)
        for i in lm.special_ids.values():
            torch.testing.assert_close(table[i], mean)
        assert not torch.allclose(table[0], mean)
    for token, i in lm.special_ids.items():
        assert lm.tokenizer(token, add_special_tokens=False)["input_ids"] == [i]
    assert lm.pad_id == tok.pad_token_id and lm.eos_id == tok.eos_token_id
    assert lm.hidden_size == 64


def test_spare_rows_are_reused_without_resizing(make_tokenizer):
    """Phi-3 style: the table has more rows than the tokenizer has tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    old_len = len(tok)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=old_len + 10, hidden_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64))
    ids = add_special_tokens(model, tok, SPECIAL_TOKENS)
    table = model.get_input_embeddings().weight
    assert table.shape[0] == old_len + 10
    for i in ids.values():
        torch.testing.assert_close(table[i], table[:old_len].mean(0))


def test_tokenizer_without_pad_uses_unk(make_tokenizer):
    tok = make_tokenizer()
    tok.pad_token = None
    lm = clm.test_llama(tokenizer=tok, num_layers=1)
    assert lm.pad_id == tok.unk_token_id


@pytest.mark.parametrize("name", LMS.list("test_*"))
def test_forward_logits_hidden_and_loss(name, make_tokenizer):
    lm = LMS.build(name, tokenizer=make_tokenizer())
    ids = torch.randint(4, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    out = lm(lm.embed(ids), mask, labels)
    assert out.logits.shape == (2, 9, len(lm.tokenizer))
    assert out.hidden_states.shape == (2, 9, lm.hidden_size)
    # last-layer hidden states are the ones the LM head reads
    torch.testing.assert_close(lm.model.get_output_embeddings()(out.hidden_states), out.logits)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                               labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    with pytest.raises(ValueError, match="attention_mask shape"):
        lm(lm.embed(ids), mask[:, :5])


def _prompt_batch(lm, prompts, n_image=3):
    collate = ImageTextCollator(lm.tokenizer, n_image, for_generation=True)
    samples = [{"image": torch.zeros(1, 2, 4, 4), "prompt": p} for p in prompts]
    return collate(samples)


def test_left_padded_batch_generation_equals_unpadded(lm):
    prompts = ["What organ is highlighted?", "Where is the lesion in this abdominal CT scan?"]
    batch = _prompt_batch(lm, prompts)
    assert batch["attention_mask"][0, 0] == 0  # the shorter prompt is left-padded
    ids, hidden = lm.generate(lm.embed(batch["input_ids"]), batch["attention_mask"],
                              max_new_tokens=6, return_hidden=True)
    assert ids.shape[0] == 2 and 1 <= ids.shape[1] <= 6
    assert hidden.shape == (*ids.shape, lm.hidden_size)
    for row, prompt in enumerate(prompts):
        single = _prompt_batch(lm, [prompt])
        alone = lm.generate(lm.embed(single["input_ids"]), single["attention_mask"],
                            max_new_tokens=6)
        n = alone.shape[1]
        assert torch.equal(ids[row, :n], alone[0])
        assert (ids[row, n:] == lm.pad_id).all()
    # greedy: the hidden state at position t is the one that predicted token t
    live = ids != lm.pad_id
    predicted = lm.model.get_output_embeddings()(hidden).argmax(-1)
    assert torch.equal(predicted[live], ids[live])


def test_generate_rejects_right_padding(lm):
    embeds = torch.zeros(2, 4, lm.hidden_size)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        lm.generate(embeds, mask, max_new_tokens=2)


class VisionAndLM(nn.Module):
    """A vision-like tower whose Linear is also called ``q_proj``, beside the LLM."""

    def __init__(self, lm):
        super().__init__()
        self.vision = nn.ModuleDict({"layers": nn.ModuleList([nn.ModuleDict({
            "self_attn": nn.ModuleDict({"q_proj": nn.Linear(8, 8)})})])})
        self.lm = lm


def test_lora_touches_only_matching_modules_inside_the_llm(make_tokenizer):
    wrapper = VisionAndLM(clm.test_llama(tokenizer=make_tokenizer()))
    vision_q = wrapper.vision["layers"][0]["self_attn"]["q_proj"]
    before = vision_q.weight.detach().clone()
    x = torch.randint(4, 300, (1, 5))
    reference = wrapper.lm(wrapper.lm.embed(x), torch.ones_like(x)).logits
    generated = wrapper.lm.generate(wrapper.lm.embed(x), torch.ones_like(x), max_new_tokens=3)
    names = wrapper.lm.apply_lora(r=4, alpha=8, target=r".*q_proj")  # loose on purpose
    assert type(vision_q) is nn.Linear and torch.equal(vision_q.weight, before)
    assert all(p.requires_grad for p in wrapper.vision.parameters())
    assert not any("lora_" in n for n, _ in wrapper.vision.named_parameters())
    assert names == wrapper.lm.lora_parameter_names() and len(names) == 2 * 2  # 2 layers, A+B
    assert all(".q_proj." in n for n in names)
    trainable = [n for n, p in wrapper.lm.model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(names)
    # LoRA B starts at zero: the wrapped LM computes the same function
    torch.testing.assert_close(wrapper.lm(wrapper.lm.embed(x), torch.ones_like(x)).logits,
                               reference)
    assert torch.equal(wrapper.lm.generate(wrapper.lm.embed(x), torch.ones_like(x),
                                           max_new_tokens=3), generated)
    with pytest.raises(RuntimeError, match="already"):
        wrapper.lm.apply_lora()


@pytest.mark.parametrize("name,leaves", [
    ("test_llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("test_phi3", {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
])
def test_default_lora_target_is_every_decoder_projection(name, leaves, make_tokenizer):
    lm = LMS.build(name, tokenizer=make_tokenizer(), num_layers=1)
    lm.apply_lora()
    hit = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lm.lora_parameter_names()}
    assert hit == leaves
    assert not any("lm_head" in n or "embed_tokens" in n for n in lm.lora_parameter_names())


def test_lora_target_matching_nothing_raises(make_tokenizer):
    lm = clm.test_llama(tokenizer=make_tokenizer(), num_layers=1)
    with pytest.raises(ValueError, match="matches no Linear inside the LLM.*model.layers.0"):
        lm.apply_lora(target=r"transformer\.h\.\d+\.attn")


def _published_count(cfg):
    """Parameters of a LLaMA-style decoder from its config: embeddings, head, layers, norm."""
    h, i, v, n = (cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"],
                  cfg["num_hidden_layers"])
    per_layer = 4 * h * h + 3 * h * i + 2 * h
    return 2 * v * h + n * per_layer + h


# LoRA parameters per decoder layer, r * (in + out) summed over the projections:
# LLaMA q, k, v, o (h -> h) and gate, up (h -> i), down (i -> h); Phi-3 fuses qkv (h -> 3h) and
# gate_up (h -> 2i).
@pytest.mark.parametrize("builder,published,expected,lora_per_layer", [
    (llama2_7b, LLAMA2_7B, 6_738_415_616,
     lambda r, h, i: r * (4 * (h + h) + 2 * (h + i) + (i + h))),
    (phi3_mini, PHI3_MINI, 3_821_079_552,
     lambda r, h, i: r * ((h + 3 * h) + (h + h) + (h + 2 * i) + (i + h))),
])
def test_published_parameter_counts_on_meta(builder, published, expected, lora_per_layer,
                                            make_tokenizer):
    assert _published_count(published) == expected
    with torch.device("meta"):
        lm = builder(tokenizer=make_tokenizer())
    assert lm.model.device.type == "meta"
    assert count(lm.model)["total"] == expected  # the offline tokenizer fits inside the table
    with torch.device("meta"):
        lm.apply_lora()
    lora = published["num_hidden_layers"] * lora_per_layer(16, published["hidden_size"],
                                                           published["intermediate_size"])
    assert count(lm.model)["trainable"] == lora


def test_hf_builder_loads_a_local_folder(lm, tmp_path):
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = hf(pretrained=str(tmp_path)).eval()
    assert loaded.special_ids == lm.special_ids
    x = torch.randint(4, 300, (1, 6))
    torch.testing.assert_close(loaded(loaded.embed(x), torch.ones_like(x)).logits,
                               lm(lm.embed(x), torch.ones_like(x)).logits)
    with torch.device("meta"):
        skeleton = hf(pretrained=str(tmp_path))
    assert skeleton.model.device.type == "meta"
    assert count(skeleton.model) == count(loaded.model)


def test_published_builder_rejects_other_architectures(lm, tmp_path):
    lm.model.config.save_pretrained(tmp_path)
    with torch.device("meta"), pytest.raises(ValueError, match="hidden_size=64"):
        llama2_7b(pretrained=str(tmp_path), tokenizer=lm.tokenizer)


def test_bad_paths_and_dtypes_raise(tmp_path, make_tokenizer):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hf(pretrained=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="Did you mean: bfloat16"):
        clm.test_llama(tokenizer=make_tokenizer(), dtype="bfloat61")
    with pytest.raises(TypeError, match="PreTrainedModel"):
        CausalLM(nn.Linear(2, 2), make_tokenizer())


def test_seed_and_dtype_and_checkpointing(make_tokenizer):
    a = clm.test_llama(tokenizer=make_tokenizer(), num_layers=1, seed=3)
    b = clm.test_llama(tokenizer=make_tokenizer(), num_layers=1, seed=3, dtype="bfloat16",
                   gradient_checkpointing=True)
    wa, wb = a.model.get_input_embeddings().weight, b.model.get_input_embeddings().weight
    assert wb.dtype == torch.bfloat16
    torch.testing.assert_close(wa.to(torch.bfloat16), wb)
    flag = "is_activation_checkpointing"  # renamed from is_gradient_checkpointing in 5.x
    flag = flag if hasattr(a.model, flag) else "is_gradient_checkpointing"
    assert getattr(b.model, flag) and not getattr(a.model, flag)


def test_default_lora_target_regex():
    import re

    pattern = re.compile(DEFAULT_LORA_TARGET)
    assert pattern.fullmatch("model.layers.3.self_attn.q_proj")
    assert pattern.fullmatch("model.layers.0.mlp.gate_up_proj")
    assert not pattern.fullmatch("model.vision.encoder.layers.0.self_attn.q_proj")
    assert not pattern.fullmatch("lm_head")
