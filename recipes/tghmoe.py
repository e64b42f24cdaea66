"""TGH-MoE ("Adapting 2D MLLM for 3D CT image analysis", 2026): a slice-inflated 2D vision tower
with a text-guided hierarchical mixture of experts, a connector and a causal LM, on the
language-model recipe core (:mod:`recipes.language_model`).

The encoder receives the pooled prompt embedding ``(B, H_lm)`` and the task id, and its
load-balancing loss joins the LM loss. Stages (docs/reference.md E; learning rates are not
published, so they are options): ``shared`` trains everything with task routing off (every task
in one expert group), then ``specific`` switches to hard task-level routing, initialises every
task group from the trained shared experts and trains everything again (preset ``tghmoe``) or
only the MoE layers and the LLM's trainable part (preset ``freeze_shared``).
"""

from __future__ import annotations

from typing import Any

from recipes.lamed import stage_presets
from recipes.language_model import LaMed, StagePlan, language_model
from zoo.registry import RECIPES
from zoo.signature import forwards, renamed

EVERY_PART = ("encoder", "bridge", "connector", "lm", "head")
SHARED = StagePlan(roles=EVERY_PART, lr=5e-5, routing="shared")
STAGE_PRESETS: dict[str, dict[str, StagePlan]] = {
    "tghmoe": {"shared": SHARED,
               "specific": StagePlan(roles=EVERY_PART, lr=5e-5, routing="specific")},
    "freeze_shared": {"shared": SHARED,
                      "specific": StagePlan(roles=("encoder:experts", "lm"), lr=5e-5,
                                            input_rows="none", output_rows="none",
                                            routing="specific")},
}


@RECIPES.register
@renamed(shared_lr="lr={shared: VALUE}", specific_lr="lr={specific: VALUE}",
         shared_tasks="tasks={shared: VALUE}", specific_tasks="tasks={specific: VALUE}",
         freeze_shared="stage_preset=freeze_shared (for true)")
@forwards(language_model, exclude=("plans",))
def tghmoe(stage_preset: str = "tghmoe", **options: Any) -> LaMed:
    """TGH-MoE: ``encoder`` (built with ``prompt_dim`` = LLM hidden size when it takes one, e.g.
    ``tghmoe``) + optional ``bridge`` (e.g. ``text_slice_weighting``, Med-2E3's sibling strategy,
    with a dense ``slice2d`` encoder) + ``connector`` into ``lm``; stages ``shared`` then
    ``specific``. ``stage_preset`` (:data:`STAGE_PRESETS`): ``tghmoe`` trains every part in both
    stages, ``freeze_shared`` only the experts, the task router and the LLM's trainable part in
    ``specific``. The other options are the language-model core's
    (:func:`recipes.language_model.language_model`); the default learning rate is 5e-5 in both
    stages."""
    return language_model(stage_presets(stage_preset, STAGE_PRESETS), **options)
