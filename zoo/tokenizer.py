"""An offline tokenizer trained locally with the ``tokenizers`` library (docs/design.md section 5).

The zoo never fetches a tokenizer. When no local Hugging Face tokenizer directory is given, the
tiny language models use a byte-level BPE trained on the texts the built-in benchmark can produce
(:func:`zoo.data.benchmark_corpus`), cached on disk under a hash of the corpus and the settings.

Choices (the papers are silent; see docs/lm.md):
- byte-level BPE without any normaliser and without lower-casing, so ``decode(encode(x)) == x``
  exactly for every string (box coordinates such as ``0.125`` included);
- digits are split one per token before BPE (as LLaMA's tokenizer does), so numbers never merge
  into arbitrary multi-digit pieces and every coordinate tokenizes the same way;
- ``<s>`` (bos), ``</s>`` (eos), ``<pad>``, ``<unk>`` are special tokens with ids 0..3 and bos is
  prepended to every encoded text (LLaMA convention); ``add_bos=False`` turns that off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable
from zoo.errors import ConfigError

logger = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, UNK)
TOKENIZER_FILE = "tokenizer.json"
# bump when the training recipe below changes, so old caches are not reused
_RECIPE_VERSION = 1


def default_cache_dir() -> Path:
    """``$ZOO_CACHE_DIR/tokenizers``, else ``~/.cache/medzoo3d/tokenizers``."""
    from zoo.models import cache_root

    return cache_root() / "tokenizers"


def corpus_key(texts: list[str], settings: dict) -> str:
    """sha256 of the settings and the texts (length-framed, order-sensitive)."""
    digest = hashlib.sha256(json.dumps({"recipe": _RECIPE_VERSION, **settings},
                                       sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _train(texts: list[str], vocab_size: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def _wrap(tok, add_bos: bool):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if add_bos:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    else:
        tok.post_processor = None
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK, padding_side="right",
                                   clean_up_tokenization_spaces=False)


def build_local_tokenizer(corpus: Iterable[str], vocab_size: int = 4096, min_frequency: int = 1,
                          add_bos: bool = True, cache_dir: str | os.PathLike | None = None):
    """Train (or load from cache) a byte-level BPE tokenizer on ``corpus``.

    Returns a ``transformers.PreTrainedTokenizerFast``. The same corpus and settings give the same
    vocabulary and ids; the trained ``tokenizer.json`` is cached in
    ``cache_dir/bpe-<hash>/`` (default :func:`default_cache_dir`). ``vocab_size`` is an upper
    bound: a small corpus stops earlier, when no pair is left to merge.
    """
    if isinstance(corpus, (str, bytes)):
        raise TypeError("corpus must be an iterable of strings, not a single string")
    texts = list(corpus)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"corpus item {bad[0]} is {type(texts[bad[0]]).__name__}, not str")
    if not texts:
        raise ValueError("corpus is empty: a tokenizer needs at least one text")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size={vocab_size} is below the byte alphabet plus special tokens "
                          f"({256 + len(SPECIAL_TOKENS)})")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")
    from tokenizers import Tokenizer

    settings = {"vocab_size": vocab_size, "min_frequency": min_frequency}
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"bpe-{corpus_key(texts, settings)[:24]}" / TOKENIZER_FILE
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = _train(texts, vocab_size, min_frequency)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, path)
        logger.info("trained a %d-token BPE tokenizer on %d texts -> %s",
                    tok.get_vocab_size(), len(texts), path)
    return _wrap(tok, add_bos)


def benchmark_tokenizer(vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None,
                        add_bos: bool = True):
    """The default offline tokenizer: trained on :func:`zoo.data.benchmark_corpus`."""
    from zoo.data import benchmark_corpus  # lazy: zoo.data is heavier and optional here

    return build_local_tokenizer(benchmark_corpus(), vocab_size=vocab_size, add_bos=add_bos,
                                 cache_dir=cache_dir)
