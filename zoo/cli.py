"""The ``zoo`` command line: ``zoo list | params | train | sweep | eval | compare | data | bench``.

Config-taking commands accept Hydra overrides (``encoder=vit3d_base_m3d lm.path=/models/x``).
Configuration errors exit with code 2 and one readable line, never a stack trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from zoo.errors import ConfigError, ZooError
from zoo.registry import REGISTRIES

EXIT_CONFIG = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import InstantiationException

    return (InstantiationException, KeyError, ValueError, FileNotFoundError)


USER_ERRORS = _user_errors()


def _kind(name: str) -> str:
    kind = name[:-1] if name.endswith("s") and name[:-1] in REGISTRIES else name
    if kind not in REGISTRIES:
        from zoo.registry import suggest

        raise ConfigError(f"unknown kind {name!r}.{suggest(kind, list(REGISTRIES))} "
                          f"Kinds: {', '.join(REGISTRIES)}")
    return kind


def cmd_list(args: argparse.Namespace) -> int:
    kinds = [_kind(args.kind)] if args.kind else list(REGISTRIES)
    listing = {kind: REGISTRIES[kind].list() for kind in kinds}
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        for kind, names in listing.items():
            print(f"{kind}: {', '.join(names) if names else '(none)'}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from zoo.build import build_on_meta
    from zoo.config import chosen_options, compose
    from zoo.params import parameter_report

    cfg = compose(args.overrides)
    model = build_on_meta(cfg)
    stage = args.stage or next(iter(model.stages), None)
    if stage is not None:
        if stage not in model.stages:
            raise ConfigError(f"--stage {stage}: the recipe has stages {list(model.stages)}")
        model.apply_stage(stage)
    report = {**parameter_report(model), "stage": stage}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(", ".join(f"{k}={v}" for k, v in chosen_options(cfg).items())
          + f"; trainable in stage {stage!r}")
    print(f"{'component':<12}{'total':>16}{'trainable':>16}")
    for name, counts in report["components"].items():
        print(f"{name:<12}{counts['total']:>16,}{counts['trainable']:>16,}")
    print(f"{'all':<12}{report['total']:>16,}{report['trainable']:>16,}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from zoo.config import compose
    from zoo.jobs import run_training

    result = run_training(compose(args.overrides))  # prints one summary line per stage
    if result["run_id"]:
        print(f"mlflow run {result['run_id']} (split {result['split_hash'][:12]})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from zoo.sweep import run_sweep

    run_sweep(args.overrides)  # prints progress, the comparison table and the paths
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.jobs import run_evaluation

    result = run_evaluation(args.run_id, args.overrides, tracking_uri=args.tracking_uri)
    print(f"logged test metrics and per-item records (eval/*.jsonl) to mlflow run {result['run_id']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from zoo.compare import run_compare

    if bool(args.parent) == bool(args.runs):
        raise ConfigError("compare: give either --parent SWEEP_RUN_ID or --runs ID [ID ...]")
    result = run_compare(parent=args.parent, run_ids=args.runs or (), reference=args.baseline,
                         out_dir=args.out, tracking_uri=args.tracking_uri,
                         experiment=args.experiment, resamples=args.resamples)
    print(result["markdown"])
    print(f"table and plots in {result['out_dir']}; mlflow store {result['tracking_uri']}")
    return 0


def explain(err: BaseException) -> str:
    """One line for a configuration or build error (unwrapping Hydra's instantiation wrapper)."""
    key = getattr(err, "full_key", None)
    inner = err.__cause__ if type(err).__name__ == "InstantiationException" and err.__cause__ else err
    text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    text = " ".join(str(text).split())
    return f"{key}: {text}" if key else text


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. encoder=test_vit3d")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered names per kind")
    p.add_argument("kind", nargs="?", help=f"one of: {', '.join(REGISTRIES)}")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("params", help="parameter counts of a composed model, built on meta")
    _add_overrides(p)
    p.add_argument("--stage", help="count trainable parameters in this stage (default: the first)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train a recipe stage by stage")
    _add_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train and evaluate a grid of variants, then compare "
                                     "(default experiment: compare_strategies)")
    _add_overrides(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("eval", help="evaluate a trained run on the test split (M3D-Bench tasks)")
    p.add_argument("run_id", help="MLflow run id of a `zoo train` / sweep job")
    p.add_argument("overrides", nargs="*", help="config changes, e.g. eval.max_items=32 "
                                                "eval.tasks=[vqa_closed]")
    p.add_argument("--tracking-uri", help="MLflow store (default: as `zoo train`)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="paired comparison of a sweep's runs")
    p.add_argument("--parent", help="the sweep's parent run id (compares its child runs)")
    p.add_argument("--runs", nargs="+", help="run ids to compare instead of a sweep")
    p.add_argument("--baseline", help="reference variant name for paired differences "
                                      "(default: the first run)")
    p.add_argument("--out", help="output folder (default runs/compare/<parent or first run>)")
    p.add_argument("--tracking-uri", help="MLflow store (default: as `zoo train`)")
    p.add_argument("--experiment", default="zoo", help="MLflow experiment name")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(func=cmd_compare)

    for name, helptext, runner in _PASSTHROUGH_COMMANDS:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=runner)
    return parser


def _run_data(args: argparse.Namespace) -> int:
    from zoo.data.cli import main as data_main

    return data_main(args.args)


def _run_bench(args: argparse.Namespace) -> int:
    from zoo.bench.cli import main as bench_main

    return bench_main(args.args)


# commands with their own argparse front end: everything after the name is handed to it
_PASSTHROUGH_COMMANDS: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
    ("data", "synthesise, prepare and check data sets", _run_data),
    ("bench", "cost and speed benchmarks", _run_bench),
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    runners = {name: runner for name, _, runner in _PASSTHROUGH_COMMANDS}
    if argv and argv[0] in runners:
        # hand everything after the name over untouched (argparse's REMAINDER drops a leading
        # option such as `zoo bench --quick`)
        args = argparse.Namespace(command=argv[0], args=argv[1:], func=runners[argv[0]])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZooError as err:
        print(f"zoo {args.command}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as err:
        # bad configuration or input surfaces as these (builder errors come wrapped by Hydra's
        # instantiate); ZOO_DEBUG=1 shows the traceback instead of one line
        if os.environ.get("ZOO_DEBUG") or not isinstance(err, USER_ERRORS):
            raise
        print(f"zoo {args.command}: {explain(err)}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
