"""zoo compare: FINISHED runs only, seeds grouped as runs of one variant, intervals over seeds and
items, verdicts only when they hold, tables, plots."""

from types import SimpleNamespace

import numpy as np
import pytest

from zoo.compare import (Job, Variant, baseline_rows, compare_variants, csv_text, load_variants,
                         markdown, pareto_front, plots, repeat_groups, select_finished,
                         short_names, verdicts)
from zoo.errors import ConfigError, RunError


def fake_run(run_id, split, variant=None, params=None, status="FINISHED", start=0, **tags):
    all_tags = {"zoo.split_hash": split, **{f"zoo.{k}": v for k, v in tags.items()}}
    if variant:
        all_tags["zoo.variant"] = variant
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, run_name=run_id, start_time=start,
                                                status=status),
                           data=SimpleNamespace(tags=all_tags, metrics={"params.total": 10.0},
                                                params=params or {"run": run_id}))


def records(values, qtypes=None):
    return {f"i{k}": {"id": f"i{k}", "question_type": (qtypes or [None] * len(values))[k],
                      "scores": {"accuracy": v}} for k, v in enumerate(values)}


def variant(name, *runs, baseline=False, costs=None):
    """A variant whose k-th run scored ``runs[k]`` on closed VQA."""
    return Variant(name, "h", [Job(f"{name}{k}", str(k), dict(costs or {}),
                                   {"vqa_closed": records(r)}) for k, r in enumerate(runs)],
                   baseline=baseline)


def test_runs_with_different_split_hashes_are_refused():
    runs = [fake_run("a" * 8, "hash1"), fake_run("b" * 8, "hash2")]
    with pytest.raises(RunError, match="different splits"):
        load_variants(client=None, runs=runs)


def test_only_finished_runs_are_compared_and_the_others_are_named_with_their_status():
    runs = [fake_run("r1", "h", "pool"), fake_run("r2", "h", "pool", status="KILLED"),
            fake_run("r3", "h", "mlp", status="RUNNING")]
    kept, left = select_finished(runs)
    assert [r.info.run_id for r in kept] == ["r1"]
    assert [(x.run_id, x.name) for x in left] == [("r2", "pool"), ("r3", "mlp")]
    assert "KILLED" in left[0].reason and "RUNNING" in left[1].reason
    with pytest.raises(RunError, match="no FINISHED run.*r2.*KILLED"):
        load_variants(client=None, runs=runs[1:])


def test_short_names_prefer_variant_tags_then_differing_components():
    runs = [fake_run("r1", "h", encoder="vit", connector="pool"),
            fake_run("r2", "h", encoder="vit", connector="mlp")]
    assert short_names(runs) == ["connector=pool", "connector=mlp"]
    runs = [fake_run("r1", "h", "one"), fake_run("r2", "h", "two")]
    assert short_names(runs) == ["one", "two"]


def test_runs_that_differ_only_in_seed_are_runs_of_one_variant_and_a_repeated_seed_is_left_out():
    def params(seed, connector="pool", **extra):
        return {"seed": seed, "trainer.output_dir": f"out/{seed}", "connector": connector, **extra}

    runs = [fake_run("r1", "h", "pool", params("0"), start=1),
            fake_run("r2", "h", "mlp", params("0", "mlp"), start=2),
            fake_run("r3", "h", "pool", params("1", **{"sweep.only": "x"}), start=3),
            fake_run("r4", "h", "pool", params("0"), start=4)]  # seed 0 again: a repeat
    groups, left = repeat_groups(runs)
    assert [[r.info.run_id for r in g] for g in groups] == [["r4", "r3"], ["r2"]]
    assert [x.run_id for x in left] == ["r1"] and "same configuration and seed" in left[0].reason


def test_identical_variants_differ_by_an_interval_containing_zero():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0] * 5
    rows = compare_variants([variant("a", values, values), variant("b", values, values)])
    diff = next(r for r in rows if r.variant == "b").diff
    assert diff.low <= 0 <= diff.high and not diff.excludes_zero() and diff.training_variance


def test_seed_variance_widens_the_interval_and_can_withdraw_a_verdict():
    """B is better on every item by the same margin in run 0, but its second run is as bad as A:
    over items alone the difference is sure, over seeds and items it is not."""
    a = [0.0, 1.0] * 30
    good, bad = [1.0] * 60, [0.0, 1.0] * 30
    one_run = next(r for r in compare_variants([variant("a", a), variant("b", good)])
                   if r.variant == "b")
    assert one_run.diff.excludes_zero() and not one_run.diff.training_variance
    assert not one_run.verdict()  # one run: the interval ignores training variance
    two_runs = next(r for r in compare_variants([variant("a", a, a), variant("b", good, bad)])
                    if r.variant == "b")
    assert two_runs.per_seed == (1.0, 0.5) and two_runs.diff.training_variance
    assert not two_runs.diff.excludes_zero() and not two_runs.verdict()
    assert two_runs.diff.high - two_runs.diff.low > one_run.diff.high - one_run.diff.low


