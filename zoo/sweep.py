"""``zoo sweep``: train and evaluate a grid of variants, then ``zoo compare`` (docs/design.md section 9).

Jobs = the experiment's named variants (``sweep.variants``: a list of ``{name, overrides}``; the default
experiment is ``compare_strategies``) x the cartesian product of Hydra sweep overrides on the
command line (``encoder=a,b connector=x,y``, parsed by Hydra's own override parser). One MLflow
parent run per sweep, one child run per job (named from the chosen options, tagged with the
variant). Launchers: ``launcher=local`` (default: sequential, in process), ``launcher=joblib``
(local processes) and ``launcher=submitit_slurm`` (Slurm); the last two are Hydra launcher
configs (``experiments/conf/hydra/launcher/zoo_<name>.yaml``, extending the plugins' own) whose settings are handed to joblib / submitit.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Sequence

from zoo.config import ConfigError, validate_overrides
from zoo.verbosity import get_logger

log = get_logger(__name__)

DEFAULT_EXPERIMENT = "compare_strategies"
LAUNCHERS = ("local", "joblib", "submitit_slurm")


def parse_overrides(overrides: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(fixed overrides, one list of ``key=value`` alternatives per sweep override)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        from zoo.config import hydra_message

        raise ConfigError(f"sweep overrides: {hydra_message(err)}") from err
    fixed, sweeps = [], []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            sweeps.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            fixed.append(override.input_line)
    return fixed, sweeps


def plan(overrides: Sequence[str]) -> tuple[str, list[tuple[str, list[str]]], dict[str, Any]]:
    """(experiment, [(variant name, overrides)], launcher settings) of a sweep command line."""
    from omegaconf import OmegaConf

    from zoo.config import compose

    launcher = "local"
    rest, launcher_overrides = [], []
    for item in overrides:
        if item.startswith("launcher="):
            launcher = item.split("=", 1)[1]
        elif item.lstrip("+~").startswith("hydra.launcher."):
            launcher_overrides.append(item)
        else:
            rest.append(item)
    if launcher not in LAUNCHERS:
        from zoo.registry import suggest

        raise ConfigError(f"launcher={launcher}: unknown launcher.{suggest(launcher, LAUNCHERS)} "
                          f"Launchers: {', '.join(LAUNCHERS)}")
    validate_overrides(rest, sweep=True)
    fixed, sweeps = parse_overrides(rest)
    if not any(o.split("=", 1)[0].lstrip("+") == "experiment" for o in fixed):
        fixed = [f"experiment={DEFAULT_EXPERIMENT}"] + fixed
    experiment = next(o.split("=", 1)[1] for o in fixed if o.split("=", 1)[0].lstrip("+") == "experiment")
    base = compose(fixed)
    spec = OmegaConf.to_container(base.get("sweep") or {}, resolve=False) or {}
    variants = [(v["name"], list(v.get("overrides") or [])) for v in spec.get("variants") or []]
    only = spec.get("only")
    if only:
        unknown = sorted(set(only) - {name for name, _ in variants})
        if unknown:
            raise ConfigError(f"sweep.only: unknown variant(s) {unknown}; the experiment has "
                              f"{[name for name, _ in variants]}")
        variants = [(name, extra) for name, extra in variants if name in only]
    variants = variants or [("default", [])]
    jobs = []
    for name, extra in variants:
        for combo in itertools.product(*sweeps):
            label = name if not combo else f"{name}:{','.join(combo)}" if name != "default" \
                else ",".join(combo)
            # experiment first, then the variant, then the command line (the user wins)
            jobs.append((label, [fixed[0], *extra, *fixed[1:], *combo]))
    settings = launcher_settings(launcher, launcher_overrides)
    if spec.get("accelerate_config"):  # multi-process Slurm jobs (zoo/launch/slurm.py)
        settings["accelerate_config"] = spec["accelerate_config"]
    return experiment, jobs, settings


def launcher_settings(name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The composed Hydra launcher config ``hydra/launcher=zoo_<name>`` with Hydra's own
    ``hydra.launcher.KEY=VALUE`` overrides (``local``: none)."""
    if name == "local":
        if overrides:
            raise ConfigError(f"{overrides[0]}: the local launcher has no settings; choose "
                              "launcher=joblib or launcher=submitit_slurm")
        return {"launcher": "local"}
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from zoo.config import conf_dir, hydra_message

    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir()), job_name="zoo"):
        try:
            cfg = hydra_compose("config", overrides=[f"hydra/launcher=zoo_{name}", *overrides],
                                return_hydra_config=True)
        except HydraException as err:
            raise ConfigError(f"launcher={name}: {hydra_message(err)}") from err
    return {**OmegaConf.to_container(cfg.hydra.launcher, resolve=True), "launcher": name}


