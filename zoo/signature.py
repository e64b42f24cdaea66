"""A builder's signature as configuration: its arguments, their defaults, types and docs.

Option files list only what differs from their builder's defaults (open_clip's habit). A composed
config is then completed from the signature (:func:`complete_node`): every argument with a
representable default appears with its value, so the logged ``config.yaml`` records what was
built, ``--cfg job`` shows it and ``zoo eval`` rebuilds the same model even if a default changes
later. Keys that name no argument are refused with close matches. ``zoo show`` reads the same
:func:`arguments`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

from zoo.errors import ConfigError
from zoo.registry import suggest

# Hydra's own keys in a node (never builder arguments)
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
_SCALARS = (type(None), bool, int, float, str)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Argument:
    """One keyword of a builder: ``default`` is :data:`inspect.Parameter.empty` when required."""

    name: str
    annotation: str
    default: Any
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def forwards(*targets: Callable[..., Any], exclude: Iterable[str] = (),
             defaults: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Decorator for a builder that hands ``**kwargs`` on to ``targets`` (functions or classes,
    in the order the keywords travel): its signature becomes its own
    arguments followed by the targets' keyword arguments (``defaults`` replacing theirs; without
    ``exclude``, which the builder sets itself). ``zoo show`` lists them, config keys are checked
    against them and composed configs are completed with their defaults."""
    def decorate(fn: F) -> F:
        own = inspect.signature(fn)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        seen = {p.name for p in params} | set(exclude) | {"self"}
        for target in targets:
            for p in inspect.signature(target).parameters.values():
                if p.name in seen or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                    continue
                seen.add(p.name)
                default = (defaults or {}).get(p.name, p.default)
                params.append(p.replace(kind=p.KEYWORD_ONLY, default=default))
        fn.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        fn.__forwards__ = targets  # type: ignore[attr-defined]  # their docs describe the keywords
        return fn

    return decorate


def resolve_target(target: str) -> Callable[..., Any] | None:
    """The function a ``_target_`` names, or None when it cannot be imported (instantiation
    reports that itself)."""
    module, _, attr = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def takes_any_keyword(fn: Callable[..., Any]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD
               for p in inspect.signature(fn).parameters.values())


def arguments(fn: Callable[..., Any]) -> list[Argument]:
    """The keyword arguments of ``fn`` in signature order, with the docstring lines about each."""
    docs = argument_docs(fn)
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        annotation = "" if p.annotation is p.empty else str(p.annotation)
        out.append(Argument(p.name, annotation, p.default, docs.get(p.name, "")))
    return out


