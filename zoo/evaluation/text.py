"""Text metrics of report generation, open VQA and REG (docs/reference.md C; docs/evaluation.md).

Corrected metrics (the zoo's choices) and M3D's metrics as its Bench code computes them
(``bleu_m3d``, ``rouge_m3d``, ``meteor_m3d``; M3D scores each item alone with the ``evaluate``
library's ``bleu``, ``rouge``, ``meteor`` and ``bertscore`` after stripping both texts):

- BLEU-n: ``nltk.translate.bleu_score.sentence_bleu`` with uniform weights over 1..n grams and
  Chen & Cherry smoothing method 1 (a per-sentence BLEU-4 is otherwise zero for most short
  answers), on the zoo's tokens. ``bleu_m3d``: ``evaluate``'s BLEU with ``max_order=1``, i.e.
  case-sensitive ``13a`` tokens (sacreBLEU's ``mteval-v13a`` rules, here from torchmetrics), clipped
  unigram precision times the brevity penalty, no smoothing. An empty prediction or reference
  scores 0 (``evaluate``'s BLEU divides by zero there; the zoo takes the value the formula tends
  to, as ``evaluate``'s later fix does).
- ROUGE-1 / ROUGE-L F-measure from ``rouge-score``; M3D's "ROUGE" is ROUGE-1 (``rouge_m3d``, the
  same scorer and tokeniser as ``evaluate``'s).
- METEOR: nltk's implementation with WordNet synonyms (:mod:`zoo.evaluation.wordnet`). ``meteor``
  uses the zoo's tokens; when WordNet is not installed, synonym matching is off and the key is
  ``meteor_nosyn`` so the two are never mixed up. ``meteor_m3d``: M3D's tokens (nltk's
  ``word_tokenize``: Punkt sentences, then the Treebank-style word tokenizer, case kept; METEOR
  lowercases), always with WordNet; without nltk's English Punkt model (``punkt_tab``) sentences
  are split by Punkt's rules without its trained abbreviation list and the key is
  ``meteor_m3d_nopunkt``; without WordNet there is no M3D METEOR.
- BERTScore F1 with ``bert-score`` (what M3D calls), only with a local model directory.

The zoo's tokens (BLEU-n, ``meteor``): lower case, words and single punctuation marks
(``\\w+|[^\\w\\s]``), so no tokenizer data has to be downloaded.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from zoo.errors import ConfigError, MissingFileError

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


def wordnet_available() -> bool:
    """Whether METEOR can match synonyms (:func:`zoo.evaluation.wordnet.ensure_wordnet`)."""
    from zoo.evaluation.wordnet import ensure_wordnet

    return ensure_wordnet()


def meteor_key() -> str:
    return "meteor" if wordnet_available() else "meteor_nosyn"


class _NoSynonyms:
    """Stands in for the WordNet reader: no synsets, so METEOR matches exact words and stems."""

    @staticmethod
    def synsets(*_: Any, **__: Any) -> list:
        return []


def meteor(prediction: str, reference: str) -> float:
    """nltk METEOR on the zoo's tokens (synonyms only with WordNet; see :func:`meteor_key`)."""
    from nltk.translate.meteor_score import meteor_score

    hyp, ref = tokenize(prediction), tokenize(reference)
    if not hyp or not ref:
        return 0.0
    if wordnet_available():
        return float(meteor_score([ref], hyp))
    return float(meteor_score([ref], hyp, wordnet=_NoSynonyms()))


# ---------------------------------------------------------------- M3D's metrics as coded
def bleu_m3d(prediction: str, reference: str) -> float:
    """M3D's BLEU: ``evaluate``'s BLEU with ``max_order=1`` on one stripped pair (module
    docstring); ``"Yes"`` against ``"yes"`` scores 0."""
    from nltk.translate.bleu_score import corpus_bleu
    # torchmetrics' copy of sacreBLEU's tokenizers (private; pinned, and its 13a rules are tested)
    from torchmetrics.functional.text.sacre_bleu import _SacreBLEUTokenizer

    hyp = list(_SacreBLEUTokenizer.tokenize(str(prediction).strip(), "13a"))
    ref = list(_SacreBLEUTokenizer.tokenize(str(reference).strip(), "13a"))
    if not hyp or not ref:
        return 0.0
    with warnings.catch_warnings():  # nltk warns when no unigram matches; the score is then 0
        warnings.simplefilter("ignore")
        return float(corpus_bleu([[ref]], [hyp], weights=(1.0,)))