def submitit_parameters(settings: dict[str, Any]) -> dict[str, Any]:
    """Hydra's ``submitit_slurm`` launcher keys as ``submitit.AutoExecutor`` parameters."""
    generic = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
               "nodes", "name"}
    skip = {"launcher", "_target_", "submitit_folder", "max_num_timeout", "accelerate_config"}
    params = {}
    for key, value in settings.items():
        if key in skip or value is None or value == {} or value == []:
            continue
        if key in generic:
            params[key] = value
        elif key == "additional_parameters":
            params["slurm_additional_parameters"] = dict(value)
        else:
            params[f"slurm_{key}"] = value
    return params


def run_job(overrides: list[str], parent_id: str | None, variant: str) -> dict[str, Any]:
    """One sweep job: compose, train, evaluate, log as a child of ``parent_id``."""
    from zoo.config import compose
    from zoo.jobs import run_training
    from zoo.tracking import Run, Tracker

    cfg = compose(overrides)
    parent = None
    if parent_id:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.root)
        parent = Run(tracker.client, parent_id)
    result = run_training(cfg, parent=parent, tags={"zoo.variant": variant})
    return {"run_id": result["run_id"], "split_hash": result["split_hash"], "variant": variant}


def run_sweep(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run every job of the sweep and the comparison; prints progress, the table and paths."""
    from zoo.compare import run_compare
    from zoo.config import compose
    from zoo.tracking import Tracker

    experiment, jobs, launcher = plan(overrides)
    first = compose(jobs[0][1])
    tracker = Tracker(first.tracking.uri, first.tracking.experiment, first.tracking.root)
    parent = tracker.start_run(f"sweep:{experiment}", tags={"zoo.sweep": experiment,
                                                             "zoo.launcher": launcher["launcher"]})
    parent.log_dict({"jobs": [{"variant": v, "overrides": o} for v, o in jobs],
                     "launcher": launcher}, "sweep.json")
    start = time.perf_counter()
    log.info(f"sweep {experiment}: {len(jobs)} jobs, launcher {launcher['launcher']}, "
             f"mlflow {tracker.uri} (parent run {parent.run_id})")
    try:
        if launcher["launcher"] == "local":
            for i, (variant, job) in enumerate(jobs, 1):
                log.info(f"[job {i}/{len(jobs)}] {variant}: {' '.join(job)}")
                run_job(job, parent.run_id, variant)
        elif launcher["launcher"] == "joblib":
            from joblib import Parallel, delayed

            keys = ("n_jobs", "backend", "prefer", "require", "verbose", "timeout",
                    "pre_dispatch", "batch_size", "temp_folder", "max_nbytes", "mmap_mode")
            Parallel(**{k: launcher[k] for k in keys if launcher.get(k) is not None})(
                delayed(run_job)(job, parent.run_id, variant) for variant, job in jobs)
        else:
            import submitit

            from zoo.launch.slurm import sweep_job_function

            executor = submitit.AutoExecutor(folder=launcher.get("submitit_folder") or
                                             "runs/submitit/%j")
            executor.update_parameters(**submitit_parameters(launcher))
            submitted = executor.map_array(sweep_job_function(launcher), [j for _, j in jobs],
                                           [parent.run_id] * len(jobs), [v for v, _ in jobs])
            log.info(f"submitted {len(submitted)} Slurm jobs: {submitted[0].job_id} ...")
            for job in submitted:
                job.result()
        result = run_compare(parent=parent.run_id, tracking_uri=tracker.uri,
                             experiment=first.tracking.experiment)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.log_metrics({"sweep.wall_seconds": time.perf_counter() - start})
    parent.end("FINISHED")
    print(result["markdown"])
    print(f"sweep finished in {time.perf_counter() - start:.0f} s; comparison and plots in "
          f"{result['out_dir']} ({', '.join(p.name for p in result['plots'])}); mlflow store "
          f"{tracker.uri}, parent run {parent.run_id}", flush=True)
    return {"parent_run_id": parent.run_id, **result}
