"""Evaluate a model on a data source's test split (``zoo eval``; the end of ``zoo train``).

Per task: an evenly spaced subset of at most ``eval.max_items`` test samples, the registered
evaluator, per-item records written as ``eval/<task>.jsonl`` (and ``eval/<task>.baseline.jsonl``)
artifacts, and metrics logged as ``test/<task>/<metric>`` (``test/<task>/baseline/<metric>``). A
subset is labelled: tag ``zoo.eval.<task>.subset`` (``N of M <split> items (eval.max_items=K)``)
and the printed summary line.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError
from zoo.evaluation.base import TaskResult, mean_scores
from zoo.evaluation.tasks import DATA_TASK, EvalContext
from zoo.registry import TASKS
from zoo.types import eval_mode
from zoo.verbosity import get_logger, show_progress

log = get_logger(__name__)


def spaced(n: int, limit: int | None) -> list[int]:
    """At most ``limit`` indices spread evenly over ``range(n)`` (all when ``limit`` is None)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ConfigError(f"eval.max_items={limit}: expected an integer >= 1 or null")
    return sorted({(i * n) // limit for i in range(limit)})


def chosen_tasks(eval_cfg: Any, data: Any) -> list[str]:
    offered = set(data.tasks())
    tasks = list(eval_cfg.get("tasks") or [t for t in DATA_TASK if DATA_TASK[t] in offered])
    for task in tasks:
        if task not in DATA_TASK:
            from zoo.registry import suggest

            raise ConfigError(f"eval.tasks: unknown task {task!r}.{suggest(task, list(DATA_TASK))} "
                              f"Tasks: {', '.join(DATA_TASK)}")
    return tasks


def make_judge(spec: Any) -> Any:
    if not spec:
        return None
    from zoo.evaluation.judge import LLMJudge

    spec = dict(spec)
    if not spec.get("url"):
        raise ConfigError("eval.judge: needs a url (an OpenAI-compatible API, e.g. "
                          "http://127.0.0.1:8000/v1)")
    unknown = sorted(set(spec) - set(inspect.signature(LLMJudge).parameters))
    if unknown:
        raise ConfigError(f"eval.judge: unknown key(s) {unknown}; allowed: "
                          f"{', '.join(inspect.signature(LLMJudge).parameters)}")
    return LLMJudge(**spec)


def bertscore_layer(eval_cfg: Any) -> int | None:
    """The BERTScore layer, resolved (and the model folder checked) before anything runs."""
    model = eval_cfg.get("bertscore_model")
    if not model:
        return None
    from zoo.evaluation.text import bertscore_layer as resolve

    return resolve(str(model), eval_cfg.get("bertscore_layers"))


def context(eval_cfg: Any, data: Any, progress: Callable | None = None) -> EvalContext:
    def train_samples(task: str, limit: int) -> list[dict]:
        ds = data.dataset("train", [task])
        return [ds[i] for i in spaced(len(ds), limit)]

    return EvalContext(train_items=list(data.items("train")), train_samples=train_samples,
                       batch_size=int(eval_cfg.get("batch_size") or 8),
                       max_new_tokens=dict(eval_cfg.get("max_new_tokens") or {}),
                       bertscore_model=eval_cfg.get("bertscore_model"),
                       bertscore_layers=bertscore_layer(eval_cfg),
                       judge=make_judge(eval_cfg.get("judge")),
                       baseline_items=int(eval_cfg.get("baseline_items") or 256),
                       progress=progress)


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


def evaluate(model: torch.nn.Module, data: Any, eval_cfg: Any, run: Any = None,
             verbose: bool = True) -> dict[str, TaskResult]:
    """Run every chosen task's evaluator; log records and metrics to ``run`` when given."""
    eval_cfg = OmegaConf.create(OmegaConf.to_container(eval_cfg, resolve=True)) \
        if isinstance(eval_cfg, DictConfig) else OmegaConf.create(dict(eval_cfg))
    split = str(eval_cfg.get("split") or "test")

    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}  # a bar per task, as training shows (none when quiet)

    def progress(task: str, done: int, total: int) -> None:
        if task in bars:
            bars[task].total = total
            bars[task].update(done - bars[task].n)

    ctx = context(eval_cfg, data, progress)
    results: dict[str, TaskResult] = {}
    with eval_mode(model):
        try:
            for task in chosen_tasks(eval_cfg, data):
                ds = data.dataset(split, [DATA_TASK[task]])
                limit = eval_cfg.get("max_items")
                samples = [ds[i] for i in spaced(len(ds), limit)]
                subset = (f"{len(samples)} of {len(ds)} {split} items (eval.max_items={limit})"
                          if len(samples) < len(ds) else None)
                start = time.perf_counter()
                # the task's summary line replaces its bar (leave=False)
                bars[task] = tqdm(total=len(samples), desc=f"eval {task}", unit="item",
                                  dynamic_ncols=True, leave=False,
                                  disable=not (verbose and samples and show_progress()))
                with torch.no_grad():
                    result = (TASKS.get(task)(model, samples, ctx) if samples else
                              TaskResult(task, note=f"no {split} samples", skipped=True))
                bars.pop(task).close()
                results[task] = result
                if verbose:
                    log.info(summary_line(result, time.perf_counter() - start)
                             + (f" [subset: {subset}]" if subset else ""))
                if run is not None:
                    log_result(run, result)
                    if subset:
                        run.set_tags({f"zoo.eval.{task}.subset": subset})
        finally:
            for bar in bars.values():  # a task that raised mid-way
                bar.close()
    return results


def summary_line(result: TaskResult, seconds: float) -> str:
    if result.skipped:
        return f"eval {result.task}: skipped ({result.note})"
    keys = [k for k in result.metrics if "/" not in k][:6]
    text = ", ".join(f"{k} {result.metrics[k]:.3f}" for k in keys)
    base = ""
    if result.baseline_records:
        b = mean_scores(result.baseline_records)
        base = f" | baseline ({result.baseline}): " + ", ".join(
            f"{k} {b[k]:.3f}" for k in keys if k in b)
    return f"eval {result.task}: {len(result.records)} items in {seconds:.1f} s: {text}{base}"


def metric_key(name: str) -> str:
    """An MLflow-safe metric name (``@`` -> ``_at_``, other odd characters -> ``_``)."""
    import re

    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


def log_result(run: Any, result: TaskResult) -> None:
    prefix = f"test/{result.task}"
    if result.skipped:
        run.set_tags({f"zoo.eval.{result.task}": f"skipped: {result.note}"})
        return
    metrics = {metric_key(f"{prefix}/{k}"): v for k, v in result.metrics.items()}
    if result.baseline_records:
        metrics.update({metric_key(f"{prefix}/baseline/{k}"): v
                        for k, v in mean_scores(result.baseline_records, by_type=True).items()})
        run.log_text(jsonl(result.baseline_records), f"eval/{result.task}.baseline.jsonl")
        run.set_tags({f"zoo.eval.{result.task}.baseline": result.baseline})
    run.log_metrics(metrics)
    run.log_text(jsonl(result.records), f"eval/{result.task}.jsonl")
    if result.note:
        run.set_tags({f"zoo.eval.{result.task}": result.note[:5000]})