def _args_section(doc: str) -> dict[str, str]:
    """Entries of a Google-style ``Args:`` section (``name: text`` or ``a / b: text``)."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"\s*(?:Args|Arguments|Parameters)\b[^:]*(?:\([^)]*\))?:\s*$", line)),
                 None)
    if start is None:
        return {}
    body = [line for line in lines[start + 1:]]
    first = next((line for line in body if line.strip()), "")
    indent = len(first) - len(first.lstrip())
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in body:
        depth = len(line) - len(line.lstrip())
        if line.strip() and depth < indent:
            break
        match = re.match(r"(\w+(?:\s*/\s*\w+)*)\s*(?:\([^)]*\))?:\s+(.*)", line.strip())
        if line.strip() and depth == indent and match:
            current = [match.group(2)]
            for key in re.split(r"\s*/\s*", match.group(1)):
                entries[key] = current
        elif line.strip() and current:
            current.append(line.strip())
    return {key: " ".join(text) for key, text in entries.items()}


def argument_docs(fn: Callable[..., Any]) -> dict[str, str]:
    """Per argument of ``fn``: its entry in an ``Args:`` section, else the docstring sentences in
    which it is the first argument named (````name````); then the same from the targets it
    forwards to (:func:`forwards`)."""
    names = set(inspect.signature(fn).parameters)
    found: dict[str, str] = {}
    for source in (fn, *getattr(fn, "__forwards__", ())):
        doc = inspect.getdoc(source) or ""
        for key, text in _args_section(doc).items():
            found.setdefault(key, text)
        flat = " ".join(doc.split())
        for sentence in re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.;])\s+(?=[A-Z`(])", flat):
            mentioned = [m for m in re.findall(r"``(\w+)(?:=[^`]*)?``", sentence) if m in names]
            if mentioned and mentioned[0] not in found:
                found[mentioned[0]] = sentence
            elif mentioned and sentence not in found[mentioned[0]] and source is fn:
                found[mentioned[0]] += " " + sentence
    return found


def config_value(value: Any) -> tuple[bool, Any]:
    """``(True, value as YAML data)`` for defaults a config can hold (scalars, and lists, tuples
    and dicts of them); ``(False, None)`` otherwise (classes, tensors, ...)."""
    if isinstance(value, _SCALARS):
        return True, value
    if isinstance(value, (list, tuple)):
        items = [config_value(v) for v in value]
        return (all(ok for ok, _ in items), [v for _, v in items])
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: config_value(v) for k, v in value.items()}
        return (all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()})
    return False, None


def renamed(**moves: str) -> Callable[[F], F]:
    """Decorator naming arguments a builder no longer takes and what replaced each, as config
    text with ``VALUE`` standing for the given value (``checkpoint="pretrained=VALUE"``,
    ``align_lr="lr={align: VALUE}"``). An old name is accepted nowhere: a config that uses it is
    refused in one line naming the new form (:func:`check_keys`), and so is a call."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def builder(*args: Any, **kwargs: Any) -> Any:
            for key in kwargs:
                if key in moves:
                    instead = moves[key].replace("VALUE", _as_text(kwargs[key]))
                    raise ConfigError(f"{fn.__name__}({key}=...): {key} is no longer an argument; "
                                      f"use {instead}")
            return fn(*args, **kwargs)

        builder.__renamed__ = {**getattr(fn, "__renamed__", {}), **moves}  # type: ignore[attr-defined]
        return builder  # type: ignore[return-value]

    return decorate


def _as_text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value).replace('"', "")


def check_keys(fn: Callable[..., Any], node: Mapping[str, Any], where: str) -> None:
    """Refuse keys of ``node`` that are not keyword arguments of ``fn`` (unless it takes
    ``**kwargs``); an old name (:func:`renamed`) is refused naming its replacement."""
    moves = getattr(fn, "__renamed__", {})
    for key, value in node.items():
        if key in moves:
            instead = moves[key].replace("VALUE", _as_text(value))
            raise ConfigError(f"{where}.{key} is no longer an argument of {fn.__name__}(): use "
                              f"{where}.{instead}")
    if takes_any_keyword(fn):
        return
    known = [a.name for a in arguments(fn)]
    for key in node:
        if key not in known and key not in HYDRA_KEYS:
            raise ConfigError(f"{where}.{key}: {fn.__name__}() has no argument {key!r}."
                              f"{suggest(key, known)} Arguments: {', '.join(known) or '(none)'}")


def complete_node(node: dict[str, Any], where: str, skip: Iterable[str] = ()) -> dict[str, Any]:
    """A component node (plain data with ``_target_``, interpolations unresolved) with its keys
    checked against the builder and every missing argument that has a representable default
    added, in signature order (except ``skip``: arguments supplied by the build, not the
    config)."""
    fn = resolve_target(node["_target_"])
    if fn is None:
        return node
    check_keys(fn, node, where)
    given = dict(node)
    ordered: dict[str, Any] = {"_target_": given.pop("_target_")}
    for arg in arguments(fn):
        if arg.name in given:
            ordered[arg.name] = given.pop(arg.name)
        elif not arg.required and arg.name not in skip:
            ok, value = config_value(arg.default)
            if ok:
                ordered[arg.name] = value
    ordered.update(given)  # Hydra keys (_partial_, ...) and keys of a **kwargs builder
    return ordered
