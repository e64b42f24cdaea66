"""Hydra composition of the config tree in ``experiments/conf`` with readable errors.

The tree is found beside the running ``zoo`` package (wheel and editable installs both place
``zoo`` and ``experiments`` side by side), never by importing ``experiments``: a user's own folder
of that name on ``sys.path`` cannot shadow it.

Config groups mirror the registries (``encoder``, ``bridge``, ``connector``, ``head``, ``lm``,
``recipe``, ``data``) plus ``trainer``, ``tracking`` and ``experiment``. Option files are named
after registry keys, so an unknown option is reported like an unknown registry name: one line with
the key, the value and close matches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.registry import suggest

# config group -> registry kind whose keys name the group's option files
GROUP_KINDS: dict[str, str] = {"encoder": "encoder", "bridge": "bridge", "connector": "connector",
                               "head": "head", "lm": "lm", "recipe": "recipe", "data": "dataset"}


def conf_dir() -> Path:
    """The zoo's config tree: ``experiments/conf`` next to this ``zoo`` package."""
    path = Path(__file__).resolve().parent.parent / "experiments" / "conf"
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path / 'config.yaml'}: the zoo's config tree is missing (it is "
                          "installed beside the zoo package; reinstall medzoo3d)")
    return path


def group_options(group: str) -> list[str]:
    """Option names of a config group (yaml file stems), sorted; [] for an unknown group."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def config_groups() -> dict[str, list[str]]:
    return {p.name: group_options(p.name) for p in sorted(conf_dir().iterdir()) if p.is_dir()}


def _split_override(override: str) -> tuple[str, str] | None:
    if "=" not in override:
        return None
    key, value = override.split("=", 1)
    return key.lstrip("+~"), value


def validate_overrides(overrides: Iterable[str], sweep: bool = False) -> None:
    """Reject ``group=option`` overrides that name no option file, with suggestions.

    With ``sweep=True`` comma-separated values are checked one by one.
    """
    groups = config_groups()
    for override in overrides:
        split = _split_override(override)
        if split is None:
            continue
        key, value = split
        if key not in groups or value in ("null", ""):
            continue
        for option in (value.split(",") if sweep else [value]):
            if option not in groups[key]:
                raise ConfigError(f"{key}={option}: unknown {key} {option!r}."
                                  f"{suggest(option, groups[key])} "
                                  f"Options: {', '.join(groups[key]) or '(none)'}")


def recipe_defaults(overrides: list[str]) -> list[str]:
    """Component choices that a recipe implies, for groups the overrides leave unset.

    ``experiments/conf/recipe_defaults.yaml`` maps a recipe to ``{group: option}`` (e.g. TGH-MoE
    implies ``encoder=tghmoe``; CLIP3D implies ``connector=null lm=null``). Hydra's defaults list
    cannot express "this default depends on another group's choice", so the zoo adds these
    overrides before the user's; an explicit ``group=...`` always wins.
    """
    import yaml

    table = yaml.safe_load((conf_dir() / "recipe_defaults.yaml").read_text()) or {}
    given = {}
    for override in overrides:
        if override.startswith("~"):
            given[override[1:].split("=")[0]] = None
        elif (split := _split_override(override)) is not None:
            given[split[0]] = split[1]
    implied = table.get(given.get("recipe", ""), {}) or {}
    return [f"~{group}" if option is None else f"{group}={option}"
            for group, option in implied.items() if group not in given]


def compose(overrides: Iterable[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the primary config with command-line style overrides (after the recipe's
    implied component choices, see :func:`recipe_defaults`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    validate_overrides(overrides)
    overrides = recipe_defaults(overrides) + overrides
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir()), job_name="zoo"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"config error: {first}") from err


def chosen_options(cfg: DictConfig) -> dict[str, str]:
    """The registry key chosen in each component group (from each node's ``_target_``)."""
    choices = {}
    for group in GROUP_KINDS:
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "_target_" in node:
            choices[group] = str(node["_target_"]).rsplit(".", 1)[-1]
    return choices