def test_verdicts_hold_only_under_the_interval_over_seeds_and_items():
    qtypes = ["plane", "location"] * 20
    a = Variant("a", "h", [Job(f"a{k}", str(k), {}, {"vqa_closed": records([0.0] * 40, qtypes)})
                           for k in range(3)])
    b = Variant("b", "h", [Job(f"b{k}", str(k), {}, {"vqa_closed": records(
        [1.0, 1.0, 1.0, float(k == 0)] * 10, qtypes)}) for k in range(3)])
    base = Variant("[baseline] majority answer", "h",
                   [Job("", "-", {}, {"vqa_closed": records([0.5] * 40, qtypes)})], baseline=True)
    rows = compare_variants([a, b, base])
    overall = next(r for r in rows if r.variant == "b" and r.metric == "accuracy")
    assert overall.verdict() and overall.diff.mean == pytest.approx(5 / 6)
    location = next(r for r in rows if r.variant == "b" and r.metric == "accuracy/location")
    assert location.n == 20 and location.per_seed == pytest.approx((1.0, 0.5, 0.5))
    against = baseline_rows([a, b, base])
    assert [(r.variant, r.metric, r.verdict()) for r in against] == [
        ("a", "accuracy", True), ("b", "accuracy", True)]
    said = verdicts(rows, against)
    assert said[0].startswith("a is below the baseline (majority answer)")
    assert said[1].startswith("b beats the baseline (majority answer) on closed VQA accuracy")
    assert said[2].startswith("b better than a on closed VQA accuracy (greedy): Δ +0.833")
    table = markdown(rows, [a, b, base], "a", against)
    assert "accuracy/location" in table and "| [baseline] majority answer | - |" in table
    assert "<!-- zoo:block summary -->" in table and "| b | 3 |" in table
    assert "0.850 / 0.750 / 0.750" not in table  # the key metric (accuracy_ll) is absent here
    assert "One training run" not in table
    header = csv_text(rows, [a, b, base]).splitlines()[0]
    assert header.startswith("variant,task,metric,n,runs,mean,low,high,df,training_variance")


def test_one_run_per_variant_says_the_interval_ignores_training_variance_and_draws_no_verdict():
    a, b = variant("a", [0.0] * 40), variant("b", [1.0] * 40)
    rows = compare_variants([a, b])
    table = markdown(rows, [a, b], "a")
    assert "One training run for a, b: every interval ignores training" in table
    assert "- none: no difference" in table and "¹" in table and "¹ *" not in table


def test_left_out_runs_are_listed_in_the_table():
    from zoo.compare import LeftOut

    a, b = variant("a", [0.0, 1.0]), variant("b", [1.0, 1.0])
    table = markdown(compare_variants([a, b]), [a, b], "a",
                     left_out=[LeftOut("deadbeef99", "b, seed 1", "status KILLED (killed)")])
    assert "### Runs left out" in table and "- deadbeef (b, seed 1): status KILLED" in table


def test_costs_are_per_job_with_the_range_over_runs():
    def job(k, seconds, mb, values):
        return Job(f"a{k}", str(k), {"cost.train_seconds": seconds, "cost.peak_memory_mb": mb},
                   {"vqa_closed": records(values)})

    a = Variant("a", "h", [job(0, 10.0, 700.0, [1.0, 0.0]), job(1, 14.0, 720.0, [0.0, 0.0])])
    table = markdown(compare_variants([a]), [a], "a")
    assert "| a | 2 | - | - | - | - | 12 (10-14) | - | 710 (700-720) |" in table
    assert "| a | 1 | a1 | 14 | - | 720 |" in table


def test_unknown_reference_variant_is_named():
    with pytest.raises(ConfigError, match="no such variant"):
        compare_variants([variant("a", [1.0, 0.0])], reference="zzz")


def test_pareto_front_keeps_cheaper_or_better_points():
    points = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.7), (0.5, 0.2), (4.0, 0.7)]
    assert pareto_front(points) == [3, 0, 2]


def test_plots_are_written_with_intervals_and_the_baseline_named(tmp_path):
    def scored(name, values, costs):
        return Variant(name, "h", [Job(f"{name}{k}", str(k), dict(c), {"vqa_closed": {
            f"i{i}": {"id": f"i{i}", "scores": {"accuracy": v, "accuracy_ll": v}}
            for i, v in enumerate(vals)}}) for k, (vals, c) in enumerate(zip(values, costs))])

    cost = {"cost.flops_per_sample": 1e9, "cost.train_seconds": 10.0}
    a = scored("a", [[0.0, 1.0] * 10] * 2, [cost, {**cost, "cost.train_seconds": 12.0}])
    b = scored("b", [[1.0, 1.0, 0.0, 1.0] * 5] * 2, [{**cost, "cost.flops_per_sample": 2e9}] * 2)
    base = Variant("[baseline] majority answer", "h", [Job("", "-", {}, {"vqa_closed": {
        f"i{i}": {"id": f"i{i}", "scores": {"accuracy": 0.0, "accuracy_ll": 0.0}}
        for i in range(20)}})], baseline=True)
    paths = plots(compare_variants([a, b, base]), [a, b, base], tmp_path)
    assert [p.name for p in paths] == ["bars.png", "pareto.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_plots_take_equal_costs_whose_mean_rounds_above_them(tmp_path):
    """Three runs of 0.1 s each average to 0.1 + 1.4e-17: the error bar's upper side must be 0,
    not a negative extent that matplotlib refuses (seen ending a SmolLM2 sweep)."""
    cost = {"cost.flops_per_sample": 0.7e9, "cost.train_seconds": 0.1}
    jobs = [Job(f"a{k}", str(k), dict(cost), {"vqa_closed": {
        f"i{i}": {"id": f"i{i}", "scores": {"accuracy_ll": float((i + k) % 2)}}
        for i in range(12)}}) for k in range(3)]
    a = Variant("a", "h", jobs)
    assert np.mean([0.1] * 3) > 0.1  # the rounding this test is about
    paths = plots(compare_variants([a]), [a], tmp_path)
    assert [p.name for p in paths] == ["bars.png", "pareto.png"]
