"""Assemble a model from a composed config: components are handed to the recipe as factories.

Each component group (``encoder``, ``bridge``, ``connector``, ``lm``, ``head``) is instantiated as a
partial (Hydra ``_partial_``) and passed to the recipe builder, which decides the wiring: widths,
token counts, freezing and LoRA targets are the recipe's business alone (docs/design.md section 4).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from zoo.config import ConfigError, chosen_options
from zoo.errors import ZooError
from zoo.registry import load_manifest
from zoo.types import ZooModel

COMPONENT_GROUPS: tuple[str, ...] = ("encoder", "bridge", "connector", "lm", "head")


def registered_targets() -> dict[str, Callable[..., Any]]:
    """``{"module.function": builder}`` of every registered builder: the only ``_target_`` values
    the zoo instantiates."""
    from zoo.registry import REGISTRIES

    load_manifest()
    return {f"{b.__module__}.{b.__qualname__}": b for registry in REGISTRIES.values()
            for b in (registry.get(name) for name in registry.list())}


def _kind(option: Any) -> str | None:
    """``int``/``float``/``bool``/``str``, ``mapping`` or ``list`` for the annotations a config
    value can be checked against; None for any other (modules, callables, ``Any``)."""
    import collections.abc
    import typing

    if option in (int, float, bool, str):
        return option.__name__
    origin = typing.get_origin(option) or option
    if origin in (dict, collections.abc.Mapping):
        return "mapping"
    if origin in (list, tuple, collections.abc.Sequence):
        return "list"
    return None


def _type_error(hint: Any, value: Any) -> str | None:
    """What is wrong with ``value`` (not None) for annotations made of int / float / bool / str,
    mappings and sequences (and their Optional forms); None when it fits or the annotation has
    another part (the builder checks those)."""
    import types
    import typing

    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) \
        else (hint,)
    kinds = [_kind(o) for o in options if o is not type(None)]
    if not kinds or None in kinds:
        return None
    fits = {"int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool), "str": isinstance(value, str),
            "mapping": isinstance(value, dict), "list": isinstance(value, (list, tuple))}
    if any(fits[k] for k in kinds):
        return None
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "mapping": "a mapping", "list": "a list"}
    return f"expected {' or '.join(dict.fromkeys(names[k] for k in kinds))}"


def check_types(node: Any, key: str) -> None:
    """Values of a builder node's arguments annotated ``int``, ``float``, ``bool``, ``str``, a
    mapping or a sequence (or unions of these) must have that type: a learning rate given as text
    is refused, never converted (ConfigError naming the key). Argument names are checked when the config is
    composed (:func:`zoo.signature.check_keys`)."""
    import typing

    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    builder = registered_targets().get(node["_target_"])
    if builder is None:
        return  # check_targets reports it
    hints: dict[str, Any] = {}
    # a builder that forwards **kwargs (zoo.signature.forwards) takes its targets' annotations
    for source in (*reversed(getattr(builder, "__forwards__", ())), builder):
        try:
            hints.update(typing.get_type_hints(source.__init__ if isinstance(source, type)
                                               else source))
        except Exception:  # an annotation that does not evaluate here: nothing to check against
            continue
    raw = OmegaConf.to_container(node, resolve=False)
    for name, value in raw.items():  # type: ignore[union-attr]
        if name not in hints or value is None or (
                isinstance(value, str) and ("${" in value or value == "???")):
            continue  # null, an interpolation or a missing value: the builder or Hydra decides
        problem = _type_error(hints[name], value)
        if problem:
            raise ConfigError(f"{key}.{name}={value!r}: {problem}")


def check_targets(node: Any, key: str = "") -> None:
    """Refuse any ``_target_`` in ``node`` (a config, possibly read from a run's stored
    ``config.yaml``) that is not a registered builder, before anything is imported or called
    (docs/guarantees.md). Raises ConfigError naming the key."""
    allowed = registered_targets()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for name, child in value.items():
                path = f"{where}.{name}" if where else str(name)
                if name == "_target_" and child not in allowed:
                    raise ConfigError(f"{path}={child!r} is not a registered builder (see `zoo "
                                      "list`); only registered builders are instantiated from a "
                                      "config")
                walk(child, path)
        elif isinstance(value, list):
            for i, child in enumerate(value):
                walk(child, f"{where}[{i}]")

    walk(OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node, key)


def check_config(cfg: DictConfig) -> None:
    """The data source, recipe and components of ``cfg``: registered targets and the simple types
    of builder arguments, checked before any work."""
    for group in ("data", "recipe", *COMPONENT_GROUPS):
        check_targets(cfg.get(group), group)
        check_types(cfg.get(group), group)


def labelled(group: str, choice: str, factory: Callable[..., Any]) -> Callable[..., Any]:
    """``factory`` whose input errors name the config group they came from: a builder's own
    check knows its argument (``kernel must be ...``), not where in the config the value was set,
    so its one line becomes ``connector=spatial_pool: kernel must be ...``. A message that already
    names the group is left as it is; bugs (any other exception) pass untouched. The factory's
    signature is kept: recipes read it (a text-guided part is the one that takes
    ``prompt_dim``)."""

    def build(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except ZooError as err:
            if str(err).startswith((f"{group}.", f"{group}=", f"{group}:")):
                raise
            raise type(err)(f"{group}={choice}: {err}") from err

    build.__signature__ = inspect.signature(factory)  # type: ignore[attr-defined]
    return build


def component_factories(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """(recipe partial, {group: component partial}) checked against the recipe's signature."""
    from hydra.utils import instantiate

    load_manifest()
    if cfg.get("recipe") is None:
        raise ConfigError("recipe: no recipe chosen (set recipe=NAME; see `zoo list recipe`)")
    for group in ("recipe", *COMPONENT_GROUPS):
        check_targets(cfg.get(group), group)
        check_types(cfg.get(group), group)
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
        parts[group] = labelled(group, choices.get(group, "?"), instantiate(node, _partial_=True))
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
                        "not a ZooModel")  # a registered recipe's bug
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
