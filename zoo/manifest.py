"""The explicit list of component modules.

Importing a module listed here runs its ``@REGISTRY.register`` decorators. The registries load this
list on their first lookup, so ``import zoo`` stays cheap and no component package is imported
statically by ``zoo``. ``tests/test_registry.py`` fails when a module under a component package (or a
``zoo`` module that registers something) is missing from this list. Keep each family's fixed order.
"""

COMPONENT_MODULES: tuple[str, ...] = (
    # data sets and tasks (zoo.data)
    "zoo.data.synth",
    "zoo.data.m3d",
    "zoo.data.medical",
    "zoo.data.table",
    "zoo.evaluation.tasks",
    # encoders: native 3D ViTs, slice-inflated 2D towers, TGH-MoE, 3D backbones, bridges
    "encoders.vit3d",
    "encoders.backbones2d",
    "encoders.slice2d",
    "encoders.moe",
    "encoders.tghmoe",
    "encoders.swin3d",
    "encoders.resnet3d",
    "encoders.psat",
    "encoders.slice_weighting",
    "encoders.conv3d_stem",
    # connectors (grid_reducer: the base of the grid-reducing ones)
    "connectors.grid_reducer",
    "connectors.spatial_pool",
    "connectors.sequence_pool",
    "connectors.mlp",
    "connectors.linear",
    "connectors.identity",
    "connectors.perceiver",
    "connectors.max_pool",
    # heads and language models
    "heads.lora",
    "heads.causal_lm",
    "heads.contrastive",
    "heads.teacher2d",
    "heads.alignment",
    "heads.recon3d",
    "heads.seg_decoder",
    "heads.classifier",
    "heads.segvol_prompt",
    "heads.segvol_decoder",
    "heads.segvol_text",
    "heads.segvol",
    "heads.segvol_inference",
    "heads.segvol_official_rule",
    # recipes
    "recipes.language_model",
    "recipes.lamed",
    "recipes.lamed_seg",
    "recipes.clip3d",
    "recipes.tghmoe",
    "recipes.segvol",
    "recipes.med3dinsight",
    "recipes.med3dinsight_finetune",
)
