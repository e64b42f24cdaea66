"""Med3DInsight downstream (docs/reference.md F): fine-tune a (pretrained) 3D encoder for 3D
segmentation or classification; the same recipe without ``init_from`` is the from-scratch
baseline.

- ``task="seg"``: UNETR/SwinUNETR-style decoder with skips (``head=unetr_decoder``) over the
  encoder's multi-scale features, one sigmoid output channel per class of ``classes``. Samples
  are the zoo's ``seg`` items, one class each with a one-channel mask ``(1, D, H, W)``: the class
  is ``meta["target"]`` when the data gives it, else the longest class name found in the prompt.
  Loss: the decoder's Dice + BCE (MONAI ``DiceCELoss``) on each sample's own class channel.
- ``task="cls"``: pooled encoder tokens + linear head (``head=linear_classifier``), cross-entropy
  on ``label``.

Batch contract: ``image (B, 1, D, H, W)`` zero-padded to multiples of ``pad_multiple``;
``mask (B, 1, D, H, W)`` padded alike and ``class_index (B,)`` (seg) or ``label (B,)`` (cls).

``init_from``: a pretraining checkpoint: a ``model.safetensors`` file, a checkpoint folder holding
one, or a trainer output folder (``checkpoints/pretrain-final/model.safetensors``); the keys under
``encoder.`` are loaded into the encoder (every encoder key must be there).

Evaluation: the models offer ``segment`` / ``classify`` (so ``zoo eval`` scores them);
:func:`evaluate` gives per-item Dice (MONAI, via :mod:`zoo.evaluation.segmentation`) or class
probabilities, :func:`summarize` Dice per class or accuracy and AUROC (torchmetrics), and
:func:`compare_finetune` trains the pretrained and the from-scratch variant on the same split and
pairs their per-item scores with :func:`zoo.stats.paired_bootstrap`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from heads.seg_decoder import extract_features, feature_spec
from recipes.med3dinsight import pad_to_multiple
from zoo.build import on_meta
from zoo.errors import CheckpointError, ConfigError, DataError, MissingFileError, RunError
from zoo.registry import RECIPES
from zoo.types import Stage, StepOutput, ZooModel, eval_mode

TASKS = ("seg", "cls")


def resolve_checkpoint(path: str | Path) -> Path:
    """``model.safetensors`` for a file, a checkpoint folder or a pretraining run's folder
    (``<trainer.output_dir>/<run id>``, docs/guarantees.md)."""
    p = Path(path)
    for candidate in (p, p / "model.safetensors",
                      p / "checkpoints" / "pretrain-final" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    raise MissingFileError(f"init_from={path}: no model.safetensors there (give the file, its "
                           "checkpoint folder or the pretraining run's folder "
                           "<trainer.output_dir>/<run id>)")


def load_encoder(encoder: nn.Module, path: str | Path, prefix: str = "encoder.") -> Path:
    """Load the ``prefix``-ed weights of a checkpoint into ``encoder`` strictly; returns the
    file. Missing or unexpected encoder keys and shape mismatches raise naming the file."""
    from safetensors.torch import load_file

    file = resolve_checkpoint(path)
    state = {k[len(prefix):]: v for k, v in load_file(str(file)).items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"init_from={file}: no keys under {prefix!r} (is it a pretraining "
                              "checkpoint of this encoder?)")
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"init_from={file}: encoder keys do not match: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected "
                              f"{unexpected[:5]} ({len(unexpected)}), shape mismatches "
                              f"{sorted(shapes)[:5]}")
    encoder.load_state_dict(state, strict=True)
    return file


def class_of(sample: dict[str, Any], classes: Sequence[str]) -> int:
    """Index in ``classes`` of a seg sample's target: ``meta["target"]`` or the longest class
    name appearing as whole words in the prompt."""
    target = sample["meta"].get("target")
    if target is not None:
        if target not in classes:
            raise DataError(f"seg sample {sample['meta']['id']!r}: target {target!r} is not in "
                            f"recipe.classes {list(classes)}")
        return list(classes).index(target)
    prompt = str(sample.get("prompt", "")).lower()
    found = [c for c in classes if re.search(rf"\b{re.escape(c.lower())}\b", prompt)]
    if not found:
        raise DataError(f"seg sample {sample['meta']['id']!r}: none of recipe.classes "
                        f"{list(classes)} appears in its prompt {sample.get('prompt')!r}")
    return list(classes).index(max(found, key=len))


class Med3DInsightFinetune(ZooModel):
    """Encoder + one downstream head (``heads[task]``); subclasses add the task's loss and its
    evaluation interface (``segment`` / ``classify``, as :mod:`zoo.evaluation` expects)."""

    task = ""

    def __init__(self, encoder: nn.Module, head: nn.Module, stages: dict[str, Stage],
                 pad_multiple: int = 32) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({self.task: head})
        self.stages, self.pad_multiple = stages, pad_multiple

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        wrong = [s for s in samples if s.get("task") != self.task]
        if wrong:
            raise ConfigError(f"med3dinsight_finetune(task={self.task!r}) got sample "
                              f"{wrong[0]['meta']['id']!r} of task {wrong[0].get('task')!r}")
        batch = super().collate(samples)
        batch["image"] = pad_to_multiple(batch["image"], self.pad_multiple)
        batch["size"] = tuple(samples[0]["image"].shape[-3:])
        return batch

    def _device_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        device = next(self.parameters()).device
        return {k: v.to(device) if isinstance(v, Tensor) else v
                for k, v in self.collate(samples).items()}


class SegFinetune(Med3DInsightFinetune):
    """Segmentation: one sigmoid channel per class; each sample supervises its own class."""

    task = "seg"

    def __init__(self, encoder: nn.Module, head: nn.Module, stages: dict[str, Stage],
                 classes: Sequence[str], pad_multiple: int = 32) -> None:
        super().__init__(encoder, head, stages, pad_multiple)
        self.classes = tuple(classes)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().collate(samples)
        if "mask" not in batch or batch["mask"].shape[1] != 1:
            raise DataError("seg samples must carry one-channel masks (1, D, H, W)")
        batch["mask"] = pad_to_multiple(batch["mask"], self.pad_multiple)
        batch["class_index"] = torch.tensor([class_of(s, self.classes) for s in samples])
        return batch

    def logits(self, batch: dict[str, Any]) -> Tensor:
        """Each sample's own class channel ``(B, 1, D, H, W)``, padding cropped."""
        image = batch["image"]
        out = self.heads["seg"](extract_features(self.encoder, image), image).logits
        index = batch["class_index"].to(out.device).view(-1, 1, 1, 1, 1)
        own = out.gather(1, index.expand(-1, 1, *out.shape[2:]))
        d, h, w = batch["size"]
        return own[..., :d, :h, :w]

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        logits = self.logits(batch)
        d, h, w = batch["size"]
        target = batch["mask"][..., :d, :h, :w].to(logits.dtype)
        return StepOutput(self.heads["seg"].loss_fn(logits, target))

    @torch.no_grad()
    def segment(self, samples: list[dict[str, Any]]) -> tuple[list[str], Tensor]:
        """(empty texts, probabilities ``(B, 1, D, H, W)`` of each sample's class)."""
        return [""] * len(samples), self.logits(self._device_batch(samples)).sigmoid()


