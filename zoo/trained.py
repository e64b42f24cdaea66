"""A trained model as a user names it: an MLflow run id, a run folder, or a folder written by
``zoo export`` (``zoo predict``, ``zoo chat``, ``zoo eval``, ``zoo export``; docs/usage.md).

Whatever the name, the stored configuration may instantiate registered builders only
(:func:`zoo.build.check_targets`), and the weights are loaded only after their sha256 matches the
one recorded when they were written: a run's final checkpoint against the run's MLflow tag
``zoo.checkpoint.<stage>-final.sha256`` (docs/guarantees.md section 1), an export's files against
its ``config.json``. An export is rebuilt from its own files: its tokenizer, and its LLM folder
where the run's LLM came from a folder (``lm.pretrained``); nothing outside the folder is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.errors import CheckpointError, MissingFileError, RunError

EXPORT_FILE = "config.json"
EXPORT_FORMAT = "medzoo3d-export"
# builder arguments that only initialise weights the trained checkpoint replaces
# (the LM's ``pretrained`` is its folder, architecture included: it is pointed at the export's)
WEIGHT_INIT_KEYS = ("init_from", "pretrained")


@dataclass
class Trained:
    """Where a trained model's configuration and weights are, before anything is built.

    ``kind``: ``run`` or ``export``; ``cfg``: the configuration it was trained with (targets
    checked); ``weights``: the weight files and their recorded sha256; ``preparation``: the
    record of :mod:`zoo.data.preparation` (None for a run trained before it was written);
    ``record``: the export's ``config.json`` or the run's MLflow tags."""

    kind: str
    name: str
    folder: Path
    cfg: DictConfig
    weights: dict[Path, str]
    run_id: str | None = None
    split_hash: str | None = None
    preparation: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    tracker: Any = None

    def build_config(self) -> DictConfig:
        """The configuration to build from: the stored one; for an export, its LM reads the
        export's LLM folder and tokenizer, and weight-initialising paths are dropped."""
        if self.kind != "export":
            return self.cfg
        from omegaconf import open_dict

        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        with open_dict(cfg):
            for group in ("recipe", "encoder", "bridge", "connector", "head"):
                node = cfg.get(group)
                if isinstance(node, DictConfig):
                    for key in WEIGHT_INIT_KEYS:
                        if key in node:
                            node[key] = None
            llm, lm = self.record.get("llm") or {}, cfg.get("lm")
            if isinstance(lm, DictConfig) and llm:
                # builders that read an LLM folder (lm.pretrained; None may mean a cache) read
                # the export's, which holds the tokenizer too; tiny in-process LMs take the tokenizer
                if "pretrained" in lm:
                    lm.pretrained = str(self.folder / llm["architecture"])
                if "tokenizer" in lm:
                    lm.tokenizer = str(self.folder / llm["tokenizer"])
        return cfg

    def verify(self) -> None:
        """Every weight file exists and has its recorded sha256 (CheckpointError otherwise)."""
        from zoo.checkpoint import file_sha256

        for path, digest in self.weights.items():
            if not path.is_file():
                raise MissingFileError(f"{path}: weights file of {self.name} is missing")
            if file_sha256(path) != digest:
                where = f"run {self.run_id}" if self.kind == "run" else f"{self.folder / EXPORT_FILE}"
                raise CheckpointError(f"{path}: sha256 differs from the one {where} recorded "
                                      "when the file was written; refusing to load other weights")

    def load(self, model: Any = None) -> Any:
        """Build the model (unless given), verify the weights and load them (strict)."""
        from zoo.build import build_model
        from zoo.checkpoint import load_weights, read_state_dict

        if model is None:
            model = build_model(self.build_config())
        self.verify()
        state: dict[str, Any] = {}
        for path in self.weights:
            state.update(read_state_dict(path))
        load_weights(model, state, source=str(self.weights_source()))
        return model

    def weights_source(self) -> Path:
        return next(iter(self.weights)) if len(self.weights) == 1 else self.folder

    def preparation_record(self) -> dict[str, Any]:
        """How the training volumes were prepared (:mod:`zoo.data.preparation`): the recorded
        record; for a run trained before runs recorded it, read from its data config now."""
        if self.preparation is not None:
            return self.preparation
        from zoo.data.preparation import preparation_of
        from zoo.errors import ZooError
        from zoo.jobs import build_data

        try:
            self.preparation = preparation_of(build_data(self.cfg))
        except ZooError as err:
            self.preparation = {"spec": None, "source": None,
                                "note": f"the run recorded none and its data cannot be read now "
                                        f"({' '.join(str(err).split())})"}
        return self.preparation

    def test_metrics(self) -> dict[str, float]:
        """The ``test/...`` metrics the run logged at train time (an export's are in its record)."""
        if self.kind == "export":
            return dict((self.record.get("run") or {}).get("test_metrics") or {})
        if self.tracker is None or self.run_id is None:
            return {}
        run = self.tracker.get_run(self.run_id)
        return {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith("test/")}


