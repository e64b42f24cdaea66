"""Result files the tools write, and the documents that quote them (docs/evaluation.md, "Results
that regenerate").

A results file (``docs/results/<name>.md``) is written only by a tool (``zoo sweep
sweep.results=FILE``, ``zoo compare --write-results FILE``, ``python
experiments/coverage_simulation.py``). It opens with a header (command, commit, machine, wall
time, status) and a machine-readable record of the header plus the sha256 of every input the
numbers depend on: the source files whose code produced them and the config files composed. Its
body holds named blocks::

    <!-- zoo:block summary -->
    ...
    <!-- zoo:end -->

A document quotes a block between markers, the copy being generated, never typed::

    <!-- zoo:quote docs/results/compare_strategies.md#summary -->
    ...
    <!-- zoo:end -->

``zoo results sync`` rewrites every quote in README.md and docs/*.md from its file, ``zoo results
check`` lists quotes that differ from their files and results files whose inputs changed since they
were written (the test suite runs the same check). ``zoo results stale FILE`` marks a file stale
(its header and every quote say so, naming the changed inputs) until a tool writes it again.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from zoo.errors import ConfigError, MissingFileError

RECORD_START, RECORD_END = "<!-- zoo:record", "-->"
BLOCK = re.compile(r"<!-- zoo:block (?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- zoo:end -->", re.S)
QUOTE = re.compile(r"(?P<open><!-- zoo:quote (?P<file>[^#\s]+)#(?P<block>[\w.-]+) -->\n)"
                   r"(?P<body>.*?)(?P<close><!-- zoo:end -->)", re.S)
QUOTING_DOCS = ("README.md", "docs/*.md")
PACKAGES = ("zoo", "encoders", "connectors", "heads", "recipes", "experiments")  # the project's


def project_root() -> Path:
    """The folder holding the ``zoo`` package (the repository root of a checkout)."""
    return Path(__file__).resolve().parent.parent


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def input_digests(paths: Iterable[str | Path], root: Path | None = None) -> dict[str, str]:
    """``{path relative to the project root: sha256 prefix}`` of the existing files among
    ``paths`` that belong to the project's packages (installed libraries are left out)."""
    root = root or project_root()
    out = {}
    for path in paths:
        path = Path(path).resolve()
        if path.is_file() and path.is_relative_to(root):
            rel = path.relative_to(root)
            if rel.parts[0] in PACKAGES:
                out[rel.as_posix()] = file_digest(path)
    return dict(sorted(out.items()))


def module_files(objects: Iterable[Any]) -> set[str]:
    """Source files of the modules defining ``objects`` (modules, classes, functions or
    instances)."""
    import inspect

    files = set()
    for obj in objects:
        if inspect.ismodule(obj):
            module = obj
        else:
            module = inspect.getmodule(obj if inspect.isclass(obj) or inspect.isfunction(obj)
                                       else type(obj))
        if module is not None and getattr(module, "__file__", None):
            files.add(module.__file__)
    return files


def machine() -> dict[str, Any]:
    """CPU, cores, load average, torch version and GPU of this machine."""
    from zoo.bench.report import machine as bench_machine

    return bench_machine()


def header_lines(record: Mapping[str, Any]) -> list[str]:
    """The human-readable header of a results file from its record."""
    info = record.get("machine") or {}
    wall = record.get("wall_seconds")
    lines = [f"# {record['title']}", "",
             "Written by a tool; regenerate rather than edit (docs/evaluation.md, \"Results that "
             "regenerate\").", "",
             f"- command: `{record['command']}`",
             f"- commit: `{record.get('commit', 'unknown')}`",
             f"- machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores"
             + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU")
             + f", torch {info.get('torch', '?')}, load average at the start "
             f"{info.get('load_avg', '?')}",
             (f"- wall time: {wall:.0f} s" if isinstance(wall, (int, float)) else "- wall time: -")
             + (f" (the jobs' CPU time: {record['cpu_seconds']:.0f} s)"
                if record.get("cpu_seconds") else ""),
             f"- written: {record.get('written', '?')}"]
    if record.get("stale"):
        lines.append(f"- **status: STALE** ({record['stale']})")
    else:
        lines.append("- status: current")
    return lines + [""]


def render(record: Mapping[str, Any], body: str) -> str:
    return "\n".join(header_lines(record)) + "\n" + body.rstrip() + "\n\n" + RECORD_START + "\n" \
        + json.dumps(record, indent=1, sort_keys=True) + "\n" + RECORD_END + "\n"


def write(path: str | Path, title: str, command: str, body: str, inputs: Mapping[str, str],
          wall_seconds: float | None = None, commit: str | None = None,
          machine_info: Mapping[str, Any] | None = None,
          cpu_seconds: float | None = None) -> Path:
    """Write a results file: header, ``body`` (holding ``<!-- zoo:block NAME -->`` blocks) and the
    record (status current). ``cpu_seconds``: the CPU time of the work, where it was measured
    (less affected than the wall time by other load on the machine)."""
    from zoo.tracking import git_commit

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"title": title, "command": command, "commit": commit or git_commit(),
              "machine": dict(machine_info or machine()), "wall_seconds": wall_seconds,
              "cpu_seconds": cpu_seconds,
              "written": datetime.datetime.now().isoformat(timespec="seconds"),
              "stale": None, "inputs": dict(sorted(inputs.items()))}
    path.write_text(render(record, body))
    return path


def block(name: str, text: str) -> str:
    """``text`` as a named block of a results file."""
    return f"<!-- zoo:block {name} -->\n{text.rstrip()}\n<!-- zoo:end -->\n"


