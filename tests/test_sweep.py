"""zoo sweep: override expansion, launcher configs (composition only), and a miniature sweep end to
end (train, evaluate, compare, then `zoo eval` and `zoo compare` on its runs)."""

import json

import pytest

from zoo.cli import main
from zoo.config import ConfigError
from zoo.sweep import launcher_settings, plan, submitit_parameters


def default_variants() -> list[dict]:
    import yaml

    from zoo.config import conf_dir

    text = (conf_dir() / "experiment" / "compare_strategies.yaml").read_text()
    return yaml.safe_load(text)["sweep"]["variants"]


def test_default_sweep_is_compare_strategies_with_its_variants():
    experiment, jobs, launcher = plan([])
    assert experiment == "compare_strategies" and launcher == {"launcher": "local"}
    assert [name for name, _ in jobs] == [v["name"] for v in default_variants()]
    assert all(overrides[0] == "experiment=compare_strategies" for _, overrides in jobs)


@pytest.mark.parametrize("variant", [v["name"] for v in default_variants()])
def test_every_default_sweep_variant_builds_with_the_same_visual_token_budget(variant):
    """Each variant composes and builds on meta, with the 16 visual tokens all variants share."""
    from zoo.build import build_on_meta
    from zoo.config import compose

    overrides = dict(plan([])[1])[variant]
    model = build_on_meta(compose(overrides))
    assert model.stages and model.num_image_tokens == 16


def test_comma_lists_expand_to_the_cartesian_product_after_the_variant():
    _, jobs, _ = plan(["experiment=compare_strategies_mini", "seed=0,1",
                       "connector=spatial_pool,mlp", "sweep.only=[vit3d_sequence_pool]"])
    assert len(jobs) == 4
    name, overrides = jobs[0]
    assert name == "vit3d_sequence_pool:seed=0,connector=spatial_pool"
    # the command line comes after the variant's own overrides, so it wins
    assert overrides.index("connector=sequence_pool") < overrides.index("connector=spatial_pool")


def test_bad_sweep_values_and_launchers_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown connector 'nope'"):
        plan(["connector=spatial_pool,nope"])
    with pytest.raises(ConfigError, match="unknown launcher"):
        plan(["launcher=ray"])
    with pytest.raises(ConfigError, match="sweep.only"):
        plan(["sweep.only=[nope]"])


def test_joblib_and_submitit_launcher_configs_compose():
    joblib = launcher_settings("joblib")
    assert joblib["n_jobs"] == 2 and joblib["backend"] == "loky"
    assert joblib["_target_"].endswith("JoblibLauncher")
    slurm = launcher_settings("submitit_slurm")
    assert slurm["_target_"].endswith("SlurmLauncher")
    params = submitit_parameters(slurm)
    assert params["timeout_min"] == 120 and params["gpus_per_node"] == 1
    assert "slurm_partition" not in params  # unset keys are left to Slurm's defaults
    assert all(k in ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
                     "nodes", "name") or k.startswith("slurm_") for k in params)


def test_miniature_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["sweep", "experiment=compare_strategies_mini"]) == 0
    out = capsys.readouterr().out
    assert "[job 2/2] vit3d_sequence_pool" in out
    assert "### vqa_closed" in out and "[baseline] majority answer per question type" in out
    assert "### cost" in out and "mlflow store sqlite:///" in out
    compare_dirs = list((tmp_path / "runs" / "compare").iterdir())
    assert len(compare_dirs) == 1
    folder = compare_dirs[0]
    assert {p.name for p in folder.iterdir()} >= {"comparison.md", "comparison.csv", "bars.png",
                                                  "pareto.png"}

    from zoo.tracking import Tracker

    tracker = Tracker()
    children = tracker.child_runs(folder.name)
    assert sorted(r.data.tags["zoo.variant"] for r in children) == ["vit3d_sequence_pool",
                                                                    "vit3d_spatial_pool"]
    warmups = sorted(r.data.tags["zoo.lm_warmup"] for r in children)
    assert warmups[0] + " (cached)" == warmups[1]  # the second job reuses the first's LM warm-up
    run = children[0]
    assert "test/vqa_closed/accuracy" in run.data.metrics
    assert "test/vqa_closed/baseline/accuracy" in run.data.metrics
    assert run.data.metrics["cost.visual_tokens"] == 2
    assert run.data.metrics["cost.flops_per_sample"] > 0
    assert "skipped" in run.data.tags["zoo.eval.seg"]  # no segmentation head: never a zero
    local = tracker.client.download_artifacts(run.info.run_id, "eval/vqa_closed.jsonl", str(tmp_path))
    first = json.loads(open(local).readline())
    assert set(first) >= {"id", "question_type", "prediction", "reference", "scores"}

    # zoo eval reloads the run's config and final checkpoint and logs to the same run
    assert main(["eval", run.info.run_id, "eval.tasks=[vqa_closed]", "eval.max_items=2"]) == 0
    assert "logged test metrics" in capsys.readouterr().out
    # zoo compare on an explicit run list, with a chosen reference
    assert main(["compare", "--runs", *[r.info.run_id for r in children], "--baseline",
                 "vit3d_sequence_pool", "--out", str(tmp_path / "cmp"), "--resamples", "200"]) == 0
    assert "**vit3d_sequence_pool**" in capsys.readouterr().out
    assert main(["compare"]) == 2  # neither --parent nor --runs: a one-line error
