"""Runs apart, end to end: two tiny `zoo train` runs in one folder keep their own weights and
records; `zoo eval RUN` evaluates that run's own checkpoint from any working directory, records
beside the train-time records and refuses other weights or a stored config with a foreign
`_target_`; resume refuses another config and continues the default recipe exactly."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoo.cli import main
from zoo.tracking import Tracker

TINY = ["data=test_synth", "trainer.max_steps=2", "trainer.validate=false",
        "eval.tasks=[vqa_closed]", "eval.max_items=3", "eval.cost=false"]


def train(capsys, *overrides):
    assert main(["train", *TINY, *overrides]) == 0
    out = capsys.readouterr().out
    return out.split("mlflow run ")[1].split()[0]


def error_line(capsys, command):
    """The one line a ZooError prints (library warnings may share stderr)."""
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith(f"zoo {command}:")]
    assert len(lines) == 1, lines
    return lines[0]


def final_weights(folder):
    return folder / "checkpoints" / "instruct-final" / "model.safetensors"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Runs A (seed 0) and B (seed 1) trained one after the other in the same folder: the
    end-to-end case the guarantees are about, so it goes through `zoo train` (about 20 s on a
    loaded 2-core machine, most of it creating the fresh MLflow store; shared by the module)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ids = []
        for seed in (0, 1):
            assert main(["train", *TINY, f"seed={seed}"]) == 0
            tracker = Tracker()
            ids = [r.info.run_id for r in tracker.client.search_runs([tracker.experiment_id])]
    tracker = Tracker(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    runs = {r.data.params["seed"]: r for r in tracker.client.search_runs([tracker.experiment_id])}
    assert len(ids) == 2 and set(runs) == {"0", "1"}
    return home, tracker, runs["0"], runs["1"]


def artifact(tracker, run_id, path, tmp_path):
    local = tracker.client.download_artifacts(run_id, path, str(tmp_path))
    return Path(local).read_text()


def predictions(text):
    return [json.loads(line)["prediction"] for line in text.splitlines()]


def test_each_run_has_its_own_folder_and_records_its_checkpoint_hash(two_runs):
    home, tracker, a, b = two_runs
    folders = [Path(r.data.tags["zoo.run_dir"]) for r in (a, b)]
    assert folders == [home / "outputs" / "zoo" / r.info.run_id for r in (a, b)]
    from zoo.checkpoint import file_sha256

    for run, folder in zip((a, b), folders):
        recorded = run.data.tags["zoo.checkpoint.instruct-final.sha256"]
        assert file_sha256(final_weights(folder)) == recorded
        assert "zoo.checkpoint.align-final.sha256" in run.data.tags
    assert file_sha256(final_weights(folders[0])) != file_sha256(final_weights(folders[1]))
    assert run.data.params["trainer.output_dir"] == str(home / "outputs" / "zoo")  # absolute
    assert run.data.params["data.cache_dir"] == str(home / "runs" / "data")


def test_eval_scores_the_runs_own_weights_from_any_folder_and_keeps_train_records(
        two_runs, tmp_path, monkeypatch, capsys):
    home, tracker, a, b = two_runs
    monkeypatch.chdir(tmp_path)  # another working directory
    before = artifact(tracker, a.info.run_id, "eval/vqa_closed.jsonl", tmp_path / "before")
    assert main(["eval", "--tracking-uri", tracker.uri, a.info.run_id, "eval.batch_size=2"]) == 0
    assert "a child run of " + a.info.run_id in capsys.readouterr().out
    (child,) = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.zoo.eval_of = '{a.info.run_id}'")
    assert child.data.tags["mlflow.parentRunId"] == a.info.run_id
    assert child.data.tags["zoo.eval.vqa_closed.subset"] == \
        "3 of 5 test items (eval.max_items=3)"
    again = artifact(tracker, child.info.run_id, "eval/vqa_closed.jsonl", tmp_path / "child")
    assert predictions(again) == predictions(before)
    other = artifact(tracker, b.info.run_id, "eval/vqa_closed.jsonl", tmp_path / "b")
    assert predictions(other) != predictions(before)  # B's weights answer differently
    # A's own records and metrics are untouched, and its subset evaluation is labelled
    assert artifact(tracker, a.info.run_id, "eval/vqa_closed.jsonl", tmp_path / "after") == before
    now = tracker.client.get_run(a.info.run_id)
    assert now.data.metrics == a.data.metrics and now.info.status == "FINISHED"
    assert now.data.tags["zoo.eval.vqa_closed.subset"] == child.data.tags["zoo.eval.vqa_closed.subset"]


def test_eval_refuses_weights_whose_hash_differs(two_runs, tmp_path, capsys):
    home, tracker, a, b = two_runs
    target = final_weights(Path(a.data.tags["zoo.run_dir"]))
    saved = target.read_bytes()
    target.write_bytes(final_weights(Path(b.data.tags["zoo.run_dir"])).read_bytes())
    try:
        assert main(["eval", "--tracking-uri", tracker.uri, a.info.run_id]) == 2
    finally:
        target.write_bytes(saved)
    err = error_line(capsys, "eval")
    assert str(target) in err and "sha256 differs" in err


def test_eval_refuses_a_stored_config_with_a_foreign_target(two_runs, tmp_path, capsys):
    home, tracker, a, _ = two_runs
    stored = home / "runs" / "artifacts" / a.info.run_id / "artifacts" / "config.yaml"
    original = stored.read_text()
    victim, copied = tmp_path / "victim.txt", tmp_path / "copied.txt"
    victim.write_text("x")
    stored.write_text(original.replace("_target_: zoo.data.synth.test_synth",
                                       f"_target_: shutil.copyfile\n  src: {victim}\n"
                                       f"  dst: {copied}", 1))
    try:
        assert main(["eval", "--tracking-uri", tracker.uri, a.info.run_id]) == 2
    finally:
        stored.write_text(original)
    err = error_line(capsys, "eval")
    assert err == ("zoo eval: data._target_='shutil.copyfile' is not a registered builder (see "
                   "`zoo list`); only registered builders are instantiated from a config")
    assert not copied.exists()


def test_resume_of_a_finished_or_unknown_run_says_so(two_runs, monkeypatch, capsys):
    home, tracker, a, _ = two_runs
    monkeypatch.chdir(home)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", *TINY, f"trainer.resume={a.info.run_id}"]) == 2
    assert f"nothing to resume, run {a.info.run_id} finished" in error_line(capsys, "train")
    assert main(["train", *TINY, "trainer.resume=true"]) == 2
    assert "nothing to resume, no unfinished run" in error_line(capsys, "train")
    assert main(["train", *TINY, "trainer.resume=no-such-run"]) == 2
    assert "trainer.resume=no-such-run: no run folder" in error_line(capsys, "train")


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [3, 5], ids=["align-mid-stage", "stage-boundary"])
def test_default_recipe_resumes_exactly_with_dropout(two_runs, tmp_path, monkeypatch, capsys,
                                                     kill_at):
    """LaMed with its default LoRA dropout 0.05: 4 steps per stage, checkpoints every 2 steps;
    killed inside the 3rd forward (mid-stage) or the 5th (the first of stage instruct). The
    tracking store and data cache of ``two_runs`` are reused (a fresh store costs seconds)."""
    from recipes.lamed import LaMed

    home, tracker = two_runs[:2]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    common = [*TINY, "trainer.max_steps=4", "trainer.save_every=2", "eval.enabled=false",
              f"tracking.root={home / 'runs'}", f"data.cache_dir={home / 'runs' / 'data'}"]
    reference = train(capsys, *common)
    forward, calls = LaMed.forward, []

    def dying(self, batch):
        calls.append(1)
        if len(calls) == kill_at:
            raise Killed()
        return forward(self, batch)

    monkeypatch.setattr(LaMed, "forward", dying)
    with pytest.raises(Killed):
        main(["train", *common])
    monkeypatch.setattr(LaMed, "forward", forward)
    capsys.readouterr()
    assert main(["train", *common, "trainer.max_steps=5", "trainer.resume=true"]) == 2
    err = error_line(capsys, "train")
    assert "another config: trainer.max_steps (run 4, now 5)" in err
    resumed = train(capsys, *common, "trainer.resume=true")
    killed = tracker.client.get_run(resumed)
    assert killed.info.status == "FINISHED" and resumed != reference
    ref = load_file(str(final_weights(tmp_path / "outputs" / "zoo" / reference)))
    out = load_file(str(final_weights(tmp_path / "outputs" / "zoo" / resumed)))
    assert any("lora_" in k for k in out)
    for key, value in ref.items():
        torch.testing.assert_close(out[key], value, rtol=0, atol=1e-6)


def test_config_differences_show_values_as_overrides_write_them():
    from omegaconf import OmegaConf

    from zoo.runs import config_differences

    stored = OmegaConf.create({"recipe": {"lr": None, "name": "a", "flag": True, "steps": 4}})
    current = OmegaConf.create({"recipe": {"lr": 0.001, "name": "b", "flag": False},
                                "trainer": {"log_every": 3}})
    assert config_differences(stored, current) == [
        "recipe.flag (run true, now false)", "recipe.lr (run null, now 0.001)",
        "recipe.name (run 'a', now 'b')", "recipe.steps (run 4, now <unset>)"]
