from functools import partial

import pytest
import torch

from zoo.registry import CONNECTORS, ENCODERS, HEADS, LMS, RECIPES

CORPUS = ["what organ is shown", "the liver", "a small cyst in the left kidney", "a. b. c. d."]


def build_lamed(**kwargs):
    return RECIPES.build("lamed", encoder=partial(ENCODERS.get("test_vit3d")),
                         connector=partial(CONNECTORS.get("spatial_pool")),
                         lm=partial(LMS.get("test_llama"), corpus=CORPUS),
                         image_size=(16, 32, 32), **kwargs)


def samples(n=2):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 16, 32, 32, generator=g), "prompt": "what organ is shown",
             "answer": "the liver", "task": "vqa_open", "meta": {"id": str(i)}} for i in range(n)]


def test_lora_never_touches_the_encoder_or_connector():
    model = build_lamed()
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora and all(n.startswith("lm.") for n in lora)
    assert not [n for n, m in model.encoder.named_modules() if "lora" in type(m).__name__.lower()]


def test_image_token_count_comes_from_encoder_and_connector():
    model = build_lamed()
    # 16x32x32 with patch 4x16x16 -> grid 4x2x2 = 16 tokens; 2x2x2 pooling -> 2x1x1 = 2
    assert model.num_image_tokens == 2
    batch = model.collate(samples())
    assert int((batch["input_ids"] == model.lm.special_ids["<im_patch>"]).sum()) == 2 * 2


def test_align_stage_changes_only_connector_and_new_token_rows():
    torch.manual_seed(0)
    model = build_lamed()
    model.apply_stage("align")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.0)
    for _ in range(2):
        out = model(model.collate(samples()))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("connector.") or "embed_tokens" in k or "lm_head" in k
                           for k in changed)
    new_rows = sorted(model.lm.special_ids.values())
    for key in [k for k in changed if "embed_tokens" in k or "lm_head" in k]:
        diff = (before[key] != after[key]).any(dim=1).nonzero().flatten().tolist()
        assert set(diff) <= set(new_rows), f"{key}: old rows {set(diff) - set(new_rows)} moved"


def test_m3d_stage_preset_trains_every_input_row_and_freezes_the_lm_head_in_align():
    """M3D's first stage as coded (docs/reference.md H): the projector and every row of the input
    embeddings train, the LM head and the rest of the LLM stay frozen; the mix is captions + closed
    + open VQA. The zoo's preset moves only the new rows of both matrices, on captions."""
    torch.manual_seed(0)
    model = build_lamed(stage_preset="m3d")
    assert model.stages["align"].tasks == ("caption", "vqa_closed", "vqa_open")
    assert build_lamed().stages["align"].tasks == ("caption",)
    assert build_lamed(stage_preset="m3d", tasks={"align": ["caption"]}).stages["align"].tasks == (
        "caption",)
    model.apply_stage("align")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.0)
    model(model.collate(samples())).loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith("connector.") or "embed_tokens" in k for k in changed)
    embed = next(k for k in changed if "embed_tokens" in k)
    moved = (before[embed] != after[embed]).any(dim=1).nonzero().flatten().tolist()
    assert set(moved) - set(model.lm.special_ids.values())  # old rows move too
    head = [n for n, p in model.named_parameters() if "lm_head" in n]
    assert head and not any(p.requires_grad for n, p in model.named_parameters() if "lm_head" in n)
    # instruct is the same in both presets: both matrices, every row
    model.apply_stage("instruct")
    assert all(p.requires_grad for n, p in model.named_parameters()
               if "lm_head" in n or "embed_tokens" in n)


def test_stage_preset_errors_are_named():
    from recipes.language_model import StagePlan

    with pytest.raises(ValueError, match="stage_preset='m3e'.*Did you mean: m3d"):
        build_lamed(stage_preset="m3e")
    with pytest.raises(ValueError, match="input_rows='some'"):
        StagePlan(roles=("connector",), input_rows="some")
    with pytest.raises(ValueError, match="role 'conector'.*Did you mean: connector"):
        build_lamed(trainable={"align": ["conector"]})
    with pytest.raises(ValueError, match="recipe.lr: unknown stage 'shared'.*align, instruct"):
        build_lamed(lr={"shared": 1e-3})
    model = build_lamed(stage_preset="m3d", train_lm="full")
    hf = model.lm.model
    hf.get_output_embeddings().weight = hf.get_input_embeddings().weight  # a tied LLM
    with pytest.raises(ValueError, match="ties its input and output embeddings"):
        model.apply_stage("align")


def test_generate_returns_text_per_sample():
    model = build_lamed()
    texts = model.generate(samples(), max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert model.training  # generate restores the mode


def test_encoder_initialises_from_a_clip3d_checkpoint(tmp_path):
    from safetensors.torch import save_file

    clip = RECIPES.build("clip3d", encoder=partial(ENCODERS.get("test_vit3d")),
                         head=partial(HEADS.get("test_contrastive")), tokenizer=None)
    for p in clip.encoder.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    lamed = RECIPES.build("lamed", encoder=partial(ENCODERS.get("test_vit3d"), pretrained=str(path)),
                          connector=partial(CONNECTORS.get("spatial_pool")),
                          lm=partial(LMS.get("test_llama"), corpus=CORPUS), image_size=(16, 32, 32))
    for key, value in clip.encoder.state_dict().items():
        torch.testing.assert_close(lamed.encoder.state_dict()[key], value)


def test_wrong_volume_rank_is_named():
    model = build_lamed()
    batch = model.collate(samples())
    batch["image"] = batch["image"][0]
    with pytest.raises(ValueError, match="rank"):
        model(batch)


def test_bad_train_lm_value_is_named():
    with pytest.raises(ValueError, match="train_lm"):
        build_lamed(train_lm="half")


def test_answer_logprob_is_the_summed_token_log_likelihood():
    torch.manual_seed(0)
    model = build_lamed(train_lm="full")
    model.eval()
    batch = model.collate(samples(1))
    answer_tokens = int((batch["labels"] != -100).sum())
    loss = model(batch).loss.detach()  # HF mean cross-entropy over the answer tokens
    logprob = model.answer_logprob(samples(1))
    assert logprob.shape == (1,)
    assert float(logprob[0]) == pytest.approx(-float(loss) * answer_tokens, rel=1e-4)


def test_freeze_in_align_false_trains_encoder_and_every_row_in_align():
    torch.manual_seed(0)
    model = build_lamed(train_lm="full", freeze_in_align=False)
    model.apply_stage("align")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(model.collate(samples()))
    out.loss.backward()
    opt.step()
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("lm.") and "layers" in k for k in changed)
    embed = next(k for k in changed if "embed_tokens" in k)
    moved = (before[embed] != model.state_dict()[embed]).any(dim=1).nonzero().flatten().tolist()
    assert set(moved) - set(model.lm.special_ids.values())  # old rows move too


def test_parameter_report_counts_only_the_new_rows_in_align():
    from zoo.params import parameter_report

    model = build_lamed(train_lm="full")
    model.apply_stage("align")
    lm = parameter_report(model)["components"]["lm"]
    hidden = model.lm.hidden_size
    hf = model.lm.model
    matrices = {id(hf.get_input_embeddings().weight), id(hf.get_output_embeddings().weight)}
    assert lm["trainable"] == len(matrices) * len(set(model.lm.special_ids.values())) * hidden
    model.apply_stage("instruct")  # the whole LM trains: every entry counts again
    assert parameter_report(model)["components"]["lm"]["trainable"] == lm["total"]
