"""Deterministic text templates: reports, VQA, REC/REG, segmentation prompts, slice texts.

Every phrase is a ``str.format`` template whose slots take values from :data:`VOCAB`, so that
:func:`benchmark_corpus` can list every piece of text the built-in benchmark produces. Phrasing
variants are picked by a stable hash of the case id (never by a global random state).
The M3D conventions (docs/reference.md section B): closed VQA ``"{question} Choices: A. .. B. .. C. ..
D. .."`` -> ``"{letter}. {answer}"``; boxes ``<bx_start>[x1, y1, z1, x2, y2, z2]<bx_end>``.
"""

from __future__ import annotations

from typing import Sequence

from zoo.boxes import format_box
from zoo.data import brainct
from zoo.data import phantom as P
from zoo.data.phrasing import closed_question, pick, stable_index

LETTERS = ("A", "B", "C", "D")  # M3D-VQA's four choices
QUESTION_TYPES = ("plane", "phase", "organ", "abnormality", "location")
SEG = "[SEG]"


# ---------------------------------------------------------------- positioning and segmentation
REC_QUESTIONS = ("Where is the {target} in this image? Please output the box.",
                 "Find the {target} and give its bounding box coordinates.",
                 "Locate the {target}; answer with the coordinates of its box.")
REC_ANSWERS = ("Coordinates are {box}.", "The {target} is at {box}.")
REG_QUESTIONS = ("What is the target in the region {box}?",
                 "Describe the structure inside the box {box}.",
                 "Which structure is found in {box}?")
REG_ANSWER = "The target is {target}."
SEG_QUESTIONS = ("Can you segment the {target} in this image?",
                 "Please segment the {target}.",
                 "Segment the {target} in this CT scan.")
SEG_ANSWERS = ("It is [SEG].", "Sure, it is [SEG].", "The {target} is [SEG].")
NO_TARGET = ("There is no {target} in this image.", "The {target} is not present in this scan.")


def seg_qa(target: str, present: bool, key: str) -> tuple[str, str]:
    answer = pick(SEG_ANSWERS if present else NO_TARGET, key + "/a").format(target=target)
    return pick(SEG_QUESTIONS, key + "/q").format(target=target), answer


def rec_qa(target: str, box: Sequence[float] | None, key: str) -> tuple[str, str]:
    question = pick(REC_QUESTIONS, key + "/q").format(target=target)
    if box is None:
        return question, pick(NO_TARGET, key + "/a").format(target=target)
    return question, pick(REC_ANSWERS, key + "/a").format(target=target, box=format_box(box))


def reg_qa(target: str, box: Sequence[float], key: str) -> tuple[str, str]:
    return (pick(REG_QUESTIONS, key + "/q").format(box=format_box(box)),
            REG_ANSWER.format(target=target))


CAPTION_PROMPTS = ("Can you provide a caption consisting of the findings for this CT scan?",
                   "Describe the findings of this medical image.",
                   "Please write a radiology report for this scan.")
CLS_PROMPT = "Is there an abnormality in this scan?"


# ------------------------------------------------------------------------------- benchmark text
PLANE_Q = ("In which plane is this CT scan displayed?", "What is the acquisition plane of this image?")
PHASE_Q = ("What is the contrast phase of this CT scan?", "In which phase was this CT acquired?")
ORGAN_Q = {"abdomen": ("Which organ contains the lesion?", "In which organ is the abnormality?"),
           "head": ("In which compartment is the haemorrhage?",
                    "Where is the bleeding, by compartment?")}
ABN_Q = {"abdomen": ("What kind of lesion is seen?", "What abnormality does this scan show?"),
         "head": ("What abnormality does this head CT show?", "What is the main finding?")}
LOC_Q = {"abdomen": ("Where exactly is the lesion in the {organ}s?",
                     "In which part of the {organ}s is the lesion?"),
         "head": ("On which side and in which part of the brain is the haemorrhage?",
                  "Where is the haemorrhage located?")}
