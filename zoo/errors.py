"""The zoo's own error types: problems a user can fix, as opposed to bugs.

Every input or configuration problem raises a subclass of :class:`ZooError` with a message of one
line that names the file, key, row or value at fault. The command line prints such an error as
``zoo <command>: <message>`` and exits with code 2; any other exception is a bug and keeps its
traceback (docs/guarantees.md).

The subclasses also derive from the built-in type a caller would otherwise expect
(``ValueError``, ``FileNotFoundError``), so library code that catches those keeps working.
"""

from __future__ import annotations


class ZooError(Exception):
    """An input or configuration problem, phrased as one line naming what is wrong."""


class ConfigError(ZooError, ValueError):
    """A configuration key or value, an override, or a command-line argument is wrong."""


class DataError(ZooError, ValueError):
    """A data file, folder, table row or field cannot be used as it is."""


class MissingFileError(ZooError, FileNotFoundError):
    """A file or folder the user named (or a run recorded) does not exist."""


class CheckpointError(ZooError, ValueError):
    """A weights file or checkpoint folder is unreadable, corrupt, or does not fit the model."""


class RunError(ZooError, ValueError):
    """A tracked run cannot be used as asked (unknown id, not finished, another split or config)."""