def read(path: str | Path) -> tuple[dict[str, Any], str, dict[str, str]]:
    """(record, body without header and record, {block name: text}) of a results file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such results file")
    text = path.read_text()
    start = text.rfind(RECORD_START)
    if start < 0:
        raise ConfigError(f"{path}: not a results file (no {RECORD_START!r} record at the end)")
    record = json.loads(text[start + len(RECORD_START):text.rindex(RECORD_END)])
    head = "\n".join(header_lines(record)) + "\n"
    body = text[len(head):start] if text.startswith(head) else text[:start]
    return record, body, {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def changed_inputs(record: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """Inputs whose content differs from the record (or that are gone)."""
    root = root or project_root()
    changed = []
    for rel, digest in record.get("inputs", {}).items():
        path = root / rel
        if not path.is_file() or file_digest(path) != digest:
            changed.append(rel)
    return changed


def mark_stale(path: str | Path, reason: str | None = None) -> str:
    """Mark a results file stale (its numbers stay, flagged); returns the reason recorded."""
    record, body, _ = read(path)
    changed = changed_inputs(record)
    reason = reason or ("inputs changed since it was written: " + ", ".join(changed) if changed
                        else "marked stale by hand")
    record = {**record, "stale": reason}
    Path(path).write_text(render(record, body))
    return reason


def quote_text(file: str, name: str, root: Path, document: Path | None = None) -> str:
    """The generated copy of block ``name`` of results file ``file`` (relative to ``root``) for
    ``document`` (its link is relative to it): a provenance line, then the block."""
    import os

    record, _, blocks = read(root / file)
    if name not in blocks:
        raise ConfigError(f"{root / file}: no block {name!r}; blocks: {sorted(blocks)}")
    wall = record.get("wall_seconds")
    info = record.get("machine") or {}
    where = f"{info.get('cores', '?')}-core {'GPU ' + info['gpu'] if info.get('gpu') else 'CPU'}"
    if info.get("load_avg"):
        where += f" (load average {info['load_avg'][0]} at the start)"
    link = Path(os.path.relpath(root / file, (document or root / "README.md").parent)).as_posix()
    commit = str(record.get("commit"))
    commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    line = (f"*Generated by `{record['command']}` at commit `{commit}` "
            f"on a {where}" + (f", {wall:.0f} s wall" if isinstance(wall, (int, float)) else "")
            + (f", the jobs' CPU time {record['cpu_seconds']:.0f} s" if record.get("cpu_seconds")
               else "") + f"; from [{file}]({link}).*")
    if record.get("stale"):
        line = (f"> **Stale**: {record['stale']}. Regenerate with `{record['command']}` "
                "(docs/evaluation.md).\n\n" + line)
    return line + "\n\n" + blocks[name].rstrip() + "\n"


def quoting_documents(root: Path) -> list[Path]:
    return sorted({p for pattern in QUOTING_DOCS for p in root.glob(pattern) if p.is_file()})


def sync(root: Path | None = None, write_files: bool = True) -> list[str]:
    """Rewrite every quote in README.md and docs/*.md from its results file; returns the quotes
    (``document: file#block``) whose text changed (with ``write_files=False``: would change)."""
    root = root or project_root()
    changed = []
    for doc in quoting_documents(root):
        text = doc.read_text()

        def replace(match: re.Match) -> str:
            new = quote_text(match["file"], match["block"], root, doc)
            if new != match["body"]:
                changed.append(f"{doc.relative_to(root)}: {match['file']}#{match['block']}")
            return match["open"] + new + match["close"]

        updated = QUOTE.sub(replace, text)
        if write_files and updated != text:
            doc.write_text(updated)
    return changed


def results_files(root: Path) -> list[Path]:
    return sorted((root / "docs" / "results").glob("*.md"))


def check(root: Path | None = None) -> list[str]:
    """Problems: quotes that differ from their files, and results files whose inputs changed
    without being marked stale. Empty when all is in order."""
    root = root or project_root()
    problems = [f"{q} differs from the file: run `zoo results sync`"
                for q in sync(root, write_files=False)]
    for path in results_files(root):
        record, _, _ = read(path)
        changed = changed_inputs(record, root)
        if changed and not record.get("stale"):
            problems.append(f"{path.relative_to(root)}: written from inputs that have changed "
                            f"since ({', '.join(changed)}); regenerate it with "
                            f"`{record['command']}` or mark it stale with `zoo results stale "
                            f"{path.relative_to(root)}`, then `zoo results sync`")
    return problems


def main(argv: list[str]) -> int:
    """``zoo results sync | check | stale FILE [--reason TEXT]``."""
    parser = argparse.ArgumentParser(prog="zoo results", description="generated results files "
                                     "and the documents quoting them")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("sync", help="rewrite every quote in README.md and docs/*.md from its file")
    sub.add_parser("check", help="exit 1 listing quotes that differ and results whose inputs "
                                 "changed without being marked stale")
    p = sub.add_parser("stale", help="mark a results file stale, then sync the quotes")
    p.add_argument("file")
    p.add_argument("--reason", help="default: the inputs that changed since it was written")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.action == "sync":
        changed = sync(root)
        print("\n".join(f"updated {c}" for c in changed) or "every quote is up to date")
    elif args.action == "stale":
        print(f"{args.file}: marked stale ({mark_stale(args.file, args.reason)})")
        for c in sync(root):
            print(f"updated {c}")
    else:
        problems = check(root)
        print("\n".join(problems) or "results and quotes are in order")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