LOCATION = "{part} part of the {side} {organ}"
OPEN_ANSWERS = {"plane": "The image is in the {value} plane.",
                "phase": "This is a {value} phase CT.",
                "organ": "The abnormality is in the {value}.",
                "abnormality": "The finding is {value}.",
                "location": "It is in the {value}."}
PLANES_CHOICES = P.PLANE_AXES_KEYS + ("oblique",)
PHASE_CHOICES = P.PHASES + ("delayed",)
ABDOMEN_ABNORMALITY = P.ABDOMEN_LESION_KINDS + ("no abnormality",)
HEAD_ABNORMALITY = tuple(f"acute {t} haemorrhage" for t in P.BLEED_TYPES) + \
    ("chronic subdural haemorrhage", "skull fracture", "no abnormality")
HEAD_ORGANS = tuple(P.BLEED_COMPARTMENT.values())


def head_abnormality(case: P.Case) -> str:
    if case.findings:
        f = case.findings[0]
        return f"{'chronic' if f.chronic else 'acute'} {f.kind} haemorrhage"
    return "skull fracture" if case.flags.get("fracture") else "no abnormality"


def _choices(answer: str, pool: Sequence[str], key: str) -> list[str]:
    """Four choices: the answer plus three distractors from ``pool``, order from a stable hash."""
    others = [p for p in pool if p != answer]
    start = stable_index(key + "/d", len(others))
    distractors = [others[(start + i) % len(others)] for i in range(min(3, len(others)))]
    choices = distractors + [answer]
    slot = stable_index(key + "/slot", len(choices))
    choices[slot], choices[-1] = choices[-1], choices[slot]
    return choices + ["NA"] * (4 - len(choices))


def vqa_items(case: P.Case) -> list[dict[str, object]]:
    """M3D-VQA rows (question type, question, four choices, answer) of one case.

    Organ and location questions are asked only when there is a finding; location only for
    paired organs (kidneys, lungs) and head bleeds, whose side and part are drawn independently
    of the anatomy, so that global intensity statistics cannot answer them.
    """
    fam, key = case.family, case.case_id
    rows = [("plane", pick(PLANE_Q, key + "/plane"), case.plane, PLANES_CHOICES),
            ("phase", pick(PHASE_Q, key + "/phase"), case.phase, PHASE_CHOICES)]
    f = case.findings[0] if case.findings else None
    if fam == "abdomen":
        abn, abn_pool = (f.kind if f else "no abnormality"), ABDOMEN_ABNORMALITY
        organ_pool = P.ABDOMEN_LESION_ORGANS
    else:
        abn, abn_pool, organ_pool = head_abnormality(case), HEAD_ABNORMALITY, HEAD_ORGANS
    if f is not None:
        rows.append(("organ", pick(ORGAN_Q[fam], key + "/organ"), f.organ, organ_pool))
    rows.append(("abnormality", pick(ABN_Q[fam], key + "/abn"), abn, abn_pool))
    if f is not None and f.side is not None:
        organ = "brain" if fam == "head" else f.organ
        pool = tuple(LOCATION.format(part=p, side=s, organ=organ) for s in P.SIDES for p in P.PARTS)
        rows.append(("location", pick(LOC_Q[fam], key + "/loc").format(organ=organ),
                     LOCATION.format(part=f.part, side=f.side, organ=organ), pool))
    items = []
    for qtype, question, answer, pool in rows:
        choices = _choices(answer, pool, f"{key}/{qtype}")
        items.append({"question_type": qtype, "question": question, "choices": choices,
                      "answer": answer, "answer_choice": LETTERS[choices.index(answer)]})
    return items


REPORT_OPEN = {"abdomen": "CT of the abdomen, {plane} plane, {phase} phase.",
               "head": "CT of the head, {plane} plane, {phase} phase."}
REPORT_NORMAL = {"abdomen": "Liver, spleen and both kidneys are unremarkable. No focal lesion.",
                 "head": "No intracranial haemorrhage. Ventricles are normal in size."}
