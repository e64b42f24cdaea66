"""Per-item evaluation records and the result every task evaluator returns.

A record is a dict ``{"id", "task", "question_type", "prediction", "reference", "scores"}`` where
``scores`` maps a metric name to a float for that item; aggregate metrics are the means of the
per-item scores unless the task says otherwise (retrieval, AUROC). Records are what ``zoo compare``
resamples, so every reported per-item metric must be present in every record of a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable
from zoo.errors import ConfigError


@dataclass
class TaskResult:
    """Records of the model, aggregate metrics, an optional baseline's records and a note
    (why a task was skipped, or what a metric variant means). ``skipped`` results carry no
    metrics: a task a model cannot do is never reported as a zero."""

    task: str
    records: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None
    baseline_records: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    skipped: bool = False


def record(sample: dict[str, Any], prediction: Any, reference: Any,
           scores: dict[str, float]) -> dict[str, Any]:
    meta = sample.get("meta") or {}
    return {"id": str(meta.get("id")), "task": sample.get("task"),
            "question_type": meta.get("question_type"), "prediction": prediction,
            "reference": reference, "scores": {k: float(v) for k, v in scores.items()}}


def mean_scores(records: Iterable[dict[str, Any]], by_type: bool = False) -> dict[str, float]:
    """Mean of every per-item score; with ``by_type`` also ``"<metric>/<question_type>"``."""
    sums: dict[str, list[float]] = {}
    for rec in records:
        for name, value in rec["scores"].items():
            sums.setdefault(name, []).append(value)
            if by_type and rec.get("question_type"):
                sums.setdefault(f"{name}/{rec['question_type']}", []).append(value)
    return {name: sum(v) / len(v) for name, v in sums.items()}


def skipped(task: str, note: str) -> TaskResult:
    return TaskResult(task, note=note, skipped=True)


def batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    if size < 1:
        raise ConfigError(f"eval.batch_size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]
