"""Closed VQA scoring (docs/reference.md C) and the majority-answer baseline.

- ``accuracy_m3d`` (as coded by M3D): correct when ``"{letter}."`` occurs anywhere in the output,
  so an output listing several choices can score.
- ``accuracy`` (strict): the chosen letter is parsed from the start of the output (``"B"``,
  ``"B."``, ``"(B)"``, ``"B) ..."``); failing that, an output equal to exactly one choice's text
  selects that choice. Anything else is wrong.

A closed item has 2 to 26 choices lettered A, B, ... (M3D-VQA: four, missing ones ``NA``); only
the letters of its own choices are read from an output.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from typing import Any, Sequence
from zoo.errors import DataError

LETTERS = string.ascii_uppercase


@functools.lru_cache(maxsize=None)
def _leading(count: int) -> re.Pattern:
    """A leading choice letter among the first ``count`` letters (``A-D`` for four choices)."""
    return re.compile(rf"^\s*\(?([A-{LETTERS[count - 1]}])(?:[\.\):,]|\s|$)")


def answer_letter(answer: str, choices: Sequence[str]) -> str:
    """The correct letter of a closed item whose answer is ``"{letter}. {text}"`` or a choice."""
    match = _leading(len(choices)).match(str(answer))
    if match:
        return match.group(1)
    if answer in choices:
        return LETTERS[list(choices).index(answer)]
    raise DataError(f"closed VQA answer {answer!r} names none of the choices {list(choices)}")


def contains_letter(prediction: str, letter: str) -> bool:
    """M3D's rule: ``"{letter}."`` anywhere in the output."""
    return f"{letter}." in str(prediction)


def parse_choice(prediction: str, choices: Sequence[str]) -> str | None:
    """The letter the output commits to, or ``None`` (see the module docstring)."""
    text = str(prediction)
    match = _leading(len(choices)).match(text)
    if match:
        return match.group(1)
    norm = text.strip().rstrip(".").strip().lower()
    hits = [LETTERS[i] for i, c in enumerate(choices) if c != "NA" and c.strip().lower() == norm]
    return hits[0] if len(hits) == 1 else None


def closed_scores(prediction: str, answer: str, choices: Sequence[str]) -> dict[str, float]:
    letter = answer_letter(answer, choices)
    return {"accuracy": float(parse_choice(prediction, choices) == letter),
            "accuracy_m3d": float(contains_letter(prediction, letter))}


def majority_answers(items: Sequence[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Per question type: (most frequent answer text, the letters from most to least frequent)
    over train items (``answer`` ``"{letter}. {text}"`` with ``choices``); ties broken by first
    occurrence."""
    texts: dict[str, Counter] = {}
    letters: dict[str, Counter] = {}
    for item in items:
        qtype = item.get("question_type") or "all"
        letter = answer_letter(item["answer"], item["choices"])
        texts.setdefault(qtype, Counter())[item["choices"][LETTERS.index(letter)]] += 1
        letters.setdefault(qtype, Counter())[letter] += 1
    return {q: (texts[q].most_common(1)[0][0], "".join(k for k, _ in letters[q].most_common()))
            for q in texts}


def majority_prediction(majority: dict[str, tuple[str, str]], question_type: str | None,
                        choices: Sequence[str]) -> str:
    """The baseline's output: the type's majority answer when it is among the choices, else the
    type's most frequent letter that the item has (``"{letter}. {text}"``)."""
    text, ranked = majority.get(question_type or "all") or next(iter(majority.values()))
    if text in choices:
        letter = LETTERS[list(choices).index(text)]
    else:
        letter = next((k for k in ranked if LETTERS.index(k) < len(choices)), "A")
    return f"{letter}. {choices[LETTERS.index(letter)]}"
