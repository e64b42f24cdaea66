import json

from omegaconf import OmegaConf

from zoo.tracking import Tracker, default_tracking_uri, job_name


def test_default_uri_is_sqlite_under_root(tmp_path):
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_parent_and_child_runs_log_into_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(root=tmp_path / "runs", experiment="unit")
    assert (tmp_path / "runs" / "mlflow.db").exists()
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "runs" / "artifacts").resolve().as_uri()

    cfg = OmegaConf.create({"encoder": {"_target_": "x.test_vit3d", "depth": 2}, "seed": 3})
    with tracker.start_run("sweep") as parent:
        name = job_name({"encoder": "test_vit3d", "connector": "mlp"})
        with tracker.start_run(name, parent=parent, tags={"zoo.split_hash": "abc"}) as child:
            child.log_config(cfg)
            child.log_parameter_counts({"total": 10, "trainable": 4,
                                        "components": {"encoder": {"total": 10, "trainable": 4}}})
            child.log_metrics({"loss": 1.5}, step=2)

    children = tracker.child_runs(parent.run_id)
    assert [r.info.run_name for r in children] == ["encoder=test_vit3d,connector=mlp"]
    run = children[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["encoder.depth"] == "2"
    assert run.data.metrics["params.encoder.trainable"] == 4
    assert run.data.metrics["loss"] == 1.5
    assert run.data.tags["zoo.split_hash"] == "abc"
    assert "zoo.git_commit" in run.data.tags
    artifacts = tmp_path / "runs" / "artifacts" / run.info.run_id / "artifacts"
    assert json.loads((artifacts / "params.json").read_text())["total"] == 10
    assert "depth: 2" in (artifacts / "config.yaml").read_text()


def test_env_uri_overrides_default(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert Tracker(root=tmp_path / "unused", experiment="e").uri == uri


def _create_store(root, queue):
    try:
        queue.put(Tracker(root=root, experiment="race").experiment_id)
    except BaseException as err:  # reported to the parent, which fails the test
        queue.put(f"{type(err).__name__}: {err}")


def test_two_processes_creating_a_fresh_sqlite_store_at_once_both_succeed(tmp_path, monkeypatch):
    import multiprocessing

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_create_store, args=(tmp_path / "runs", queue))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert results[0] == results[1], results  # both saw the same experiment, neither crashed


def test_an_unreachable_tracking_server_fails_fast_in_one_line():
    import socket
    import time

    import pytest

    from zoo.errors import ConfigError

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"tracking server http://127.0.0.1:{port} is "
                                          "unreachable"):
        Tracker(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 10
