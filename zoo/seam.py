"""The seam between visual tokens and the LLM (docs/design.md section 5).

Text follows M3D-LaMed (Bai et al. 2024): image tokens, then the question, then the answer and
eos; labels are ``-100`` over everything but the answer and eos. A template holds one ``<image>``
placeholder, expanded to exactly ``num_image_tokens`` image token ids; the model later replaces
those positions by visual tokens with :func:`splice_visual`. No fixed offsets and no assumption
about BOS: positions are found by id.

Templates can differ per task (a sample's ``task``): a mapping ``{task: template}`` with an
optional ``default``, or a preset name from :data:`TEMPLATE_PRESETS`. The zoo's default is one
template for every task; ``m3d`` reproduces the strings M3D's dataset classes build
(docs/reference.md H).

With a chat template (an instruct LLM's own, docs/lm.md) the filled template, image tokens
included, becomes the content of one user turn; the answer follows the template's generation
prompt and ends with eos, which must be what closes the template's assistant turn.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from zoo.checks import positive_int
from zoo.errors import ConfigError, DataError
from zoo.types import TASK_NAMES, stack_batch

IMAGE_PLACEHOLDER = "<image>"
PROMPT_FIELD = "{prompt}"
IGNORE_INDEX = -100
DEFAULT_KEY = "default"

# Named template sets, ``{task or "default": template}`` (docs/reference.md H).
TEMPLATE_PRESETS: dict[str, dict[str, str]] = {
    # one template for every task
    "zoo": {DEFAULT_KEY: "<image>{prompt}"},
    # M3D's dataset classes: the caption prompt follows the image tokens directly, every other
    # task's question (VQA, REC, REG, segmentation) after one space
    "m3d": {DEFAULT_KEY: "<image> {prompt}", "caption": "<image>{prompt}"},
}


def check_template(template: str) -> None:
    """Raise ``ValueError`` naming ``template`` unless it has one ``<image>``, one ``{prompt}``."""
    if not isinstance(template, str):
        raise TypeError(f"template must be a string, got {type(template).__name__}")
    for field in (IMAGE_PLACEHOLDER, PROMPT_FIELD):
        n = template.count(field)
        if n != 1:
            hint = ""
            if IMAGE_PLACEHOLDER not in template and PROMPT_FIELD not in template:
                from zoo.registry import suggest

                hint = (f" or name a preset ({', '.join(TEMPLATE_PRESETS)})."
                        f"{suggest(template, list(TEMPLATE_PRESETS))}")
            raise ConfigError(f"template {template!r} must contain exactly one {field!r}, "
                              f"found {n}{hint}")


def resolve_templates(template: str | Mapping[str, str]) -> dict[str, str]:
    """``{task or "default": template}`` from a preset name, one template, or a mapping whose keys
    are task names (:data:`zoo.types.TASK_NAMES`) or ``default``; every template is checked."""
    if isinstance(template, str):
        if template in TEMPLATE_PRESETS:
            return dict(TEMPLATE_PRESETS[template])
        check_template(template)
        return {DEFAULT_KEY: template}
    if not isinstance(template, Mapping):
        raise TypeError(f"template must be a string or a mapping, got {type(template).__name__}")
    templates = {str(k): v for k, v in template.items()}
    if not templates:
        raise ConfigError("template mapping is empty: give a 'default' or per-task templates")
    for key, value in templates.items():
        if key != DEFAULT_KEY and key not in TASK_NAMES:
            from zoo.registry import suggest

            raise ConfigError(f"template key {key!r} is not a task or {DEFAULT_KEY!r}."
                              f"{suggest(key, list(TASK_NAMES) + [DEFAULT_KEY])}")
        check_template(value)
    return templates


def chat_answer_separator(tokenizer: Any) -> str:
    """The text the tokenizer's chat template puts between the generation prompt that follows a
    user turn and the assistant's answer (``""`` for ChatML's ``<|im_start|>assistant\\n``).

    Raises ``ValueError`` when a rendered user + assistant conversation does not begin with the
    rendered generation prompt, or when the assistant turn is not closed by the eos token (the
    collator ends every answer with eos).
    """
    marker = "ANSWER_MARKER_7F3A"
    user = [{"role": "user", "content": "question"}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": marker}],
                                         tokenize=False)
    name = getattr(tokenizer, "name_or_path", "")
    if not full.startswith(prompt) or marker not in full[len(prompt):]:
        raise ConfigError(f"the chat template of tokenizer {name!r} does not continue its "
                         f"generation prompt {prompt[-40:]!r} with the assistant turn; use "
                         "chat_template=false")
    separator, _, end = full[len(prompt):].partition(marker)
    if not end.strip().startswith(tokenizer.eos_token):
        raise ConfigError(f"the chat template of tokenizer {name!r} closes the assistant turn "
                         f"with {end!r}, not the eos token {tokenizer.eos_token!r}; use "
                         "chat_template=false")
    return separator


def _single_token_id(tokenizer: Any, token: str) -> int:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ConfigError(f"image_token={token!r} is not a single token of this tokenizer "
                          f"(encodes to {ids}); build the LM with CausalLM, which adds it")
    return int(ids[0])


class ImageTextCollator:
    """Samples -> a batch for a causal LM that reads ``num_image_tokens`` visual tokens.

    Output: ``image`` ``(B, C, D, H, W)``, ``input_ids`` / ``attention_mask`` ``(B, T)`` long,
    ``labels`` ``(B, T)`` (training mode only), ``mask`` stacked when every sample has one of
    one shape (else a list with ``None`` for samples without), and every other sample key (union
    over the samples) as a list. Training batches are right-padded; with
    ``for_generation=True`` the batch holds the prompts only, left-padded for batch generation.

    The answer is tokenised after ``answer_separator`` (M3D joins question and answer with one
    space). Prompts longer than ``max_length`` raise; answers that do not fit are cut (with a
    warning naming the samples).

    ``chat_template``: ``True`` wraps the filled template as one user turn of the tokenizer's chat
    template (its generation prompt appended; the answer then follows the template's own
    separator, :func:`chat_answer_separator`, instead of ``answer_separator``), ``False`` uses
    plain text (M3D), ``None`` uses the chat template when the tokenizer has one.
    """

    def __init__(self, tokenizer: Any, num_image_tokens: int,
                 template: str | Mapping[str, str] = "<image>{prompt}", max_length: int = 512,
                 image_token: str = "<im_patch>", add_eos: bool = True,
                 answer_separator: str = " ", chat_template: bool | None = False,
                 for_generation: bool = False) -> None:
        self.templates = resolve_templates(template)
        positive_int("num_image_tokens", num_image_tokens)
        if num_image_tokens >= max_length:
            raise ConfigError(f"num_image_tokens={num_image_tokens} leaves no room for text in "
                              f"max_length={max_length}; image tokens are never truncated")
        if tokenizer.pad_token_id is None:
            raise ConfigError("tokenizer has no pad token (CausalLM sets one)")
        if add_eos and tokenizer.eos_token_id is None:
            raise ConfigError("add_eos=True but the tokenizer has no eos token")
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_chat:
            raise ConfigError(f"chat_template=True but tokenizer "
                              f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
        chat_template = has_chat if chat_template is None else bool(chat_template)
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        # one plain string when a single template serves every task (a stable, readable record)
        self.template = (self.templates[DEFAULT_KEY] if set(self.templates) == {DEFAULT_KEY}
                         else dict(self.templates))
        self.max_length = max_length
        self.image_token = image_token
        self.image_token_id = _single_token_id(tokenizer, image_token)
        self.add_eos = add_eos
        self.answer_separator = (chat_answer_separator(tokenizer) if chat_template
                                 else answer_separator)
        self.chat_template = chat_template
        self.for_generation = for_generation

    # ------------------------------------------------------------ text
    def template_for(self, task: str | None) -> str:
        """The template of ``task`` (its own, else ``default``); raises naming the task."""
        found = self.templates.get(task) if task is not None else None
        found = found or self.templates.get(DEFAULT_KEY)
        if found is None:
            raise ConfigError(f"no template for task {task!r}: the templates cover "
                              f"{sorted(self.templates)}; add it or a {DEFAULT_KEY!r} template")
        return found

    def prompt_text(self, prompt: str | None, with_image: bool = True,
                    task: str | None = None) -> str:
        """The task's template filled with ``prompt`` and ``num_image_tokens`` image tokens (none
        with ``with_image=False``)."""
        before, after = self.template_for(task).split(IMAGE_PLACEHOLDER)
        prompt = prompt or ""
        image = self.image_token * self.num_image_tokens if with_image else ""
        text = before.replace(PROMPT_FIELD, prompt) + image + after.replace(PROMPT_FIELD, prompt)
        if self.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                      tokenize=False, add_generation_prompt=True)
        return text

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=not self.chat_template)["input_ids"])

    def encode(self, sample: dict[str, Any], index: int = 0) -> tuple[list[int], int]:
        """``(ids, prompt_length)`` of one sample; ids hold the answer (and eos) in training mode.

        The whole text is tokenised at once (as M3D does) when the prompt's tokens are a prefix
        of it; otherwise prompt and answer are tokenised separately and concatenated.
        """
        text = self.prompt_text(sample.get("prompt"), task=sample.get("task"))
        prompt_ids = self._encode(text)
        found = prompt_ids.count(self.image_token_id)
        if found != self.num_image_tokens:
            raise DataError(f"sample {index}: prompt has {found} {self.image_token!r} tokens, "
                            f"expected num_image_tokens={self.num_image_tokens}")
        if len(prompt_ids) > self.max_length:
            raise DataError(f"sample {index}: prompt is {len(prompt_ids)} tokens "
                            f"({self.num_image_tokens} image tokens), longer than "
                            f"max_length={self.max_length}")
        if self.for_generation:
            return prompt_ids, len(prompt_ids)
        answer = sample.get("answer")
        if not isinstance(answer, str):
            raise DataError(f"sample {index} (task {sample.get('task')!r}) has no answer string "
                            f"to train on (answer={answer!r}); use for_generation=True for "
                            "prompts only")
        full = self._encode(text + self.answer_separator + answer)
        if full[:len(prompt_ids)] == prompt_ids:
            answer_ids = full[len(prompt_ids):]
        else:
            answer_ids = list(self.tokenizer(self.answer_separator + answer,
                                             add_special_tokens=False)["input_ids"])
        if self.image_token_id in answer_ids:
            raise DataError(f"sample {index}: the answer contains {self.image_token!r}")
        if self.add_eos:
            answer_ids.append(self.tokenizer.eos_token_id)
        return prompt_ids + answer_ids, len(prompt_ids)

    def text_batch(self, samples: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Text-only language-model batch: the template without image tokens, the answer and eos;
        every token is a label (pretraining on text). ``input_ids`` / ``attention_mask`` /
        ``labels`` ``(B, T)``, right-padded, cut to ``max_length``."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        rows = []
        for i, s in enumerate(samples):
            if not isinstance(s.get("answer"), str):
                raise DataError(f"sample {i} (task {s.get('task')!r}) has no answer string")
            ids = self._encode(self.prompt_text(s.get("prompt"), with_image=False,
                                                task=s.get("task"))
                               + self.answer_separator + s["answer"])
            rows.append((ids + [self.tokenizer.eos_token_id] if self.add_eos else ids)
                        [:self.max_length])
        input_ids, attention = self._pad(rows, left=False)
        return {"input_ids": input_ids, "attention_mask": attention,
                "labels": input_ids.masked_fill(attention == 0, IGNORE_INDEX)}

    def _pad(self, rows: list[list[int]], left: bool) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)`` ``(B, T)`` of token lists padded to the longest."""
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            span = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention[row, span] = 1
        return input_ids, attention

    # ------------------------------------------------------------ batch
    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        missing = [i for i, s in enumerate(samples) if s.get("image") is None]
        if missing:
            raise DataError(f"samples {missing} have no 'image'")
        shapes = {tuple(s["image"].shape) for s in samples}
        if len(shapes) > 1:
            raise DataError(f"images of one batch must share a shape, got {sorted(shapes)}")
        encoded = [self.encode(s, i) for i, s in enumerate(samples)]
        cut = [i for i, (ids, _) in enumerate(encoded) if len(ids) > self.max_length]
        if cut:
            warnings.warn(f"ImageTextCollator: answers of samples {cut} were cut to fit "
                          f"max_length={self.max_length}", stacklevel=2)
            encoded = [(ids[:self.max_length], n) for ids, n in encoded]
        input_ids, attention = self._pad([ids for ids, _ in encoded], left=self.for_generation)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        if not self.for_generation:  # right-padded: the answer follows the prompt from column 0
            for row, (ids, n_prompt) in enumerate(encoded):
                labels[row, n_prompt:len(ids)] = input_ids[row, n_prompt:len(ids)]
        keys = dict.fromkeys(k for s in samples for k in s)  # union: mixed seg / text batches
        batch: dict[str, Any] = {k: [s.get(k) for s in samples] for k in keys}
        batch["image"] = stack_batch([s["image"] for s in samples])
        masks = batch.get("mask")
        if masks is not None and all(m is not None for m in masks) \
                and len({tuple(m.shape) for m in masks}) == 1:
            batch["mask"] = stack_batch(masks)
        batch["input_ids"] = input_ids
        batch["attention_mask"] = attention
        if not self.for_generation:
            batch["labels"] = labels
        return batch


