"""``zoo bench [--quick] [--out FILE] [--sections A,B] [--check [--strict]] [--sweep [...]]``."""

from __future__ import annotations

import argparse

from zoo.bench import report
from zoo.errors import ConfigError
from zoo.bench.run import SECTIONS, run_bench


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo bench", description="cost and speed benchmarks; writes "
                                "the tables to --out (docs/BENCHMARKS.md)")
    p.add_argument("--quick", action="store_true", help="tiny components only (smoke test)")
    p.add_argument("--out", default="docs/BENCHMARKS.md",
                   help="Markdown file to write, relative to the working directory; the scaling "
                        "plot goes next to it (folders are created)")
    p.add_argument("--check", action="store_true",
                   help="compare with the table recorded in --out instead of overwriting it")
    p.add_argument("--strict", action="store_true", help="with --check: exit 1 on a regression")
    p.add_argument("--threshold", type=float, default=0.3,
                   help="relative slowdown flagged by --check (default 0.3 = 30%%)")
    p.add_argument("--budget-gflop", type=float, default=None,
                   help="time cases up to this fwd+bwd GFLOP (default 50; 2 with --quick)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    p.add_argument("--sweep", nargs="*", default=None, metavar="OVERRIDE",
                   help="also time `zoo sweep` with these overrides (none: the default sweep)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.strict and not args.check:
        raise ConfigError("--strict only applies with --check")
    recorded = report.read_metrics(args.out) if args.check else None
    result = run_bench(out=None if args.check else args.out, quick=args.quick,
                       time_budget_gflop=args.budget_gflop, sweep=args.sweep,
                       sections=tuple(s.strip() for s in args.sections.split(",") if s.strip()))
    if recorded is None:
        return 0
    found = report.regressions(recorded, result["metrics"], threshold=args.threshold)
    print(f"\nregression check against {args.out} (threshold {args.threshold:.0%}): "
          f"{len(found)} finding(s)")
    for finding in found:
        print(finding.line())
    return 1 if found and args.strict else 0
