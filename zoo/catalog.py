"""What the registries hold, for people: ``zoo list`` (one line per entry) and ``zoo show``.

A description is the first sentence of the builder's docstring. ``zoo show KIND NAME`` adds the
builder's arguments (type, default, the option file's value where it differs, the docstring's words
on each, :mod:`zoo.signature`), its option file and, per kind, what it needs: a recipe's component
groups, implied choices, stages and their data tasks (built on the meta device with its default
components); an evaluation task's data task.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import yaml

from zoo.config import GROUP_KINDS, conf_dir
from zoo.registry import REGISTRIES
from zoo.signature import arguments, config_value

KIND_GROUPS = {kind: group for group, kind in GROUP_KINDS.items()}
COMPONENT_GROUPS = ("encoder", "bridge", "connector", "lm", "head")


def description(fn: Callable[..., Any]) -> str:
    """The first sentence of ``fn``'s docstring (its first paragraph when it has no full stop)."""
    paragraph = " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(?:\s|$)(?![^(]*\))", paragraph)
    return match.group(1) if match else paragraph


def shorten(text: str, width: int = 96) -> str:
    return text if len(text) <= width else text[:width - 4].rsplit(" ", 1)[0] + " ..."


def _shown(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return "required"
    return repr(value) if isinstance(value, str) and "${" not in value else str(value)


def option_file(kind: str, name: str) -> tuple[str | None, dict[str, Any]]:
    """(path relative to the config tree, its keys) of ``KIND=NAME``'s option file, if any."""
    group = KIND_GROUPS.get(kind)
    path = conf_dir() / group / f"{name}.yaml" if group else None
    if path is None or not path.is_file():
        return None, {}
    return f"{group}/{name}.yaml", yaml.safe_load(path.read_text()) or {}


def recipe_needs(name: str) -> dict[str, Any]:
    """Component groups (required or optional), implied choices and stages of recipe ``name``,
    built on meta from ``recipe=NAME`` with its default components."""
    fn = REGISTRIES["recipe"].get(name)
    params = inspect.signature(fn).parameters
    groups = {g: ("required" if params[g].default is inspect.Parameter.empty else "optional")
              for g in COMPONENT_GROUPS if g in params}
    implied = (yaml.safe_load((conf_dir() / "recipe_defaults.yaml").read_text()) or {}).get(name) or {}
    out: dict[str, Any] = {"components": groups, "implied": implied, "stages": []}
    try:
        from zoo.build import build_on_meta
        from zoo.config import compose

        model = build_on_meta(compose([f"recipe={name}"]))
    except Exception as err:  # a recipe whose defaults need local weights or data
        out["stages_error"] = " ".join(str(err).split())[:300]
        return out
    for stage in model.stages.values():
        out["stages"].append({"name": stage.name, "tasks": list(stage.tasks), "lr": stage.lr,
                              "epochs": stage.epochs, "batch_size": stage.batch_size,
                              "trainable": list(stage.trainable)})
    return out


def show(kind: str, name: str) -> dict[str, Any]:
    """Everything ``zoo show KIND NAME`` prints, as data plus its ``text``."""
    fn = REGISTRIES[kind].get(name)
    path, values = option_file(kind, name)
    report: dict[str, Any] = {"kind": kind, "name": name,
                              "target": f"{fn.__module__}.{fn.__qualname__}",
                              "option_file": path, "doc": inspect.getdoc(fn) or "",
                              "arguments": []}
    for arg in arguments(fn):
        entry = {"name": arg.name, "type": arg.annotation, "default": _shown(arg.default),
                 "doc": arg.doc}
        if arg.name in values and (arg.required or config_value(arg.default)[1] != values[arg.name]):
            entry["option_file"] = _shown(values[arg.name])
        report["arguments"].append(entry)
    if kind == "recipe":
        report.update(recipe_needs(name))
    if kind == "task":
        from zoo.evaluation.tasks import DATA_TASK

        report["data_task"] = DATA_TASK.get(name)
    report["text"] = render(report)
    return report


def render(report: dict[str, Any]) -> str:
    where = f"{report['target']}" + (f"; option file {report['option_file']}"
                                     if report["option_file"] else "")
    lines = [f"{report['kind']} {report['name']}  ({where})", "", report["doc"], ""]
    if report["arguments"]:
        lines.append("arguments (name: type = default; `option file:` where it sets another "
                      "value; required ones are supplied by the recipe or the command line):")
    for arg in report["arguments"]:
        head = f"  {arg['name']}" + (f": {arg['type']}" if arg["type"] else "") + \
            f" = {arg['default']}"
        if "option_file" in arg:
            head += f"   option file: {arg['option_file']}"
        lines.append(head)
        if arg["doc"]:
            lines.append(f"      {shorten(arg['doc'], 180)}")
    if "components" in report:
        lines += ["", "components: " + ", ".join(f"{g} ({need})"
                                                 for g, need in report["components"].items())]
        if report["implied"]:
            lines.append("implied by recipe={}: {}".format(report["name"], " ".join(
                f"{g}={'null' if o is None else o}" for g, o in report["implied"].items())))
        lines.append("")
        if report.get("stages_error"):
            lines.append(f"stages: not built with the default components ({report['stages_error']})")
        else:
            lines.append(f"stages (built on meta from recipe={report['name']}; data tasks: "
                         "empty = every task the data offers):")
            for st in report["stages"]:
                lines.append(f"  {st['name']}: data tasks {', '.join(st['tasks']) or '(all)'}; "
                             f"lr {st['lr']:g}, epochs {st['epochs']:g}, batch {st['batch_size']}; "
                             f"trainable {', '.join(st['trainable'])}")
    if report.get("data_task"):
        lines += ["", f"data task: {report['data_task']} (samples of this task from the test split)"]
    return "\n".join(lines).rstrip() + "\n"
