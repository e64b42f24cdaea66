"""zoo sweep: jobs (variants x seeds x command-line lists), variants added from the command line,
launcher configs, and miniature sweeps end to end (in process, and in parallel processes; then
`zoo eval` and `zoo compare` on the runs)."""

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


def test_default_sweep_runs_its_variants_times_three_seeds_in_parallel_processes():
    sweep = plan([])
    assert sweep.experiment == "compare_strategies"
    assert sweep.launcher["launcher"] == "joblib" and sweep.threads_per_job == 1
    assert sweep.launcher["n_jobs"] >= 1 and sweep.launcher["backend"] == "threading"
    names = [v["name"] for v in default_variants()]
    assert len(names) == 6
    assert [(j.variant, j.seed) for j in sweep.jobs] == [(n, s) for n in names for s in (0, 1, 2)]
    assert all(j.overrides[0] == "experiment=compare_strategies" and j.overrides[-1] ==
               f"seed={j.seed}" for j in sweep.jobs)


@pytest.mark.parametrize("variant", [v["name"] for v in default_variants()])
def test_every_default_sweep_variant_builds_with_the_same_visual_token_budget(variant):
    """Over the experiment's own variant list (not a copy of it): each job's config composes and
    builds on meta, with the 16 visual tokens all variants share; the config files it reads (the
    job's recorded inputs) are found."""
    from zoo.build import build_on_meta
    from zoo.config import compose
    from zoo.sweep import config_files

    job = next(j for j in plan(["sweep.seeds=[0]"]).jobs if j.variant == variant)
    model = build_on_meta(compose(list(job.overrides)))
    assert model.stages and model.num_image_tokens == 16
    files = {f"{p.parent.name}/{p.name}" for p in config_files(job.overrides)}
    assert {"experiment/compare_strategies.yaml", "trainer/default.yaml"} <= files


def test_a_named_variant_is_added_from_the_command_line():
    add = "+sweep.add={name: conv_reduce, overrides: ['connector=mlp', 'connector.depth=1']}"
    sweep = plan([add, "sweep.only=[vit3d_spatial_pool,conv_reduce]", "sweep.seeds=[0,1]"])
    assert [j.label for j in sweep.jobs] == ["vit3d_spatial_pool seed 0",
                                             "vit3d_spatial_pool seed 1", "conv_reduce seed 0",
                                             "conv_reduce seed 1"]
    assert sweep.jobs[2].overrides == ("experiment=compare_strategies", "connector=mlp",
                                       "connector.depth=1", "seed=0")
    several = plan(["+sweep.add=[{name: a, overrides: ['connector=mlp']}, {name: b}]",
                    "sweep.only=[a,b]", "launcher=local", "seed=3"])
    assert [(j.variant, j.seed) for j in several.jobs] == [("a", None), ("b", None)]
    assert several.jobs[0].overrides[-1] == "seed=3" and several.launcher == {"launcher": "local"}


@pytest.mark.parametrize("add, match", [
    ("+sweep.add={name: tghmoe}", "variant name 'tghmoe' is taken"),
    ("+sweep.add={overrides: []}", "each variant is"),
    ("+sweep.add={name: x, overide: []}", "unknown key"),
    ("+sweep.add={name: x, overrides: [connector=mlp]}", "quote each override"),
    ("+sweep.add={name: x, overrides: ['connector=nope']}", "unknown connector 'nope'"),
    ("+sweep.add={name: x, overrides: ['connector.nope=1']}", "sweep variant 'x'"),
])
def test_bad_added_variants_are_one_line_errors_before_any_training(add, match):
    with pytest.raises(ConfigError, match=match):
        plan([add])


def test_comma_lists_expand_to_the_cartesian_product_after_the_variant():
    jobs = plan(["experiment=compare_strategies_mini", "seed=0,1", "connector=spatial_pool,mlp",
                 "sweep.only=[vit3d_sequence_pool]"]).jobs
    assert len(jobs) == 4
    assert jobs[0].variant == "vit3d_sequence_pool:seed=0,connector=spatial_pool"
    # the command line comes after the variant's own overrides, so it wins
    overrides = jobs[0].overrides
    assert overrides.index("connector=sequence_pool") < overrides.index("connector=spatial_pool")


def test_bad_sweep_values_and_launchers_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown connector 'nope'"):
        plan(["connector=spatial_pool,nope"])
    with pytest.raises(ConfigError, match="unknown launcher"):
        plan(["launcher=ray"])
    with pytest.raises(ConfigError, match="sweep.only"):
        plan(["sweep.only=[nope]"])


