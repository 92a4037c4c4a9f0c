"""Real text that ships offline: plain-text corpora inside the gensim 4.4.0 wheel.

gensim's test data folder (``gensim/test/test_data/``) holds, among many files:

* ``pang_lee_polarity.cor``: 200 movie-review sentences from the sentence polarity dataset
  v1.0 (Pang & Lee, 2005, "Seeing stars"), 100 labelled ``__label__neg`` and 100
  ``__label__pos``, one per line in fastText format (``__label__<tag> <text>``). The file is
  latin-1, not UTF-8: six lines hold bytes above 0x7f (``\\xe9`` for e-acute, and ``\\x97``,
  a Windows-1252 em dash that latin-1 decodes to the control character U+0097);
* ``lee_background.cor``: 300 Australian news documents (the Lee et al., 2005, background
  corpus), one per line, plain ASCII;
* ``questions-words.txt``: the word2vec analogy questions (Mikolov et al., 2013, "Efficient
  Estimation of Word Representations in Vector Space"): 19,544 lines ``a b c d`` ("a is to b
  as c is to d") in 14 groups, each opened by a header line ``: <group>``;
* ``simlex999.txt`` (Hill et al., 2015, "SimLex-999") and ``wordsim353.tsv`` (Finkelstein et
  al., 2002, "Placing Search in Context"): word pairs with a mean human similarity score in
  [0, 10], tab-separated ``word1 word2 score`` after two ``#`` comment lines; 999 and 353
  pairs.

Only these plain-text files are read. The folder also holds pickled models; they are never
opened. The folder is located with ``importlib.util.find_spec``, which finds the installed
package without executing it (importing gensim itself loads scipy and compiled extensions).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

POLARITY_FILE = "pang_lee_polarity.cor"
LEE_BACKGROUND_FILE = "lee_background.cor"
ANALOGY_FILE = "questions-words.txt"
SIMILARITY_FILES = {"simlex999": "simlex999.txt", "wordsim353": "wordsim353.tsv"}
LABEL_PREFIX = "__label__"
POLARITY_TAGS = {"neg": "negative", "pos": "positive"}


def gensim_data_dir() -> Path:
    """The ``gensim/test/test_data`` folder of the installed gensim wheel."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the bundled text corpora come from the gensim wheel, which is not installed; "
            "install it with: pip install gensim==4.4.0"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / "test" / "test_data"
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"gensim is installed at {list(spec.submodule_search_locations)} but has no "
        "test/test_data folder; reinstall gensim==4.4.0 from its wheel"
    )


def _read_lines(path: Path, encoding: str) -> list[str]:
    if path.suffix in (".pkl", ".pickle"):
        raise ValueError(f"refusing to read a pickle file: {path}")
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; the bundled files ship in the gensim wheel "
            "(pip install gensim==4.4.0)"
        )
    try:
        with open(path, encoding=encoding, newline="") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not {encoding} text ({e.reason} at byte {e.start})") from None


def read_polarity(
    path: str | Path | None = None, *, encoding: str = "latin-1"
) -> tuple[list[str], list[str]]:
    """Reads ``pang_lee_polarity.cor``: ``(texts, targets)`` in file order.

    ``targets`` are ``"negative"``/``"positive"`` (from ``__label__neg``/``__label__pos``).
    Texts are stripped of surrounding whitespace and otherwise kept as in the file
    (lowercased, tokenised with spaces).
    """
    path = Path(path) if path is not None else gensim_data_dir() / POLARITY_FILE
    texts, targets = [], []
    for lineno, line in enumerate(_read_lines(path, encoding), start=1):
        if not line.strip():
            continue
        tag, _, text = line.strip().partition(" ")
        if not tag.startswith(LABEL_PREFIX) or tag[len(LABEL_PREFIX) :] not in POLARITY_TAGS:
            raise ValueError(
                f"{path}:{lineno}: expected a label {sorted(POLARITY_TAGS)} written as "
                f"'{LABEL_PREFIX}<tag> <text>', got {line[:40]!r}"
            )
        if not text.strip():
            raise ValueError(f"{path}:{lineno}: label {tag} has no text")
        texts.append(text.strip())
        targets.append(POLARITY_TAGS[tag[len(LABEL_PREFIX) :]])
    if not texts:
        raise ValueError(f"{path} holds no sentences")
    return texts, targets


