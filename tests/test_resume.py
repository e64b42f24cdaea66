"""Resume reproduces the uninterrupted run with dropout on, killed mid-step, while a checkpoint is
written and at a stage boundary; corrupt checkpoints fall back or fail in one line."""

import pytest
import torch
from accelerate import Accelerator

from tests.test_training import trainer_cfg, weights
from tests.toy import ToyData, ToyModel
from zoo.checkpoint import RNG_PREFIX, WEIGHTS_FILE, latest
from zoo.errors import CheckpointError, ConfigError
from zoo.training import Trainer

DROPOUT = 0.3  # large, so a wrong random stream shows far above 1e-6
# ToyModel: warmup 16 steps (4 per epoch) + 2 validation forwards, then full 8 steps (4 per epoch)
FULL_FIRST_FORWARD = 16 + 2 + 1


class Killed(Exception):
    pass


class KilledAt(ToyModel):
    """Raises inside its ``kill_at``-th forward call (counting validation forwards too)."""

    def __init__(self, kill_at=None):
        super().__init__(dropout=DROPOUT)
        self.kill_at, self.calls = kill_at, 0

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.kill_at:
            raise Killed()
        return super().forward(batch)


def fresh(kill_at=None):
    torch.manual_seed(0)  # as zoo train: seed, then build
    return KilledAt(kill_at)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model = fresh()
    Trainer(model, ToyData(), trainer_cfg(tmp_path_factory.mktemp("ref")), seed=0).fit()
    return weights(model)


def resume_and_compare(cfg, reference):
    cfg.resume = True
    model = fresh()
    results = Trainer(model, ToyData(), cfg, seed=0).fit()
    assert results[-1].stage == "full"
    for key, value in reference.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)
    return results


@pytest.mark.parametrize("kill_at", [6, 16, FULL_FIRST_FORWARD + 5],
                         ids=["warmup-step6", "warmup-last-step", "full-step6"])
def test_killed_mid_step(tmp_path, uninterrupted, kill_at):
    cfg = trainer_cfg(tmp_path, save_every=3)
    with pytest.raises(Killed):
        Trainer(fresh(kill_at), ToyData(), cfg, seed=0).fit()
    resume_and_compare(cfg, uninterrupted)


def test_killed_while_a_checkpoint_is_written(tmp_path, uninterrupted, monkeypatch):
    original, calls = Accelerator.save_state, []

    def torn_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # warmup step 6: the weights are written, then the process dies
            self.save_model(self._models[0], output_dir)
            raise Killed()
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", torn_save)
    cfg = trainer_cfg(tmp_path, save_every=3)
    with pytest.raises(Killed):
        Trainer(fresh(), ToyData(), cfg, seed=0).fit()
    monkeypatch.setattr(Accelerator, "save_state", original)
    assert (tmp_path / "checkpoints" / ".warmup-step6.tmp" / WEIGHTS_FILE).exists()
    assert latest(tmp_path / "checkpoints")[0].name == "warmup-step3"
    resume_and_compare(cfg, uninterrupted)


def test_killed_at_a_stage_boundary(tmp_path, uninterrupted):
    cfg = trainer_cfg(tmp_path)  # no intermediate checkpoints: only warmup-final exists
    with pytest.raises(Killed):
        Trainer(fresh(FULL_FIRST_FORWARD), ToyData(), cfg, seed=0).fit()
    assert latest(tmp_path / "checkpoints")[0].name == "warmup-final"
    results = resume_and_compare(cfg, uninterrupted)
    assert [r.stage for r in results] == ["full"]


def killed_with_two_checkpoints(tmp_path):
    cfg = trainer_cfg(tmp_path, save_every=3)
    with pytest.raises(Killed):
        Trainer(fresh(8), ToyData(), cfg, seed=0).fit()  # checkpoints at steps 3 and 6
    return cfg, tmp_path / "checkpoints" / "warmup-step6"


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, uninterrupted, capsys):
    cfg, newest = killed_with_two_checkpoints(tmp_path)
    weights_file = newest / WEIGHTS_FILE
    weights_file.write_bytes(weights_file.read_bytes()[:100])  # truncated
    resume_and_compare(cfg, uninterrupted)
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(weights_file) in warning[0] and "warmup-step3" in warning[0]


def test_corrupt_random_state_file_is_an_error(tmp_path):
    cfg, newest = killed_with_two_checkpoints(tmp_path)
    rng_file = newest / f"{RNG_PREFIX}0.pkl"
    rng_file.write_bytes(b"\0" * rng_file.stat().st_size)
    cfg.resume = True
    with pytest.raises(CheckpointError, match=f"{rng_file}: corrupt or truncated random-state"):
        Trainer(fresh(), ToyData(), cfg, seed=0).fit()


def test_resume_with_nothing_to_resume_says_so(tmp_path):
    cfg = trainer_cfg(tmp_path, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume.*holds no checkpoint"):
        Trainer(fresh(), ToyData(), cfg, seed=0).fit()
    cfg.resume = False
    Trainer(fresh(), ToyData(), cfg, seed=0).fit()
    cfg.resume = True
    with pytest.raises(ConfigError, match="nothing to resume.*finished every stage"):
        Trainer(fresh(), ToyData(), cfg, seed=0).fit()
