"""MLflow tracking: a parent run per sweep, a child run per job (docs/design.md section 9).

Default store: ``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/artifacts`` (an
explicit artifact location, because sqlite stores otherwise put artifacts relative to the current
working directory). ``MLFLOW_TRACKING_URI`` or an explicit ``uri`` overrides the default.

Under faults (docs/guarantees.md): processes that create the same fresh sqlite store at once take
turns (a file lock beside the database), and an http(s) tracking server that does not accept a
connection within :data:`CONNECT_TIMEOUT_S` seconds is reported in one line instead of MLflow's
minutes of retries.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from zoo.errors import ConfigError, RunError

UNKNOWN_SPLIT = "unknown"
CONNECT_TIMEOUT_S = 5.0


def default_tracking_uri(root: str | os.PathLike = "runs") -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def git_commit() -> str:
    """The zoo checkout's commit (with ``-dirty`` when modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def job_name(choices: Mapping[str, str]) -> str:
    """Child-run name from the chosen options, e.g. ``encoder=vit3d,connector=mlp``."""
    return ",".join(f"{k}={v}" for k, v in choices.items())


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_reachable(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """An http(s) tracking server must accept a TCP connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"tracking server {uri} is unreachable ({type(err).__name__}: "
                          f"{err.strerror or err}; waited at most {timeout:.0f} s); start it or "
                          "set tracking.uri / MLFLOW_TRACKING_URI to a reachable store") from err


def sqlite_lock(uri: str) -> Any:
    """A file lock beside a sqlite store (``<db>.lock``), or a no-op context for other stores."""
    import contextlib

    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", timeout=120)


class Tracker:
    """One MLflow experiment in one store; hands out :class:`Run` handles."""

    def __init__(self, uri: str | None = None, experiment: str = "zoo",
                 root: str | os.PathLike = "runs") -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = uri or env_uri or default_tracking_uri(root)
        check_reachable(self.uri)
        try:
            # the first client of a fresh sqlite store creates its tables: one process at a time
            with sqlite_lock(self.uri):
                self.client = MlflowClient(tracking_uri=self.uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is not None:
                    self.experiment_id = found.experiment_id
                else:
                    artifacts = None
                    if self.uri.startswith("sqlite:") and not (uri or env_uri):
                        artifacts = (Path(root).resolve() / "artifacts").as_uri()
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=artifacts)
        except MlflowException as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"tracking.uri={self.uri} (or MLFLOW_TRACKING_URI): "
                              f"{first[:300]}") from err

    def start_run(self, name: str, parent: "Run | None" = None,
                  tags: Mapping[str, str] | None = None) -> "Run":
        """A new run; a child run goes into its parent's experiment."""
        all_tags = {"zoo.git_commit": git_commit(), **(tags or {})}
        experiment_id = self.experiment_id
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
            experiment_id = self.client.get_run(parent.run_id).info.experiment_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        return Run(self.client, run.info.run_id)

    def get_run(self, run_id: str) -> Any:
        """MLflow's record of ``run_id`` (info, data); RunError when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            raise RunError(f"run {run_id!r}: not found in the tracking store {self.uri}") from err

    def reopen_run(self, run_id: str) -> "Run":
        """Continue logging into an existing run (a resumed training), marked RUNNING again."""
        self.get_run(run_id)
        self.client.update_run(run_id, status="RUNNING")
        return Run(self.client, run_id)

    def child_runs(self, parent_run_id: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


class Run:
    """A started MLflow run; use as a context manager to end it with the right status."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_config(self, cfg: Any) -> None:
        """Resolved config as ``config.yaml`` artifact plus flattened params."""
        from omegaconf import OmegaConf

        resolved = OmegaConf.to_container(cfg, resolve=True)
        self.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        self.log_params(resolved)  # type: ignore[arg-type]

    def log_parameter_counts(self, report: Mapping[str, Any]) -> None:
        metrics = {"params.total": report["total"], "params.trainable": report["trainable"]}
        for name, counts in report.get("components", {}).items():
            metrics[f"params.{name}.total"] = counts["total"]
            metrics[f"params.{name}.trainable"] = counts["trainable"]
        self.log_metrics(metrics)
        self.log_text(json.dumps(report, indent=2), "params.json")
