"""Bootstrap confidence intervals for comparisons on shared test items (docs/design.md section 9).

Per-item scores of two variants on the same items are compared by resampling the items (a paired
bootstrap of the per-item differences), so item difficulty cancels. Percentile intervals from
``scipy.stats.bootstrap``; seeded, so a comparison table is reproducible.
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


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of per-item scores, "
                         f"got shape {array.shape}")
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