class ClsFinetune(Med3DInsightFinetune):
    """Classification: pooled encoder tokens + linear head, cross-entropy on ``label``."""

    task = "cls"

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().collate(samples)
        batch["label"] = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
        return batch

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        logits = self.heads["cls"](self.encoder(batch["image"])).logits
        label = batch["label"].to(logits.device)
        loss = nn.functional.cross_entropy(logits, label)
        return StepOutput(loss, {"acc": (logits.argmax(-1) == label).float().mean()})

    @torch.no_grad()
    def classify(self, samples: list[dict[str, Any]]) -> Tensor:
        """Class probabilities ``(B, C)``."""
        batch = self._device_batch(samples)
        return self.heads["cls"](self.encoder(batch["image"])).logits.float().softmax(-1)


def evaluate(model: Med3DInsightFinetune, dataset: Any, batch_size: int = 4) -> list[dict]:
    """Per-item results in dataset order, in eval mode: seg ``{"id", "class", "dice"}``
    (:func:`zoo.evaluation.segmentation.dice_scores`, MONAI, threshold 0.5; an empty prediction
    of an empty mask scores 1); cls ``{"id", "label", "prob", "correct"}``."""
    from zoo.evaluation.classification import predicted_class
    from zoo.evaluation.segmentation import dice_scores

    rows: list[dict] = []
    with eval_mode(model):
        for start in range(0, len(dataset), batch_size):
            chunk = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            ids = [s["meta"]["id"] for s in chunk]
            if isinstance(model, SegFinetune):
                _, probs = model.segment(chunk)
                target = torch.stack([s["mask"] for s in chunk]).float()
                for sid, s, score in zip(ids, chunk, dice_scores(probs.float().cpu(), target)):
                    rows.append({"id": sid, "class": model.classes[class_of(s, model.classes)],
                                 "dice": score["dice"]})
            else:
                probs = model.classify(chunk).cpu()
                for sid, s, p, pred in zip(ids, chunk, probs, predicted_class(probs).tolist()):
                    rows.append({"id": sid, "label": int(s["label"]), "prob": p.tolist(),
                                 "correct": float(pred == int(s["label"]))})
    return rows


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Seg: mean Dice and Dice per class; cls: accuracy and AUROC
    (:func:`zoo.evaluation.classification.classification_metrics`; no AUROC when the items hold
    fewer classes than the model)."""
    if not rows:
        raise ValueError("summarize: no evaluated items")
    if "dice" in rows[0]:
        per_class: dict[str, list[float]] = {}
        for r in rows:
            per_class.setdefault(r["class"], []).append(r["dice"])
        return {"dice": sum(r["dice"] for r in rows) / len(rows), "items": len(rows),
                "dice_per_class": {c: sum(v) / len(v) for c, v in sorted(per_class.items())}}
    from zoo.evaluation.classification import classification_metrics

    probs = torch.tensor([r["prob"] for r in rows])
    labels = torch.tensor([r["label"] for r in rows])
    return {**classification_metrics(probs, labels), "items": len(rows)}


def compare_finetune(overrides: Sequence[str], init_from: str, split: str = "test",
                     seed: int = 0) -> dict[str, Any]:
    """Fine-tune twice on the same data (``recipe.init_from=init_from`` vs from scratch), evaluate
    both per item on ``split`` and pair them: returns each variant's summary, per-item rows and
    the paired bootstrap interval of the per-item difference (Dice or correctness)."""
    from zoo.config import compose
    from zoo.jobs import run_training
    from zoo.stats import paired_bootstrap

    results: dict[str, Any] = {}
    split_hashes = set()
    for name, init in (("pretrained", init_from), ("scratch", None)):
        cfg = compose(list(overrides) + [f"recipe.init_from={init if init else 'null'}",
                                         f"seed={seed}",
                                         f"tracking.experiment=m3di_finetune_{name}"])
        run = run_training(cfg)
        split_hashes.add(run["split_hash"])
        model = run["model"]
        rows = evaluate(model, run["data"].dataset(split, tasks=[model.task]))
        results[name] = {"summary": summarize(rows), "rows": rows,
                         "seconds": sum(r.seconds for r in run["stages"])}
    if len(split_hashes) != 1:
        raise RunError(f"compare_finetune: the runs used different splits {split_hashes}")
    key = "dice" if "dice" in results["scratch"]["rows"][0] else "correct"
    results["paired"] = paired_bootstrap([r[key] for r in results["pretrained"]["rows"]],
                                         [r[key] for r in results["scratch"]["rows"]], seed=seed)
    results["metric"] = key
    return results


@RECIPES.register
def med3dinsight_finetune(encoder: Callable[..., Any], head: Callable[..., Any], task: str = "seg",
                          classes: Sequence[str] = (), init_from: str | None = None,
                          pad_multiple: int = 32, lr: float = 1e-4, weight_decay: float = 1e-5,
                          epochs: float = 50.0, batch_size: int = 2,
                          warmup_ratio: float = 0.0) -> Med3DInsightFinetune:
    """Fine-tune ``encoder`` with ``head`` (``unetr_decoder`` for ``task="seg"`` with one output
    channel per entry of ``classes``; ``linear_classifier`` for ``task="cls"``). ``init_from``:
    the pretraining checkpoint whose ``encoder.`` weights start the encoder (null = scratch)."""
    if task not in TASKS:
        raise ConfigError(f"recipe.task must be one of {TASKS}, got {task!r}")
    vision = encoder()
    if task == "seg":
        if not classes:
            raise ConfigError("recipe.classes: task='seg' needs the class names (one output "
                              "channel each)")
        dims, strides = feature_spec(vision)
        part = head(feature_dims=dims, feature_strides=strides, out_channels=len(classes))
        if not hasattr(part, "loss_fn") or getattr(part, "activation", "sigmoid") != "sigmoid":
            raise ConfigError(f"task='seg' needs a sigmoid segmentation decoder (head="
                              f"unetr_decoder), got {type(part).__name__}")
    else:
        part = head(in_dim=vision.out_dim)
        if not hasattr(part, "pooled"):
            raise ConfigError(f"task='cls' needs a classifier head (head=linear_classifier), got "
                              f"{type(part).__name__}")
    if init_from and not on_meta():
        load_encoder(vision, init_from)
    stages = {"finetune": Stage("finetune", trainable=("encoder", "heads"), tasks=(task,),
                                lr=lr, weight_decay=weight_decay, epochs=epochs,
                                warmup_ratio=warmup_ratio, batch_size=batch_size)}
    if task == "seg":
        return SegFinetune(vision, part, stages, classes, pad_multiple)
    return ClsFinetune(vision, part, stages, pad_multiple)
