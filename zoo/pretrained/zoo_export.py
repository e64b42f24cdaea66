"""A folder written by ``zoo export`` as ``recipe.init_from`` (docs/pretrained.md, "Exported
zoo models"): a new run starts from an exported model's weights.

The export's files are checked against the sha256 its ``config.json`` records and its stored
configuration may name registered builders only (:func:`zoo.trained.locate`). Every tensor of its
``model.safetensors`` goes to the same name in the model the recipe built, shapes checked. One
difference is bridged: an export trained without LoRA into a model built with LoRA (its
weights go to the wrapped layers' ``base_layer``; the adapters start as in a new run, B = 0).
An export whose LLM carries LoRA adapters needs a model built with LoRA of the same rank.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from zoo.errors import CheckpointError
from zoo.pretrained.report import LoadReport, Placer

LLM = "lm.model."
PEFT_ROOT = "lm.model.base_model.model."
# the Linear a peft LoRA layer wraps: <path>.weight -> <path>.base_layer.weight
LORA_WRAPPED = re.compile(r"(.*)\.(weight|bias)$")


def load_export(model: nn.Module, path: str | Path) -> LoadReport:
    """Place the export at ``path`` into ``model`` (module docstring); returns the report."""
    from zoo.checkpoint import read_state_dict, tied_aliases
    from zoo.trained import locate

    trained = locate(str(path))
    trained.verify()
    report = LoadReport(str(trained.folder))
    placer = Placer(model, report)
    keys = set(placer.targets)
    state = {}
    for file in trained.weights:
        state.update(read_state_dict(file))
    if any(".lora_" in k for k in state) and not any(".lora_" in k for k in keys):
        raise CheckpointError(f"{trained.folder}: its LLM carries LoRA adapters; build the model "
                              "with LoRA of the same rank (recipe.train_lm=lora, recipe.lora_r)")
    placer.add(state, lambda key: (model_key(keys, key), None))
    tied = tied_aliases(model.state_dict(), report.placed)

    def keep(name: str) -> str | None:
        if name in tied:
            return "tied to a placed tensor (stored once)"
        if ".lora_" in name and not any(".lora_" in k for k in state):
            return "LoRA adapter not in the export (trained without LoRA): starts as in a new run"
        return None

    return placer.finish(keep)


def model_key(keys: set[str], key: str) -> str | None:
    """The model's name for an exported tensor: the same name, or, for an export without LoRA
    read into a model with LoRA, the wrapped layer's ``base_layer`` (None: no place)."""
    if key in keys:
        return key
    if key.startswith(LLM):
        inner = PEFT_ROOT + key[len(LLM):]
        if inner in keys:
            return inner
        match = LORA_WRAPPED.fullmatch(inner)
        if match and f"{match[1]}.base_layer.{match[2]}" in keys:
            return f"{match[1]}.base_layer.{match[2]}"
    return None
