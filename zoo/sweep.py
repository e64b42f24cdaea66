"""``zoo sweep``: train and evaluate a grid of variants over several seeds, then ``zoo compare``
(docs/design.md section 9; docs/evaluation.md, "zoo sweep").

Jobs = the experiment's named variants (``sweep.variants``: a list of ``{name, overrides}``, plus
any given on the command line with ``+sweep.add={name: N, overrides: [...]}``) x its seeds
(``sweep.seeds``; a ``seed=`` override on the command line replaces them) x the cartesian
product of Hydra sweep overrides on the command line (``encoder=a,b connector=x,y``, parsed by
Hydra's own override parser). One MLflow parent run per sweep, one child run per job (tagged
with the variant and the seed). Launchers: ``joblib`` (local parallel jobs, each in its own
process with ``sweep.threads_per_job`` torch threads, ``hydra.launcher.n_jobs`` at a time: the
default experiment's), ``local`` (sequential, in this process) and ``submitit_slurm`` (Slurm).
``joblib`` and ``submitit_slurm`` are Hydra launcher configs
(``experiments/conf/hydra/launcher/zoo_<name>.yaml``, extending the plugins' own) whose settings
are handed to joblib / submitit; ``hydra.launcher.KEY=VALUE`` on the command line changes them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from zoo.config import ConfigError, validate_overrides
from zoo.errors import RunError
from zoo.verbosity import get_logger

log = get_logger(__name__)

DEFAULT_EXPERIMENT = "compare_strategies"
LAUNCHERS = ("local", "joblib", "submitit_slurm")
# project modules whose code a job runs but which are not inputs of its numbers
NOT_INPUTS = ("zoo.cli", "zoo.compare", "zoo.results", "zoo.sweep", "zoo.bench", "zoo.__main__")


@dataclass(frozen=True)
class Job:
    variant: str   # the name compare groups runs by (variant[:command-line combination])
    seed: int | None
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.variant if self.seed is None else f"{self.variant} seed {self.seed}"


@dataclass(frozen=True)
class Plan:
    experiment: str
    jobs: list[Job]
    launcher: dict[str, Any]
    threads_per_job: int
    results: str | None


def parse_overrides(overrides: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(fixed overrides, one list of ``key=value`` alternatives per sweep override)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        from zoo.config import hydra_message

        hint = (" (quote each override in a variant's list: +sweep.add={name: N, overrides: "
                "['connector=mlp']})" if any("sweep.add" in o for o in overrides) else "")
        raise ConfigError(f"sweep overrides: {hydra_message(err)}{hint}") from err
    fixed, sweeps = [], []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            sweeps.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            fixed.append(override.input_line)
    return fixed, sweeps


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def named_variants(spec: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``sweep.variants`` plus ``sweep.add`` (one ``{name, overrides}`` or a list of them), each
    checked for a name and a list of overrides, names unique."""
    added = spec.get("add") or []
    added = [added] if isinstance(added, dict) else list(added)
    variants = []
    for where, items in (("sweep.variants", spec.get("variants") or []), ("sweep.add", added)):
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not \
                    isinstance(item.get("overrides", []), (list, tuple)):
                raise ConfigError(f"{where}: each variant is {{name: NAME, overrides: [KEY=VALUE, "
                                  f"...]}}, got {item!r}")
            unknown = sorted(set(item) - {"name", "overrides"})
            if unknown:
                raise ConfigError(f"{where}: variant {item['name']!r} has unknown key(s) "
                                  f"{unknown}; allowed: name, overrides")
            if item["name"] in {name for name, _ in variants}:
                raise ConfigError(f"{where}: variant name {item['name']!r} is taken; the "
                                  f"experiment has {[name for name, _ in variants]}")
            variants.append((item["name"], [str(o) for o in item.get("overrides") or []]))
    return variants


