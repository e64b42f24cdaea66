"""How much the zoo prints: progress lines and bars, details, or only results and errors.

The zoo's own messages (a stage's summary, an evaluated task, a sweep's progress) go through the
``zoo`` logger, which writes bare lines to the current standard output through its own handler
(as transformers' library logger does) at INFO. Progress bars show while that logger passes INFO.
The command line sets the level: ``-q`` (WARNING: no progress lines or bars, library chatter down
to errors), ``-v`` (DEBUG, and Python warnings shown once per place), or Hydra's
``hydra.verbose=true`` / ``hydra.verbose=NAME`` / ``hydra.verbose=[A,B]`` (DEBUG for every logger,
or for the named ones, as in a Hydra app). Results (tables, run ids) are printed regardless.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

ROOT = "zoo"
QUIET, NORMAL, VERBOSE = -1, 0, 1
HYDRA_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job logging


class CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record arrives (pytest and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns one; stdout it is
        pass


def get_logger(name: str = ROOT) -> logging.Logger:
    """A logger under ``zoo`` (the ``zoo`` logger gets its handler on first use)."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, CurrentStdout) for h in root.handlers):
        handler = CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name)


def show_progress() -> bool:
    """Whether progress bars are shown (the ``zoo`` logger passes INFO)."""
    return get_logger().isEnabledFor(logging.INFO)


def set_verbosity(level: int = NORMAL, hydra_verbose: Any = None) -> None:
    """``QUIET``, ``NORMAL`` or ``VERBOSE``; then ``hydra.verbose`` (True, a logger name or a
    list of names) on top. Environment settings the user made (``TRANSFORMERS_VERBOSITY``) win."""
    zoo = get_logger()
    zoo.setLevel({QUIET: logging.WARNING, VERBOSE: logging.DEBUG}.get(level, logging.INFO))
    if level == QUIET:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # Hugging Face's and MLflow's own bars (reading and writing weights, artifacts)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # MLflow sets its loggers' level from this when it is imported (after this point)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        for name in ("mlflow", "alembic", "hydra"):
            logging.getLogger(name).setLevel(logging.WARNING)
    elif level == VERBOSE:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
        warnings.simplefilter("default")
    if hydra_verbose in (None, False):
        return
    logging.basicConfig(format=HYDRA_FORMAT, level=logging.WARNING)
    if hydra_verbose is True:
        logging.getLogger().setLevel(logging.DEBUG)
        zoo.setLevel(logging.DEBUG)
        return
    names = [hydra_verbose] if isinstance(hydra_verbose, str) else list(hydra_verbose)
    for name in names:
        logging.getLogger(str(name)).setLevel(logging.DEBUG)