def splice_visual(inputs_embeds: Tensor, input_ids: Tensor, image_token_id: int,
                  visual: Tensor) -> Tensor:
    """Replace the image-token embeddings of ``inputs_embeds (B, T, H)`` by ``visual (B, N, H)``.

    Each row of ``input_ids (B, T)`` must hold exactly N image tokens; they are filled in order
    with ``masked_scatter``. The result has the dtype of ``inputs_embeds``; gradients flow into
    ``visual``.
    """
    if inputs_embeds.dim() != 3 or visual.dim() != 3:
        raise ValueError(f"inputs_embeds and visual must be (B, T, H) and (B, N, H), got "
                         f"{tuple(inputs_embeds.shape)} and {tuple(visual.shape)}")
    if tuple(input_ids.shape) != tuple(inputs_embeds.shape[:2]):
        raise ValueError(f"input_ids shape {tuple(input_ids.shape)} does not match inputs_embeds "
                         f"{tuple(inputs_embeds.shape[:2])}")
    if visual.shape[0] != inputs_embeds.shape[0] or visual.shape[2] != inputs_embeds.shape[2]:
        raise ValueError(f"visual {tuple(visual.shape)} does not fit inputs_embeds "
                         f"{tuple(inputs_embeds.shape)}: batch and width must agree")
    mask = input_ids == image_token_id
    counts = mask.sum(dim=1)
    bad = (counts != visual.shape[1]).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"image-token count mismatch: sample {bad[0]} has "
                         f"{int(counts[bad[0]])} image tokens in input_ids but visual has "
                         f"{visual.shape[1]} tokens")
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1).expand_as(inputs_embeds),
                                        visual.to(inputs_embeds.dtype))


def decode_generated(tokenizer: Any, ids: Tensor,
                     keep: Iterable[str] = ("<bx_start>", "<bx_end>", "[SEG]")) -> list[str]:
    """New tokens ``(B, T_new)`` -> texts: each row cut at its first eos, special tokens dropped
    except ``keep`` (boxes and ``[SEG]`` must survive for REC and segmentation), outer spaces
    stripped."""
    vocab = tokenizer.get_vocab()
    kept = {vocab[t] for t in keep if t in vocab}
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    drop = (set(tokenizer.all_special_ids) | added) - kept
    texts = []
    for row in ids.tolist():
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode([i for i in row if i not in drop],
                                      skip_special_tokens=False).strip())
    return texts
