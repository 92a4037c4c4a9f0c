"""Real text that ships offline: plain-text corpora inside the gensim 4.4.0 wheel.

gensim's test data folder (``gensim/test/test_data/``) holds, among many files:

* ``pang_lee_polarity.cor``: 200 movie-review sentences from the sentence polarity dataset
  v1.0 (Pang & Lee, 2005, "Seeing stars"), 100 labelled ``__label__neg`` and 100
  ``__label__pos``, one per line in fastText format (``__label__<tag> <text>``). The file is
  latin-1, not UTF-8: six lines hold bytes above 0x7f (``\\xe9`` for e-acute, and ``\\x97``,
  a Windows-1252 em dash that latin-1 decodes to the control character U+0097);
* ``lee_background.cor``: 300 Australian news documents (the Lee et al., 2005, background
  corpus), one per line, plain ASCII.

Only these plain-text files are read. The folder also holds pickled models; they are never
opened. The folder is located with ``importlib.util.find_spec``, which finds the installed
package without executing it (importing gensim itself loads scipy and compiled extensions).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

POLARITY_FILE = "pang_lee_polarity.cor"
LEE_BACKGROUND_FILE = "lee_background.cor"
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
    with open(path, encoding=encoding, newline="") as f:
        return f.read().splitlines()


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
