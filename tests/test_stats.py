import numpy as np
import pytest

from zoo.stats import bootstrap_ci, paired_bootstrap, seed_item_interval


def test_identical_variants_interval_contains_zero():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    interval = paired_bootstrap(scores, scores.copy())
    assert interval.low <= 0 <= interval.high and not interval.excludes_zero()


def test_noisy_equal_variants_contain_zero():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 300).astype(float)
    other = np.where(rng.random(300) < 0.05, 1 - base, base)  # 5 % symmetric flips
    assert not paired_bootstrap(other, base).excludes_zero()


def test_clearly_better_variant_excludes_zero():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, 300).astype(float)
    better = np.maximum(base, (rng.random(300) < 0.4).astype(float))
    interval = paired_bootstrap(better, base)
    assert interval.excludes_zero() and interval.low > 0
    assert interval.mean == pytest.approx(better.mean() - base.mean())


def test_ci_brackets_mean_and_is_seeded():
    values = np.linspace(0, 1, 50)
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert a == b and a.low < a.mean < a.high


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_seed_item_interval_of_one_run_is_the_item_interval_and_says_so():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, (1, 200)).astype(float), rng.integers(0, 2, (1, 200)).astype(float)
    d = seed_item_interval(a, b)
    assert not d.training_variance and d.seeds == (1, 1) and d.df == 199
    boot = paired_bootstrap(a[0], b[0])
    assert d.mean == pytest.approx(boot.mean)
    assert d.high - d.low == pytest.approx(boot.high - boot.low, rel=0.1)


def test_seed_item_interval_counts_run_to_run_variance():
    rng = np.random.default_rng(4)
    items = rng.random(100)
    # three runs whose accuracy moves with the seed by +-0.1 on every item
    a = np.clip(items[None] + np.array([[-0.1], [0.0], [0.1]]), 0, 1)
    b = np.repeat(items[None], 3, axis=0)
    d = seed_item_interval(a, b)
    assert d.training_variance and d.seeds == (3, 3) and d.df < 10
    assert not d.excludes_zero()
    items_only = paired_bootstrap(a.mean(0), b.mean(0))
    assert d.high - d.low > 5 * (items_only.high - items_only.low)


def test_a_fixed_reference_has_no_training_variance():
    runs = np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    d = seed_item_interval(runs, np.zeros((1, 4)), reference_fixed=True)
    assert d.training_variance and d.seeds == (2, 0) and d.mean == 0.75


def test_seed_item_interval_of_few_items_stays_finite():
    """Three items, three runs a side: every item's difference of run means is 1/3 (item variance
    0 up to rounding) while the runs disagree item by item. Satterthwaite's formula over all
    terms, with the negative residual ones, gave df 4e-64 and an interval of +-3e105; the floor's
    own terms give df 2 and the single value the data show."""
    a = [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
    b = [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    got = seed_item_interval(a, b)
    assert got.df == 2.0 and abs(got.low - 1 / 3) < 1e-9 and abs(got.high - 1 / 3) < 1e-9
    rng = np.random.default_rng(0)
    for _ in range(500):
        got = seed_item_interval(rng.integers(0, 2, (3, 3)), rng.integers(0, 2, (3, 3)))
        assert got.df >= 2.0 and got.high - got.low < 10, got


def test_seed_item_interval_refuses_mismatched_items():
    with pytest.raises(ValueError, match="same items"):
        seed_item_interval(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="runs x items"):
        seed_item_interval([1.0, 0.0])


def test_coverage_simulation_seeds_and_items_keep_nominal_coverage_items_only_does_not():
    """Two identical variants, three runs each, strong run-to-run variance (the simulation of
    docs/evaluation.md, "Seeds and items", small): the interval over seeds and items contains
    the true difference (0) about 95 % of the time, the items-only bootstrap far less often."""
    from experiments.coverage_simulation import Scenario, coverage

    result = coverage(Scenario(runs=3, run_sd=0.5, items=60), reps=200, resamples=500)
    assert 0.92 <= result["seeds and items"][0] <= 0.99
    assert result["items only"][0] < 0.8


def test_coverage_simulation_without_run_variance_stays_near_nominal():
    from experiments.coverage_simulation import Scenario, coverage

    result = coverage(Scenario(runs=3, run_sd=0.0, items=60), reps=200, resamples=500,
                      methods=("seeds and items",))
    assert result["seeds and items"][0] >= 0.93
