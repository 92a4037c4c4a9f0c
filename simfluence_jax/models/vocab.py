"""SentencePiece vocabularies with T5's special ids, trained locally and cached.

T5 vocabularies (Raffel et al., 2020; Kudo & Richardson, 2018, arXiv 1808.06226) reserve
``pad = 0``, ``eos = 1``, ``unk = 2`` and have no BOS; seqio appends EOS after trimming and pads
with 0. ``train_sentencepiece`` trains such a model from a list of texts with the
``sentencepiece`` package and stores it in a cache folder under a name derived from a hash of
the texts and every training setting, so the same call returns the same file without
retraining. ``load_sentencepiece`` opens a model and checks the special ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from simfluence_jax import fileio

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


def default_cache_dir() -> Path:
    """``$SIMFLUENCE_CACHE/spm``, else ``~/.cache/simfluence_jax/spm``."""
    root = os.environ.get("SIMFLUENCE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "simfluence_jax"
    return base / "spm"


def _cache_key(texts: Sequence[str], settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def train_sentencepiece(
    texts: Sequence[str],
    *,
    vocab_size: int,
    cache_dir: str | Path | None = None,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    hard_vocab_limit: bool = False,
    normalization_rule_name: str = "nmt_nfkc",
) -> Path:
    """Trains (or finds in the cache) a T5-style SentencePiece model; returns its path.

    Args:
      texts: the training sentences, one string each; order matters for the cache key.
      vocab_size: pieces in the model, counting pad, eos and unk. With
        ``hard_vocab_limit=False`` (the default, as for the T5X fixture's model) a small
        corpus may yield fewer pieces instead of failing.
      cache_dir: folder for cached models (default ``default_cache_dir()``).
      model_type: ``unigram`` (T5's choice) or ``bpe``, ``char``, ``word``.
      character_coverage, normalization_rule_name: passed to the trainer.

    Returns:
      ``<cache_dir>/spm-<hash>.model``. The file is written atomically, so a concurrent or
      killed run never leaves a half-written model under that name.
    """
    texts = [str(t) for t in texts]
    if not texts or not any(t.strip() for t in texts):
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    if not isinstance(vocab_size, int) or vocab_size < 4:
        raise ValueError(f"vocab_size must be an int >= 4, got {vocab_size!r}")
    settings = {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "character_coverage": character_coverage,
        "hard_vocab_limit": hard_vocab_limit,
        "normalization_rule_name": normalization_rule_name,
        "pad_id": PAD_ID,
        "eos_id": EOS_ID,
        "unk_id": UNK_ID,
        "bos_id": -1,
        "version": spm.__version__,
    }
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"spm-{_cache_key(texts, settings)[:24]}.model"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    trainer_settings = {k: v for k, v in settings.items() if k != "version"}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        num_threads=1,
        minloglevel=2,
        **trainer_settings,
    )
    fileio.atomic_write(target, model.getvalue())
    return target


def load_sentencepiece(path: str | Path) -> spm.SentencePieceProcessor:
    """Opens a SentencePiece model and checks T5's ids: pad 0, eos 1, unk 2, no BOS."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SentencePiece model {str(path)!r} does not exist")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{str(path)!r} is not a SentencePiece model: {err}") from err
    ids = (
        processor.pad_id(),
        processor.eos_id(),
        processor.unk_id(),
        processor.bos_id(),
    )
    if ids != (PAD_ID, EOS_ID, UNK_ID, -1):
        raise ValueError(
            f"{str(path)!r} has (pad, eos, unk, bos) ids {ids}; T5 needs (0, 1, 2, -1)"
        )
    return processor
