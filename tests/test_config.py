import importlib

import pytest
import yaml
from omegaconf import OmegaConf

from zoo.config import GROUP_KINDS, ConfigError, compose, conf_dir, config_groups, validate_overrides
from zoo.registry import REGISTRIES


def _option_files():
    for group, options in config_groups().items():
        for option in options:
            yield group, option


OPTION_FILES = sorted(_option_files())


def _resolve(target: str):
    module, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("group,option", OPTION_FILES)
def test_every_option_file_composes(group, option):
    if group == "experiment":  # an overlay: the whole experiment must build
        from zoo.build import build_on_meta

        raw = (conf_dir() / group / f"{option}.yaml").read_text()
        if "# Requires recipe.init_from=" in raw:  # a weights folder, interpolated into lm.path
            with pytest.raises(ValueError, match="lm.path"):
                build_on_meta(compose([f"experiment={option}"]))
            return
        assert build_on_meta(compose([f"experiment={option}"])).stages
    else:
        assert compose([f"{group}={option}"])[group] is not None


@pytest.mark.parametrize("group,option", [(g, o) for g, o in OPTION_FILES if g in GROUP_KINDS])
def test_component_option_file_is_target_plus_kwargs_of_its_registry_key(group, option):
    raw = yaml.safe_load((conf_dir() / group / f"{option}.yaml").read_text())
    assert "_target_" in raw, f"{group}/{option}.yaml has no _target_"
    assert "defaults" not in raw, f"{group}/{option}.yaml must hold only _target_ and kwargs"
    builder = _resolve(raw["_target_"])
    registry = REGISTRIES[GROUP_KINDS[group]]
    assert registry.get(option) is builder, (
        f"{group}/{option}.yaml targets {raw['_target_']}, not the {registry.kind} registered "
        f"as {option!r}")


def test_unknown_option_suggests():
    groups = config_groups()
    with pytest.raises(ConfigError) as info:
        validate_overrides(["trainer=defualt"])
    assert "trainer=defualt" in str(info.value)
    assert "Did you mean: default?" in str(info.value)
    assert groups["trainer"] == ["default"]


def test_sweep_values_are_checked_one_by_one():
    validate_overrides(["trainer=default,default"], sweep=True)
    with pytest.raises(ConfigError, match="unknown trainer 'nope'"):
        validate_overrides(["trainer=default,nope"], sweep=True)


def test_bad_override_syntax_is_one_line():
    with pytest.raises(ConfigError) as info:
        compose(["trainer.grad_accum=[1"])
    assert "\n" not in str(info.value)


def test_hydra_does_not_change_directory():
    cfg = OmegaConf.load(conf_dir() / "config.yaml")
    assert cfg.hydra.job.chdir is False
