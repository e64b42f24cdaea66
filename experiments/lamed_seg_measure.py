"""Train LaMed with the [SEG] path and REC/REG, then measure on the test split against baselines.

    python experiments/lamed_seg_measure.py experiment=lamed_seg_tiny [more overrides]

Segmentation: MONAI ``DiceMetric`` on masks thresholded at 0.5, end to end (the model must
generate ``[SEG]``; no ``[SEG]`` = an empty mask) and teacher-forced (the reference answer's
``[SEG]`` state, isolating the head), against an empty-mask baseline and the mean training
mask of the same class (thresholded at 0.5). REC: true 3D IoU, precision at IoU 0.5 and M3D's
as-coded IoU of the parsed box (unparsable = miss) against the mean training box. REG: exact
class name in "The target is {class}.". Prints one JSON object.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import defaultdict
from typing import Any

import torch


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Thresholded Dice of one mask pair ``(D, H, W)`` (MONAI DiceMetric; empty vs empty = 1)."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    return float(metric((pred[None, None] > 0.5).float(), (target[None, None] > 0.5).float()))


def reg_class(answer: str) -> str:
    """The class named in a REG answer "The target is {class}." ("" when absent)."""
    match = re.search(r"The target is (.+?)\.", answer)
    return match.group(1) if match else ""


def teacher_forced_masks(model: Any, samples: list[dict[str, Any]]) -> list[torch.Tensor]:
    """Probability masks from the reference answers' ``[SEG]`` states (one per sample)."""
    from recipes.lamed_seg import run_head, teacher_seg_positions
    from zoo.types import eval_mode

    with eval_mode(model), torch.no_grad():
        batch = model.collate(samples)
        embeds, visual = model.embed_inputs(batch)
        hidden = model.lm(embeds, batch["attention_mask"]).hidden_states
        where = teacher_seg_positions(batch["labels"], model.lm.special_ids["[SEG]"])
        rows = list(range(len(samples)))
        prompts = [model.seg_projector(hidden[i][where[i]]) for i in rows]
        image = batch["image"]
        logits, _, _ = run_head(model.heads["seg"], image, model._head_tokens(image, visual, rows),
                                prompts)
    return [torch.sigmoid(x[0]) for x in logits]


def chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def main(overrides: list[str]) -> dict[str, Any]:
    from zoo.boxes import box_iou, box_iou_m3d, parse_box, parse_box_m3d, precision_at_iou
    from zoo.config import compose
    from zoo.jobs import run_training

    torch.set_num_threads(1)  # the shared 2-core machine: one thread is several times faster
    cfg = compose(overrides)
    if cfg.get("eval") is not None:  # the zoo's own post-training evaluation is not needed here
        cfg.eval.enabled = False
    start = time.time()
    result = run_training(cfg)
    train_s = time.time() - start
    model, data = result["model"], result["data"]
    train = data.dataset("train", ["seg", "rec"])
    test = data.dataset("test", ["seg", "rec", "reg"])
    test_samples = [test[i] for i in range(len(test))]
    train_samples = [train[i] for i in range(len(train))]

    # ---------------------------------------------------------- baselines from training data
    class_of = lambda s: s["meta"]["id"].rsplit("/", 1)[-1]  # noqa: E731  (seg/rec item index)
    mean_mask: dict[str, list[torch.Tensor]] = defaultdict(list)
    boxes = []
    for s in train_samples:
        if s["task"] == "seg" and s.get("mask") is not None:
            mean_mask[class_of(s)].append(s["mask"][0].float())
        if s["task"] == "rec" and s.get("box") is not None:
            boxes.append(torch.tensor(s["box"], dtype=torch.float64))
    mean_box = torch.stack(boxes).mean(0).tolist()

    # ---------------------------------------------------------- segmentation
    seg = [s for s in test_samples if s["task"] == "seg" and "[SEG]" in s["answer"]]
    start = time.time()
    ends, forced, emitted = [], [], []
    for part in chunks(seg, 8):
        texts, masks = model.segment(part, max_new_tokens=16)
        forced += teacher_forced_masks(model, part)
        for s, m in zip(part, masks):
            emitted.append(m.shape[0])
            ends.append(m[0] if m.shape[0] else torch.zeros_like(s["mask"][0]))
    targets = [s["mask"][0].float() for s in seg]
    seg_scores = {
        "n": len(seg),
        "dice_end_to_end": sum(map(dice, ends, targets)) / len(seg),
        "dice_teacher_forced": sum(map(dice, forced, targets)) / len(seg),
        "dice_empty_baseline": sum(dice(torch.zeros_like(t), t) for t in targets) / len(seg),
        "dice_mean_class_mask_baseline": sum(
            dice(torch.stack(mean_mask[class_of(s)]).mean(0), t) for s, t in zip(seg, targets)
        ) / len(seg),
        "seg_token_rate": sum(k > 0 for k in emitted) / len(seg),
    }

    # ---------------------------------------------------------- REC / REG
    rec = [s for s in test_samples if s["task"] == "rec" and s.get("box") is not None]
    preds, raw = [], []
    for part in chunks(rec, 8):
        for text in model.generate(part, max_new_tokens=80):
            raw.append(text)
            preds.append(parse_box(text))
    gold = [s["box"] for s in rec]
    rec_scores = {
        "n": len(rec),
        "parsed": sum(p is not None for p in preds) / len(rec),
        "iou": sum(map(box_iou, preds, gold)) / len(rec),
        "precision@0.5": precision_at_iou(preds, gold, 0.5),
        "iou_m3d_as_coded": sum(box_iou_m3d(parse_box_m3d(t), g) for t, g in zip(raw, gold))
        / len(rec),
        "baseline_mean_box_iou": sum(box_iou(mean_box, g) for g in gold) / len(rec),
        "baseline_mean_box_precision@0.5": precision_at_iou([mean_box] * len(gold), gold, 0.5),
        "baseline_mean_box_iou_m3d": sum(box_iou_m3d(mean_box, g) for g in gold) / len(rec),
        "examples": raw[:3],
    }
    reg = [s for s in test_samples if s["task"] == "reg"]
    reg_texts = [t for part in chunks(reg, 8) for t in model.generate(part, max_new_tokens=16)]
    reg_scores = {"n": len(reg), "exact_class": sum(
        reg_class(t) == reg_class(s["answer"]) for t, s in zip(reg_texts, reg)) / max(len(reg), 1)}
    classes = [reg_class(s["answer"]) for s in reg]
    majority = max(set(classes), key=classes.count) if classes else ""
    reg_scores["majority_baseline"] = classes.count(majority) / max(len(classes), 1)
    report = {"overrides": overrides, "train_seconds": round(train_s, 1),
              "eval_seconds": round(time.time() - start, 1),
              "seg": seg_scores, "rec": rec_scores, "reg": reg_scores}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
