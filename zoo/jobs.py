"""One training job: compose -> build -> track -> train stage by stage (``zoo train``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from zoo.build import build_model
from zoo.data.source import check_data_fit
from zoo.config import chosen_options
from zoo.params import parameter_report
from zoo.tracking import Run, Tracker, job_name


def build_data(cfg: DictConfig) -> Any:
    """The configured data source (a registered dataset builder's ``DataSource``)."""
    from hydra.utils import instantiate

    from zoo.config import ConfigError

    if cfg.get("data") is None:
        raise ConfigError("data: no data source chosen (set data=NAME; see `zoo list dataset`)")
    return instantiate(cfg.data)


class TaskMix:
    """A data source whose training mix is restricted to ``tasks`` (config key ``train_tasks``):
    each stage sees its own tasks intersected with them, so one setting holds for every recipe.
    Evaluation reads the unrestricted source."""

    def __init__(self, data: Any, tasks: list[str]) -> None:
        self.data, self.tasks_kept = data, list(tasks)

    def dataset(self, split: str, tasks: list[str] | None = None) -> Any:
        chosen = [t for t in (tasks or self.tasks_kept) if t in self.tasks_kept]
        if not chosen:
            raise ValueError(f"train_tasks={self.tasks_kept} leaves no task of the stage's mix "
                             f"{tasks}")
        return self.data.dataset(split, chosen)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)


def run_training(cfg: DictConfig, parent: Run | None = None,
                 tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train every configured stage; returns per-stage results, the run id and the split hash."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from zoo.training import Trainer

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
        tags = {"zoo.split_hash": data.split_hash, **{f"zoo.{k}": v for k, v in choices.items()},
                **(tags or {})}
        run = tracker.start_run(job_name(choices) or "train", parent=parent, tags=tags)
        run.log_config(cfg)
        run.log_parameter_counts(parameter_report(model))
        if getattr(model, "init_report", None) is not None:  # released weights (recipe.init_from)
            run.log_dict(model.init_report.to_dict(), "init_report.json")
    try:
        if cfg.get("lm_warmup") is not None:
            from zoo.lm_warmup import warm_up_lm

            warm = warm_up_lm(model, data, cfg.lm_warmup, int(cfg.seed))
            if run is not None:
                run.log_metrics({"lm_warmup/seconds": warm["seconds"], **(
                    {"lm_warmup/loss": warm["loss"]} if warm["loss"] is not None else {})})
                run.set_tags({"zoo.lm_warmup": warm["key"] + (" (cached)" if warm["cached"] else "")})
        mix = TaskMix(data, list(cfg.train_tasks)) if cfg.get("train_tasks") else data
        trainer = Trainer(model, mix, cfg.trainer, seed=int(cfg.seed), run=run)
        results = trainer.fit()
        evaluation = None
        if state.is_main_process:
            log_cost(run, trainer.model, data, cfg, results)
            if eval_enabled(cfg):
                from zoo.evaluation.runner import evaluate

                evaluation = evaluate(trainer.model, data, cfg.eval, run=run)
    except BaseException:
        if run is not None:
            run.end("FAILED")
        raise
    if run is not None:
        run.end("FINISHED")
    return {"run_id": run.run_id if run else None, "split_hash": data.split_hash,
            "model": trainer.model, "data": data, "stages": results, "eval": evaluation}


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


def final_checkpoint(cfg: DictConfig, model: Any) -> Any:
    """``<trainer.output_dir>/checkpoints/<last stage>-final/model.safetensors`` of a run."""
    from pathlib import Path

    stages = list(cfg.trainer.get("stages") or model.stages)
    path = Path(cfg.trainer.output_dir) / "checkpoints" / f"{stages[-1]}-final" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no final checkpoint of stage {stages[-1]!r} (did the "
                                "run finish? trainer.output_dir must point to its outputs)")
    return path


def run_evaluation(run_id: str, overrides: list[str] = (), tracking_uri: str | None = None) -> dict:
    """``zoo eval RUN_ID [eval.*=...]``: rebuild a run from its ``config.yaml`` artifact, load its
    final checkpoint, evaluate on the test split and log to the same run."""
    import tempfile
    from pathlib import Path

    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from zoo.evaluation.runner import evaluate

    tracker = Tracker(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run_id, "config.yaml", tmp)
        except Exception as err:  # mlflow raises its own exception types
            raise FileNotFoundError(f"run {run_id!r}: no config.yaml artifact in {tracker.uri} "
                                    f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
        cfg = OmegaConf.load(Path(local))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    data = build_data(cfg)
    run_split = tracker.client.get_run(run_id).data.tags.get("zoo.split_hash")
    if run_split and run_split != data.split_hash:
        raise ValueError(f"run {run_id}: trained on split {run_split[:12]}, the data now has split "
                         f"{data.split_hash[:12]}; refusing to evaluate on a different split")
    model = build_model(cfg)
    check_data_fit(data, model, str(cfg.eval.get("split") or "test"), "nothing to evaluate")
    model.load_state_dict(load_file(str(final_checkpoint(cfg, model))), strict=True)
    results = evaluate(model, data, cfg.eval, run=Run(tracker.client, run_id))
    return {"run_id": run_id, "eval": results}
