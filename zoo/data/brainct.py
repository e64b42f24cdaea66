"""Brain-CT label tables (CQ500, PhysioNet CT-ICH) -> question-answer pairs (docs/reference.md D).

The paper phrased its pairs with an LLM; here they come from deterministic templates (several
phrasings per question, chosen by a stable hash of the case id), with an optional rephrasing hook
``rephraser(question, answer) -> (question, answer)`` for an external model.

- CQ500: 1 open question (haemorrhage? which types, which side) and 5 closed yes/no questions
  (chronic bleed, fracture, calvarial fracture, mass effect, midline shift); labels are the
  majority of the readers' columns ``R1:ICH`` ... ``R3:MidlineShift``.
- CT-ICH: per-slice flags aggregated per patient; 1 open (haemorrhage and types) and 1 closed
  (fracture) question.
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping, Sequence

from zoo.data import phrasing as T
from zoo.errors import ConfigError

CQ500_COLUMNS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left",
                 "BleedLocation-Right", "ChronicBleed", "Fracture", "CalvarialFracture",
                 "MassEffect", "MidlineShift")
TYPE_OF = {"IPH": "intraparenchymal", "IVH": "intraventricular", "SDH": "subdural",
           "EDH": "epidural", "SAH": "subarachnoid"}
CTICH_TYPES = {"Intraventricular": "intraventricular", "Intraparenchymal": "intraparenchymal",
               "Subarachnoid": "subarachnoid", "Epidural": "epidural", "Subdural": "subdural"}

OPEN_Q = ("Is there intracranial haemorrhage? If so, which types and on which side?",
          "Does this head CT show bleeding? Name the types and the side.",
          "Describe any intracranial haemorrhage: present or not, its types and side.")
OPEN_Q_NOSIDE = ("Is there intracranial haemorrhage? If so, which types?",
                 "Does this head CT show bleeding? Name the types.")
OPEN_NO = ("No intracranial haemorrhage is seen.", "There is no intracranial haemorrhage.")
OPEN_YES = "Yes, there is {types} haemorrhage{side}."
SIDE_TEXT = {"left": " on the left side", "right": " on the right side",
             "both": " on both sides", "": ""}
CLOSED_Q = {"ChronicBleed": ("Is there a chronic bleed?", "Does the scan show a chronic haemorrhage?"),
            "Fracture": ("Is there a fracture?", "Does this CT show a skull fracture?"),
            "CalvarialFracture": ("Is there a calvarial fracture?",
                                  "Is the calvarium fractured?"),
            "MassEffect": ("Is there mass effect?", "Does the scan show mass effect?"),
            "MidlineShift": ("Is there a midline shift?", "Is the midline shifted?")}
YES_NO = ["Yes", "No"]

Rephraser = Callable[[str, str], tuple[str, str]]


def resolve_rephraser(rephraser: str | Rephraser | None) -> Rephraser | None:
    """``None``, a callable, or ``'module:function'`` naming one."""
    if rephraser is None or callable(rephraser):
        return rephraser
    module, _, attr = str(rephraser).partition(":")
    if not attr:
        raise ConfigError(f"rephraser must be 'module:function', got {rephraser!r}")
    return getattr(importlib.import_module(module), attr)


def join_types(types: Sequence[str]) -> str:
    types = list(types)
    return types[0] if len(types) == 1 else ", ".join(types[:-1]) + " and " + types[-1]


def open_answer(types: Sequence[str], side: str, key: str) -> str:
    if not types:
        return T.pick(OPEN_NO, key + "/no")
    return OPEN_YES.format(types=join_types(types), side=SIDE_TEXT[side])


def _closed(question: str, yes: bool) -> tuple[str, str, list[str]]:
    return T.closed_question(question, YES_NO), f"{'A. Yes' if yes else 'B. No'}", list(YES_NO)


def cq500_qa(labels: Mapping[str, int], key: str) -> list[dict[str, object]]:
    """The 1 open + 5 closed question-answer pairs of one CQ500 case."""
    types = [TYPE_OF[c] for c in ("IPH", "IVH", "SDH", "EDH", "SAH") if labels.get(c)]
    if labels.get("ICH") and not types:
        types = ["intracranial"]
    left, right = labels.get("BleedLocation-Left"), labels.get("BleedLocation-Right")
    side = "both" if left and right else ("left" if left else ("right" if right else ""))
    out = [{"task": "vqa_open", "prompt": T.pick(OPEN_Q, key + "/open"),
            "answer": open_answer(types, side, key), "question_type": "abnormality"}]
    for col, phrasings in CLOSED_Q.items():
        prompt, answer, choices = _closed(T.pick(phrasings, f"{key}/{col}"), bool(labels.get(col)))
        out.append({"task": "vqa_closed", "prompt": prompt, "answer": answer, "choices": choices,
                    "question_type": "abnormality"})
    return out


def ctich_qa(types: Sequence[str], fracture: bool, key: str) -> list[dict[str, object]]:
    """The 1 open + 1 closed (fracture) pairs of one PhysioNet CT-ICH patient."""
    prompt, answer, choices = _closed(T.pick(CLOSED_Q["Fracture"], key + "/fx"), fracture)
    return [{"task": "vqa_open", "prompt": T.pick(OPEN_Q_NOSIDE, key + "/open"),
             "answer": open_answer(types, "", key), "question_type": "abnormality"},
            {"task": "vqa_closed", "prompt": prompt, "answer": answer, "choices": choices,
             "question_type": "abnormality"}]


def rephrase(pairs: list[dict[str, object]], rephraser: Rephraser | None) -> list[dict[str, object]]:
    if rephraser is None:
        return pairs
    out = []
    for p in pairs:
        q, a = rephraser(str(p["prompt"]), str(p["answer"]))
        out.append({**p, "prompt": q, "answer": a})
    return out


def corpus() -> list[str]:
    """Every text these templates can produce (for the offline tokenizer)."""
    texts = list(OPEN_Q + OPEN_Q_NOSIDE + OPEN_NO) + ["A. Yes", "B. No", "Yes", "No"]
    names = list(TYPE_OF.values()) + ["intracranial"]
    for side in SIDE_TEXT:
        for i in range(len(names)):
            texts.append(OPEN_YES.format(types=join_types(names[: i + 1]), side=SIDE_TEXT[side]))
    for phrasings in CLOSED_Q.values():
        texts.extend(T.closed_question(q, YES_NO) for q in phrasings)
    return texts
