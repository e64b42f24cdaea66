"""One evaluator per M3D-Bench task, registered in ``zoo.TASKS`` by task name.

Each evaluator takes the model, the test samples of its task and an :class:`EvalContext`, and
returns a :class:`~zoo.evaluation.base.TaskResult` with per-item records, aggregate metrics and the
records of a baseline computed from the train split (majority answer, mean training box, empty
mask). A model that lacks the method a task needs gets a skipped result with a note, never a
zero. What a model can do is read from the capability protocols of :mod:`zoo.types`:
``generate(samples, max_new_tokens)`` (greedy texts; LaMed-like recipes), :class:`AnswerScorer`,
:class:`Segmenter` (``segment(samples) -> (texts, masks (B, K, D, H, W) probabilities)``),
:class:`PairEmbedder` (``collate`` + ``embed_pairs(batch) -> (image_emb, text_emb)``, CLIP3D)
and :class:`Classifier` (``classify(samples)``: probabilities ``(B,)`` or ``(B, K)``).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from zoo.evaluation import grounding, segmentation, text, vqa
from zoo.evaluation.base import TaskResult, batches, mean_scores, record, skipped
from zoo.registry import TASKS
from zoo.types import AnswerScorer, Classifier, PairEmbedder, Segmenter, ZooModel, eval_mode

# task -> the data task whose samples it evaluates
DATA_TASK = {"retrieval": "caption", "caption": "caption", "vqa_closed": "vqa_closed",
             "vqa_open": "vqa_open", "rec": "rec", "reg": "reg", "seg": "seg",
             "refseg": "refseg", "cls": "cls"}
DEFAULT_MAX_NEW_TOKENS = {"caption": 128, "vqa_closed": 16, "vqa_open": 32, "rec": 48, "reg": 32,
                          "seg": 16, "refseg": 16, "cls": 8}


@dataclass
class EvalContext:
    """What evaluators need besides the model and the test samples."""

    train_items: list[dict[str, Any]] = field(default_factory=list)
    train_samples: Callable[[str, int], list[dict[str, Any]]] | None = None
    batch_size: int = 8
    max_new_tokens: dict[str, int] = field(default_factory=dict)
    bertscore_model: str | None = None
    bertscore_layers: int | None = None
    judge: Any = None
    baseline_items: int = 256
    progress: Callable[[str, int, int], None] | None = None

    def tokens(self, task: str) -> int:
        return int(self.max_new_tokens.get(task, DEFAULT_MAX_NEW_TOKENS.get(task, 64)))


def can_generate(model: Any) -> bool:
    method = getattr(type(model), "generate", None)
    return method is not None and method is not ZooModel.generate


def generate_all(model: Any, samples: list[dict], ctx: EvalContext, task: str) -> list[str]:
    out: list[str] = []
    for chunk in batches(samples, ctx.batch_size):
        out += model.generate(chunk, max_new_tokens=ctx.tokens(task))
        if ctx.progress:
            ctx.progress(task, len(out), len(samples))
    return out


def _no_generate(task: str, model: Any) -> TaskResult:
    return skipped(task, f"{type(model).__name__} does not generate text; {task} not evaluated")


def _text_task(task: str, model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    if not can_generate(model):
        return _no_generate(task, model)
    predictions = generate_all(model, samples, ctx, task)
    references = [s["answer"] for s in samples]
    records = [record(s, p, r, text.text_scores(p, r))
               for s, p, r in zip(samples, predictions, references)]
    notes = text.text_notes()
    f1 = text.bertscore_f1(predictions, references, ctx.bertscore_model, ctx.bertscore_layers,
                           batch_size=ctx.batch_size)
    if f1 is None:
        notes.append("BERTScore skipped: no eval.bertscore_model (local model directory) given")
    else:
        for rec, value in zip(records, f1):
            rec["scores"]["bertscore_f1"] = value
    valid: list[float] = []
    if ctx.judge is not None and task == "caption":
        from zoo.evaluation.judge import JudgeError

        try:
            judged = ctx.judge.score_all(predictions, references)
        except JudgeError as err:  # the judge is down or refusing: the task is not judged
            judged = [None] * len(records)
            notes.append(f"not judged: {err}")
            print(f"warning: {task}: not judged: {err}", file=sys.stderr, flush=True)
        else:
            valid = [v for v in judged if v is not None]
            if len(valid) < len(judged):
                notes.append(f"LLM judge gave no number for {len(judged) - len(valid)} of "
                             f"{len(judged)} reports")
        for rec, value in zip(records, judged):
            rec["judge"] = value
    result = TaskResult(task, records, mean_scores(records, by_type=True), note="; ".join(notes))
    if valid:
        result.metrics["llm_judge"] = sum(valid) / len(valid)
    return result


@TASKS.register
def caption(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """Report generation: BLEU-1..4, ROUGE-1/L, METEOR, BERTScore (local model), LLM judge."""
    return _text_task("caption", model, samples, ctx)


@TASKS.register
def vqa_open(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """Open VQA: text metrics per item, broken down by question type."""
    return _text_task("vqa_open", model, samples, ctx)


@TASKS.register
def reg(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """REG (text from box): text metrics."""
    return _text_task("reg", model, samples, ctx)


@TASKS.register
def vqa_closed(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """Closed VQA: strict letter accuracy and M3D's substring rule on the greedy output, per
    question type; for models with ``answer_logprob`` also ``accuracy_ll`` (the most likely of
    the item's full answers, 2 to 26); baseline: the train split's majority answer per question
    type."""
    if not can_generate(model):
        return _no_generate("vqa_closed", model)
    predictions = generate_all(model, samples, ctx, "vqa_closed")
    ranked = most_likely_choices(model, samples, ctx) if isinstance(model, AnswerScorer) else None
    records = []
    for i, (s, p) in enumerate(zip(samples, predictions)):
        scores = vqa.closed_scores(p, s["answer"], s["choices"])
        if ranked is not None:
            scores["accuracy_ll"] = float(ranked[i] == vqa.answer_letter(s["answer"], s["choices"]))
        records.append(record(s, p, s["answer"], scores))
    result = TaskResult("vqa_closed", records, mean_scores(records, by_type=True))
    train = [i for i in ctx.train_items if i["task"] == "vqa_closed"]
    if train:
        majority = vqa.majority_answers(train)
        base = []
        for s in samples:
            guess = vqa.majority_prediction(majority, s["meta"].get("question_type"), s["choices"])
            scores = vqa.closed_scores(guess, s["answer"], s["choices"])
            if ranked is not None:  # the baseline commits to one choice: same under either rule
                scores["accuracy_ll"] = scores["accuracy"]
            base.append(record(s, guess, s["answer"], scores))
        result.baseline, result.baseline_records = "majority answer per question type", base
    return result


def most_likely_choices(model: Any, samples: list[dict], ctx: EvalContext) -> list[str]:
    """Per closed item, the letter of the choice whose full answer ``"{letter}. {text}"`` has the
    highest log-likelihood under ``model.answer_logprob`` (multiple-choice scoring; ``NA``
    choices are not candidates)."""
    options = [(i, letter, {**s, "answer": f"{letter}. {choice}"}) for i, s in enumerate(samples)
               for letter, choice in zip(vqa.LETTERS, s["choices"]) if choice != "NA"]
    scores: list[float] = []
    for chunk in batches([o[2] for o in options], ctx.batch_size):
        scores += model.answer_logprob(chunk).tolist()
    best: dict[int, tuple[str, float]] = {}
    for (i, letter, _), score in zip(options, scores):
        if i not in best or score > best[i][1]:
            best[i] = (letter, score)
    return [best[i][0] for i in range(len(samples))]


@TASKS.register
def rec(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """REC (box from text): true IoU, hit@0.5 and M3D's as-coded IoU (its parser, enclosing-box
    IoU, -1 without a box), on present targets; baseline: the mean training box."""
    if not can_generate(model):
        return _no_generate("rec", model)
    present = [s for s in samples if s.get("box") is not None]
    if not present:
        return skipped("rec", "no test REC item with a present target")
    predictions = generate_all(model, present, ctx, "rec")
    records = [record(s, p, s["box"], grounding.rec_scores(p, s["box"], s["answer"]))
               for s, p in zip(present, predictions)]
    note = f"{len(samples) - len(present)} REC items without a target were not scored"
    result = TaskResult("rec", records, mean_scores(records), note=note)
    if ctx.train_samples is not None:
        boxes = [s["box"] for s in ctx.train_samples("rec", ctx.baseline_items)
                 if s.get("box") is not None]
        if boxes:
            guess = grounding.format_box_text(grounding.mean_box(boxes))
            result.baseline = f"mean training box over {len(boxes)} train items"
            result.baseline_records = [
                record(s, guess, s["box"], grounding.rec_scores(guess, s["box"], s["answer"]))
                for s in present]
    return result


def generation_kwargs(method: Any, max_new_tokens: int) -> dict[str, int]:
    """``{"max_new_tokens": n}`` when ``method`` takes it (generative segmenters), else ``{}``."""
    import inspect

    params = inspect.signature(method).parameters
    return {"max_new_tokens": max_new_tokens} if "max_new_tokens" in params else {}


def can_segment(model: Any) -> bool:
    """A :class:`~zoo.types.Segmenter` (a LaMed built with a SegVol head, a fine-tuned
    segmentation model)."""
    return isinstance(model, Segmenter)


def first_masks(masks: Any, target: torch.Tensor) -> torch.Tensor:
    """``segment`` masks (a ``(B, K, D, H, W)`` tensor or a list of ``(K_i, D, H, W)``) as the
    first mask per item ``(B, 1, D, H, W)``; an item without a mask (no ``[SEG]`` generated)
    predicts an empty mask."""
    rows = []
    for i in range(target.shape[0]):
        m = masks[i].detach().float().cpu()
        rows.append(m[:1] if m.shape[0] else torch.zeros_like(target[i]))
    out = torch.stack(rows)
    if out.shape != target.shape:
        raise ValueError(f"segment() returned masks of shape {tuple(out.shape[2:])}, targets are "
                         f"{tuple(target.shape[2:])}")
    return out


def _seg_task(task: str, model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    if not can_segment(model):
        return skipped(task, f"{type(model).__name__} cannot segment (no segment() or no "
                             f"segmentation head); {task} not evaluated")
    records, base = [], []
    for chunk in batches(samples, ctx.batch_size):
        texts, masks = model.segment(chunk, **generation_kwargs(model.segment, ctx.tokens(task)))
        target = torch.stack([s["mask"] for s in chunk]).float()
        probs = first_masks(masks, target)
        for s, t, scores, empty in zip(chunk, texts, segmentation.dice_scores(probs, target),
                                       segmentation.empty_mask_scores(target)):
            records.append(record(s, t, s["answer"], scores))
            base.append(record(s, "", s["answer"], empty))
        if ctx.progress:
            ctx.progress(task, len(records), len(samples))
    return TaskResult(task, records, mean_scores(records), baseline="empty mask",
                      baseline_records=base)


@TASKS.register
def seg(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """Semantic segmentation: thresholded and soft (M3D) Dice; baseline: empty mask."""
    return _seg_task("seg", model, samples, ctx)


@TASKS.register
def refseg(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """Referring segmentation: thresholded and soft (M3D) Dice; baseline: empty mask."""
    return _seg_task("refseg", model, samples, ctx)


@TASKS.register
def retrieval(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """Image-text retrieval on report pairs: recall@1/5/10 per named direction."""
    from zoo.evaluation.retrieval import aggregate_recall, per_item_recall

    if not isinstance(model, PairEmbedder):
        return skipped("retrieval", f"{type(model).__name__} has no embed_pairs(); retrieval "
                                    "not evaluated")
    images, texts = [], []
    with eval_mode(model):
        for chunk in batches(samples, ctx.batch_size):
            image, txt = model.embed_pairs(model.collate(chunk))
            images.append(image.detach().float().cpu())
            texts.append(txt.detach().float().cpu())
    image, txt = torch.cat(images), torch.cat(texts)
    records = [record(s, None, None, scores)
               for s, scores in zip(samples, per_item_recall(image, txt))]
    metrics = {k: v for k, v in aggregate_recall(image, txt).items()}
    return TaskResult("retrieval", records, metrics,
                      note=f"gallery of {len(samples)} test pairs; 'all/...' = whole gallery")


@TASKS.register
def cls(model: Any, samples: list[dict], ctx: EvalContext) -> TaskResult:
    """Classification: accuracy and AUROC (torchmetrics) through ``classify``; generative models
    are scored by exact match of the generated label (accuracy only). Baseline: majority label."""
    from zoo.evaluation.classification import as_probs, classification_metrics, predicted_class

    labels = [int(s["label"]) for s in samples]
    if isinstance(model, Classifier):
        probs = torch.cat([as_probs(model.classify(chunk)) for chunk in batches(samples,
                                                                               ctx.batch_size)])
        preds = predicted_class(probs).tolist()
        metrics = classification_metrics(probs, torch.tensor(labels))
    elif can_generate(model):
        texts = generate_all(model, samples, ctx, "cls")
        preds = [t.strip().split(" ")[0].rstrip(".") if t.strip() else "" for t in texts]
        metrics = {}
    else:
        return skipped("cls", f"{type(model).__name__} has neither classify() nor generate()")
    records = [record(s, p, y, {"accuracy": float(str(p) == str(y))})
               for s, p, y in zip(samples, preds, labels)]
    metrics = {**mean_scores(records), **metrics}
    result = TaskResult("cls", records, metrics)
    train = [int(i["label"]) for i in ctx.train_items if i["task"] == "cls" and "label" in i]
    if train:
        majority = Counter(train).most_common(1)[0][0]
        result.baseline = f"majority label ({majority})"
        result.baseline_records = [record(s, majority, y, {"accuracy": float(majority == y)})
                                   for s, y in zip(samples, labels)]
    return result
