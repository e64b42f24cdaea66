"""WordNet 3.0 for METEOR's synonym matching, from Debian's packages, without a download.

nltk's METEOR matches synonyms through ``nltk.corpus.wordnet``, which reads a ``corpora/wordnet``
folder on ``nltk.data.path``. Two ways to have one (docs/evaluation.md, "WordNet"):

- nltk's own data (``python -m nltk.downloader wordnet`` where the network allows): used as it is.
- Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages
  (``apt-get install wordnet-base wordnet-sense-index``), which put WordNet 3.0's database files
  in ``/usr/share/wordnet`` (or ``$WNSEARCHDIR``). They lack only ``lexnames``, the list of the 45
  lexicographer files, which nltk's reader needs (one line per file: two-digit number, name,
  syntactic category; line *i* must carry number *i*). :func:`ensure_wordnet` builds the folder
  once in the zoo's cache (``$ZOO_CACHE_DIR/nltk_data``, else ``~/.cache/medzoo3d/nltk_data``):
  copies of the Debian files (36 MB; nltk's reader refuses symbolic and hard links) plus
  ``lexnames`` written from :data:`LEXNAMES`, and puts it on ``nltk.data.path``. Nothing is
  downloaded.

:data:`LEXNAMES` is the fixed list of WordNet 3.0 (manual page ``lexnames(5WN)``); the category
follows from the name's prefix (1 noun, 2 verb, 3 adjective, 4 adverb).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from zoo.errors import MissingFileError

#: WordNet 3.0's lexicographer files, in file-number order (00 .. 44).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

#: The database files nltk's reader opens (all but ``lexnames`` come with the Debian packages).
DATABASE_FILES = tuple(
    [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("adj", "adv", "noun", "verb")]
    + [f"{pos}.exc" for pos in ("adj", "adv", "noun", "verb")]
    + ["index.sense", "cntlist.rev"])
DEBIAN_PACKAGES = "apt-get install wordnet-base wordnet-sense-index"


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line, numbered from 00."""
    return "".join(f"{i:02d}\t{name}\t{SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
                   for i, name in enumerate(LEXNAMES))


def debian_dir() -> Path:
    """Where Debian's packages put the database: ``$WNSEARCHDIR``, else ``/usr/share/wordnet``."""
    return Path(os.environ.get("WNSEARCHDIR") or "/usr/share/wordnet")


def default_nltk_data_dir() -> Path:
    """``nltk_data`` beside the zoo's other caches: ``$ZOO_CACHE_DIR/nltk_data``, else
    ``~/.cache/medzoo3d/nltk_data``."""
    from zoo.tokenizer import default_cache_dir

    return default_cache_dir().parent / "nltk_data"


def build_nltk_wordnet(source: str | os.PathLike, nltk_data: str | os.PathLike) -> Path:
    """``<nltk_data>/corpora/wordnet``: copies of the database files in ``source`` plus
    ``lexnames``; written in a temporary folder and renamed into place, so a concurrent reader
    never sees half a folder. Raises :class:`MissingFileError` naming the files ``source``
    lacks."""
    source = Path(source)
    missing = [name for name in DATABASE_FILES if not (source / name).is_file()]
    if missing:
        raise MissingFileError(f"WordNet database {source} lacks {', '.join(missing)} (install "
                               f"Debian's packages: {DEBIAN_PACKAGES})")
    corpora = Path(nltk_data) / "corpora"
    target = corpora / "wordnet"
    if target.is_dir():
        return target
    corpora.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=corpora))
    try:
        tmp.chmod(0o755)
        for name in DATABASE_FILES:
            shutil.copyfile(source / name, tmp / name)
        (tmp / "lexnames").write_text(lexnames_text())
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():  # another process may have won the rename
            raise
    return target


def _nltk_finds_wordnet() -> bool:
    import nltk

    for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            pass
    return False


@lru_cache(maxsize=1)
def ensure_wordnet() -> bool:
    """True when ``nltk.corpus.wordnet`` can load: nltk's own data, or a folder built from
    Debian's files (see the module docstring); False when neither is installed."""
    import nltk

    if _nltk_finds_wordnet():
        return True
    if not all((debian_dir() / name).is_file() for name in DATABASE_FILES):
        return False
    nltk_data = default_nltk_data_dir()
    build_nltk_wordnet(debian_dir(), nltk_data)
    if str(nltk_data) not in nltk.data.path:
        nltk.data.path.append(str(nltk_data))
    return _nltk_finds_wordnet()
