import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.toy import ToyData, ToyModel
from zoo.checkpoint import latest
from zoo.config import conf_dir
from zoo.errors import ConfigError
from zoo.training import Trainer


def trainer_cfg(tmp_path, **changes):
    cfg = OmegaConf.load(conf_dir() / "trainer" / "default.yaml")
    cfg.output_dir = str(tmp_path)
    cfg.log_every = 1
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stages_freeze_and_learn(tmp_path):
    torch.manual_seed(0)
    model = ToyModel()
    before = weights(model)
    results = Trainer(model, ToyData(), trainer_cfg(tmp_path), seed=0).fit()
    assert [r.stage for r in results] == ["warmup", "full"]
    assert [r.steps for r in results] == [16, 8]  # 16 samples / batch 4 * (4, 2) epochs
    after = weights(model)
    assert not torch.equal(before["heads.cls.weight"], after["heads.cls.weight"])
    assert results[-1].train_loss < 0.69  # below chance-level cross-entropy
    assert (tmp_path / "checkpoints" / "full-final" / "model.safetensors").exists()
    assert latest(tmp_path / "checkpoints")[0].name == "full-final"


def test_first_stage_leaves_frozen_encoder_untouched(tmp_path):
    model = ToyModel()
    before = weights(model)
    Trainer(model, ToyData(), trainer_cfg(tmp_path, stages=["warmup"]), seed=0).fit()
    assert torch.equal(before["encoder.1.weight"], model.state_dict()["encoder.1.weight"])


def test_max_steps_per_stage_mapping(tmp_path):
    cfg = trainer_cfg(tmp_path, max_steps={"warmup": 3, "full": 2}, validate=False)
    results = Trainer(ToyModel(), ToyData(), cfg, seed=0).fit()
    assert [r.steps for r in results] == [3, 2]
    with pytest.raises(ConfigError, match="no step count for stage 'full'"):
        Trainer(ToyModel(), ToyData(), trainer_cfg(tmp_path / "b", max_steps={"warmup": 1}),
                seed=0).fit()


def test_gradients_a_model_comes_with_do_not_join_the_first_step(tmp_path):
    """A model handed to the trainer with gradients left from earlier work (seen: the LM warm-up's
    last step) trains as one without."""
    clean, stale = ToyModel(), ToyModel()
    stale.load_state_dict(clean.state_dict())
    for p in stale.parameters():
        p.grad = torch.full_like(p, 10.0)
    for i, model in enumerate((clean, stale)):
        Trainer(model, ToyData(), trainer_cfg(tmp_path / str(i)), seed=0).fit()
    assert all(torch.equal(a, b) for a, b in zip(weights(clean).values(), weights(stale).values()))


def test_unknown_stage_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        Trainer(ToyModel(), ToyData(), trainer_cfg(tmp_path, stages=["nope"]), seed=0).fit()


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    from omegaconf import OmegaConf
    sys.path.insert(0, {root!r})
    import zoo
    from tests.toy import ToyData, ToyModel
    from zoo.training import Trainer
    from accelerate import PartialState
    cfg = OmegaConf.load({cfg!r})
    torch.manual_seed(0)
    model = ToyModel()
    Trainer(model, ToyData(), cfg, seed=0).fit()
    if PartialState().is_main_process:
        torch.save(model.state_dict(), {out!r})
""")


def test_ddp_two_processes_equal_one_process(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    results = {}
    for procs in (1, 2):
        cfg = trainer_cfg(tmp_path / f"p{procs}", validate=False)
        cfg_path = tmp_path / f"cfg{procs}.yaml"
        OmegaConf.save(cfg, cfg_path)
        out = tmp_path / f"w{procs}.pt"
        script = tmp_path / "ddp.py"
        script.write_text(DDP_SCRIPT.format(root=root, cfg=str(cfg_path), out=str(out)))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu",
               "--num_processes", str(procs), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(script)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[procs] = torch.load(out, weights_only=True)
    for key, value in results[1].items():
        torch.testing.assert_close(results[2][key], value, rtol=1e-4, atol=1e-5)


def test_compile_matches_eager_and_keeps_checkpoint_keys(tmp_path):
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    init = weights(ToyModel())
    runs = {}
    for name, option in (("eager", None), ("compiled", {"backend": "aot_eager"})):
        model = ToyModel()
        model.load_state_dict(init)
        cfg = trainer_cfg(tmp_path / name, stages=["full"], max_steps=3, validate=False,
                          compile=option)
        loss = Trainer(model, ToyData(), cfg, seed=0).fit()[-1].train_loss
        saved = load_file(str(tmp_path / name / "checkpoints" / "full-final" / "model.safetensors"))
        runs[name] = loss, weights(model), saved
    assert counters["frames"]["ok"] > 0  # dynamo did compile the forward
    assert runs["compiled"][0] == pytest.approx(runs["eager"][0], rel=1e-5)
    assert list(runs["compiled"][1]) == list(init)  # no "_orig_mod." prefix
    assert set(runs["compiled"][2]) == set(runs["eager"][2])
    for key, value in runs["eager"][1].items():
        torch.testing.assert_close(runs["compiled"][1][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value,match", [
    ("fastest", r"trainer.compile.mode='fastest': expected one of default, reduce-overhead,"),
    ("max-autotun", "Did you mean: max-autotune"),
    ({"backend": "aot_eagr"}, "Did you mean: aot_eager"),
    ({"mode": "max-autotune", "backend": "aot_eager"}, "needs backend inductor"),
    ({"modes": "default"}, r"unknown key\(s\) \['modes'\]"),
    (3, "expected null, true, a mode"),
])
def test_bad_compile_option_is_named(tmp_path, value, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(ToyModel(), ToyData(), trainer_cfg(tmp_path, compile=value), seed=0)


def test_logged_means_equal_the_means_of_floats():
    """Per-step logs stay on the device and are read back at log time (zoo.training.as_floats):
    the values are exactly those float() gives, so the logged means do not change."""
    from zoo.training import as_floats

    values = [torch.tensor(v) for v in (0.1, 2.3, 7.77)]
    assert as_floats(("loss", values)) == ("loss", [float(v) for v in values])
    mixed = [torch.tensor(1.5), 2.0]
    assert as_floats(("acc", mixed)) == ("acc", [1.5, 2.0])


def test_final_checkpoint_is_the_last_stages_never_an_earlier_one(tmp_path):
    """With no stage list given, the run's own stages (recorded in its checkpoints) name the final
    checkpoint; a missing last one is an error, not the previous stage's weights evaluated in its
    place (the battery found that)."""
    from zoo.errors import MissingFileError
    from zoo.runs import final_checkpoint

    model = ToyModel()
    Trainer(model, ToyData(), trainer_cfg(tmp_path), seed=0).fit()
    last = final_checkpoint(tmp_path, [])
    assert last == final_checkpoint(tmp_path, list(model.stages))
    first = final_checkpoint(tmp_path, list(model.stages)[:1])
    assert first != last and first.is_file()
    last.parent.rename(last.parent.with_name("moved"))
    with pytest.raises(MissingFileError, match=f"{list(model.stages)[-1]}-final.*no final checkpoint"):
        final_checkpoint(tmp_path, [])
