"""SmolLM2-135M-Instruct, the real pretrained LLM: conversion result, generation, chat template in
the seam, LoRA and the splice, a `zoo train` run and its reload.

These read the model that `zoo models fetch smollm2_135m` downloaded and converted (CI runs it
before pytest; docs/lm.md); without it they are skipped, and nothing here downloads. One model is
loaded for the module; tests that change it work on a copy.
"""

import copy
import json
from functools import partial

import pytest
import torch

from heads import causal_lm as clm  # not `import smollm2_135m` beside test_* builders
from zoo import models
from zoo.cli import main
from zoo.registry import CONNECTORS, ENCODERS, RECIPES
from zoo.seam import IGNORE_INDEX, ImageTextCollator, decode_generated

pytestmark = pytest.mark.skipif(
    not (models.model_dir("smollm2_135m") / "hf" / "config.json").is_file(),
    reason="SmolLM2-135M is not fetched: run `zoo models fetch smollm2_135m` (93 MB, once)")

PARAMETERS = 134_515_008  # the converted checkpoint, tied embeddings counted once
HIDDEN = 576
LIVER = "What is the largest organ in the abdomen?"


@pytest.fixture(scope="module")
def lm():
    return clm.smollm2_135m().eval()


def test_converted_folder_is_the_recorded_checkpoint(lm):
    record = json.loads((models.model_dir("smollm2_135m") / "fetch.json").read_text())
    assert record["sha256"] == models.MODELS["smollm2_135m"].sha256
    assert record["parameters"] == PARAMETERS and record["vocab"] == 49_152
    assert record["chat_template"]
    config = lm.model.config
    assert (config.num_hidden_layers, config.hidden_size,
            config.num_key_value_heads) == (30, HIDDEN, 3)
    assert config.tie_word_embeddings
    assert lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    # the zoo's 4 special tokens add 4 rows to the one (tied) embedding matrix
    assert sum(p.numel() for p in lm.model.parameters()) == PARAMETERS + 4 * HIDDEN
    assert sorted(lm.special_ids.values()) == list(range(49_152, 49_156))
    assert lm.tokenizer.eos_token == "<|im_end|>" and lm.eos_id == 2


def test_generation_answers_the_liver_question(lm):
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": LIVER}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
    new = lm.generate(lm.embed(ids), torch.ones_like(ids), max_new_tokens=12)
    answer = decode_generated(lm.tokenizer, new)[0]
    assert answer.startswith("The largest organ in the abdomen is the liver"), answer


def test_seam_wraps_the_user_turn_in_the_chat_template(lm):
    collate = ImageTextCollator(lm.tokenizer, 4, template="<image>{prompt}", chat_template=None)
    assert collate.chat_template and collate.answer_separator == ""
    sample = {"image": torch.zeros(1, 4, 8, 8), "prompt": "Which organ?", "answer": "The liver."}
    batch = collate([sample])
    text = lm.tokenizer.decode(batch["input_ids"][0])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                    "Hugging Face<|im_end|>\n<|im_start|>user\n" + "<im_patch>" * 4
                    + "Which organ?<|im_end|>\n<|im_start|>assistant\nThe liver.<|im_end|>")
    labels = batch["labels"][0]
    assert lm.tokenizer.decode(labels[labels != IGNORE_INDEX]) == "The liver.<|im_end|>"
    prompt = ImageTextCollator(lm.tokenizer, 4, chat_template=None, for_generation=True)([sample])
    assert lm.tokenizer.decode(prompt["input_ids"][0]).endswith(
        "Which organ?<|im_end|>\n<|im_start|>assistant\n")


def test_lora_targets_and_splice_in_lamed(lm):
    model = RECIPES.build("lamed", encoder=partial(ENCODERS.get("test_vit3d")),
                          connector=partial(CONNECTORS.get("spatial_pool")),
                          lm=lambda: copy.deepcopy(lm), image_size=(16, 32, 32))
    wrapped = [n for n, m in model.lm.model.named_modules() if n.endswith("lora_A")]
    assert len(wrapped) == 30 * 7  # q k v o gate up down in each of the 30 layers
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # r 16 adds r (in + out) per Linear: q, o (576 -> 576); k, v (576 -> 192); gate, up, down
    # (576 <-> 1536)
    assert lora == 30 * 16 * (2 * (2 * HIDDEN) + 2 * (HIDDEN + 192) + 3 * (HIDDEN + 1536))
    model.apply_stage("align")  # tied embeddings: one embedding pattern, new rows only
    model.apply_stage("instruct")
    samples = [{"image": torch.rand(1, 16, 32, 32), "prompt": "Which organ is enlarged?",
                "answer": "The liver.", "task": "vqa_open", "meta": {"id": str(i)}}
               for i in range(2)]
    batch = model.collate(samples)
    image_id = model.lm.special_ids["<im_patch>"]
    assert ((batch["input_ids"] == image_id).sum(1) == model.num_image_tokens).all()
    embeds, visual = model.embed_inputs(batch)
    is_image = batch["input_ids"] == image_id
    torch.testing.assert_close(embeds[is_image], visual.tokens.reshape(-1, HIDDEN))
    model(batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert all(g is not None for n, g in grads.items() if n.startswith("connector."))


def test_zoo_train_lamed_on_smollm2_then_eval(tmp_path, monkeypatch, capsys):
    # the slowest test here (tens of seconds): the only one that trains the real LLM through the
    # command line, writes its 0.5 GB checkpoints and reloads one, as a user's first run does
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", "recipe=lamed", "lm=smollm2_135m", "data=test_synth",
                 "trainer.max_steps=1", "trainer.batch_size=1", "trainer.validate=false",
                 "eval.enabled=false"]) == 0
    out = capsys.readouterr().out
    assert "stage align: 1 steps" in out and "stage instruct: 1 steps" in out
    run_id = out.split("mlflow run ")[1].split()[0]
    # the final checkpoint (one copy of the tied embedding) reloads strictly and generates
    assert main(["eval", run_id, "eval.tasks=[vqa_closed]", "eval.max_items=1",
                 "eval.cost=false", "eval.max_new_tokens={vqa_closed: 4}"]) == 0
