"""zoo compare: split-hash refusal, paired intervals on shared items, Pareto front, tables."""

from types import SimpleNamespace

import pytest

from zoo.compare import (Variant, baseline_rows, compare_variants, csv_text, load_variants, markdown,
                         merge_repeats, pareto_front, repeat_groups, short_names)


def fake_run(run_id, split, variant=None, params=None, **tags):
    all_tags = {"zoo.split_hash": split, **{f"zoo.{k}": v for k, v in tags.items()}}
    if variant:
        all_tags["zoo.variant"] = variant
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, run_name=run_id, start_time=0),
                           data=SimpleNamespace(tags=all_tags, metrics={"params.total": 10.0},
                                                params=params or {"run": run_id}))


def test_runs_with_different_split_hashes_are_refused():
    runs = [fake_run("a" * 8, "hash1"), fake_run("b" * 8, "hash2")]
    with pytest.raises(ValueError, match="different splits"):
        load_variants(client=None, runs=runs)


def test_short_names_prefer_variant_tags_then_differing_components():
    runs = [fake_run("r1", "h", encoder="vit", connector="pool"),
            fake_run("r2", "h", encoder="vit", connector="mlp")]
    assert short_names(runs) == ["connector=pool", "connector=mlp"]
    runs = [fake_run("r1", "h", "one"), fake_run("r2", "h", "two")]
    assert short_names(runs) == ["one", "two"]


def records(values, qtypes=None):
    return {f"i{k}": {"id": f"i{k}", "question_type": (qtypes or [None] * len(values))[k],
                      "scores": {"accuracy": v}} for k, v in enumerate(values)}


def test_identical_variants_differ_by_an_interval_containing_zero():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0] * 5
    a = Variant("a", "ra", "h", {}, {"vqa_closed": records(values)})
    b = Variant("b", "rb", "h", {}, {"vqa_closed": records(values)})
    rows = compare_variants([a, b], resamples=500)
    diff = next(r for r in rows if r.variant == "b").diff
    assert diff.low <= 0 <= diff.high and not diff.excludes_zero()


def test_a_clearly_better_variant_excludes_zero_and_per_type_rows_exist():
    qtypes = ["plane", "location"] * 20
    a = Variant("a", "ra", "h", {}, {"vqa_closed": records([0.0] * 40, qtypes)})
    b = Variant("b", "rb", "h", {}, {"vqa_closed": records([1.0, 1.0, 1.0, 0.0] * 10, qtypes)})
    base = Variant("[baseline] majority", "", "h", {}, {"vqa_closed": records([0.5] * 40, qtypes)},
                   baseline=True)
    rows = compare_variants([a, b, base], resamples=500)
    overall = next(r for r in rows if r.variant == "b" and r.metric == "accuracy")
    assert overall.diff.excludes_zero() and overall.diff.mean == pytest.approx(0.75)
    location = next(r for r in rows if r.variant == "b" and r.metric == "accuracy/location")
    assert location.n == 20 and location.value.mean == pytest.approx(0.5)
    table = markdown(rows, [a, b, base], "a")
    assert "accuracy/location" in table and "| [baseline] majority |" in table
    assert " *" in table
    assert csv_text(rows, [a, b, base]).splitlines()[0].startswith("variant,task,metric,n,mean")


def test_each_variant_is_compared_with_the_baseline_on_its_headline_metrics():
    a = Variant("a", "ra", "h", {}, {"vqa_closed": records([0.0, 1.0] * 20)})
    b = Variant("b", "rb", "h", {}, {"vqa_closed": records([1.0] * 40)})
    base = Variant("[baseline] majority", "", "h", {}, {"vqa_closed": records([0.0, 1.0] * 20)},
                   baseline=True)
    against = baseline_rows([a, b, base], resamples=500)
    assert [(r.variant, r.metric) for r in against] == [("a", "accuracy"), ("b", "accuracy")]
    diff = {r.variant: r.diff for r in against}
    assert diff["a"].mean == 0 and not diff["a"].excludes_zero()  # identical to the baseline
    assert diff["b"].mean == pytest.approx(0.5) and diff["b"].excludes_zero()
    table = markdown(compare_variants([a, b, base], resamples=500), [a, b, base], "a", against)
    section = table.split("each variant against the baseline")[1]
    assert "| b | 1.000 [1.000, 1.000] Δ +0.500" in section and section.count(" *") == 1


def test_runs_that_differ_only_in_seed_are_one_variant_scored_by_the_mean_over_seeds():
    def params(seed, connector="pool"):
        return {"seed": seed, "trainer.output_dir": f"out/{seed}", "connector": connector}

    runs = [fake_run("r1", "h", "pool", params("0")), fake_run("r2", "h", "mlp", params("0", "mlp")),
            fake_run("r3", "h", "pool", params("1"))]
    assert [[r.info.run_id for r in g] for g in repeat_groups(runs)] == [["r1", "r3"], ["r2"]]
    seed0 = Variant("pool", "r1", "h", {"cost.train_seconds": 10.0},
                    {"vqa_closed": records([1.0, 0.0, 1.0]), "caption": records([0.5])})
    seed1 = Variant("pool", "r3", "h", {"cost.train_seconds": 20.0},
                    {"vqa_closed": records([0.0, 0.0])})
    merged = merge_repeats([seed0, seed1])
    assert merged.repeats == 2 and merged.run_id == "r1,r3" and list(merged.records) == ["vqa_closed"]
    scores = {i: r["scores"]["accuracy"] for i, r in merged.records["vqa_closed"].items()}
    assert scores == {"i0": 0.5, "i1": 0.0}  # items both seeds have, mean over the seeds
    assert merged.costs == {"cost.train_seconds": 15.0}
    assert "| pool | 2 |" in markdown(compare_variants([merged], resamples=100), [merged], "pool")


def test_unknown_reference_variant_is_named():
    a = Variant("a", "ra", "h", {}, {"vqa_closed": records([1.0, 0.0])})
    with pytest.raises(ValueError, match="no such variant"):
        compare_variants([a], reference="zzz")


def test_pareto_front_keeps_cheaper_or_better_points():
    points = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.7), (0.5, 0.2), (4.0, 0.7)]
    assert pareto_front(points) == [3, 0, 2]
