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
from typing import Any, Iterable

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


# Hydra runtime settings the zoo does not use, and what to use instead (`zoo` composes configs
# with Hydra but runs no Hydra job: no run folder, no change of directory, its own sweep)
HYDRA_INSTEAD: dict[str, str] = {
    "hydra.run": "the zoo writes no Hydra run folder and never changes directory; checkpoints go "
                 "to trainer.output_dir=DIR and runs to the MLflow store (tracking.uri=URI)",
    "hydra.sweep": "zoo sweep keeps its jobs in one MLflow parent run; job outputs go to "
                   "trainer.output_dir=DIR, the comparison to runs/compare/<parent> (zoo compare "
                   "--out DIR)",
    "hydra.launcher": "only zoo sweep launches jobs (zoo sweep launcher=joblib "
                      "hydra.launcher.n_jobs=4)",
    "hydra/launcher": "choose a launcher with launcher=joblib or launcher=submitit_slurm on zoo sweep",
    "hydra.job.chdir": "the zoo never changes directory (relative paths follow the working "
                       "directory)",
    "hydra.verbose": "give hydra.verbose on the zoo command line (or -v)",
}


def refuse_hydra_overrides(overrides: Iterable[str]) -> None:
    """One line for a ``hydra.*`` override that would otherwise be silently ignored."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key != "hydra" and not key.startswith(("hydra.", "hydra/")):
            continue
        instead = next((text for prefix, text in HYDRA_INSTEAD.items()
                        if key == prefix or key.startswith(prefix + ".")), None)
        raise ConfigError(f"{override}: " + (instead or "the zoo composes configs with Hydra but runs "
                          "no Hydra job, so Hydra's runtime settings have no effect (accepted: "
                          "hydra.verbose, and hydra.launcher.* with zoo sweep)"))


def force_component_keys(overrides: Iterable[str]) -> list[str]:
    """``group.key=value`` on a component group becomes Hydra's ``++group.key=value``: a builder
    argument can be set whether or not its option file lists it (option files list only what
    differs from the defaults); :func:`complete_components` then checks the key."""
    out = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if override[:1] not in "+~" and "=" in override and "." in key \
                and key.split(".", 1)[0] in GROUP_KINDS:
            override = "++" + override
        out.append(override)
    return out


def complete_components(cfg: DictConfig) -> None:
    """Every component node checked against its builder's signature and completed with the
    builder's defaults (:func:`zoo.signature.complete_node`)."""
    from omegaconf import OmegaConf, open_dict

    from zoo.build import check_targets
    from zoo.signature import complete_node

    with open_dict(cfg):
        for group, kind in GROUP_KINDS.items():
            node = cfg.get(group)
            if node is None:
                continue
            if not isinstance(node, DictConfig) or "_target_" not in node:
                keys = list(node) if isinstance(node, DictConfig) else []
                raise ConfigError(f"{group}.{keys[0] if keys else ''}: no {group} is chosen to take "
                                  f"it; set {group}=NAME first (see `zoo list {kind}`)")
            check_targets(node, group)  # refused before its module is imported
            # a recipe's component arguments (encoder, bridge, ...) come from their own groups
            skip = [g for g in GROUP_KINDS if g not in ("recipe", "data")] if group == "recipe" else ()
            cfg[group] = complete_node(OmegaConf.to_container(node, resolve=False), group, skip)


def hydra_message(err: BaseException) -> str:
    """Hydra's whole message (its advice included) on one line, without OmegaConf's key dump;
    its sweep advice (``--multirun``) points to ``zoo sweep``."""
    lines = [line.strip() for line in str(err).strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith(
        ("full_key:", "object_type=", "reference_type=", "value_type="))]
    text = " ".join(lines) or type(err).__name__
    return text.replace("add --multirun to your command line", "run it with `zoo sweep`")


def register_resolvers() -> None:
    """``${zoo.prepared_size:DIR}``: the (D, H, W) a prepared data folder records
    (:func:`zoo.data.table.prepared_size`), so that ``recipe.image_size: ${data.size}`` follows
    the data (docs/data.md, "Bring your own data")."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("zoo.prepared_size"):
        def prepared_size(root: str) -> list[int]:
            from zoo.data.table import prepared_size as size

            return size(root)

        OmegaConf.register_new_resolver("zoo.prepared_size", prepared_size)


def compose(overrides: Iterable[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the primary config with command-line style overrides (after the recipe's
    implied component choices, see :func:`recipe_defaults`), completed with the builders'
    defaults (:func:`complete_components`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    refuse_hydra_overrides(overrides)
    validate_overrides(overrides)
    register_resolvers()
    overrides = force_component_keys(recipe_defaults(overrides) + overrides)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir()), job_name="zoo"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"config error: {hydra_message(err)}") from err
    complete_components(cfg)
    return cfg


def chosen_options(cfg: DictConfig) -> dict[str, str]:
    """The registry key chosen in each component group (from each node's ``_target_``)."""
    choices = {}
    for group in GROUP_KINDS:
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "_target_" in node:
            choices[group] = str(node["_target_"]).rsplit(".", 1)[-1]
    return choices


# Config keys holding file-system paths (besides any key ending in "_dir" or "_pretrained"; the
# zoo's name for a component's local weights is "pretrained", docs/design.md section 3). Values of
# "tokenizer" and "*_path" keys may also name a Hugging Face model id: they are made absolute only
# when they exist relative to the working directory.
PATH_KEYS = ("root", "manifest", "pretrained", "init_from", "bertscore_model")
MAYBE_PATH_KEYS = ("tokenizer",)


def _absolute(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or "://" in value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return value
    if key in MAYBE_PATH_KEYS or key.endswith("_path"):
        return str(path.resolve()) if path.exists() else value
    if key in PATH_KEYS or key.endswith(("_dir", "_pretrained")):
        return str(path.resolve())
    return value


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """A resolved copy of ``cfg`` whose relative file-system paths are absolute, so a logged config
    means the same files from any working directory (docs/guarantees.md). Interpolations (e.g.
    ``${now:...}``) are resolved once; a missing mandatory value (``???``) is a ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{key}: {first}" if key else first) from err

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: _absolute(str(k), walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return OmegaConf.create(walk(plain))
