import pytest
import torch

from heads import causal_lm as clm
from zoo.seam import (IGNORE_INDEX, ImageTextCollator, check_template, decode_generated,
                      splice_visual)
from zoo.tokenizer import build_local_tokenizer

CORPUS = [
    "Which plane is this MRI volume acquired in? Sagittal.",
    "Describe the findings. A hypodense lesion in the right liver lobe.",
    "Locate the aorta. <bx_start>[0.000, 0.312, 0.438, 1.000, 0.562, 0.625]<bx_end>",
    "Please segment the kidney. It is [SEG].",
] * 3


@pytest.fixture(scope="module")
def make_lm(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tok")

    def make(add_bos=True):
        tok = build_local_tokenizer(CORPUS, vocab_size=300, cache_dir=cache, add_bos=add_bos)
        return clm.test_llama(tokenizer=tok, num_layers=1)

    return make


@pytest.fixture(scope="module")
def lm(make_lm):
    return make_lm()


def _samples(n=2, **extra):
    texts = [("Which plane?", "Sagittal."),
             ("Describe the findings in detail please.", "A hypodense lesion in the liver.")]
    return [{"image": torch.rand(1, 4, 8, 8), "prompt": q, "answer": a, "task": "vqa_open",
             "meta": {"id": f"case{i}"}, **extra} for i, (q, a) in enumerate(texts[:n])]


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize("template", ["<image>{prompt}", "Look at <image>. Question: {prompt}"])
def test_placeholder_expands_to_exact_count(make_lm, add_bos, template):
    lm = make_lm(add_bos)
    collate = ImageTextCollator(lm.tokenizer, 7, template=template)
    batch = collate(_samples())
    image_id = lm.special_ids["<im_patch>"]
    assert collate.image_token_id == image_id
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [7, 7]
    positions = (batch["input_ids"][0] == image_id).nonzero().flatten()
    assert torch.equal(positions, torch.arange(positions[0], positions[0] + 7))  # one run
    assert (batch["input_ids"][0, 0] == lm.tokenizer.bos_token_id) == add_bos


def test_labels_cover_answer_and_eos_only(lm):
    collate = ImageTextCollator(lm.tokenizer, 5, template="<image>Q: {prompt}")
    samples = _samples()
    batch = collate(samples)
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == attention.shape and ids.dtype == torch.long
    for row, sample in enumerate(samples):
        labelled = labels[row] != IGNORE_INDEX
        assert torch.equal(labels[row, labelled], ids[row, labelled])
        assert not labelled[ids[row] == collate.image_token_id].any()
        answer = labels[row, labelled].tolist()
        assert answer[-1] == lm.eos_id
        assert lm.tokenizer.decode(answer[:-1]) == " " + sample["answer"]
        prompt_len = int(labelled.nonzero()[0])
        assert lm.tokenizer.decode(ids[row, :prompt_len], skip_special_tokens=True).endswith(
            sample["prompt"])
        n = int(attention[row].sum())
        assert attention[row, :n].all() and not attention[row, n:].any()  # right padding
        assert (ids[row, n:] == lm.pad_id).all() and (labels[row, n:] == IGNORE_INDEX).all()


def test_other_keys_pass_through_and_tensors_stack(lm):
    samples = _samples(mask=torch.zeros(1, 4, 8, 8), choices=["A", "B"])
    batch = ImageTextCollator(lm.tokenizer, 3)(samples)
    assert batch["image"].shape == (2, 1, 4, 8, 8) and batch["mask"].shape == (2, 1, 4, 8, 8)
    assert batch["meta"] == [{"id": "case0"}, {"id": "case1"}]
    assert batch["answer"] == [s["answer"] for s in samples]
    assert batch["choices"] == [["A", "B"]] * 2 and batch["task"] == ["vqa_open"] * 2


def test_generation_mode_left_pads_the_training_prompts(lm):
    samples = _samples()
    train = ImageTextCollator(lm.tokenizer, 4)(samples)
    gen = ImageTextCollator(lm.tokenizer, 4, for_generation=True)(samples)
    assert "labels" not in gen
    for row in range(2):
        n_prompt = int((train["labels"][row] != IGNORE_INDEX).nonzero()[0])
        n = int(gen["attention_mask"][row].sum())
        assert n == n_prompt
        assert torch.equal(gen["input_ids"][row, -n:], train["input_ids"][row, :n_prompt])
        assert not gen["attention_mask"][row, :-n].any()
    assert gen["attention_mask"][:, -1].all()


@pytest.mark.parametrize("template,field", [
    ("{prompt}", "<image>"), ("<image><image>{prompt}", "<image>"), ("<image>", "{prompt}"),
])
def test_template_needs_one_placeholder_and_one_prompt(lm, template, field):
    with pytest.raises(ValueError) as info:
        ImageTextCollator(lm.tokenizer, 4, template=template)
    assert repr(template) in str(info.value) and repr(field) in str(info.value)
    with pytest.raises(ValueError):
        check_template(template)


def test_truncation_never_cuts_image_tokens_and_warns_on_answers(lm):
    with pytest.raises(ValueError, match="num_image_tokens=32 leaves no room"):
        ImageTextCollator(lm.tokenizer, 32, max_length=32)
    long_prompt = _samples(1)
    long_prompt[0]["prompt"] = "please " * 40
    with pytest.raises(ValueError, match="sample 0: prompt is"):
        ImageTextCollator(lm.tokenizer, 8, max_length=40)(long_prompt)
    samples = _samples()
    samples[1]["answer"] = "the liver " * 30
    collate = ImageTextCollator(lm.tokenizer, 8, max_length=40)
    with pytest.warns(UserWarning, match=r"answers of samples \[1\] were cut"):
        batch = collate(samples)
    assert batch["input_ids"].shape[1] == 40
    assert (batch["input_ids"] == collate.image_token_id).sum(1).tolist() == [8, 8]
    assert (batch["labels"][1] != IGNORE_INDEX).any()


def test_bad_samples_raise(lm):
    collate = ImageTextCollator(lm.tokenizer, 3)
    samples = _samples()
    samples[1]["answer"] = None
    with pytest.raises(ValueError, match="sample 1 .* no answer"):
        collate(samples)
    samples = _samples()
    samples[0]["prompt"] = "<im_patch> sneaky"
    with pytest.raises(ValueError, match="sample 0: prompt has 4 '<im_patch>' tokens"):
        collate(samples)
    samples = _samples()
    samples[1]["image"] = torch.rand(1, 4, 8, 9)
    with pytest.raises(ValueError, match="share a shape"):
        collate(samples)


def test_chat_template_option(lm):
    with pytest.raises(ValueError, match="no chat template"):
        ImageTextCollator(lm.tokenizer, 3, chat_template=True)
    lm.tokenizer.chat_template = ("{% for m in messages %}<s>USER: {{ m['content'] }}{% endfor %}"
                                  "{% if add_generation_prompt %} ASSISTANT:{% endif %}")
    try:
        batch = ImageTextCollator(lm.tokenizer, 3, chat_template=True)(_samples())
    finally:
        lm.tokenizer.chat_template = None
    text = lm.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<s>USER: <im_patch><im_patch><im_patch>Which plane? ASSISTANT:")
    assert (batch["input_ids"][:, 0] == lm.tokenizer.bos_token_id).all()  # only one bos
    assert (batch["input_ids"][:, 1] != lm.tokenizer.bos_token_id).all()


def test_splice_replaces_image_positions_in_order(lm):
    batch = ImageTextCollator(lm.tokenizer, 4)(_samples())
    ids = batch["input_ids"]
    embeds = lm.embed(ids).to(torch.bfloat16)
    visual = torch.randn(2, 4, lm.hidden_size, requires_grad=True)
    out = splice_visual(embeds, ids, lm.special_ids["<im_patch>"], visual)
    assert out.dtype == torch.bfloat16 and out.shape == embeds.shape
    is_image = ids == lm.special_ids["<im_patch>"]
    for row in range(2):
        torch.testing.assert_close(out[row, is_image[row]], visual[row].to(torch.bfloat16))
    assert torch.equal(out[~is_image], embeds[~is_image])
    out.float().sum().backward()
    assert visual.grad is not None and visual.grad.abs().sum() > 0


def test_splice_count_mismatch_names_both_counts(lm):
    batch = ImageTextCollator(lm.tokenizer, 4)(_samples())
    ids = batch["input_ids"]
    with pytest.raises(ValueError, match="sample 0 has 4 image tokens .* visual has 5 tokens"):
        splice_visual(lm.embed(ids), ids, lm.special_ids["<im_patch>"],
                      torch.zeros(2, 5, lm.hidden_size))
    ids = ids.clone()
    ids[1, ids[1] == lm.special_ids["<im_patch>"]] = lm.pad_id
    with pytest.raises(ValueError, match="sample 1 has 0 image tokens"):
        splice_visual(lm.embed(ids), ids, lm.special_ids["<im_patch>"],
                      torch.zeros(2, 4, lm.hidden_size))
    with pytest.raises(ValueError, match="batch and width"):
        splice_visual(lm.embed(ids), ids, 5, torch.zeros(2, 4, lm.hidden_size + 1))


def test_decode_generated_keeps_boxes_and_seg(lm):
    text = "It is <bx_start>[0.125, 0.5, 0.0, 0.875, 1.0, 0.333]<bx_end> and [SEG]."
    ids = lm.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    rows = torch.tensor([ids + [lm.eos_id, 7, 8],
                         [lm.special_ids["<im_patch>"]] + ids + [lm.pad_id] * 2])
    assert decode_generated(lm.tokenizer, rows) == [text, text]


# ------------------------------------------------------------------ per-task templates, M3D preset
N_IMAGE = 16
M3D_SAMPLES = [  # (task, prompt, answer) in the formats of M3D's data (closed VQA with choices)
    ("caption", "Describe the findings.", "A hypodense lesion in the right liver lobe."),
    ("vqa_closed", "Which plane is this MRI volume acquired in? Choices: A. Axial B. Sagittal "
                   "C. Coronal D. Oblique", "B. Sagittal"),
    ("vqa_open", "Which plane is this MRI volume acquired in?", "Sagittal."),
    ("rec", "Locate the aorta.", "<bx_start>[0.000, 0.312, 0.438, 1.000, 0.562, 0.625]<bx_end>"),
    ("reg", "Describe the region <bx_start>[0.000, 0.312, 0.438, 1.000, 0.562, 0.625]<bx_end>.",
     "The aorta."),
    ("seg", "Please segment the kidney.", "It is [SEG]."),
]


def m3d_encoding(tokenizer, task, question, answer):
    """``(input_ids, labels)`` as M3D's dataset classes build them (docs/reference.md H), re-stated:
    the question is ``"<im_patch>" * N`` followed directly by the caption prompt, or by one space
    and the question for every other task (VQA closed and open, REC, REG, segmentation); the text
    ``question + " " + answer`` is tokenised at once; labels are -100 over as many tokens as the
    question alone encodes to; eos follows the text (M3D writes it into the first padding slot,
    which carries its label)."""
    question = "<im_patch>" * N_IMAGE + ("" if task == "caption" else " ") + question
    ids = tokenizer(question + " " + answer)["input_ids"] + [tokenizer.eos_token_id]
    n_question = len(tokenizer(question)["input_ids"])
    return ids, [IGNORE_INDEX] * n_question + ids[n_question:]


@pytest.mark.parametrize("task,question,answer", M3D_SAMPLES)
def test_m3d_template_preset_gives_m3d_token_ids(lm, task, question, answer):
    sample = {"image": torch.rand(1, 4, 8, 8), "prompt": question, "answer": answer, "task": task}
    ids, labels = m3d_encoding(lm.tokenizer, task, question, answer)
    batch = ImageTextCollator(lm.tokenizer, N_IMAGE, template="m3d")([sample])
    assert batch["input_ids"][0].tolist() == ids
    assert batch["labels"][0].tolist() == labels
    # generation prompts are the question alone, the same ids as M3D's question
    prompt = ImageTextCollator(lm.tokenizer, N_IMAGE, template="m3d", for_generation=True)([sample])
    assert prompt["input_ids"][0].tolist() == ids[:labels.count(IGNORE_INDEX)]
    # the zoo's default drops the space: ids differ from the first question token on (position
    # 17 = bos + 16 image tokens), captions are the same
    zoo = ImageTextCollator(lm.tokenizer, N_IMAGE)([sample])["input_ids"][0].tolist()
    first_diff = next((i for i, (a, b) in enumerate(zip(zoo, ids)) if a != b), None)
    assert first_diff == (None if task == "caption" else 1 + N_IMAGE)


def test_templates_per_task_mapping_and_errors(lm):
    samples = _samples(2)
    samples[1]["task"] = "caption"
    collate = ImageTextCollator(lm.tokenizer, 3, template={"vqa_open": "<image>Q: {prompt}",
                                                           "default": "<image>{prompt}"})
    texts = [lm.tokenizer.decode(row, skip_special_tokens=True)
             for row in collate(samples)["input_ids"]]
    assert texts[0].startswith("Q: Which plane?") and texts[1].startswith("Describe")
    assert collate.template == {"vqa_open": "<image>Q: {prompt}", "default": "<image>{prompt}"}
    assert ImageTextCollator(lm.tokenizer, 3, template="zoo").template == "<image>{prompt}"
    no_default = ImageTextCollator(lm.tokenizer, 3, template={"caption": "<image>{prompt}"})
    with pytest.raises(ValueError, match="no template for task 'vqa_open'"):
        no_default(_samples(1))
    with pytest.raises(ValueError, match="Did you mean: m3d"):
        ImageTextCollator(lm.tokenizer, 3, template="m3e")
    with pytest.raises(ValueError, match="'vqa' is not a task.*vqa_open"):
        ImageTextCollator(lm.tokenizer, 3, template={"vqa": "<image>{prompt}"})
    with pytest.raises(ValueError, match="exactly one"):
        ImageTextCollator(lm.tokenizer, 3, template={"default": "{prompt}"})
