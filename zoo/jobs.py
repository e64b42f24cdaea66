"""One training job: compose -> build -> track -> train stage by stage (``zoo train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zoo import runs
from zoo.build import build_model, check_config, check_targets, check_types, labelled
from zoo.config import GROUP_KINDS, absolute_paths, chosen_options
from zoo.data import preparation
from zoo.data.source import check_data_fit
from zoo.errors import ConfigError, RunError
from zoo.params import parameter_report
from zoo.settings import check_eval, check_job
from zoo.tracking import Run, Tracker, job_name


def build_data(cfg: DictConfig) -> Any:
    """The configured data source (a registered dataset builder's ``DataSource``)."""
    from hydra.utils import instantiate

    if cfg.get("data") is None:
        raise ConfigError("data: no data source chosen (set data=NAME; see `zoo list dataset`)")
    check_targets(cfg.data, "data")
    check_types(cfg.data, "data")
    source = instantiate(cfg.data, _partial_=True)
    return labelled("data", chosen_options(cfg).get("data", "?"), source)()


class TaskMix:
    """A data source whose training mix is restricted to ``tasks`` (config key ``train_tasks``):
    each stage sees its own tasks intersected with them, so one setting holds for every recipe.
    Evaluation reads the unrestricted source."""

    def __init__(self, data: Any, tasks: list[str]) -> None:
        self.data, self.tasks_kept = data, list(tasks)

    def dataset(self, split: str, tasks: list[str] | None = None) -> Any:
        chosen = [t for t in (tasks or self.tasks_kept) if t in self.tasks_kept]
        if not chosen:
            raise ConfigError(f"train_tasks={self.tasks_kept} leaves no task of the stage's mix "
                             f"{tasks}")
        return self.data.dataset(split, chosen)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)


def run_training(cfg: DictConfig, parent: Run | None = None,
                 tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train every configured stage in the run's own folder (zoo/runs.py), then evaluate; returns
    per-stage results, the run id, the run folder and the split hash.

    The configuration is checked and its paths made absolute before any work; with
    ``trainer.resume`` the named run continues in its folder and MLflow run."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, set_seed

    from zoo.training import Trainer

    cfg = absolute_paths(cfg)
    check_job(cfg)
    check_config(cfg)
    resume = None
    if cfg.trainer.resume:
        if parent is not None:
            raise ConfigError("trainer.resume: a sweep job cannot resume a run; resume it with "
                              "`zoo train trainer.resume=RUN_ID ...`")
        resume = runs.resume_folder(cfg)
        runs.check_same_config(resume, cfg)
    state = PartialState()
    set_seed(int(cfg.seed))
    data = build_data(cfg)
    model = build_model(cfg)
    summary = check_data_fit(data, model, str(cfg.eval.get("split") or "test") if eval_enabled(cfg)
                             else None, "training would end in an evaluation with nothing to "
                             "score: add cases, change data.fractions, or set eval.enabled=false")
    if summary and state.is_main_process:
        print(summary, flush=True)
    choices = chosen_options(cfg)
    run = None
    if state.is_main_process:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.root)
        if resume is not None:
            run = tracker.reopen_run(resume.name)
        else:
            tags = {"zoo.split_hash": data.split_hash,
                    **{f"zoo.{k}": v for k, v in choices.items()}, **(tags or {})}
            run = tracker.start_run(job_name(choices) or "train", parent=parent, tags=tags)
    run_id = broadcast_object_list([run.run_id if run is not None else None])[0]
    folder = resume or runs.run_folder(cfg, run_id)
    if run is not None and resume is None:
        runs.create(folder, cfg, run_id)
        run.log_artifact(preparation.write(folder, preparation.preparation_of(data)))
        run.set_tags({"zoo.run_dir": str(folder)})
        run.log_config(cfg)
        run.log_parameter_counts(parameter_report(model))
        if getattr(model, "init_report", None) is not None:  # released weights (recipe.init_from)
            run.log_dict(model.init_report.to_dict(), "init_report.json")
    state.wait_for_everyone()
    try:
        if cfg.get("lm_warmup") is not None:
            from zoo.lm_warmup import warm_up_lm

            warm = warm_up_lm(model, data, cfg.lm_warmup, int(cfg.seed))
            if run is not None:
                run.log_metrics({"lm_warmup/seconds": warm["seconds"], **(
                    {"lm_warmup/loss": warm["loss"]} if warm["loss"] is not None else {})})
                run.set_tags({"zoo.lm_warmup": warm["key"] + (" (cached)" if warm["cached"] else "")})
        mix = TaskMix(data, list(cfg.train_tasks)) if cfg.get("train_tasks") else data
        trainer = Trainer(model, mix, cfg.trainer, seed=int(cfg.seed), run=run, folder=folder)
        results = trainer.fit()
        model, evaluation = trainer.model, None
        if state.is_main_process:
            if trainer.sharded:  # the main process alone evaluates: an unsharded copy of the
                from zoo.checkpoint import load_weights  # trained weights, from the final,

                model = build_model(cfg)  # consolidated checkpoint (docs/scale.md)
                load_weights(model, runs.final_checkpoint(
                    folder, list(cfg.trainer.get("stages") or model.stages)))
            log_cost(run, model, data, cfg, results)
            if eval_enabled(cfg):
                from zoo.evaluation.runner import evaluate

                evaluation = evaluate(model, data, cfg.eval, run=run)
    except BaseException:
        if run is not None:
            run.end("FAILED")
            runs.set_status(folder, run_id, "FAILED")
        raise
    if run is not None:
        run.end("FINISHED")
        runs.set_status(folder, run_id, "FINISHED")
    return {"run_id": run_id, "run_dir": folder, "split_hash": data.split_hash,
            "model": model, "data": data, "stages": results, "eval": evaluation}