def read_lee_background(path: str | Path | None = None, *, encoding: str = "latin-1") -> list[str]:
    """Reads ``lee_background.cor``: the non-empty documents, one per line, stripped."""
    path = Path(path) if path is not None else gensim_data_dir() / LEE_BACKGROUND_FILE
    docs = [line.strip() for line in _read_lines(path, encoding) if line.strip()]
    if not docs:
        raise ValueError(f"{path} holds no documents")
    return docs


@dataclasses.dataclass(frozen=True)
class Analogy:
    """One line of ``questions-words.txt``: ``a`` is to ``b`` as ``c`` is to ``d``.

    ``line`` is the 1-based line number in the file, ``group`` the name of the last header.
    """

    line: int
    group: str
    a: str
    b: str
    c: str
    d: str


def read_analogies(path: str | Path | None = None, *, encoding: str = "utf-8") -> list[Analogy]:
    """Reads ``questions-words.txt``: every analogy line with its group, in file order.

    Raises ``ValueError`` naming the file and line for a line that is not four words, a
    header without a name, analogies before the first header, or a file with none.
    """
    path = Path(path) if path is not None else gensim_data_dir() / ANALOGY_FILE
    out, group = [], None
    for lineno, line in enumerate(_read_lines(path, encoding), start=1):
        if not line.strip():
            continue
        if line.startswith(":"):
            group = line[1:].strip()
            if not group:
                raise ValueError(f"{path}:{lineno}: group header without a name")
            continue
        words = line.split()
        if len(words) != 4:
            raise ValueError(
                f"{path}:{lineno}: expected four words 'a b c d', got {len(words)}: {line[:60]!r}"
            )
        if group is None:
            raise ValueError(f"{path}:{lineno}: analogy before the first ': <group>' header")
        out.append(Analogy(lineno, group, *words))
    if not out:
        raise ValueError(f"{path} holds no analogies")
    return out


@dataclasses.dataclass(frozen=True)
class WordPair:
    """One rated word pair; ``line`` is 1-based, ``score`` the mean human rating in [0, 10]."""

    line: int
    word1: str
    word2: str
    score: float


def read_word_pairs(
    source: str = "simlex999", *, path: str | Path | None = None, encoding: str = "utf-8"
) -> list[WordPair]:
    """Reads ``simlex999.txt`` or ``wordsim353.tsv`` (``source``), or the file at ``path``.

    Lines starting with ``#`` are comments. Raises ``ValueError`` naming the file and line for
    a line that is not three tab-separated fields, a score that is not a number in [0, 10],
    or a file with no pairs.
    """
    if path is None:
        if source not in SIMILARITY_FILES:
            raise ValueError(
                f"unknown word-similarity source {source!r}; known: {sorted(SIMILARITY_FILES)}"
            )
        path = gensim_data_dir() / SIMILARITY_FILES[source]
    path = Path(path)
    out = []
    for lineno, line in enumerate(_read_lines(path, encoding), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            raise ValueError(
                f"{path}:{lineno}: expected 'word1<TAB>word2<TAB>score', got {line[:60]!r}"
            )
        try:
            score = float(fields[2])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: score {fields[2]!r} is not a number") from None
        if not (math.isfinite(score) and 0.0 <= score <= 10.0):
            raise ValueError(f"{path}:{lineno}: score {score} is outside [0, 10]")
        out.append(WordPair(lineno, fields[0].strip(), fields[1].strip(), score))
    if not out:
        raise ValueError(f"{path} holds no word pairs")
    return out
