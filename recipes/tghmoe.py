"""TGH-MoE ("Adapting 2D MLLM for 3D CT image analysis", 2026): a slice-inflated 2D vision tower
with a text-guided hierarchical mixture of experts, a connector and a causal LM.

Same seam and tensor contract as :mod:`recipes.lamed`; the encoder receives the pooled prompt
embedding ``(B, H_lm)`` and the task id, and its load-balancing loss joins the LM loss.
Stages (docs/reference.md E; learning rates are not published, so they are options):
``shared`` trains everything with task routing off (every task in one expert group), then
``specific`` switches to hard task-level routing, initialises every task group from the trained
shared experts and trains the groups (and, unless ``freeze_shared``, the rest as in ``shared``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

from recipes.lamed import EMBED_PATTERNS, LORA_PATTERN, LaMed, build_parts
from zoo.registry import RECIPES
from zoo.types import Stage

EXPERT_PATTERNS = (r"encoder\.backbone\.blocks\.\d+\.mlp\.", r"encoder\.task_router\.")


class TGHMoELaMed(LaMed):
    """LaMed whose encoder switches routing mode with the stage."""

    def apply_stage(self, stage: Stage | str) -> list[str]:
        stage = self.stages[stage] if isinstance(stage, str) else stage
        if not hasattr(self.encoder, "set_routing"):  # a dense slice encoder (ablation)
            return super().apply_stage(stage)
        if stage.name == "specific":
            # runs before any resumed state is loaded, so a resumed run's groups are restored after
            self.encoder.set_routing("specific")
            self.encoder.init_groups_from_shared()
        else:
            self.encoder.set_routing("shared")
        return super().apply_stage(stage)


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    """Whether a builder names ``name`` as a parameter (catch-all ``**options`` does not count)."""
    return name in inspect.signature(getattr(factory, "func", factory)).parameters


@RECIPES.register
def tghmoe(encoder: Callable[..., Any], connector: Callable[..., Any], lm: Callable[..., Any],
           bridge: Callable[..., Any] | None = None, image_size: Sequence[int] = (32, 256, 256),
           template: str = "<image>{prompt}", max_length: int = 512, train_lm: str = "lora",
           lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
           lora_target: str | None = None, shared_lr: float = 5e-5, specific_lr: float = 5e-5,
           epochs: float = 3.0, batch_size: int = 2, warmup_ratio: float = 0.03,
           freeze_shared: bool = False, shared_tasks: Sequence[str] = (),
           specific_tasks: Sequence[str] = ()) -> TGHMoELaMed:
    """TGH-MoE: ``encoder`` (built with ``prompt_dim`` = LLM hidden size when it takes one, e.g.
    ``tghmoe``) + optional ``bridge`` (e.g. ``text_slice_weighting``, Med-2E3's sibling strategy,
    with a dense ``slice2d`` encoder) + ``connector`` into ``lm``. ``shared_tasks`` /
    ``specific_tasks``: each stage's training tasks (empty: every task the data offers)."""
    lora = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target": lora_target}
    lm_module = lm()
    if bridge is not None and _accepts(bridge, "prompt_dim"):
        bridge = functools.partial(bridge, prompt_dim=lm_module.hidden_size)  # text-guided bridge
    text_guided = {"prompt_dim": lm_module.hidden_size} if _accepts(encoder, "prompt_dim") else {}
    vision, middle, projector, language_model = build_parts(
        encoder, connector, lambda: lm_module, bridge, train_lm, lora, encoder_kwargs=text_guided)
    lm_part = {"lora": (LORA_PATTERN,), "full": (r"lm\.",), "frozen": ()}[train_lm]
    new = ((r"bridge\.",) if middle is not None else ()) + (r"connector\.",)
    everything = (r"encoder\.",) + new + EMBED_PATTERNS + lm_part
    stages = {
        "shared": Stage("shared", trainable=everything, tasks=tuple(shared_tasks), lr=shared_lr,
                        epochs=epochs, warmup_ratio=warmup_ratio, batch_size=batch_size),
        "specific": Stage("specific", trainable=EXPERT_PATTERNS + lm_part if freeze_shared
                          else everything, tasks=tuple(specific_tasks), lr=specific_lr,
                          epochs=epochs, warmup_ratio=warmup_ratio, batch_size=batch_size),
    }
    return TGHMoELaMed(vision, projector, language_model, image_size, stages, template,
                       max_length, bridge=middle)
