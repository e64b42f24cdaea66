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
        if "# Requires recipe.init_from=" in raw:  # a weights folder, interpolated into lm.pretrained
            with pytest.raises(ValueError, match="lm.pretrained"):
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


@pytest.mark.parametrize("group,option", [(g, o) for g, o in OPTION_FILES if g in GROUP_KINDS])
def test_option_file_lists_only_builder_arguments_that_differ_from_the_defaults(group, option):
    """open_clip's habit: an option file names its builder and what differs from its defaults;
    every key is an argument of the builder (composed configs are completed from the signature)."""
    from zoo.signature import HYDRA_KEYS, arguments, config_value, takes_any_keyword

    raw = yaml.safe_load((conf_dir() / group / f"{option}.yaml").read_text())
    builder = _resolve(raw["_target_"])
    args = {a.name: a for a in arguments(builder)}
    for key, value in raw.items():
        if key in HYDRA_KEYS:
            continue
        assert key in args or takes_any_keyword(builder), (
            f"{group}/{option}.yaml: {key!r} is not an argument of {raw['_target_']}")
        if key in args and not args[key].required:
            representable, default = config_value(args[key].default)
            repeats = representable and value == default and \
                isinstance(value, bool) == isinstance(default, bool)
            assert not repeats, f"{group}/{option}.yaml: {key}: {value!r} repeats the default"


def test_composed_components_carry_every_builder_default():
    cfg = compose(["encoder=vit3d"])
    assert cfg.encoder.hidden_size == 768 and cfg.encoder.img_size == [32, 256, 256]
    assert list(cfg.encoder)[0] == "_target_" and cfg.data.size == [32, 64, 64]
    assert "bridge" not in cfg.recipe  # component arguments come from their own groups
    assert compose(["encoder=vit3d", "encoder.depth=2"]).encoder.depth == 2  # no "+" needed


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


def test_a_users_experiments_folder_does_not_shadow_the_config_tree(tmp_path):
    """`python` puts the working directory first on sys.path; a user's `experiments` package
    there (regular or namespace) must not replace the zoo's config tree."""
    import subprocess
    import sys

    (tmp_path / "experiments" / "conf").mkdir(parents=True)
    (tmp_path / "experiments" / "__init__.py").write_text("")
    code = ("import experiments, zoo.config as c; "
            "assert experiments.__file__.startswith(%r), experiments.__file__; "
            "print(c.conf_dir()); print(c.compose(['trainer.max_steps=3']).trainer.max_steps)"
            % str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    where, steps = done.stdout.split()
    assert where == str(conf_dir()) and steps == "3"


# Weights of a component are `pretrained` in every registry (docs/design.md section 3).
OLD_WEIGHT_NAMES = {"checkpoint", "checkpoint_prefix", "path", "clip_path", "text_path"}


def test_one_name_for_a_components_pretrained_weights():
    from zoo.signature import arguments

    for kind, registry in REGISTRIES.items():
        if kind in ("dataset", "task"):
            continue
        for name in registry.list():
            builder = registry.get(name)
            names = {a.name for a in arguments(builder)}
            assert not names & OLD_WEIGHT_NAMES, (kind, name, names & OLD_WEIGHT_NAMES)
            assert not names & set(getattr(builder, "__renamed__", {})), (kind, name)


@pytest.mark.parametrize("overrides, message", [
    (["encoder.checkpoint=/w/vit.bin"],
     "encoder.checkpoint is no longer an argument of test_vit3d(): use encoder.pretrained=/w/vit.bin"),
    (["lm=hf", "lm.path=/models/phi3"],
     "lm.path is no longer an argument of hf(): use lm.pretrained=/models/phi3"),
    (["head=test_segvol", "head.checkpoint=s.bin"], "use head.pretrained=s.bin"),
    (["recipe=clip3d", "head=contrastive", "head.text_path=/bert"], "use head.text_pretrained=/bert"),
])
def test_old_names_are_refused_naming_the_new(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compose(overrides)


def test_old_names_are_refused_in_a_call_too():
    from zoo.registry import ENCODERS

    with pytest.raises(ConfigError, match=r"test_vit3d\(checkpoint=...\): checkpoint is no longer "
                                          "an argument; use pretrained=w.bin"):
        ENCODERS.build("test_vit3d", checkpoint="w.bin")
