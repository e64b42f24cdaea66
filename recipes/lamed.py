"""M3D-LaMed (Bai et al. 2024): 3D encoder -> connector -> causal LM, trained in two stages, on
the language-model recipe core (:mod:`recipes.language_model`).

Stages (docs/reference.md A): ``align`` trains the connector (and a bridge, and an encoder's new
parameters) and embedding rows (LR 1e-4, warmup 3 %, cosine); ``instruct`` trains LoRA adapters
on the LLM plus the full encoder, connector, embeddings and LM head (LR 5e-5), and the ``[SEG]``
path when a SegVol ``head`` is given. What differs between the zoo's defaults and M3D's code (the
data mix and the embedding rows of each stage) is data, :data:`STAGE_PRESETS`, chosen with
``stage_preset`` (docs/reference.md H).
"""

from __future__ import annotations

from typing import Any

from recipes.language_model import LaMed, StagePlan, language_model
from zoo.errors import ConfigError
from zoo.registry import RECIPES, suggest
from zoo.signature import forwards, renamed

ALIGN_ROLES = ("encoder:new", "bridge", "connector")
INSTRUCT = StagePlan(roles=("encoder", "bridge", "connector", "lm", "head"), lr=5e-5)

# Named stage tables (docs/reference.md H; docs/lm.md "LaMed stages").
STAGE_PRESETS: dict[str, dict[str, StagePlan]] = {
    # the zoo: align on image-report pairs; the LLM's pretrained rows stay as they are and only the
    # four new tokens' input and output rows move
    "zoo": {"align": StagePlan(roles=ALIGN_ROLES, tasks=("caption",), lr=1e-4, input_rows="new",
                               output_rows="new", aligns=True),
            "instruct": INSTRUCT},
    # M3D's train.py as coded: align on captions + closed + open VQA, every input-embedding row
    # trains, the LM head is frozen
    "m3d": {"align": StagePlan(roles=ALIGN_ROLES, tasks=("caption", "vqa_closed", "vqa_open"),
                               lr=1e-4, input_rows="all", output_rows="none", aligns=True),
            "instruct": INSTRUCT},
}


def stage_presets(name: str, presets: dict[str, dict[str, StagePlan]] = STAGE_PRESETS
                  ) -> dict[str, StagePlan]:
    """The stage table ``name`` of ``presets`` (one line naming the choices when unknown)."""
    if name not in presets:
        raise ConfigError(f"recipe.stage_preset={name!r}: unknown preset."
                          f"{suggest(name, list(presets))} Presets: {', '.join(presets)}")
    return dict(presets[name])


@RECIPES.register
@renamed(align_lr="lr={align: VALUE}", instruct_lr="lr={instruct: VALUE}",
         align_tasks="tasks={align: VALUE}", instruct_tasks="tasks={instruct: VALUE}")
@forwards(language_model, exclude=("plans",))
def lamed(stage_preset: str = "zoo", init_from: str | None = None, **options: Any) -> LaMed:
    """M3D-LaMed: ``encoder`` (+ optional token-reducing ``bridge``) and ``connector`` into ``lm``
    (factories from the config), stages ``align`` then ``instruct``; the other options are the
    language-model core's (:func:`recipes.language_model.language_model`).

    ``stage_preset`` (:data:`STAGE_PRESETS`): ``zoo`` aligns on captions and moves only the four
    new tokens' embedding and LM-head rows; ``m3d`` is M3D's code: captions + closed + open VQA,
    every embedding row, LM head frozen (``recipe.tasks={align: [...]}`` overrides a mix).

    ``init_from``: weights M3D released or wrote (:func:`zoo.pretrained.m3d_lamed.load_m3d_lamed`):
    a release folder (``config.json`` checked against the components; ``experiment=m3d_lamed``
    builds M3D's), a stage-1 ``mm_projector.bin`` or a stage-2 ``model_with_lora.bin``; local
    paths only, skipped on the meta device. The report is ``model.init_report``.
    """
    from zoo.pretrained.m3d_lamed import load_m3d_lamed
    from zoo.pretrained.report import init_from as load_init

    model = language_model(stage_presets(stage_preset), **options)
    load_init(model, init_from, load_m3d_lamed)
    return model
