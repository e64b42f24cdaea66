"""The zoo's own error types: problems a user can fix, as opposed to bugs.

Every input or configuration problem raises a subclass of :class:`ZooError` with a message of one
line that names the file, key, row or value at fault. The command line prints such an error as
``zoo <command>: <message>`` and exits with code 2; any other exception is a bug and keeps its
traceback (docs/guarantees.md).

The subclasses also derive from the built-in type a caller would otherwise expect
(``ValueError``, ``FileNotFoundError``), so library code that catches those keeps working.

Each type is rebuilt from its message alone, so it survives pickling (process pools) and
PyTorch's re-raise of an error from a DataLoader worker, which calls ``type(message)`` with a
message of several lines ("Caught DataError in DataLoader worker process 0. Original
Traceback ..."): that message is reduced to the original line plus the worker it came from.
"""

from __future__ import annotations

import re

# torch.utils.data re-raises a worker's error as type(f"Caught {name} {where}.\nOriginal {tb}")
_WORKER_MESSAGE = re.compile(r"\ACaught \w+ (in [^\n]*?)\.\nOriginal Traceback")
_LAST_LINE = re.compile(r"^[\w.]+: (.*)$")


def _one_line(message: object) -> str:
    text = str(message)
    worker = _WORKER_MESSAGE.match(text)
    if worker is None:
        return text
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    original = _LAST_LINE.match(last)
    return f"{original.group(1) if original else last} ({worker.group(1)})"


class ZooError(Exception):
    """An input or configuration problem, phrased as one line naming what is wrong."""

    def __init__(self, message: object = "") -> None:
        super().__init__(_one_line(message))


class ConfigError(ZooError, ValueError):
    """A configuration key or value, an override, or a command-line argument is wrong."""


class DataError(ZooError, ValueError):
    """A data file, folder, table row or field cannot be used as it is.

    ``DataError(path, reason, row=None)`` reads ``<path>[ row N]: <reason>`` (``row`` as a
    spreadsheet numbers it, the header being row 1); ``DataError(message)`` takes a whole line.
    ``path``, ``reason`` and ``row`` are kept as attributes.
    """

    def __init__(self, where: object, reason: str | None = None, row: int | None = None) -> None:
        if reason is None:
            super().__init__(where)
            self.path, self.reason, self.row = None, str(self), None
            return
        super().__init__(f"{where}{f' row {row}' if row is not None else ''}: {reason}")
        self.path, self.reason, self.row = str(where), reason, row


class MissingFileError(ZooError, FileNotFoundError):
    """A file or folder the user named (or a run recorded) does not exist."""


class CheckpointError(ZooError, ValueError):
    """A weights file or checkpoint folder is unreadable, corrupt, or does not fit the model."""


class RunError(ZooError, ValueError):
    """A tracked run cannot be used as asked (unknown id, not finished, another split or config)."""
