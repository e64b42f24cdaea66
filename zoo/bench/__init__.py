"""Benchmarks (``zoo bench``): cost accounting, scaling, side-by-side and end-to-end timings.

Modules: :mod:`zoo.bench.cost` (params, meta FLOPs, saved activations, latency),
:mod:`zoo.bench.cases` (the benchmarked components), :mod:`zoo.bench.compare` (vit3d vs MONAI ViT,
preparation vs MONAI), :mod:`zoo.bench.e2e` (training-step time), :mod:`zoo.bench.report`
(BENCHMARKS.md and the regression check), :mod:`zoo.bench.run` and :mod:`zoo.bench.cli`.
"""
