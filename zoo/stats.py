"""Confidence intervals for comparisons on shared test items (docs/design.md section 9).

Two kinds, for two kinds of evidence:

- :func:`seed_item_interval`: what ``zoo compare`` uses. A variant is trained several times
  (seeds) and every run is scored on the same test items, so a score varies with the training run
  *and* with the test items. The interval accounts for both: a crossed random-effects model (runs x
  items) whose variance components are estimated from the runs' score matrix by the method of
  moments, with a Student-t quantile at Satterthwaite's degrees of freedom. With one run per
  variant the training variance cannot be estimated; the interval then covers item sampling only
  and says so (``training_variance=False``). Why this method and not a two-stage (seeds, then
  items) bootstrap: the coverage simulation in docs/evaluation.md ("Seeds and items").
- :func:`bootstrap_ci` / :func:`paired_bootstrap`: percentile bootstrap over items of one set of
  per-item scores (``scipy.stats.bootstrap``; seeded, so a table is reproducible). Right when
  the items are the only source of variation (a fixed model, a diagnostic); with trained models it
  ignores run-to-run variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class SeedItemInterval(Interval):
    """An :class:`Interval` over training runs and test items. ``seeds``: runs on each side
    (0 for a fixed side such as a baseline computed from the train split); ``df``: the t
    quantile's degrees of freedom; ``training_variance``: whether run-to-run variance entered (False
    when a trained side has a single run)."""

    seeds: tuple[int, ...] = ()
    df: float = float("inf")
    training_variance: bool = False


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of per-item scores, "
                         f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: per-item scores contain NaN or inf")
    return array


def _as_matrix(values: Sequence[Sequence[float]], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name}: expected runs x items scores (a non-empty 2-D array), got "
                         f"shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: per-item scores contain NaN or inf")
    return array


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval."""
    from scipy.stats import bootstrap

    array = _as_array(values, "values")
    if array.size == 1 or np.all(array == array[0]):
        return Interval(float(array.mean()), float(array.mean()), float(array.mean()))
    result = bootstrap((array,), np.mean, confidence_level=confidence, n_resamples=resamples,
                       method="percentile", random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(float(array.mean()), float(ci.low), float(ci.high))


def paired_bootstrap(variant: Sequence[float], baseline: Sequence[float],
                     confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean difference ``variant - baseline`` over the same items, with its paired interval."""
    a, b = _as_array(variant, "variant"), _as_array(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs scores on the same items: {a.size} vs {b.size}")
    return bootstrap_ci(a - b, confidence, resamples, seed)


def _run_terms(scores: np.ndarray) -> list[tuple[float, float]]:
    """Variance terms (value, degrees of freedom) one side's runs add to the variance of its mean
    over runs and items: the spread of the run means over runs (variance of the run effect plus
    the run-x-item residual / items), minus the residual / (runs x items), which the item term
    already counts once (two-way ANOVA without replication, the residual mean square)."""
    runs, items = scores.shape
    terms = [(float(scores.mean(1).var(ddof=1)) / runs, runs - 1.0)]
    if items > 1:
        residual = (scores - scores.mean(1, keepdims=True) - scores.mean(0, keepdims=True)
                    + scores.mean())
        mean_square = float((residual ** 2).sum()) / ((runs - 1) * (items - 1))
        terms.append((-mean_square / (runs * items), (runs - 1.0) * (items - 1.0)))
    return terms


def seed_item_interval(runs: Sequence[Sequence[float]],
                       reference: Sequence[Sequence[float]] | None = None,
                       confidence: float = 0.95, runs_fixed: bool = False,
                       reference_fixed: bool = False) -> SeedItemInterval:
    """Mean score of a variant's training runs, or its difference to ``reference``, with an
    interval over training runs and test items.

    ``runs``: S x N per-item scores, one row per training run (seed), the same N items in every
    row; ``reference``: S' x N on the same items (its own runs, seeds need not match). Model:
    ``score[s, i] = mean + item_i + run_s + residual_si`` per side, items shared (paired) between
    the sides, runs independent. The estimate is the mean over runs and items (of the
    difference); its variance is the sum of

    - the variance over items of the per-item (difference of) run means, / N;
    - per side with at least two runs: the variance over runs of the run means, / S, minus the
      residual mean square / (S N) (counted in the item term already);

    floored at the larger of the item part and the run parts (each alone underestimates), with a
    t quantile at Satterthwaite's degrees of freedom of the terms that make up the variance used
    (the floor's own when it applies), never below the smallest of their degrees of freedom: the
    negative residual term can drive Satterthwaite's formula towards 0 (seen on 3-item subgroups:
    df 4e-64, an interval of +-3e105), and with only positive terms it cannot go below that
    minimum anyway. A ``*_fixed`` side (a baseline computed from
    the train split) has no training variance. A trained side with one run cannot show its
    training variance: the result says so (``training_variance=False``).
    """
    from scipy.stats import t as student_t

    a = _as_matrix(runs, "runs")
    sides = [(a, runs_fixed)]
    if reference is not None:
        b = _as_matrix(reference, "reference")
        if b.shape[1] != a.shape[1]:
            raise ValueError(f"seed_item_interval needs scores on the same items: {a.shape[1]} "
                             f"vs {b.shape[1]}")
        sides.append((b, reference_fixed))
    per_item = a.mean(0) - (sides[1][0].mean(0) if reference is not None else 0.0)
    items = per_item.size
    estimate = float(per_item.mean())
    item_terms = [(float(per_item.var(ddof=1)) / items, items - 1.0)] if items > 1 else []
    run_terms, training = [], True
    for scores, fixed in sides:
        if fixed:
            continue
        if scores.shape[0] < 2:
            training = False
            continue
        run_terms += _run_terms(scores)
    seeds = tuple(0 if fixed else scores.shape[0] for scores, fixed in sides)
    if items < 2:  # one item: its spread over items cannot be estimated
        return SeedItemInterval(estimate, float("nan"), float("nan"), seeds, float("nan"), training)
    # the variance and the terms it is made of: all terms, or the floor that is larger
    variance, terms = max((sum(v for v, _ in ts), ts) for ts in
                          (item_terms + run_terms, item_terms, [t for t in run_terms if t[0] > 0]))
    if variance <= 0:  # every run and item agree
        return SeedItemInterval(estimate, estimate, estimate, seeds, float("inf"), training)
    df = max(variance ** 2 / sum(v ** 2 / d for v, d in terms if v != 0),
             min(d for v, d in terms if v > 0))
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * variance ** 0.5
    return SeedItemInterval(estimate, estimate - half, estimate + half, seeds, float(df), training)
