"""LM warm-up on text (zoo/lm_warmup.py) and the collator's text-only batch."""

import pytest
import torch

from tests.test_lamed import build_lamed
from zoo.errors import ConfigError
from zoo.lm_warmup import check_settings, warm_up_lm


class TextData:
    """The two methods the warm-up reads: train items and the split hash."""

    split_hash = "abc"

    def items(self, split):
        assert split == "train"
        return [{"task": "vqa_open", "prompt": "what organ is shown", "answer": "the liver"},
                {"task": "caption", "prompt": "describe", "answer": "a small cyst in the left kidney"},
                {"task": "seg", "prompt": "segment the liver"}]


def settings(tmp_path, **over):
    return {"steps": 8, "batch_size": 4, "lr": 1e-2, "tasks": ["vqa_open", "caption"],
            "cache_dir": str(tmp_path), **over}


def test_text_batch_has_no_image_tokens_and_labels_every_token():
    model = build_lamed()
    batch = model.collator.text_batch([{"prompt": "what organ is shown", "answer": "the liver"},
                                       {"prompt": "describe", "answer": "a. b."}])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert not torch.isin(ids, torch.tensor(list(model.lm.special_ids.values()))).any()
    assert torch.equal(labels[mask == 1], ids[mask == 1]) and (labels[mask == 0] == -100).all()
    assert (ids[mask == 1][-1] == model.lm.tokenizer.eos_token_id)
    full = model.collate([{"image": torch.zeros(1, 16, 32, 32), "prompt": "what organ is shown",
                           "answer": "the liver", "task": "vqa_open"}])
    text = full["input_ids"][0][full["input_ids"][0] != model.lm.special_ids["<im_patch>"]]
    assert torch.equal(text, ids[0][mask[0] == 1])  # the same text, image tokens left out


def seeded_lamed():
    torch.manual_seed(0)  # a job seeds before building (LoRA's init draws from the global RNG)
    return build_lamed()


def test_warm_up_trains_only_the_lm_lowers_its_loss_and_caches(tmp_path):
    model = seeded_lamed()
    items = TextData().items("train")[:2]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss0 = float(model.text_loss(items).detach())
    state = torch.get_rng_state()
    out = warm_up_lm(model, TextData(), settings(tmp_path), seed=0, log=lambda *_: None)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert not out["cached"] and float(model.text_loss(items).detach()) < loss0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("lm.") for k in changed)
    assert all(p.grad is None for p in model.parameters())  # as after loading the cached one
    again = seeded_lamed()
    cached = warm_up_lm(again, TextData(), settings(tmp_path), seed=0, log=lambda *_: None)
    assert cached["cached"] and cached["key"] == out["key"]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    other = warm_up_lm(seeded_lamed(), TextData(), settings(tmp_path, steps=9), seed=0,
                       log=lambda *_: None)
    assert not other["cached"] and other["key"] != out["key"]


def test_warm_up_refuses_bad_settings_and_models_without_a_language_model(tmp_path):
    with pytest.raises(ValueError, match="lm_warmup.steps"):
        check_settings(settings(tmp_path, steps=0))
    with pytest.raises(ValueError, match=r"lm_warmup: unknown key\(s\) step; expected batch_size"):
        check_settings({**settings(tmp_path), "step": 3})
    with pytest.raises(ValueError, match=r"lm_warmup: missing key\(s\) lr, tasks; expected"):
        check_settings({k: v for k, v in settings(tmp_path).items() if k not in ("lr", "tasks")})
    with pytest.raises(ValueError, match="no item of these tasks"):
        warm_up_lm(build_lamed(), TextData(), settings(tmp_path, tasks=["seg"]), seed=0)
    with pytest.raises(ConfigError, match="has no text_loss"):
        warm_up_lm(torch.nn.Linear(2, 2), TextData(), settings(tmp_path), seed=0)
