"""Coverage of ``zoo compare``'s intervals when two variants are identical (docs/evaluation.md,
"Seeds and items").

    python experiments/coverage_simulation.py [--reps N] [--out docs/results/coverage.md]

Simulates what a sweep produces: two variants, each trained ``runs`` times (seeds), every run
scored right/wrong on the same test items. The variants are identical in distribution, so the true
difference is zero and a 95 % interval of the difference should contain zero in 95 % of
simulated sweeps. A run's per-item probability of being right is ``sigmoid(item + run +
residual)``: item difficulty (shared by both variants and all runs), a run effect (what a seed
changes for the whole test set: ``run_sd``) and a run-x-item residual (what a seed changes per
item). Three intervals are compared:

- **items only**: the paired bootstrap over items of the per-item means over runs (what ``zoo
  compare`` did before: seeds averaged per item, items resampled);
- **two-stage bootstrap**: runs resampled with replacement per variant, then the shared items
  (the hierarchical bootstrap for a crossed runs x items design), percentile interval;
- **seeds and items** (:func:`zoo.stats.seed_item_interval`, what ``zoo compare`` uses): variance
  components by the method of moments, t quantile at Satterthwaite's degrees of freedom.

Writes the table to ``--out`` (a results file, docs/evaluation.md quotes it) and prints it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from zoo.stats import paired_bootstrap, seed_item_interval

ITEMS = 205          # closed-VQA test items of the default sweep
ITEM_SD, ITEM_MEAN = 1.5, -0.4   # item difficulty (logit): mean accuracy about 0.42
RESIDUAL_SD = 0.5    # run x item (logit)


@dataclass(frozen=True)
class Scenario:
    runs: int
    run_sd: float
    items: int = ITEMS
    residual_sd: float = RESIDUAL_SD


def simulate(rng: np.random.Generator, scenario: Scenario, item_logits: np.ndarray) -> np.ndarray:
    """Right/wrong scores (runs x items) of one variant's runs on the given items."""
    runs = rng.normal(0.0, scenario.run_sd, (scenario.runs, 1))
    residual = rng.normal(0.0, scenario.residual_sd, (scenario.runs, scenario.items))
    p = 1.0 / (1.0 + np.exp(-(item_logits[None] + runs + residual)))
    return (rng.random(p.shape) < p).astype(float)


def items_only(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
               resamples: int) -> tuple[float, float]:
    d = paired_bootstrap(a.mean(0), b.mean(0), resamples=resamples,
                         seed=int(rng.integers(2**31)))
    return d.low, d.high


def two_stage_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                        resamples: int) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b) over resampled runs (per variant) and shared
    items."""
    items = a.shape[1]
    weights = rng.multinomial(items, np.full(items, 1 / items), resamples).T / items  # items x R
    diff = 0.0
    for scores, sign in ((a, 1.0), (b, -1.0)):
        runs = scores.shape[0]
        picks = rng.multinomial(runs, np.full(runs, 1 / runs), resamples).T / runs  # runs x R
        diff = diff + sign * ((scores @ weights) * picks).sum(0)
    low, high = np.quantile(diff, [0.025, 0.975])
    return float(low), float(high)


def seeds_and_items(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                    resamples: int) -> tuple[float, float]:
    d = seed_item_interval(a, b)
    return d.low, d.high


METHODS: dict[str, Callable[..., tuple[float, float]]] = {
    "items only": items_only, "two-stage bootstrap": two_stage_bootstrap,
    "seeds and items": seeds_and_items}


def coverage(scenario: Scenario, reps: int, seed: int = 0, resamples: int = 1000,
             methods: Sequence[str] = tuple(METHODS)) -> dict[str, tuple[float, float]]:
    """``{method: (share of simulated sweeps whose interval contains 0, mean width)}``."""
    rng = np.random.default_rng(seed)
    hits = {m: 0 for m in methods}
    widths = {m: 0.0 for m in methods}
    for _ in range(reps):
        item_logits = rng.normal(ITEM_MEAN, ITEM_SD, scenario.items)
        a, b = simulate(rng, scenario, item_logits), simulate(rng, scenario, item_logits)
        for name in methods:
            low, high = METHODS[name](a, b, rng, resamples)
            hits[name] += low <= 0.0 <= high
            widths[name] += high - low
    return {m: (hits[m] / reps, widths[m] / reps) for m in methods}


def run_sd_accuracy(run_sd: float, draws: int = 20000) -> float:
    """Standard deviation over runs of a run's expected accuracy for a given ``run_sd`` (logit),
    so the scenarios read in accuracy units."""
    rng = np.random.default_rng(1)
    items = rng.normal(ITEM_MEAN, ITEM_SD, 2000)
    runs = rng.normal(0.0, run_sd, draws // 100)
    residual = rng.normal(0.0, RESIDUAL_SD, (runs.size, items.size))
    acc = (1.0 / (1.0 + np.exp(-(items[None] + runs[:, None] + residual)))).mean(1)
    return float(acc.std())


SCENARIOS = [Scenario(runs, sd) for runs in (1, 2, 3, 5) for sd in (0.0, 0.1, 0.25, 0.5)]


def table(reps: int, seed: int = 0) -> str:
    methods = list(METHODS)
    lines = ["| runs per variant | run effect sd (logit) | run-to-run sd of accuracy | "
             + " | ".join(f"{m}: coverage (width)" for m in methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    for scenario in SCENARIOS:
        result = coverage(scenario, reps, seed)
        cells = [f"{result[m][0]:.3f} ({result[m][1]:.3f})" for m in methods]
        lines.append(f"| {scenario.runs} | {scenario.run_sd:g} | "
                     f"{run_sd_accuracy(scenario.run_sd):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000, help="simulated sweeps per scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/coverage.md",
                        help="results file to write ('' = print only)")
    args = parser.parse_args(argv)
    from zoo import results

    start = time.perf_counter()
    text = table(args.reps, args.seed)
    wall = time.perf_counter() - start
    print(text)
    if args.out:
        intro = (f"Two identical variants, {ITEMS} right/wrong test items shared by every run, "
                 f"{args.reps} simulated sweeps per row; item difficulty N({ITEM_MEAN}, "
                 f"{ITEM_SD}) and run x item residual sd {RESIDUAL_SD} on the logit scale. "
                 "Coverage: the share of simulated sweeps whose 95 % interval of the difference "
                 "contains the true difference, 0 (nominal 0.95); width: the interval's mean "
                 "width in accuracy.")
        command = "python experiments/coverage_simulation.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        inputs = results.input_digests([__file__, results.project_root() / "zoo" / "stats.py"])
        results.write(args.out, "Coverage of comparison intervals (simulation)", command,
                      intro + "\n\n" + results.block("coverage", text), inputs, wall_seconds=wall)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
