"""The language-model recipe core (recipes/language_model.py): stage plans of component roles,
settings shared by lamed and tghmoe, parameter groups declared by components, and the capability
protocols evaluation reads (zoo/types.py). Models are built on the meta device."""

import inspect

import pytest

from zoo.build import build_on_meta
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.registry import ENCODERS, HEADS, LMS, RECIPES
from zoo.types import (AnswerScorer, Classifier, PairEmbedder, ParameterGroups, RoutedEncoder,
                       Segmenter, TextModel)


def meta(*overrides):
    return build_on_meta(compose(list(overrides)))


def trainable(model, stage):
    return model.apply_stage(stage)


def test_medblip3d_trains_its_new_stem_and_keeps_the_2d_tower_frozen():
    model = meta("encoder=test_medblip3d", "connector.kernel=[8,2,2]")
    encoder = {"align": [], "instruct": []}
    for stage in encoder:
        encoder[stage] = [n for n in trainable(model, stage) if n.startswith("encoder.")]
    stem = ["encoder.patch_embed3d.weight", "encoder.patch_embed3d.bias"]
    assert encoder["align"] == stem  # new parameters learn with the connector
    assert encoder["instruct"] == stem  # the pretrained 2D blocks never train
    # a tower without new parameters trains whole in instruct and not at all in align
    slice2d = meta("encoder=test_slice2d", "connector.kernel=[8,2,2]")
    assert not any(n.startswith("encoder.") for n in trainable(slice2d, "align"))
    assert any(n.startswith("encoder.backbone.blocks.") for n in trainable(slice2d, "instruct"))


def test_lamed_and_tghmoe_take_the_same_settings():
    def settings(name, own):
        params = inspect.signature(RECIPES.get(name)).parameters
        return {k: (p.default, p.annotation) for k, p in params.items() if k not in own}

    assert settings("lamed", ("stage_preset", "init_from")) == settings("tghmoe", ("stage_preset",))
    spec = compose(["experiment=compare_strategies"]).sweep.variants
    assert not any(o.startswith("~") for v in spec for o in v.overrides)


def test_default_sweep_variants_train_every_part_in_every_stage():
    from zoo.sweep import plan

    variants = {job.variant: job for job in plan([]).jobs}  # the seeds share everything else
    assert len(variants) == 6
    for label, job in variants.items():
        cfg = compose(list(job.overrides))
        model = build_on_meta(cfg)
        for name, stage in model.stages.items():
            names = set(trainable(model, name))
            parts = [p for p in ("encoder", "bridge", "connector", "lm") if getattr(model, p)]
            missing = [n for p in parts for n, _ in getattr(model, p).named_parameters()
                       if f"{p}.{n}" not in names]
            assert not missing, (label, name, missing[:3])
            assert stage.lr == cfg.budget.lr
        first = next(iter(model.stages.values()))
        assert first.tasks == ("caption",), label


def test_freeze_shared_trains_only_the_moe_layers_and_the_lm_in_specific():
    model = meta("recipe=tghmoe", "encoder=test_tghmoe", "connector.kernel=[8,2,2]",
                 "recipe.stage_preset=freeze_shared", "recipe.train_lm=full")
    names = trainable(model, "specific")
    encoder = [n for n in names if n.startswith("encoder.")]
    assert encoder and all(n.startswith(("encoder.backbone.blocks.1.mlp.", "encoder.task_router."))
                           for n in encoder)
    assert not any(n.startswith("connector.") for n in names)
    assert {n for n, _ in model.lm.named_parameters()} == {n[3:] for n in names
                                                         if n.startswith("lm.")}
    assert len(trainable(model, "shared")) == len(list(model.parameters()))


@pytest.mark.parametrize("override, message", [
    ("recipe.shared_lr=0.1", "recipe.shared_lr is no longer an argument of tghmoe(): use "
                             "recipe.lr={shared: 0.1}"),
    ("recipe.shared_tasks=[caption]", "use recipe.tasks={shared: [caption]}"),
    ("recipe.freeze_shared=true", "use recipe.stage_preset=freeze_shared"),
    ("recipe.tasks={align: [caption]}", "recipe.tasks: unknown stage 'align'"),
    ("recipe.trainable={shared: [encoder:experts]}", "has no parameter group 'experts'"),
])
def test_stage_settings_are_checked(override, message):
    encoder = "encoder=test_slice2d" if "experts" in override else "encoder=test_tghmoe"
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")
                       .replace("(", r"\(").replace(")", r"\)")):
        meta("recipe=tghmoe", encoder, "connector.kernel=[8,2,2]", override).apply_stage("shared")


