"""``docs/BENCHMARKS.md``: machine description, Markdown tables, and the regression check.

The file ends with the run's flat metrics as JSON inside an HTML comment (``<!-- bench-json``),
which ``--check`` reads back: every latency key (``*_s``) of the current run is compared with the
recorded one and flagged when it is slower by more than ``threshold`` (relative) and ``min_delta_s``
(absolute, so sub-millisecond jitter of tiny cases is ignored); FLOPs and parameter counts are
deterministic and flagged on any change.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from zoo.errors import ConfigError, DataError, MissingFileError

JSON_START, JSON_END = "<!-- bench-json", "bench-json -->"


def source() -> dict[str, Any]:
    """The command line and the git commit of the working tree (``+dirty`` with uncommitted
    changes; None outside a git checkout): what a recorded number was made with."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, ""
    return {"command": " ".join(["zoo bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"]
            else " ".join(sys.argv), "commit": f"{commit}+dirty" if commit and dirty else commit}


def machine() -> dict[str, Any]:
    """CPU model, core count, load average, torch version and GPU (if any), with the command and
    commit (:func:`source`)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version(),
                            "load_avg": [round(v, 2) for v in os.getloadavg()],
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                            **source()}
    return info


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(path: str | Path, sections: Sequence[tuple[str, str]], metrics: dict[str, float],
          info: dict[str, Any]) -> Path:
    """Write ``# Benchmarks``, the machine, each ``(title, body)`` section and the metrics JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# Benchmarks\n", "Written by `zoo bench` (see docs/performance.md for what is "
             "measured and how); regenerate rather than edit.\n",
             "## Machine\n", table(["key", "value"], [(k, v) for k, v in info.items()]) + "\n"]
    for title, body in sections:
        parts += [f"## {title}\n", body.rstrip() + "\n"]
    parts.append(f"{JSON_START}\n{json.dumps(metrics, indent=0, sort_keys=True)}\n{JSON_END}\n")
    path.write_text("\n".join(parts))
    return path


def read_metrics(path: str | Path) -> dict[str, float]:
    """The metrics JSON recorded in a BENCHMARKS.md (``{}`` when the file has none)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no recorded benchmark at {path}: run `zoo bench` first")
    match = re.search(re.escape(JSON_START) + r"(.*?)" + re.escape(JSON_END), path.read_text(), re.S)
    if match is None:
        raise DataError(f"{path} holds no recorded metrics ({JSON_START!r} block)")
    return json.loads(match.group(1))


@dataclass
class Finding:
    key: str
    recorded: float
    current: float
    kind: str   # "slower" | "changed"

    def line(self) -> str:
        if self.kind == "slower":
            return (f"SLOWER  {self.key}: {self.recorded:.4g} s -> {self.current:.4g} s "
                    f"(x{self.current / self.recorded:.2f})")
        return f"CHANGED {self.key}: {self.recorded:.6g} -> {self.current:.6g}"


def regressions(recorded: dict[str, float], current: dict[str, float], threshold: float = 0.3,
                min_delta_s: float = 0.01) -> list[Finding]:
    """Latencies (``*_s``) slower than ``recorded * (1 + threshold)`` and by ``min_delta_s`` or
    more; exact counts (``*flops*``, ``*params*``) that differ. Keys in one run only are skipped."""
    if threshold < 0 or min_delta_s < 0:
        raise ConfigError(f"threshold and min_delta_s must be >= 0, got {threshold}, {min_delta_s}")
    found = []
    for key in sorted(set(recorded) & set(current)):
        old, new = recorded[key], current[key]
        if old is None or new is None:
            continue
        if key.endswith("_s"):
            if new > old * (1 + threshold) and new - old >= min_delta_s:
                found.append(Finding(key, old, new, "slower"))
        elif ("flops" in key or "params" in key) and old != new:
            found.append(Finding(key, old, new, "changed"))
    return found
