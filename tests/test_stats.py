import numpy as np
import pytest

from zoo.stats import bootstrap_ci, paired_bootstrap


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
