"""Questions about your own volumes to a trained model: ``zoo predict`` and ``zoo chat``
(docs/usage.md "Predict").

Each volume is read and prepared as the model's training volumes were
(:mod:`zoo.data.input_volume`); the questions about one volume go to the model as one batch.
A LaMed-family model answers in text (greedy unless a temperature is given). Where the answer
holds ``[SEG]`` and the model has a segmentation head, each ``[SEG]`` gives a mask, thresholded at
0.5 and written on the source's voxel grid (NIfTI with the source's affine and shape); where the
answer holds a box, the box is given in the source's voxel indices and world coordinates. A
stand-alone SegVol model (recipe ``segvol``) takes the question as its text prompt and segments
through zoom-out-zoom-in (``seg_rule``: ``zoo`` or ``segvol``, :mod:`heads.segvol_inference`).

``zoo chat`` keeps the turns of one conversation: each question is asked with the earlier
questions and answers before it in the prompt (the image tokens once, at the template's place).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from zoo.data.io import read_jsonl
from zoo.errors import ConfigError, DataError
from zoo.types import TASK_NAMES, AnswerScorer, PromptSegmenter

DEFAULT_TASK = "vqa_open"
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Question:
    """A question and the task whose template and task id it is asked with."""

    text: str
    task: str = DEFAULT_TASK

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigError(f"question {self.text!r}: expected a non-empty text")
        if self.task not in TASK_NAMES:
            from zoo.registry import suggest

            raise ConfigError(f"task {self.task!r}: not a task.{suggest(self.task, TASK_NAMES)} "
                              f"Tasks: {', '.join(TASK_NAMES)}")


@dataclass(frozen=True)
class Generation:
    """Decoding settings: greedy when ``temperature`` is None or 0, else sampling with
    ``temperature`` and ``top_p``; ``seg_rule`` for SegVol models."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    seg_rule: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens={self.max_new_tokens}: expected an integer >= 1")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"--temperature={self.temperature}: expected a number >= 0")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p={self.top_p}: expected a number in (0, 1]")
        if self.top_p is not None and not self.temperature:
            raise ConfigError("--top-p applies to sampling: give --temperature > 0 as well")

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the model's ``generate`` / ``segment``."""
        if not self.temperature:
            return {"max_new_tokens": self.max_new_tokens}
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": True,
                               "temperature": float(self.temperature)}
        if self.top_p is not None:
            out["top_p"] = float(self.top_p)
        return out


def read_questions(path: str | Path, default_task: str = DEFAULT_TASK) -> list[Question]:
    """A JSONL file of ``{"question": TEXT, "task": NAME (optional)}``, one per line."""
    path = Path(path)
    questions = []
    for n, row in read_jsonl(path):
        if not isinstance(row.get("question"), str):
            raise DataError(path, 'each line is {"question": TEXT, "task": NAME (optional)}', n)
        unknown = sorted(set(row) - {"question", "task"})
        if unknown:
            raise DataError(path, f"unknown key(s) {unknown}; keys: question, task", n)
        try:
            questions.append(Question(row["question"], row.get("task") or default_task))
        except ConfigError as err:
            raise DataError(path, str(err), n) from None
    if not questions:
        raise DataError(path, "the questions file holds no question")
    return questions


