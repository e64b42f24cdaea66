"""Text metrics of report generation, open VQA and REG (docs/reference.md C).

- BLEU-n: ``nltk.translate.bleu_score.sentence_bleu`` with uniform weights over 1..n grams and
  Chen & Cherry smoothing method 1 (a per-sentence BLEU-4 is otherwise zero for most short
  answers). M3D's "BLEU" is BLEU-1 (``bleu_m3d``).
- ROUGE-1 / ROUGE-L F-measure from ``rouge-score``; M3D's "ROUGE" is ROUGE-1 (``rouge_m3d``).
- METEOR: nltk's implementation. When the WordNet corpus is not installed (the offline default)
  synonym matching is switched off and the key is ``meteor_nosyn`` so the two are never mixed up;
  exact and Porter-stem matches still count.
- BERTScore F1 (torchmetrics) only with a local model directory; otherwise absent, with a note.

Tokenisation (all metrics but ROUGE, which tokenises itself): lower case, words and single
punctuation marks (``\\w+|[^\\w\\s]``), so no tokenizer data has to be downloaded.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(str(text).lower())


def bleu(prediction: str, reference: str, n: int) -> float:
    """Sentence BLEU-``n`` (uniform weights over 1..n grams, smoothing method 1)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not 1 <= n <= 4:
        raise ValueError(f"BLEU order must be 1..4, got {n}")
    hyp, ref = tokenize(prediction), tokenize(reference)
    if not hyp or not ref:
        return 0.0
    return float(sentence_bleu([ref], hyp, weights=tuple([1.0 / n] * n),
                               smoothing_function=SmoothingFunction().method1))


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """``{"rouge1": F, "rougeL": F}`` from ``rouge-score``."""
    scores = _rouge().score(str(reference), str(prediction))
    return {"rouge1": scores["rouge1"].fmeasure, "rougeL": scores["rougeL"].fmeasure}


class _NoSynonyms:
    """Stands in for the WordNet reader: no synsets, so METEOR matches exact words and stems."""

    @staticmethod
    def synsets(*_: Any, **__: Any) -> list:
        return []


@lru_cache(maxsize=1)
def wordnet_available() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            return False
    return True


def meteor_key() -> str:
    return "meteor" if wordnet_available() else "meteor_nosyn"


def meteor(prediction: str, reference: str) -> float:
    """nltk METEOR (synonyms only when WordNet data is installed; see :func:`meteor_key`)."""
    from nltk.translate.meteor_score import meteor_score

    hyp, ref = tokenize(prediction), tokenize(reference)
    if not hyp or not ref:
        return 0.0
    if wordnet_available():
        return float(meteor_score([ref], hyp))
    return float(meteor_score([ref], hyp, wordnet=_NoSynonyms()))


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """Every per-item text metric, corrected and M3D's as-coded names side by side."""
    scores = {f"bleu{n}": bleu(prediction, reference, n) for n in range(1, 5)}
    scores.update(rouge(prediction, reference))
    scores["bleu_m3d"] = scores["bleu1"]
    scores["rouge_m3d"] = scores["rouge1"]
    scores[meteor_key()] = meteor(prediction, reference)
    return scores


def bertscore_f1(predictions: Sequence[str], references: Sequence[str],
                 model_path: str | None, batch_size: int = 16) -> list[float] | None:
    """Per-item BERTScore F1 with the model in the local directory ``model_path``; ``None``
    when no path is given (the caller notes the skip)."""
    if not model_path:
        return None
    from pathlib import Path

    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"eval.bertscore_model={model_path!r}: not a local model directory")
    from torchmetrics.text.bert import BERTScore

    metric = BERTScore(model_name_or_path=str(model_path), batch_size=batch_size, max_length=512,
                       truncation=True)
    out = metric(list(predictions), list(references))
    return [float(v) for v in out["f1"].reshape(-1)]