def is_export(path: str | Path) -> bool:
    """True for a folder whose ``config.json`` is a ``zoo export`` record."""
    file = Path(path) / EXPORT_FILE
    if not file.is_file():
        return False
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == EXPORT_FORMAT


def locate(name: str, tracking_uri: str | None = None) -> Trained:
    """The trained model ``name`` names: an export folder, a run folder (``config.yaml`` and
    ``run.json``), or a run id in the tracking store (``tracking_uri``, default as ``zoo
    train``). Nothing is built or loaded yet."""
    path = Path(name).expanduser()
    if path.is_dir():
        if is_export(path):
            return _export(path.resolve(), name)
        from zoo import runs

        if (path / runs.CONFIG_FILE).is_file() and (path / runs.STATUS_FILE).is_file():
            return _run_folder(path.resolve(), name, tracking_uri)
        raise MissingFileError(f"{name}: neither a run folder (config.yaml, run.json) nor a folder "
                               f"written by zoo export ({EXPORT_FILE})")
    if path.exists() or "/" in name or name.startswith("."):
        raise MissingFileError(f"{name}: no such folder (give a run id, a run folder or an "
                               "exported folder)")
    return _run_id(name, tracking_uri)


def _checked(cfg: Any, where: str) -> DictConfig:
    from zoo.build import check_targets

    if not isinstance(cfg, DictConfig):
        raise RunError(f"{where}: holds no configuration mapping")
    check_targets(cfg)
    return cfg


def _export(folder: Path, name: str) -> Trained:
    record = json.loads((folder / EXPORT_FILE).read_text())
    if record.get("version") != 1:
        raise CheckpointError(f"{folder / EXPORT_FILE}: export version {record.get('version')!r}; "
                              "this zoo reads version 1")
    cfg = _checked(OmegaConf.create(record.get("config") or {}), str(folder / EXPORT_FILE))
    files = record.get("weights") or {}
    if not files:
        raise CheckpointError(f"{folder / EXPORT_FILE}: records no weight files")
    run = record.get("run") or {}
    return Trained("export", name, folder, cfg, {folder / f: d for f, d in files.items()},
                   run_id=run.get("id"), split_hash=run.get("split_hash"),
                   preparation=record.get("preparation"), record=record)


def _run(folder: Path, name: str, run_id: str, cfg: DictConfig, tracker: Any) -> Trained:
    from zoo.data import preparation

    trained = tracker.get_run(run_id)
    tags = dict(trained.data.tags)
    from zoo.runs import final_checkpoint

    final = final_checkpoint(folder, list(cfg.trainer.get("stages") or []))
    tag = f"zoo.checkpoint.{final.parent.name}.sha256"
    if tag not in tags:
        raise RunError(f"run {run_id}: records no sha256 of {final} (tag {tag}); it was not "
                       "trained by this version of the zoo")
    return Trained("run", name, folder, cfg, {final: tags[tag]}, run_id=run_id,
                   split_hash=tags.get("zoo.split_hash"), preparation=preparation.read(folder),
                   record=tags, tracker=tracker)


def _run_folder(folder: Path, name: str, tracking_uri: str | None) -> Trained:
    from zoo import runs
    from zoo.tracking import Tracker

    status = runs.status(folder) or {}
    run_id = status.get("run_id")
    if not run_id:
        raise RunError(f"{folder / runs.STATUS_FILE}: names no run id")
    cfg = _checked(OmegaConf.load(folder / runs.CONFIG_FILE), str(folder / runs.CONFIG_FILE))
    tracking = cfg.get("tracking") or {}
    tracker = Tracker(tracking_uri or tracking.get("uri"), tracking.get("experiment", "zoo"),
                      tracking.get("root", "runs"))
    return _run(folder, name, run_id, cfg, tracker)


def _run_id(run_id: str, tracking_uri: str | None) -> Trained:
    from zoo import runs
    from zoo.jobs import stored_config
    from zoo.tracking import Tracker

    tracker = Tracker(tracking_uri)
    trained = tracker.get_run(run_id)
    cfg = stored_config(tracker, run_id)
    folder = Path(trained.data.tags.get("zoo.run_dir") or runs.run_folder(cfg, run_id))
    return _run(folder, run_id, run_id, cfg, tracker)
