"""How the zoo phrases question-answer text, shared by every template module (the built-in
benchmark's :mod:`zoo.data.templates`, the brain-CT tables' :mod:`zoo.data.brainct`, user tables).

Phrasing variants are picked by a stable hash of a key (never by a global random state); closed
questions follow M3D (docs/reference.md section B): ``"{question} Choices: A. .. B. .. C. .. D. .."``
-> ``"{letter}. {answer}"``.
"""

from __future__ import annotations

import hashlib
import string
from typing import Sequence

CHOICE_LETTERS = string.ascii_uppercase  # a closed question has 2 to 26 choices


def stable_index(key: str, n: int) -> int:
    """A platform-independent index in [0, n) from ``key`` (sha256)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def pick(options: Sequence[str], key: str) -> str:
    return options[stable_index(key, len(options))]


def closed_question(question: str, choices: Sequence[str]) -> str:
    """M3D closed form: question + ' Choices: A. .. B. .. C. .. D. ..' (M3D-VQA pads missing
    choices with 'NA'; other sources give 2 to 26 choices, lettered A, B, ...)."""
    parts = [f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return f"{question} Choices: {' '.join(parts)}"


def closed_answer(choices: Sequence[str], answer: str) -> str:
    return f"{CHOICE_LETTERS[list(choices).index(answer)]}. {answer}"