REPORT_LESION = "A {size} mm {kind} is seen in the {place}."
REPORT_BLEED = "There is {acuity} {kind} haemorrhage, {size} mm, in the {place}."
REPORT_MASS = "There is mass effect on the {side} lateral ventricle."
REPORT_SHIFT = "Midline shift of {size} mm to the {side}."
REPORT_FRACTURE = "A {where} fracture is seen."
REPORT_CLOSE = {"abdomen": "The lungs at the top of the scan are clear.",
                "head": "The skull is otherwise intact."}


def _place(f: P.Finding, family: str) -> str:
    if f.side is None:
        return f"{f.part} part of the {f.organ}"
    return LOCATION.format(part=f.part, side=f.side, organ="brain" if family == "head" else f.organ)


def report(case: P.Case) -> str:
    """A radiology-style report of one case (findings, then impression-like sentences)."""
    fam = case.family
    out = [REPORT_OPEN[fam].format(plane=case.plane, phase=case.phase)]
    if not case.findings:
        out.append(REPORT_NORMAL[fam])
    for f in case.findings:
        if fam == "abdomen":
            out.append(REPORT_LESION.format(size=f.size_mm, kind=f.kind, place=_place(f, fam)))
        else:
            out.append(REPORT_BLEED.format(acuity="chronic" if f.chronic else "acute",
                                           kind=f.kind, size=f.size_mm, place=_place(f, fam)))
    if fam == "head":
        flags, other = case.flags["cq500"], {"left": "right", "right": "left"}
        side = case.findings[0].side if case.findings else None
        if flags["MassEffect"] and side:
            out.append(REPORT_MASS.format(side=side))
        if flags["MidlineShift"] and side:
            out.append(REPORT_SHIFT.format(size=case.flags["shift_mm"], side=other[side]))
        if case.flags.get("fracture"):
            out.append(REPORT_FRACTURE.format(where=case.flags["fracture"]))
    out.append(REPORT_CLOSE[fam])
    return " ".join(out)


REFSEG_DESCRIPTION = ("Please segment the {kind} in the {place}.",
                      "Segment the {kind} located in the {place}.")
REFSEG_REASONING = {"abdomen": ("Which structure could need follow-up in this scan? Please segment it.",
                                "Segment the abnormal finding that a radiologist would report."),
                    "head": ("What could explain the neurological symptoms? Please segment it.",
                             "Segment the finding that needs urgent attention.")}
REFSEG_ANSWERS = {0: "Sure, it is [SEG].", 1: "It is the {kind} in the {place}: [SEG]."}


def refseg_items(case: P.Case, mask_id: int) -> list[dict[str, object]]:
    """M3D-RefSeg rows (Mask_ID, Question_Type 0 description / 1 reasoning, Question, Answer)."""
    rows = []
    for f in case.findings:
        kind = f.kind if case.family == "abdomen" else f"{f.kind} haemorrhage"
        place = _place(f, case.family)
        q0 = pick(REFSEG_DESCRIPTION, case.case_id + "/rs0").format(kind=kind, place=place)
        q1 = pick(REFSEG_REASONING[case.family], case.case_id + "/rs1")
        rows.append({"Mask_ID": mask_id, "Question_Type": 0, "Question": q0,
                     "Answer": REFSEG_ANSWERS[0]})
        rows.append({"Mask_ID": mask_id, "Question_Type": 1, "Question": q1,
                     "Answer": REFSEG_ANSWERS[1].format(kind=kind, place=place)})
    return rows


SLICE_TEXT = "{plane} slice {index} of {count} shows {content}."
SLICE_EMPTY = "{plane} slice {index} of {count} shows only air outside the body."


def slice_text(plane: str, index: int, count: int, structures: Sequence[str]) -> str:
    """What one slice shows, from the label map (Med3DInsight-style slice description)."""
    if not structures:
        return SLICE_EMPTY.format(plane=plane.capitalize(), index=index, count=count)
    names = list(structures)
    content = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return SLICE_TEXT.format(plane=plane.capitalize(), index=index, count=count, content=content)