class Predictor:
    """A loaded model, how to prepare its NIfTI / DICOM inputs (``spec``, a
    :class:`zoo.data.prepare.PrepSpec`; set it after construction from the model's record with
    :func:`zoo.data.preparation.spec_for`), and where masks go."""

    def __init__(self, model: Any, generation: Generation, out_dir: str | Path,
                 name: str = "model", spec: Any = None) -> None:
        if isinstance(model, AnswerScorer):  # the LaMed family
            self.kind = "lamed"
            if generation.seg_rule is not None:
                raise ConfigError("--seg-rule applies to SegVol models (recipe segvol), which "
                                  "segment through zoom-out-zoom-in; this LaMed's [SEG] path "
                                  "segments the model-size volume in one pass")
        elif isinstance(model, PromptSegmenter):
            self.kind = "segvol"
        else:
            raise ConfigError(f"{name}: a {type(model).__name__} does not answer questions or "
                              "segment from text (zoo predict reads LaMed-family and SegVol models)")
        self.model, self.spec, self.generation = model.eval(), spec, generation
        self.out_dir, self.name = Path(out_dir), name
        self.can_segment = self.kind == "segvol" or getattr(model, "heads", None) is not None

    def input_size(self) -> tuple[int, ...]:
        """The volume size the model was built for (a SegVol model's head input size)."""
        if self.kind == "segvol":
            return tuple(self.model.heads.image_size)
        return tuple(self.model.image_size)

    @property
    def image_size(self) -> tuple[int, ...] | None:
        """The model's input size; None for a SegVol model with its own encoder (zoom-out-zoom-in
        takes any size)."""
        if self.kind == "segvol":
            head = self.model.heads
            return tuple(head.image_size) if head.share_encoder else None
        return tuple(self.model.image_size)

    def read(self, path: str | Path) -> Any:
        from zoo.data.input_volume import read_input

        return read_input(path, self.spec, self.image_size)

    def ask(self, volume: Any, questions: Sequence[Question], stem: str,
            history: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """Answers to ``questions`` about ``volume`` (one batch): one record per question with
        ``answer``, ``masks`` (written under ``out_dir`` as ``<stem>.q<j>.seg<k>``) and ``box``.
        ``history`` ``[(question, answer)]`` comes before each question in the prompt."""
        if self.kind == "segvol":
            return [self._segvol(volume, q, f"{stem}.q{j}") for j, q in enumerate(questions)]
        image = torch.from_numpy(volume.image)
        samples = [{"image": image, "prompt": with_history(history, q.text), "task": q.task,
                    "meta": {"id": f"{stem}/q{j}"}} for j, q in enumerate(questions)]
        options = self.generation.kwargs()
        if self.can_segment:
            texts, masks = self.model.segment(samples, **options)
        else:
            texts, masks = self.model.generate(samples, **options), [None] * len(samples)
        return [self._record(volume, q, text, mask, f"{stem}.q{j}")
                for j, (q, text, mask) in enumerate(zip(questions, texts, masks))]

    def _record(self, volume: Any, question: Question, text: str, masks: torch.Tensor | None,
                stem: str) -> dict[str, Any]:
        from zoo.boxes import parse_box

        written = []
        if masks is not None and "[SEG]" in text:
            for k, probability in enumerate(masks):
                written.append(volume.save_mask(probability.cpu().numpy(),
                                                self.out_dir / f"{stem}.seg{k}{mask_suffix(volume)}"))
        box = parse_box(text)
        return {"volume": str(volume.path), "format": volume.format, "question": question.text,
                "task": question.task, "answer": text, "masks": written,
                "box": volume.box_coordinates(box) if box is not None else None}

    def _segvol(self, volume: Any, question: Question, stem: str) -> dict[str, Any]:
        image = torch.from_numpy(volume.image)[None]
        logits = self.model.segment_volume(image, question.text, self.generation.seg_rule)
        probability = torch.sigmoid(logits[0, 0].float()).cpu().numpy()
        mask = volume.save_mask(probability, self.out_dir / f"{stem}.seg0{mask_suffix(volume)}")
        return {"volume": str(volume.path), "format": volume.format, "question": question.text,
                "task": question.task, "answer": None, "masks": [mask], "box": None}


def mask_suffix(volume: Any) -> str:
    return ".nii.gz" if volume.has_world else ".npy"


def with_history(history: Sequence[tuple[str, str]], question: str) -> str:
    """The prompt of a chat turn: earlier questions and answers, then the question (one space
    between, the seam's answer separator)."""
    return " ".join([f"{q} {a}" for q, a in history] + [question])


def stems(paths: Sequence[str | Path]) -> list[str]:
    """A file-name stem per input (its name without the NIfTI / npy suffix); inputs whose names
    collide get their position appended."""
    names = []
    for path in paths:
        name = Path(path).name
        for suffix in (".nii.gz", ".nii", ".npy"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        names.append(name or "volume")
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def predict(predictor: Predictor, volumes: Sequence[str | Path], questions: Sequence[Question],
            progress: bool = True) -> list[dict[str, Any]]:
    """Every question about every volume, volume by volume (a progress bar over volumes)."""
    from tqdm.auto import tqdm

    records = []
    for path, stem in tqdm(list(zip(volumes, stems(volumes))), desc="predict", unit="volume",
                           disable=not progress, dynamic_ncols=True):
        records.extend(predictor.ask(predictor.read(path), questions, stem))
    return records


def format_record(record: dict[str, Any]) -> str:
    """The lines ``zoo predict`` prints for one answer."""
    lines = [f"{record['volume']}: {record['question']}"]
    if record["answer"] is not None:
        lines.append(f"  answer: {record['answer']}")
    for mask in record["masks"]:
        lines.append(f"  mask: {mask['path']} ({mask['voxels']} voxels)")
    box = record["box"]
    if box is not None:
        voxel = box["voxel"]
        lines.append(f"  box: voxel {voxel['axes']} {voxel['min']} to {voxel['max']}" + (
            f"; world {box['world']['frame']} {box['world']['min']} to {box['world']['max']}"
            if box["world"] else ""))
    return "\n".join(lines)


def chat(predictor: Predictor, volume_path: str | Path, read_line: Callable[[str], str] = input,
         write: Callable[[str], Any] = print, task: str = DEFAULT_TASK) -> list[dict[str, Any]]:
    """A conversation about one volume: questions from ``read_line`` until ``/exit`` or end of
    input, answers through ``write``; ``/reset`` starts over. Returns the turns' records."""
    volume = predictor.read(volume_path)
    stem = stems([volume_path])[0]
    write(f"chat with {predictor.name} about {volume_path} ({'x'.join(map(str, volume.image.shape[1:]))} "
          "voxels as the model reads it); /reset starts over, /exit or Ctrl-D ends")
    history: list[tuple[str, str]] = []
    records: list[dict[str, Any]] = []
    while True:
        try:
            line = read_line("you> ").strip()
        except EOFError:
            break
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = []
            write("(history cleared)")
            continue
        if not line:
            continue
        record = predictor.ask(volume, [Question(line, task)], f"{stem}.turn{len(records)}",
                               history)[0]
        records.append(record)
        write("model> " + ("" if record["answer"] is None else record["answer"]))
        for extra in format_record(record).splitlines()[2:]:
            write(extra)
        if record["answer"] is not None and predictor.kind == "lamed":
            history.append((line, record["answer"]))
    return records


def output_document(name: str, kind: str, preparation: dict[str, Any] | None,
                    records: Iterable[dict[str, Any]], used: Any = None) -> dict[str, Any]:
    """``zoo predict --json``: the model, how inputs were prepared, one record per answer. A model
    that records no preparation shows the spec made from the command line (``used``, a
    :class:`zoo.data.prepare.PrepSpec`) when NIfTI / DICOM inputs were prepared with one."""
    from zoo.data.preparation import spec_fields

    preparation = dict(preparation or {})
    if used is not None and not preparation.get("spec"):
        preparation.update(spec=spec_fields(asdict(used), "--window"),
                           source="the command line (--window, --modality, --spacing)")
    return {"model": name, "model_kind": kind, "preparation": preparation,
            "results": list(records)}

