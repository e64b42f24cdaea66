"""Name -> builder registries, one per component kind (docs/design.md section 3).

A builder is a plain function that returns a module (or a dataset, task, ...). It registers itself
at its definition with ``@ENCODERS.register``; its function name is the registry key, the Hydra
option file name and the MLflow tag value.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from typing import Any, Callable, TypeVar
from zoo.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_manifest_state = {"loaded": False, "loading": False}


def load_manifest() -> None:
    """Import every component module listed in :mod:`zoo.manifest`, once."""
    if _manifest_state["loaded"] or _manifest_state["loading"]:
        return
    from zoo.manifest import COMPONENT_MODULES

    _manifest_state["loading"] = True
    try:
        for module in COMPONENT_MODULES:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ImportError(f"component module {module!r} listed in zoo/manifest.py "
                                  f"failed to import: {err}") from err
        _manifest_state["loaded"] = True
    finally:
        _manifest_state["loading"] = False


def suggest(name: str, options: list[str] | tuple[str, ...], n: int = 3) -> str:
    """' Did you mean: a, b?' or '' (shared by registries and config validation)."""
    close = difflib.get_close_matches(name, list(options), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class Registry:
    """A named collection of builder functions for one component kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
        """Decorator: ``@REG.register`` or ``@REG.register(name="...")``."""

        def add(f: F) -> F:
            key = name or f.__name__
            if key in self._builders and self._builders[key] is not f:
                other = self._builders[key]
                raise ValueError(f"{self.kind} {key!r} is registered twice: "
                                 f"{other.__module__}.{other.__qualname__} and "
                                 f"{f.__module__}.{f.__qualname__}")
            self._builders[key] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> Callable[..., Any]:
        load_manifest()
        try:
            return self._builders[name]
        except KeyError:
            known = sorted(self._builders)
            raise ConfigError(f"unknown {self.kind} {name!r}.{suggest(name, known)} "
                              f"Registered: {', '.join(known) or '(none)'}") from None

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        load_manifest()
        return sorted(k for k in self._builders if fnmatch.fnmatchcase(k, pattern))

    def __contains__(self, name: object) -> bool:
        load_manifest()
        return name in self._builders

    def __len__(self) -> int:
        load_manifest()
        return len(self._builders)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._builders)} entries)"


ENCODERS = Registry("encoder")
BRIDGES = Registry("bridge")
CONNECTORS = Registry("connector")
HEADS = Registry("head")
LMS = Registry("lm")
RECIPES = Registry("recipe")
DATASETS = Registry("dataset")
TASKS = Registry("task")

REGISTRIES: dict[str, Registry] = {r.kind: r for r in
                                   (ENCODERS, BRIDGES, CONNECTORS, HEADS, LMS, RECIPES, DATASETS, TASKS)}