@lru_cache(maxsize=1)
def punkt_english_available() -> bool:
    """Whether nltk's English Punkt model (``tokenizers/punkt_tab/english``) is installed."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


def m3d_words(text: str) -> list[str]:
    """M3D's METEOR tokens: nltk's ``word_tokenize`` (Punkt sentences, then nltk's Treebank-style
    word tokenizer on each). Without nltk's English Punkt model, Punkt's rules run untrained."""
    from nltk.tokenize import NLTKWordTokenizer, word_tokenize
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    if punkt_english_available():
        return word_tokenize(str(text))
    words = NLTKWordTokenizer()
    return [w for sentence in PunktSentenceTokenizer().tokenize(str(text))
            for w in words.tokenize(sentence)]


def meteor_m3d_key() -> str | None:
    """``meteor_m3d`` (exactly M3D's), ``meteor_m3d_nopunkt`` (untrained Punkt), or ``None``
    without WordNet (M3D's METEOR always matches synonyms)."""
    if not wordnet_available():
        return None
    return "meteor_m3d" if punkt_english_available() else "meteor_m3d_nopunkt"


def meteor_m3d(prediction: str, reference: str) -> float:
    """M3D's METEOR (``evaluate``'s ``meteor``): nltk ``meteor_score`` with WordNet on
    :func:`m3d_words` of the stripped texts (0 for an empty side, as nltk scores it)."""
    from nltk.translate.meteor_score import meteor_score

    if not wordnet_available():
        from zoo.evaluation.wordnet import DEBIAN_PACKAGES

        raise MissingFileError(f"M3D's METEOR needs WordNet, which is not installed "
                               f"({DEBIAN_PACKAGES})")
    return float(meteor_score([m3d_words(str(reference).strip())],
                              m3d_words(str(prediction).strip())))


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """Every per-item text metric, corrected and M3D's as-coded names side by side."""
    scores = {f"bleu{n}": bleu(prediction, reference, n) for n in range(1, 5)}
    scores.update(rouge(prediction, reference))
    scores["bleu_m3d"] = bleu_m3d(prediction, reference)
    scores["rouge_m3d"] = scores["rouge1"]
    scores[meteor_key()] = meteor(prediction, reference)
    key = meteor_m3d_key()
    if key is not None:
        scores[key] = meteor_m3d(prediction, reference)
    return scores


def text_notes() -> list[str]:
    """What a text task's note says about the METEOR variants this machine can compute."""
    from zoo.evaluation.wordnet import DEBIAN_PACKAGES

    if not wordnet_available():
        return ["METEOR without WordNet synonyms (meteor_nosyn) and no meteor_m3d: WordNet not "
                f"installed ({DEBIAN_PACKAGES})"]
    if not punkt_english_available():
        return ["meteor_m3d_nopunkt: nltk's English Punkt model (punkt_tab) not installed, so "
                "sentences are split without its abbreviation list"]
    return []


# ---------------------------------------------------------------- BERTScore
def bertscore_layer(model_path: str, num_layers: int | None) -> int:
    """The layer BERTScore reads for the model in the local directory ``model_path``:
    ``num_layers`` when given, else ``bert-score``'s default for the model the folder is named
    after (``.../roberta-large`` -> 17, what M3D's ``lang="en"`` uses). Checked before any
    generation, so a wrong setting fails first."""
    if not Path(model_path).is_dir():
        raise MissingFileError(f"eval.bertscore_model={model_path!r}: not a local model directory")
    if num_layers is not None:
        if int(num_layers) < 1:
            raise ConfigError(f"eval.bertscore_layers must be >= 1, got {num_layers}")
        return int(num_layers)
    from bert_score.utils import model2layers

    parts = Path(model_path).resolve().parts
    for name in ("/".join(parts[-2:]), parts[-1]):
        if name in model2layers:
            return int(model2layers[name])
    raise ConfigError(f"eval.bertscore_layers: bert-score has no default layer for a model "
                      f"named {parts[-1]!r}; set eval.bertscore_layers (roberta-large: 17)")


@lru_cache(maxsize=2)
def _bertscorer(model_path: str, num_layers: int, batch_size: int) -> Any:
    from bert_score import BERTScorer

    scorer = BERTScorer(model_type=model_path, num_layers=num_layers, batch_size=batch_size,
                        use_fast_tokenizer=False)
    from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

    if isinstance(scorer._tokenizer, (GPT2Tokenizer, RobertaTokenizer)):
        # bert-score encodes RoBERTa / GPT-2 text with add_prefix_space=True per call (a space
        # before the first word, as M3D's transformers 4 did); transformers 5 ignores it there
        # and honours it only when the tokenizer is loaded
        scorer._tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False,
                                                          add_prefix_space=True)
    if scorer._tokenizer.model_max_length > 1_000_000:
        raise ConfigError(f"eval.bertscore_model={model_path!r}: its tokenizer has no "
                          "model_max_length (set it in tokenizer_config.json, e.g. 512)")
    return scorer


def bertscore_f1(predictions: Sequence[str], references: Sequence[str], model_path: str | None,
                 num_layers: int | None = None, batch_size: int = 16) -> list[float] | None:
    """Per-item BERTScore F1 (``bert-score``: no idf, no baseline rescaling, as M3D) with the
    model in the local directory ``model_path`` at layer ``num_layers`` (see
    :func:`bertscore_layer`); ``None`` when no path is given (the caller notes the skip). Each
    prediction is scored against its own reference, whatever the batching."""
    if not model_path:
        return None
    layer = bertscore_layer(model_path, num_layers)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return []
    scorer = _bertscorer(str(Path(model_path).resolve()), layer, int(batch_size))
    _, _, f1 = scorer.score([str(p).strip() for p in predictions],
                            [[str(r).strip()] for r in references], batch_size=int(batch_size))
    return [float(v) for v in f1]
