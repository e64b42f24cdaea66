"""Bad values and files get one line naming the key or file (exit 2), before any work; bugs keep
their traceback; a stored config may instantiate registered builders only."""

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.toy import ToyModel
from zoo.build import check_targets
from zoo.checkpoint import load_weights
from zoo.cli import main, user_error
from zoo.errors import CheckpointError, ConfigError
from zoo.types import Stage


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a job gets as far as reading data."""
    def refuse(cfg):
        raise AssertionError("data was read before the bad value was refused")

    monkeypatch.setattr("zoo.jobs.build_data", refuse)


@pytest.mark.parametrize("override,message", [
    ("trainer.max_grad_norm=-1", "trainer.max_grad_norm=-1: expected a number >= 0 or null"),
    ("trainer.max_grad_norm=abc", "trainer.max_grad_norm='abc': expected a number >= 0"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5: expected an integer >= 1 or null"),
    ("trainer.max_steps=0", "trainer.max_steps=0: expected an integer >= 1 or null"),
    ("trainer.max_steps={align:0}", "trainer.max_steps.align=0: expected an integer >= 1"),
    ("trainer.max_steps=2.5", "trainer.max_steps=2.5: expected an integer >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0: expected an integer >= 1 or null"),
    ("trainer.save_every=-1", "trainer.save_every=-1: expected an integer >= 0"),
    ("trainer.val_batches=-1", "trainer.val_batches=-1: expected an integer >= 1"),
    ("trainer.val_batches=0", "trainer.val_batches=0: expected an integer >= 1"),
    ("trainer.grad_accum=0", "trainer.grad_accum=0: expected an integer >= 1"),
    ("trainer.log_every=0", "trainer.log_every=0: expected an integer >= 1"),
    ("trainer.num_workers=-1", "trainer.num_workers=-1: expected an integer >= 0"),
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision='fp8': expected one of no, bf16"),
    ("trainer.validate=maybe", "trainer.validate='maybe': expected true or false"),
    ("trainer.resume=3", "trainer.resume=3: expected false, true"),
    ("trainer.stages=align", "trainer.stages='align': expected null or a non-empty list"),
    ("seed=abc", "seed='abc': expected an integer >= 0"),
    ("eval.max_items=0", "eval.max_items=0: expected an integer >= 1 or null"),
    ("eval.batch_size=0", "eval.batch_size=0: expected an integer >= 1"),
    ("eval.split=val", "eval.split='val': expected one of train, validation, test"),
    ("eval.tasks=vqa_closed", "eval.tasks='vqa_closed': expected null or a list"),
    ("+eval.max_new_tokens.caption=0", "eval.max_new_tokens.caption=0: expected an integer >= 1"),
    ("recipe.lr=abc", "recipe.lr='abc': expected a number or a mapping"),
    ("recipe.align_lr=0.001", "recipe.align_lr is no longer an argument of lamed(): use "
                              "recipe.lr={align: 0.001}"),
    ("recipe.epochs=x", "recipe.epochs='x': expected a number"),
    ("data.cases=many", "data.cases='many': expected an integer"),
    ("connector.kernal=2", "connector.kernal: spatial_pool() has no argument 'kernal'. Did you mean"),
    ("data._target_=shutil.copyfile", "data._target_='shutil.copyfile' is not a registered builder"),
])
def test_bad_value_is_refused_before_any_work(capsys, no_work, override, message, tmp_path,
                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", override]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("zoo train:")]
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize("field,value,message", [
    ("lr", "1e-4", "lr='1e-4': expected a number > 0"),
    ("lr", 0.0, "lr=0.0: expected a number > 0"),
    ("epochs", -1, "epochs=-1: expected a number > 0"),
    ("warmup_ratio", 1.5, "warmup_ratio=1.5: expected a number in [0, 1)"),
    ("batch_size", 0, "batch_size=0: expected an integer >= 1"),
])
def test_stage_settings_are_checked(field, value, message):
    with pytest.raises(ConfigError, match=f"stage 'align': {message}".replace("[", r"\[")
                       .replace("(", r"\(").replace(")", r"\)")):
        Stage("align", trainable=(), **{field: value})


def test_recipe_stage_values_name_the_stage(capsys):
    assert main(["params", "recipe.lr={align: -1}"]) == 2
    assert "stage 'align': lr=-1: expected a number > 0" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        return {}["missing"]  # a KeyError that is nobody's input

    monkeypatch.setattr("zoo.cli.cmd_list", broken)
    with pytest.raises(KeyError):
        main(["list"])


def test_hydra_wrapped_zoo_error_is_one_line_and_other_wrapped_errors_are_bugs():
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = ConfigError("depth must be a positive int, got -1")
    assert str(user_error(wrapped)) == "depth must be a positive int, got -1"
    other = InstantiationException("Error in call to target")
    other.__cause__ = ValueError("a builder's own bug")
    assert user_error(other) is None


def test_stored_config_targets_must_be_registered_builders():
    check_targets(OmegaConf.create({"encoder": {"_target_": "encoders.vit3d.test_vit3d"}}))
    stored = OmegaConf.create({"encoder": {"_target_": "encoders.vit3d.test_vit3d",
                                           "act": {"_target_": "os.system", "_args_": ["true"]}}})
    with pytest.raises(ConfigError, match=r"encoder\.act\._target_='os\.system' is not a "
                                          "registered builder"):
        check_targets(stored)


@pytest.mark.parametrize("damage,message", [
    ("missing", "1 missing keys (e.g. heads.cls.bias)"),
    ("extra", "1 unexpected keys (e.g. extra.weight)"),
    ("shape", "1 wrong shapes (e.g. heads.cls.weight (3, 8) vs (2, 8), file vs model)"),
    ("truncated", "could not be read as safetensors"),
])
def test_final_checkpoint_that_does_not_fit_is_one_line(tmp_path, damage, message):
    state = {k: v.clone() for k, v in ToyModel().state_dict().items()}
    if damage == "missing":
        del state["heads.cls.bias"]
    elif damage == "extra":
        state["extra.weight"] = torch.zeros(1)
    elif damage == "shape":
        state["heads.cls.weight"] = torch.zeros(3, 8)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(CheckpointError) as info:
        load_weights(ToyModel(), path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text


def test_lm_folder_with_a_pickled_bin_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import pathlib

    monkeypatch.chdir(tmp_path)
    from transformers import LlamaConfig

    folder = tmp_path / "lm"
    LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2).save_pretrained(folder)
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"w": Payload()}, folder / "pytorch_model.bin")
    assert main(["train", "lm=hf", f"lm.pretrained={folder}", "data=test_synth"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("zoo train:")]
    assert len(lines) == 1 and f"{folder}: a weights file holds pickled objects" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("command,override,message", [
    ("params", "connector.kernel=0", "zoo params: connector=spatial_pool: kernel must be a "
                                     "positive int or 3 positive ints (D, H, W), got 0"),
    ("params", "encoder.depth=-1", "zoo params: encoder=test_vit3d: depth must be a positive int"),
])
def test_a_builders_own_check_names_the_config_group(capsys, command, override, message):
    assert main([command, "encoder=test_vit3d", override]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message)


def test_a_data_builders_own_check_names_the_data_group():
    from zoo.config import compose
    from zoo.jobs import build_data

    with pytest.raises(ConfigError, match=r"^data=synth: cases must be >= 1, got 0$"):
        build_data(compose(["data.cases=0"]))


def test_a_message_that_starts_with_the_command_is_not_prefixed_twice(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["compare", "--parent", "nope", "--tracking-uri", uri]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"zoo compare: run 'nope' has no child runs in {uri}"
