"""M3D-Bench evaluation (docs/design.md section 8; docs/reference.md C).

Metric modules (one concept each): :mod:`.text` (BLEU, ROUGE, METEOR, BERTScore; corrected and
M3D's as coded), :mod:`.wordnet` (WordNet for METEOR from Debian's packages), :mod:`.vqa`
(closed-choice parsing), :mod:`.grounding` (REC boxes), :mod:`.segmentation` (Dice),
:mod:`.retrieval` (recall@k), :mod:`.classification` (accuracy, AUROC), :mod:`.judge` (LLM judge
over an OpenAI-compatible endpoint). :mod:`.tasks` registers one evaluator per task in
``zoo.TASKS``; :mod:`.runner` evaluates a model on a data source's test split and writes per-item
records (jsonl) for paired comparisons.
"""

from zoo.evaluation.base import TaskResult, mean_scores

__all__ = ["TaskResult", "mean_scores"]
