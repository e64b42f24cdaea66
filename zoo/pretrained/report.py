"""What a pretrained-weights loader did with each tensor: placed, skipped (with the reason), or
kept from the model's own build (with the reason), and the placement itself."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from zoo.errors import CheckpointError

logger = logging.getLogger(__name__)

# A key rule: file key -> (model key, None) to place it, or (None, reason) to skip it.
KeyRule = Callable[[str], "tuple[str | None, str | None]"]


@dataclass
class LoadReport:
    """``placed``: model key -> file key; ``skipped``: file key -> reason; ``kept``: model key ->
    reason it keeps the value it was built with (not in the file)."""

    source: str
    placed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: counts, and the skipped/kept keys grouped by reason."""
        parts = [f"{self.source}: {len(self.placed)} tensors placed"]
        for label, table in (("skipped", self.skipped), ("kept", self.kept)):
            for reason, n in Counter(table.values()).most_common():
                parts.append(f"{n} {label} ({reason})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"source": self.source, "placed": dict(self.placed),
                "skipped": dict(self.skipped), "kept": dict(self.kept)}


class Placer:
    """Copies file tensors into ``model`` by a key rule, shard after shard, then checks that every
    model tensor was placed or is allowed to keep its own value."""

    def __init__(self, model: nn.Module, report: LoadReport) -> None:
        self.model, self.report = model, report
        self.targets = model.state_dict(keep_vars=True)
        self.unknown: list[str] = []
        self.wrong: dict[str, tuple] = {}

    def add(self, state: dict[str, Tensor], rule: KeyRule) -> None:
        with torch.no_grad():
            for key, value in state.items():
                name, reason = rule(key)
                if name is None:
                    if reason is None:
                        self.unknown.append(key)
                    else:
                        self.report.skipped[key] = reason
                    continue
                target = self.targets.get(name)
                if target is None:
                    self.unknown.append(f"{key} (as {name})")
                    continue
                if tuple(target.shape) != tuple(value.shape):
                    self.wrong[key] = (tuple(value.shape), tuple(target.shape))
                    continue
                if name in self.report.placed:
                    raise CheckpointError(f"{self.report.source}: {key} and "
                                          f"{self.report.placed[name]} both go to {name}")
                target.copy_(value.to(device=target.device, dtype=target.dtype))
                self.report.placed[name] = key

    def finish(self, keep: Callable[[str], str | None], hint: str = "") -> LoadReport:
        """Raise unless every file key was placed or skipped and every model key not placed is
        allowed by ``keep`` (model key -> reason, or None when it must come from the file)."""
        source = self.report.source
        if self.unknown:
            raise CheckpointError(f"{source}: {len(self.unknown)} keys have no place in the model: "
                                  f"{_short(self.unknown)}{hint}")
        if self.wrong:
            items = list(self.wrong.items())
            raise CheckpointError(f"{source}: {len(items)} shape mismatches (file, model): "
                                  f"{_short([f'{k} {a} vs {b}' for k, (a, b) in items])}{hint}")
        missing = []
        for name in self.targets:
            if name in self.report.placed:
                continue
            reason = keep(name)
            if reason is None:
                missing.append(name)
            else:
                self.report.kept[name] = reason
        if missing:
            raise CheckpointError(f"{source}: {len(missing)} model tensors are not in the file: "
                                  f"{_short(missing)}{hint}")
        logger.info(self.report.summary())
        return self.report


def init_from(model: nn.Module, path: str | None, loader: Callable[[nn.Module, str], LoadReport]
              ) -> None:
    """A recipe's ``init_from``: ``loader(model, path)`` sets ``model.init_report``; a folder
    written by ``zoo export`` is read by :func:`zoo.pretrained.zoo_export.load_export` instead. On
    the meta device (parameter counting) nothing is read, but the path must exist."""
    if not path:
        return
    from pathlib import Path

    from zoo.build import on_meta
    from zoo.errors import MissingFileError

    if on_meta():
        if not Path(path).exists():
            raise MissingFileError(f"recipe.init_from={path} does not exist")
        return
    from zoo.trained import is_export

    if is_export(path):
        from zoo.pretrained.zoo_export import load_export

        loader = load_export
    model.init_report = loader(model, path)


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")
