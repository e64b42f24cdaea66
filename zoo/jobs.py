"""One training job: compose -> build -> track -> train stage by stage (``zoo train``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from zoo.build import build_model
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


def run_training(cfg: DictConfig, parent: Run | None = None) -> dict[str, Any]:
    """Train every configured stage; returns per-stage results, the run id and the split hash."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from zoo.training import Trainer

    state = PartialState()
    set_seed(int(cfg.seed))
    data = build_data(cfg)
    model = build_model(cfg)
    choices = chosen_options(cfg)
    run = None
    if state.is_main_process:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.root)
        tags = {"zoo.split_hash": data.split_hash, **{f"zoo.{k}": v for k, v in choices.items()}}
        run = tracker.start_run(job_name(choices) or "train", parent=parent, tags=tags)
        run.log_config(cfg)
        run.log_parameter_counts(parameter_report(model))
    try:
        trainer = Trainer(model, data, cfg.trainer, seed=int(cfg.seed), run=run)
        results = trainer.fit()
    except BaseException:
        if run is not None:
            run.end("FAILED")
        raise
    if run is not None:
        run.end("FINISHED")
    return {"run_id": run.run_id if run else None, "split_hash": data.split_hash,
            "model": trainer.model, "data": data, "stages": results}