def plan(overrides: Sequence[str]) -> Plan:
    """The jobs and launcher settings of a sweep command line (every job's config composed, so
    a bad variant fails here, before any training)."""
    from omegaconf import OmegaConf

    from zoo.config import compose

    launcher, hydra_launcher, rest = None, [], []
    for item in overrides:
        if item.startswith("launcher="):
            launcher = item.split("=", 1)[1]
        elif item.lstrip("+~").startswith("hydra.launcher."):
            hydra_launcher.append(item)
        else:
            rest.append(item)
    validate_overrides(rest, sweep=True)
    fixed, sweeps = parse_overrides(rest)
    if not any(_key(o) == "experiment" for o in fixed):
        fixed = [f"experiment={DEFAULT_EXPERIMENT}"] + fixed
    experiment = next(o.split("=", 1)[1] for o in fixed if _key(o) == "experiment")
    base = compose(fixed)
    spec = OmegaConf.to_container(base.get("sweep") or {}, resolve=False) or {}
    launcher = launcher or spec.get("launcher") or "local"
    if launcher not in LAUNCHERS:
        from zoo.registry import suggest

        raise ConfigError(f"launcher={launcher}: unknown launcher.{suggest(launcher, LAUNCHERS)} "
                          f"Launchers: {', '.join(LAUNCHERS)}")
    variants = named_variants(spec)
    only = spec.get("only")
    if only:
        unknown = sorted(set(only) - {name for name, _ in variants})
        if unknown:
            raise ConfigError(f"sweep.only: unknown variant(s) {unknown}; the experiment has "
                              f"{[name for name, _ in variants]}")
        variants = [(name, extra) for name, extra in variants if name in only]
    variants = variants or [("default", [])]
    # the seed is the command line's when it sets one, else one job per sweep.seeds entry
    seed_given = any(_key(o) == "seed" for o in fixed) or any(_key(s[0]) == "seed" for s in sweeps)
    seeds = [None] if seed_given else list(spec.get("seeds") or [None])
    if not all(s is None or isinstance(s, int) for s in seeds):
        raise ConfigError(f"sweep.seeds={seeds}: expected a list of integers")
    # planning keys stay out of the jobs' configs: repeats of a variant differ only in the seed
    job_fixed = [o for o in fixed[1:] if not _key(o).startswith("sweep.")]
    jobs = []
    for name, extra in variants:
        for combo in itertools.product(*sweeps):
            # each variant's seeds in a row: parallel workers start on different seeds, so no
            # two of them wait for the same LM warm-up
            for seed in seeds:
                label = name if not combo else f"{name}:{','.join(combo)}" if name != "default" \
                    else ",".join(combo)
                seed_override = [] if seed is None else [f"seed={int(seed)}"]
                # experiment first, then the variant, then the command line (the user wins)
                jobs.append(Job(label, None if seed is None else int(seed),
                                (fixed[0], *extra, *job_fixed, *combo, *seed_override)))
    for job in {j.variant: j for j in jobs}.values():  # one per variant: seeds are ints
        try:
            compose(list(job.overrides))
        except ConfigError as err:
            raise ConfigError(f"sweep variant {job.variant!r}: {err}") from err
    threads = int(spec.get("threads_per_job") or 1)
    if threads < 1:
        raise ConfigError(f"sweep.threads_per_job={threads}: must be >= 1")
    settings = launcher_settings(launcher, hydra_launcher, threads)
    if spec.get("accelerate_config"):  # multi-process Slurm jobs (zoo/launch/slurm.py)
        settings["accelerate_config"] = spec["accelerate_config"]
    return Plan(experiment, jobs, settings, threads, spec.get("results"))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def launcher_settings(name: str, overrides: Sequence[str] = (), threads: int = 1) -> dict[str, Any]:
    """The composed Hydra launcher config ``hydra/launcher=zoo_<name>`` with
    ``hydra.launcher.KEY=VALUE`` overrides (``local``: none). A joblib ``n_jobs`` of -1 (the
    default) becomes the usable cores divided by ``threads`` per job."""
    if name == "local":
        if overrides:
            raise ConfigError(f"{overrides[0]}: the local launcher has no settings; choose "
                              "launcher=joblib or launcher=submitit_slurm")
        return {"launcher": "local"}
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from zoo.config import conf_dir, hydra_message

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir()), job_name="zoo"):
            cfg = hydra_compose("config", return_hydra_config=True, overrides=[
                f"hydra/launcher=zoo_{name}", *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"launcher={name}: {hydra_message(err)}") from err
    settings = {**OmegaConf.to_container(cfg.hydra.launcher, resolve=True), "launcher": name}
    if name == "joblib" and int(settings.get("n_jobs") or -1) < 0:
        settings["n_jobs"] = max(1, (usable_cores() + 1 + int(settings.get("n_jobs") or -1))
                                 // threads)
    return settings


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


def config_files(overrides: Sequence[str]) -> list[Path]:
    """The config files a job's composition reads: the primary config, the recipe defaults, the
    chosen option of every group and the experiment's own defaults chain."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from zoo.config import conf_dir, force_component_keys, recipe_defaults, register_resolvers

    root = conf_dir()
    overrides = force_component_keys(recipe_defaults(list(overrides)) + list(overrides))
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(root), job_name="zoo"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    files = [root / "config.yaml", root / "recipe_defaults.yaml"]
    pending = []
    for group, option in cfg.hydra.runtime.choices.items():
        if option and not group.startswith("hydra/"):
            files.append(root / group / f"{option}.yaml")
            if group == "experiment":
                pending.append(files[-1])
    while pending:  # an experiment that extends another names it in its defaults list
        text = yaml.safe_load(pending.pop().read_text()) or {}
        for entry in text.get("defaults") or []:
            if isinstance(entry, str) and entry != "_self_":
                files.append(root / "experiment" / f"{entry}.yaml")
                pending.append(files[-1])
    return [f for f in files if f.is_file()]


def job_inputs(model: Any, data: Any, configs: Sequence[Path]) -> dict[str, str]:
    """sha256 of the files a job's numbers depend on (docs/evaluation.md, "Results that
    regenerate"): the modules defining the model's parts and the data source, the project's
    non-component modules the job loaded, and the config files composed (``configs``)."""
    from zoo import results
    from zoo.manifest import COMPONENT_MODULES

    loaded = [m for name, m in list(sys.modules.items())
              if name.split(".")[0] in results.PACKAGES and name not in COMPONENT_MODULES
              and not name.startswith(NOT_INPUTS)]
    files = results.module_files([*model.modules(), data, *loaded])
    return results.input_digests([*files, *configs])


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_job(overrides: Sequence[str], parent_id: str | None, variant: str,
            seed: int | None = None, threads: int | None = None,
            cpu_start: float | None = None) -> dict[str, Any]:
    """One sweep job: compose, train, evaluate, log as a child of ``parent_id`` with its inputs
    and ``cost.job_cpu_seconds`` (CPU time since ``cpu_start``, default: the call; a measure of
    the job's work that other load on the machine barely changes)."""
    from zoo.config import compose
    from zoo.jobs import run_training
    from zoo.tracking import Run, Tracker

    cpu_start = cpu_seconds() if cpu_start is None else cpu_start
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    cfg = compose(list(overrides))
    configs = config_files(overrides)  # before training: a failure here costs no work
    parent = None
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.root)
    if parent_id:
        parent = Run(tracker.client, parent_id)
    tags = {"zoo.variant": variant, **({"zoo.seed": str(seed)} if seed is not None else {})}
    result = run_training(cfg, parent=parent, tags=tags)
    inputs = job_inputs(result["model"], result["data"], configs)
    cpu = cpu_seconds() - cpu_start
    if result["run_id"]:
        run = Run(tracker.client, result["run_id"])
        run.log_dict(inputs, "inputs.json")
        run.log_metrics({"cost.job_cpu_seconds": cpu})
    return {"run_id": result["run_id"], "split_hash": result["split_hash"], "variant": variant,
            "cpu_seconds": cpu}


def job_main(argv: Sequence[str]) -> int:
    """``python -m zoo.sweep SPEC.json``: one job in its own process (the joblib launcher's);
    writes ``{run_id, split_hash, variant}`` to the spec's ``result`` path."""
    spec = json.loads(Path(argv[0]).read_text())
    out = run_job(spec["overrides"], spec["parent"], spec["variant"], spec.get("seed"),
                  spec.get("threads"), cpu_start=0.0)  # the whole process: it runs this job only
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def run_in_process(job: Job, index: int, parent_id: str, folder: Path, threads: int) -> dict:
    """Run ``job`` as ``python -m zoo.sweep`` with ``threads`` threads, its output in a log file;
    returns ``{job, seconds, log, run_id | error}``."""
    stem = f"{index:02d}-{job.variant.replace('/', '_').replace(':', '_')}" + (
        f"-seed{job.seed}" if job.seed is not None else "")
    spec, result, log_file = (folder / f"{stem}.json", folder / f"{stem}.result.json",
                              folder / f"{stem}.log")
    spec.write_text(json.dumps({"overrides": list(job.overrides), "parent": parent_id,
                                "variant": job.variant, "seed": job.seed, "threads": threads,
                                "result": str(result)}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",  # the log follows the job as it runs
           **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                        "OPENBLAS_NUM_THREADS")}}
    start = time.perf_counter()
    with open(log_file, "w") as stream:
        code = subprocess.run([sys.executable, "-m", "zoo.sweep", str(spec)], stdout=stream,
                              stderr=subprocess.STDOUT, env=env, check=False).returncode
    seconds = time.perf_counter() - start
    if code == 0 and result.is_file():
        out = {**json.loads(result.read_text()), "seconds": seconds, "log": str(log_file)}
        log.info(f"  done in {seconds:.0f} s: {job.label} (run {out['run_id']})")
        return out
    tail = [line for line in log_file.read_text(errors="replace").splitlines()
            if line.strip()][-1:]
    log.warning(f"  FAILED after {seconds:.0f} s: {job.label} (exit {code}; log {log_file})")
    return {"error": f"{job.label}: exit {code}: {tail[0] if tail else ''} (log {log_file})",
            "seconds": seconds, "log": str(log_file)}


def prepare_shared(jobs: Sequence[Job]) -> None:
    """Build what parallel jobs share before they start: the data (generated once, cached)."""
    from zoo.config import compose
    from zoo.jobs import build_data

    seen = set()
    for job in jobs:
        cfg = compose(list(job.overrides))
        key = json.dumps(cfg.get("data") and dict(cfg.data), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            build_data(cfg)


def run_sweep(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run every job of the sweep and the comparison; prints progress, the table and paths."""
    from zoo.compare import run_compare, write_results_file
    from zoo.config import compose
    from zoo.results import machine
    from zoo.tracking import Tracker

    start = time.perf_counter()
    sweep = plan(overrides)
    jobs, launcher = sweep.jobs, sweep.launcher
    first = compose(list(jobs[0].overrides))
    tracker = Tracker(first.tracking.uri, first.tracking.experiment, first.tracking.root)
    command = " ".join(["zoo sweep", *overrides])
    parent = tracker.start_run(f"sweep:{sweep.experiment}", tags={
        "zoo.sweep": sweep.experiment, "zoo.launcher": launcher["launcher"],
        "zoo.command": command, "zoo.machine": json.dumps(machine())})
    parent.log_dict({"jobs": [{"variant": j.variant, "seed": j.seed, "overrides": list(j.overrides)}
                              for j in jobs], "launcher": launcher,
                     "threads_per_job": sweep.threads_per_job}, "sweep.json")
    parallel = launcher.get("n_jobs", 1) if launcher["launcher"] == "joblib" else 1
    log.info(f"sweep {sweep.experiment}: {len(jobs)} jobs, launcher {launcher['launcher']}"
          + (f" ({parallel} at a time, {sweep.threads_per_job} thread(s) each)"
             if launcher["launcher"] == "joblib" else "")
          + f", mlflow {tracker.uri} (parent run {parent.run_id})")
    failures: list[str] = []
    outcomes: list[dict[str, Any]] = []
    try:
        if launcher["launcher"] == "local":
            for i, job in enumerate(jobs, 1):
                log.info(f"[job {i}/{len(jobs)}] {job.label}: {' '.join(job.overrides)}")
                outcomes.append(run_job(job.overrides, parent.run_id, job.variant, job.seed))
        elif launcher["launcher"] == "joblib":
            from joblib import Parallel, delayed

            folder = Path(first.tracking.root) / "sweeps" / parent.run_id
            folder.mkdir(parents=True, exist_ok=True)
            prepare_shared(jobs)
            log.info(f"job logs in {folder}")
            keys = ("n_jobs", "backend", "prefer", "require", "verbose", "timeout",
                    "pre_dispatch", "batch_size", "temp_folder", "max_nbytes", "mmap_mode")
            outcomes = Parallel(**{k: launcher[k] for k in keys if launcher.get(k) is not None})(
                delayed(run_in_process)(job, i, parent.run_id, folder, sweep.threads_per_job)
                for i, job in enumerate(jobs, 1))
            failures = [o["error"] for o in outcomes if "error" in o]
        else:
            import submitit

            from zoo.launch.slurm import sweep_job_function

            executor = submitit.AutoExecutor(folder=launcher.get("submitit_folder") or
                                             "runs/submitit/%j")
            executor.update_parameters(**submitit_parameters(launcher))
            submitted = executor.map_array(
                sweep_job_function(launcher), [list(j.overrides) for j in jobs],
                [parent.run_id] * len(jobs), [j.variant for j in jobs], [j.seed for j in jobs])
            log.info(f"submitted {len(submitted)} Slurm jobs: {submitted[0].job_id} ...")
            for job in submitted:
                job.result()
        result = run_compare(parent=parent.run_id, tracking_uri=tracker.uri,
                             experiment=first.tracking.experiment)
    except BaseException:
        parent.end("FAILED")
        raise
    wall = time.perf_counter() - start
    cpu = sum(o.get("cpu_seconds", 0.0) for o in outcomes)
    parent.log_metrics({"sweep.wall_seconds": wall, **({"sweep.job_cpu_seconds": cpu} if cpu
                                                        else {})})
    print(result["markdown"])
    if failures:
        parent.end("FAILED")
        raise RunError(f"sweep: {len(failures)} of {len(jobs)} jobs failed (the comparison above "
                       f"leaves them out): " + "; ".join(failures))
    if sweep.results:
        written = write_results_file(sweep.results, tracker.client, parent.run_id,
                                     result["run_ids"], result["markdown"], result["plots"], wall)
        print(f"wrote {written}; `zoo results sync` updates the documents quoting it", flush=True)
    parent.end("FINISHED")
    if cpu:
        print(f"the jobs used {cpu:.0f} CPU seconds ({cpu / parallel:.0f} s for each of "
              f"{parallel} parallel workers)", flush=True)
    print(f"sweep finished in {wall:.0f} s; comparison and plots in {result['out_dir']} "
          f"({', '.join(p.name for p in result['plots'])}); mlflow store {tracker.uri}, parent "
          f"run {parent.run_id}", flush=True)
    return {"parent_run_id": parent.run_id, **result}


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:]))