def slice_structures(names: Sequence[str], finding: P.Finding | None, family: str) -> list[str]:
    """Structure names for slice text: 'the liver', 'a cyst in the upper part of the left kidney'."""
    out = []
    for n in names:
        if n in ("lesion", "haemorrhage"):
            if finding is not None:
                kind = finding.kind if family == "abdomen" else f"{finding.kind} haemorrhage"
                out.append(f"a {kind} in the {_place(finding, family)}")
        else:
            out.append(f"the {n}")
    return out


# ------------------------------------------------------------------------------- the corpus
VOCAB: dict[str, tuple[str, ...]] = {
    "plane": P.PLANE_AXES_KEYS + tuple(p.capitalize() for p in P.PLANE_AXES_KEYS) + ("oblique",),
    "phase": PHASE_CHOICES, "kind": P.ABDOMEN_LESION_KINDS + P.BLEED_TYPES + tuple(
        f"{t} haemorrhage" for t in P.BLEED_TYPES),
    "organ": P.ABDOMEN_LESION_ORGANS + ("brain",) + HEAD_ORGANS,
    "target": P.ABDOMEN_CLASSES + P.HEAD_CLASSES, "side": P.SIDES, "part": P.PARTS,
    "acuity": ("acute", "chronic"), "where": ("calvarial", "skull base"),
    "size": tuple(str(i) for i in range(0, 301)), "index": tuple(str(i) for i in range(0, 512)),
    "count": tuple(str(i) for i in range(0, 513)),
    "value": PLANES_CHOICES + PHASE_CHOICES + ABDOMEN_ABNORMALITY + HEAD_ABNORMALITY + HEAD_ORGANS,
    "box": tuple(format_box([i / 1000] * 6) for i in range(1001)),
}


def _expand(template: str) -> list[str]:
    """Fill ``template`` slot by slot over :data:`VOCAB` (each value of each slot appears once)."""
    import string

    slots = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    if not slots:
        return [template]
    base = {s: VOCAB.get(s, ("",))[0] for s in slots}
    out = []
    for s in dict.fromkeys(slots):
        for v in VOCAB.get(s, ("",)):
            out.append(template.format(**{**base, s: v}))
    return out


def benchmark_corpus() -> list[str]:
    """Every template of the built-in benchmark expanded over its vocabulary (tokenizer coverage).

    Also covers composite strings (closed-VQA choices and answers, locations, slice contents) and
    the CQ500 / CT-ICH question-answer templates of :mod:`zoo.data.brainct`.
    """
    templates: list[str] = []
    for group in (REC_QUESTIONS, REC_ANSWERS, REG_QUESTIONS, (REG_ANSWER,), SEG_QUESTIONS,
                  SEG_ANSWERS, NO_TARGET, PLANE_Q, CAPTION_PROMPTS, (CLS_PROMPT, "0", "1"), PHASE_Q, REFSEG_DESCRIPTION,
                  tuple(REFSEG_ANSWERS.values()), (SLICE_TEXT, SLICE_EMPTY, LOCATION,
                                                  REPORT_LESION, REPORT_BLEED, REPORT_MASS,
                                                  REPORT_SHIFT, REPORT_FRACTURE)):
        templates.extend(group)
    for table in (ORGAN_Q, ABN_Q, LOC_Q, REFSEG_REASONING, REPORT_OPEN, REPORT_NORMAL, REPORT_CLOSE,
                  OPEN_ANSWERS):
        for v in table.values():
            templates.extend(v if isinstance(v, tuple) else (v,))
    corpus = [s for t in templates for s in _expand(t)]
    for side in P.SIDES:
        for part in P.PARTS:
            for organ in VOCAB["organ"]:
                loc = LOCATION.format(part=part, side=side, organ=organ)
                corpus.extend([loc, f"a cyst in the {loc}"])
    for value in VOCAB["value"] + ("NA",) + tuple(LOCATION.format(part="upper", side="left",
                                                                  organ="kidney"),):
        corpus.extend(f"{letter}. {value}" for letter in LETTERS)
    corpus.append(closed_question(PLANE_Q[0], PLANES_CHOICES))
    corpus.extend(f"the {t}" for t in VOCAB["target"])
    corpus.extend(brainct.corpus())
    return list(dict.fromkeys(corpus))