def eval_enabled(cfg: DictConfig) -> bool:
    return cfg.get("eval") is not None and bool(cfg.eval.get("enabled", True))


def log_cost(run: Run | None, model: Any, data: Any, cfg: DictConfig, results: list) -> dict:
    """Cost metrics next to quality (docs/design.md section 10): train seconds, peak memory, visual
    tokens and FLOPs per sample (one training forward on the first test sample)."""
    from zoo.evaluation.cost import flops_per_sample, visual_tokens
    from zoo.training import peak_memory_mb

    device = next(model.parameters()).device
    cost: dict[str, float] = {"cost.train_seconds": sum(r.seconds for r in results),
                              "cost.peak_memory_mb": peak_memory_mb(device)}
    tokens = visual_tokens(model)
    if tokens is not None:
        cost["cost.visual_tokens"] = tokens
    eval_cfg = cfg.get("eval")
    if eval_cfg is None or eval_cfg.get("cost", True):
        split = str(eval_cfg.get("split") or "test") if eval_cfg is not None else "test"
        stage_tasks = [t for stage in model.stages.values() for t in stage.tasks]
        for task in (*stage_tasks, "vqa_closed", "caption", *data.tasks()):  # one the model reads
            dataset = data.dataset(split, [task]) if task in data.tasks() else []
            if len(dataset):
                cost["cost.flops_per_sample"] = flops_per_sample(model, dataset[0])
                break
    if run is not None:
        run.log_metrics(cost)
    return cost


def stored_config(tracker: Tracker, run_id: str) -> DictConfig:
    """A run's ``config.yaml`` artifact, with every ``_target_`` checked (zoo.build.check_targets)."""
    import tempfile

    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run_id, "config.yaml", tmp)
        except Exception as err:  # mlflow raises its own exception types
            raise RunError(f"run {run_id!r}: no config.yaml artifact in {tracker.uri} "
                           f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
        try:
            cfg = OmegaConf.load(Path(local))
        except Exception as err:  # yaml and omegaconf parse errors
            raise RunError(f"run {run_id!r}: its config.yaml is unreadable "
                           f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    if not isinstance(cfg, DictConfig):
        raise RunError(f"run {run_id!r}: its config.yaml holds no mapping")
    check_targets(cfg)
    return cfg


def run_evaluation(name: str, overrides: list[str] = (), tracking_uri: str | None = None) -> dict:
    """``zoo eval MODEL [eval.*=...]``: MODEL is a run id, a run folder or a folder written by
    ``zoo export`` (:func:`zoo.trained.locate`). Rebuild it from its stored configuration, load
    its weights after checking their sha256 against the recorded one, evaluate, and log to a new
    child run of the trained run (the train-time records stay as they are; docs/guarantees.md);
    an export's evaluation is a run of its own in the tracking store (``tracking_uri``, default
    as ``zoo train``), tagged with the export's folder and the run it was exported from."""
    from omegaconf import OmegaConf

    from zoo.evaluation.runner import evaluate
    from zoo.trained import locate

    trained = locate(name, tracking_uri)
    cfg = trained.build_config()
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except Exception as err:  # omegaconf's parse and merge errors
            raise ConfigError(f"overrides {list(overrides)}: {str(err).splitlines()[0]}") from err
        check_targets(cfg)
    if cfg.get("eval") is None:
        raise ConfigError(f"{name}: its config has no eval group")
    check_eval(cfg.eval)
    data = build_data(cfg)
    if trained.split_hash and trained.split_hash != data.split_hash:
        raise RunError(f"{name}: trained on split {trained.split_hash[:12]}, the data now has "
                       f"split {data.split_hash[:12]}; refusing to evaluate on a different split")
    model = build_model(cfg)
    check_data_fit(data, model, str(cfg.eval.get("split") or "test"), "nothing to evaluate")
    trained.load(model)
    choices = {f"zoo.{k}": v for k, v in chosen_options(cfg).items()}
    if trained.kind == "run":
        tracker, run_id = trained.tracker, trained.run_id
        # what the comparison reads to name and pair runs: split, variant, component choices
        names = {k: v for k, v in trained.record.items()
                 if k in ("zoo.split_hash", "zoo.variant") or k[len("zoo."):] in GROUP_KINDS}
        child = tracker.start_run(f"eval:{tracker.get_run(run_id).info.run_name or run_id}",
                                  parent=Run(tracker.client, run_id),
                                  tags={**names, "zoo.eval_of": run_id})
    else:
        tracker = Tracker(tracking_uri)
        tags = {**choices, "zoo.split_hash": data.split_hash, "zoo.eval_of": str(trained.folder)}
        if trained.run_id:
            tags["zoo.exported_from"] = trained.run_id
        child = tracker.start_run(f"eval:{trained.folder.name}", tags=tags)
    try:
        child.log_text(OmegaConf.to_yaml(cfg.eval), "eval_config.yaml")
        results = evaluate(model, data, cfg.eval, run=child)
    except BaseException:
        child.end("FAILED")
        raise
    child.end("FINISHED")
    return {"run_id": child.run_id, "evaluated_run": trained.run_id if trained.kind == "run"
            else str(trained.folder), "kind": trained.kind, "eval": results}