# What each registered recipe can do, built from its tiny defaults (and variants of them).
CAPABILITIES = {
    "lamed": ([], {AnswerScorer, TextModel}),
    "lamed+seg": (["head=test_segvol"], {AnswerScorer, TextModel, Segmenter}),
    "tghmoe": (["encoder=test_tghmoe", "connector.kernel=[8,2,2]"], {AnswerScorer, TextModel}),
    "clip3d": ([], {PairEmbedder}),
    "segvol": (["head=test_segvol", "data=test_synth"], set()),
    "med3dinsight": (["experiment=m3di_pretrain_tiny"], set()),
    "med3dinsight_finetune": (["experiment=m3di_finetune_tiny"], {Segmenter}),
    "med3dinsight_finetune+cls": (["experiment=m3di_finetune_cls_tiny"], {Classifier}),
}
PROTOCOLS = (AnswerScorer, Segmenter, PairEmbedder, Classifier, TextModel)


def test_every_recipe_has_a_capability_row():
    assert set(RECIPES.list()) == {k.split("+")[0] for k in CAPABILITIES}


@pytest.mark.parametrize("case", list(CAPABILITIES))
def test_recipes_satisfy_the_capability_protocols(case):
    overrides, expected = CAPABILITIES[case]
    recipe = [] if any(o.startswith("experiment=") for o in overrides) else [
        f"recipe={case.split('+')[0]}"]
    model = meta(*recipe, *overrides)
    assert {p for p in PROTOCOLS if isinstance(model, p)} == expected


def test_components_declare_parameter_groups_and_routing():
    assert isinstance(ENCODERS.build("test_tghmoe"), RoutedEncoder)
    assert not isinstance(ENCODERS.build("test_slice2d"), RoutedEncoder)
    lm = LMS.build("test_llama")
    assert isinstance(lm, ParameterGroups)
    groups = lm.parameter_groups()
    assert groups["lora"] == [] and groups["input_embeddings"] == ["model.model.embed_tokens.weight"]
    lm.apply_lora()
    assert lm.parameter_groups()["lora"] and all("lora_" in n for n in lm.parameter_groups()["lora"])
    head = HEADS.build("test_segvol", text_tower=False)
    prompted = head.parameter_groups()["text_prompted"]
    assert any(n.startswith("image_encoder.") for n in prompted)
    assert not any("iou_prediction_head" in n or "hypernetworks_mlps.1" in n for n in prompted)


@pytest.mark.parametrize("overrides, prompt_width", [
    (["recipe=tghmoe", "encoder=test_tghmoe", "connector.kernel=[8,2,2]"],
     lambda model: model.encoder.prompt_dim),
    (["encoder=test_slice2d", "bridge=test_text_slice_weighting", "connector.kernel=[8,2,2]"],
     lambda model: model.bridge.prompt_proj.in_features),
])
def test_a_text_guided_part_gets_the_llms_width_through_the_built_config(overrides, prompt_width):
    """The recipe reads a component factory's signature to hand ``prompt_dim`` to text-guided
    parts; the factories zoo.build hands over must keep that signature (the tiny parts' own
    default, 16, differs from test_llama's 64)."""
    model = meta(*overrides)
    assert prompt_width(model) == model.lm.hidden_size == 64


def test_every_default_sweep_variant_takes_a_real_training_step():
    """Each variant of the default sweep, built for real from its overrides as a sweep job builds
    it: one forward and backward on two tiny samples gives a finite loss and gradients in the
    encoder (text-guided parts receive the prompt embedding at the width they were built for)."""
    import torch

    from zoo.build import build_model
    from zoo.sweep import plan

    variants = {job.variant: job for job in plan([]).jobs}
    for label, job in variants.items():
        torch.manual_seed(0)
        model = build_model(compose(list(job.overrides)))
        model.apply_stage(next(iter(model.stages)))
        samples = [{"image": torch.rand(1, *model.image_size), "prompt": "Which organ?",
                    "answer": "the liver", "task": "vqa_open", "meta": {"id": str(i)}}
                   for i in range(2)]
        step = model(model.collate(samples))
        step.loss.backward()
        assert torch.isfinite(step.loss), label
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), label
