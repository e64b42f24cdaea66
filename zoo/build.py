"""Assemble a model from a composed config: components are handed to the recipe as factories.

Each component group (``encoder``, ``bridge``, ``connector``, ``lm``, ``head``) is instantiated as a
partial (Hydra ``_partial_``) and passed to the recipe builder, which decides the wiring: widths,
token counts, freezing and LoRA targets are the recipe's business alone (docs/design.md section 4).
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig

from zoo.config import ConfigError, chosen_options
from zoo.registry import load_manifest
from zoo.types import ZooModel

COMPONENT_GROUPS: tuple[str, ...] = ("encoder", "bridge", "connector", "lm", "head")


def component_factories(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """(recipe partial, {group: component partial}) checked against the recipe's signature."""
    from hydra.utils import instantiate

    load_manifest()
    if cfg.get("recipe") is None:
        raise ConfigError("recipe: no recipe chosen (set recipe=NAME; see `zoo list recipe`)")
    recipe = instantiate(cfg.recipe, _partial_=True)
    accepted = inspect.signature(recipe.func).parameters
    choices = chosen_options(cfg)
    recipe_name = choices.get("recipe", str(cfg.recipe.get("_target_")))
    parts = {}
    for group in COMPONENT_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        if group not in accepted:
            raise ConfigError(f"{group}={choices.get(group, '?')}: recipe {recipe_name!r} takes no "
                              f"{group} (set {group}=null)")
        parts[group] = instantiate(node, _partial_=True)
    missing = [name for name, p in accepted.items() if name in COMPONENT_GROUPS
               and p.default is inspect.Parameter.empty and name not in parts
               and name not in recipe.keywords]
    if missing:
        raise ConfigError(f"recipe {recipe_name!r} needs {', '.join(missing)}: choose "
                          + " ".join(f"{m}=NAME" for m in missing))
    return recipe, parts


def build_model(cfg: DictConfig) -> ZooModel:
    """Build the recipe's ``ZooModel`` (on the current default device; use ``torch.device``)."""
    recipe, parts = component_factories(cfg)
    model = recipe(**parts)
    if not isinstance(model, ZooModel):
        raise TypeError(f"recipe {cfg.recipe.get('_target_')} returned {type(model).__name__}, "
                        "not a ZooModel")
    return model


def build_on_meta(cfg: DictConfig) -> ZooModel:
    """Build without memory or weights (parameter counting, FLOP counting at full size)."""
    import torch

    with torch.device("meta"):
        return build_model(cfg)


def on_meta() -> bool:
    """True inside ``with torch.device('meta')``: builders skip checkpoint loading there."""
    import torch

    return torch.empty(0).device.type == "meta"