def test_joblib_and_submitit_launcher_configs_compose():
    from zoo.sweep import usable_cores

    joblib = launcher_settings("joblib")
    assert joblib["n_jobs"] == usable_cores() and joblib["backend"] == "threading"
    assert joblib["_target_"].endswith("JoblibLauncher")
    assert launcher_settings("joblib", ["hydra.launcher.n_jobs=5"])["n_jobs"] == 5
    assert launcher_settings("joblib", threads=usable_cores() * 2)["n_jobs"] == 1
    with pytest.raises(ConfigError, match="launcher=joblib"):
        launcher_settings("joblib", ["hydra.launcher.nope=1"])
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
    assert "### Cost" in out and "mlflow store sqlite:///" in out
    assert "One training run for vit3d_spatial_pool, vit3d_sequence_pool" in out
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
    # each job records the files its numbers depend on
    inputs = json.loads(open(tracker.client.download_artifacts(
        run.info.run_id, "inputs.json", str(tmp_path))).read())
    assert {"zoo/training.py", "encoders/vit3d.py", "experiments/conf/experiment/"
            "compare_strategies_mini.yaml", "experiments/conf/experiment/"
            "compare_strategies.yaml"} <= set(inputs)
    assert not any(k.startswith(("encoders/tghmoe", "zoo/cli", "zoo/compare")) for k in inputs)

    # a run that did not finish is left out, and named
    tracker.client.set_terminated(children[1].info.run_id, "KILLED")
    results_file = tmp_path / "docs" / "results" / "mini.md"
    assert main(["compare", "--parent", folder.name, "--out", str(tmp_path / "cmp0"),
                 "--write-results", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "### Runs left out" in out and "status KILLED (killed)" in out
    assert children[1].data.tags["zoo.variant"] not in out.split("### Summary")[1].split(
        "### ")[1]  # not in the summary
    from zoo import results

    record, _, blocks = results.read(results_file)
    assert record["command"] == "zoo sweep experiment=compare_strategies_mini"
    assert "zoo/training.py" in record["inputs"] and "zoo/stats.py" in record["inputs"]
    assert record["wall_seconds"] > 0 and "summary" in blocks
    assert (results_file.parent / "mini.bars.png").is_file()
    tracker.client.set_terminated(children[1].info.run_id, "FINISHED")

    # zoo eval reloads the run's config and final checkpoint and logs to the same run
    assert main(["eval", run.info.run_id, "eval.tasks=[vqa_closed]", "eval.max_items=2"]) == 0
    assert "logged test metrics" in capsys.readouterr().out
    # zoo compare on an explicit run list, with a chosen reference
    assert main(["compare", "--runs", *[r.info.run_id for r in children], "--baseline",
                 "vit3d_sequence_pool", "--out", str(tmp_path / "cmp")]) == 0
    assert "**vit3d_sequence_pool**" in capsys.readouterr().out
    assert main(["compare"]) == 2  # neither --parent nor --runs: a one-line error


def test_parallel_jobs_run_in_their_own_processes_and_a_failed_job_is_named(tmp_path, monkeypatch,
                                                                              capsys):
    """The default experiment's launcher on the miniature experiment: two jobs in two processes,
    one of which fails after its run started (an LM warm-up on a task without text answers). The
    other is compared, the failed run is listed as left out, the sweep exits with one line naming
    the failed job and its log. Slower than most tests (two interpreters start: ~10 s)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["sweep", "experiment=compare_strategies_mini", "launcher=joblib",
                 "+sweep.add={name: broken, overrides: ['lm_warmup.tasks=[seg]']}",
                 "sweep.only=[vit3d_spatial_pool,broken]"])
    captured = capsys.readouterr()
    assert code == 2
    assert "jobs, launcher joblib (" in captured.out and "1 thread(s) each" in captured.out
    assert "done in" in captured.out and "FAILED after" in captured.out
    assert "### Runs left out" in captured.out and "status FAILED (failed)" in captured.out
    assert "sweep: 1 of 2 jobs failed" in captured.err and "broken seed 0: exit 1:" in captured.err
    logs = sorted((tmp_path / "runs" / "sweeps").glob("*/*.log"))
    assert [p.name for p in logs] == ["01-vit3d_spatial_pool-seed0.log", "02-broken-seed0.log"]
    assert "no item of these tasks with a text answer" in logs[1].read_text()

    from zoo.tracking import Tracker

    finished = [r for r in Tracker().client.search_runs(
        [Tracker().experiment_id], "tags.`zoo.variant` = 'vit3d_spatial_pool'")]
    assert finished[0].info.status == "FINISHED"
    assert finished[0].data.metrics["cost.peak_memory_mb"] > 100  # this job's own process
